"""The training loop: ``train(spec, sink, *, resume_from=None) -> RunResult`` (``loop.py``, which hands each phase
to a part: ``state.py``, ``step.py``, ``evaluation.py``, ``checkpoint.py``; the local launcher is ``launch.py``).

Knows nothing of Ray or the database; documented in ``docs/training.md``.
"""

from __future__ import annotations

from typing import Any

__all__ = ["train", "evaluate", "lr_at"]


def __getattr__(name: str) -> Any:  # lazy: importing ebt_scaling.train must not pull in torch
    if name in ("train", "evaluate"):
        from ebt_scaling.train import loop

        return getattr(loop, name)
    if name == "lr_at":
        from ebt_scaling.train.schedule import lr_at

        return lr_at
    raise AttributeError(name)
