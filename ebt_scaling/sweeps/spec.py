"""Sweep specifications: TOML files in ``experiments/`` (never torch or ray).

A spec names one axis, the families, seeds and EBT recipe, the base model/train/data settings and the
axis values. Layout (every section but ``[sweep]`` and ``[axis]`` is optional; the tables and their keys are
declared in ``sweeps/tables.py``)::

    [sweep]
    name = "depth-tiny"            # default sweep name (--name overrides)
    axis = "depth"                 # data | batch | depth | width | params | flops
    families = ["ebt", "transformer_pp"]
    seeds = [33]                   # --seeds N takes N consecutive seeds from the first one
    recipe = "ebt_s1"              # EBT recipe (ebt_s1 | ebt_s2); Transformer++ runs ignore it
    description = "..."

    [model]                        # base shape: a size preset plus ModelConfig field overrides
    preset = "xxs"
    sequence_len = 256

    [train]                        # TrainConfig fields (unset: the preset's, config.PRESETS)
    [train.ebt]                    # optional: one family's own optimizer settings (FAMILY_TRAIN_KEYS), e.g.
    lr = 0.02                      # each family at its own tuned peak LR; the data, batch and steps stay shared
    [data]                         # DataConfig fields (vocab_size: the tokenizer's, also the model's)
    [resources]                    # gpus_per_trial, cpus_per_trial, workers_per_trial, max_concurrent,
                                   # max_retries
    [cost]                         # throughput assumptions of the dry-run plan: gpu_flops_per_s, cpu_flops_per_s,
                                   # scaling_efficiency (multi-worker trials), note
    [tracking]                     # trackers = ["mlflow", "tensorboard", "wandb"], mlflow_tracking_uri,
                                   # wandb_project (sched/trackers.py)

    [axis]
    values = [4, 8, 12, 16]        # axis-specific keys: see tables.AXIS_KEYS

Every problem raises ``SpecError`` with one line naming the file, the key and the fix. Loading builds every run
once (``expand``), so a bad model/train/data value is reported with the file named, before anything runs.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from ebt_scaling.errors import ConfigError, SpecError
from ebt_scaling.sweeps.expand import expand
from ebt_scaling.sweeps.tables import AXIS_KEYS, SweepSpec, absolute_source, check_tables

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

__all__ = ["AXIS_KEYS", "SweepSpec", "absolute_source", "load_spec", "parse_spec"]


def load_spec(path: str | Path) -> SweepSpec:
    """Read and validate a TOML sweep spec."""
    p = Path(path)
    src = str(p)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SpecError(f"{src}: file not found; pass an existing TOML file to --spec "
                        "or use --axis with --preset") from None
    except OSError as exc:
        raise SpecError(f"{src}: cannot read the file ({exc.strerror}); check its permissions") from None
    except UnicodeDecodeError as exc:
        raise SpecError(f"{src}: not UTF-8 (byte {exc.start}); TOML files must be UTF-8: convert it, e.g. "
                        "iconv -f latin1 -t utf-8") from None
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise SpecError(f"{src}: invalid TOML ({exc}); fix the syntax at that line") from None
    return parse_spec(raw, source=src)


def parse_spec(raw: dict[str, Any], *, source: str = "<spec>") -> SweepSpec:
    """Validate a parsed TOML document into a SweepSpec (every run built once, so every value is checked)."""
    try:
        spec = check_tables(raw).with_(source=source)
    except SpecError:
        raise
    except ConfigError as exc:
        raise SpecError(f"{source}: {exc}") from None
    expand(spec)  # raises SpecError naming the file
    return spec
