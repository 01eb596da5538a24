"""Default training settings of ``ebt-scale train`` per family and size preset (torch-free).

The CPU presets (``nano``, ``tiny``) use settings measured to finish in about 3 minutes or less on 2 CPU
cores and end clearly below the unigram validation loss on Shakespeare (``docs/training.md`` has the
commands and figures). The EBT costs about 6.7x the Transformer++ per step (ebt-paper.md section 17), so it
gets fewer steps. Paper-scale presets use the preset's peak LR and batch size and a 256-token context.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ebt_scaling.config import get_preset


@dataclass(frozen=True)
class TrainDefaults:
    steps: int
    batch_size: int
    seq_len: int
    lr: float
    warmup_steps: int
    vocab_size: int
    eval_interval: int
    # ModelConfig overrides applied on top of the ebt_s1 recipe for this preset (EBT only; not for ebt_s2 or an
    # explicit value on the command line), as (field, value) pairs.
    s1_options: tuple[tuple[str, Any], ...] = ()


# The CPU presets' EBT (S1) step size: S1's alpha 500 makes the first descent steps wildly overconfident at these
# sizes (a training CE in the thousands of nats), and the EBT then sits on the unigram loss for most of a short
# run; alpha 1 with an LR multiplier of 3 x alpha (the authors' rule of thumb) learns from the start
# (benchmarks/RESULTS.md, "Tiny presets").
CPU_EBT_S1_OPTIONS: tuple[tuple[str, Any], ...] = (("step_size", 1.0), ("step_size_lr_multiplier", 3.0))

CPU_DEFAULTS: dict[tuple[str, str], TrainDefaults] = {
    ("transformer_pp", "tiny"): TrainDefaults(steps=1000, batch_size=16, seq_len=64, lr=3e-3, warmup_steps=100,
                                              vocab_size=512, eval_interval=200),
    ("ebt", "tiny"): TrainDefaults(steps=400, batch_size=16, seq_len=64, lr=1e-2, warmup_steps=40,
                                   vocab_size=512, eval_interval=100, s1_options=CPU_EBT_S1_OPTIONS),
    ("transformer_pp", "nano"): TrainDefaults(steps=1000, batch_size=16, seq_len=64, lr=3e-3, warmup_steps=100,
                                              vocab_size=512, eval_interval=200),
    ("ebt", "nano"): TrainDefaults(steps=400, batch_size=16, seq_len=64, lr=1e-2, warmup_steps=40,
                                   vocab_size=512, eval_interval=100, s1_options=CPU_EBT_S1_OPTIONS),
}


def train_defaults(family: str, preset: str) -> TrainDefaults:
    """Defaults for ``ebt-scale train --family F --preset P`` (raises ConfigError for an unknown preset)."""
    p = get_preset(preset)
    if (family, preset) in CPU_DEFAULTS:
        return CPU_DEFAULTS[(family, preset)]
    return TrainDefaults(steps=1000, batch_size=p.batch_size, seq_len=256, lr=p.peak_lr,
                         warmup_steps=100, vocab_size=2048, eval_interval=200)
