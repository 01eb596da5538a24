"""What both kinds of trial share (``trainable.py`` on one device, ``ddp.py`` on Ray Train workers): the checkpoint
marker, how a stored checkpoint becomes ``train(resume_from=...)``, the train function to load and the device
name to report. Both import it; neither imports the other's internals."""

from __future__ import annotations

import importlib
import json
import os
from pathlib import Path
from typing import Any

from ebt_scaling.config import RunSpec

MARKER = "ebt_checkpoint.json"
DEFAULT_TRAIN_FN = "ebt_scaling.train:train"


def checkpoint_info(path: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The marker written next to a checkpoint (``step``, ``entry``), or None when unreadable."""
    try:
        with open(Path(path) / MARKER, encoding="utf-8") as f:
            info = json.load(f)
        return info if isinstance(info.get("step"), int) else None
    except (OSError, ValueError, AttributeError):
        return None


def resume_path(ckpt_dir: str | os.PathLike[str]) -> str:
    """What to pass to ``train(resume_from=...)`` for a stored checkpoint directory."""
    info = checkpoint_info(ckpt_dir) or {}
    entry = info.get("entry")
    return str(Path(ckpt_dir) / entry) if entry else str(ckpt_dir)


def load_fn(dotted: str) -> Any:
    """The train function named ``module:attr``."""
    mod, _, attr = dotted.partition(":")
    return getattr(importlib.import_module(mod), attr)


def permanent_error(exc: BaseException, spec: RunSpec | None = None) -> bool:
    """Whether a trial's error will repeat on a retry, so the run fails once instead of ``max_retries`` times:
    bad data or a bad config (``DataError``, ``ConfigError``: the same files and settings give the same error) and
    running out of memory at micro-batch 1 (nothing smaller to try). Anything else (a lost node, a transient
    CUDA or file-system error, a divergence) is retried from the last checkpoint."""
    from ebt_scaling.errors import ConfigError, DataError

    if isinstance(exc, (DataError, ConfigError)):
        return True
    oom = type(exc).__name__ == "OutOfMemoryError" or "CUDA out of memory" in str(exc)
    if oom and spec is not None:
        micro = spec.train.micro_batch_size or spec.train.batch_size
        return int(micro) <= 1
    return False


def device_name(spec: RunSpec) -> str:
    dev = spec.train.device
    if dev.startswith("cuda"):
        gpus = os.environ.get("CUDA_VISIBLE_DEVICES", "")
        return f"cuda ({gpus})" if gpus else "cuda"
    return dev
