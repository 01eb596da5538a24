"""The learning-rate schedule (ebt-paper.md section 13): linear warm-up from 0, then cosine to peak/div.

A pure function of the optimizer step, so the "scheduler state" of a checkpoint is just the step count.
"""

from __future__ import annotations

import math


def lr_at(step: int, *, peak: float, warmup: int, total: int, min_div: float) -> float:
    """LR of optimizer step ``step`` (0-based). Warm-up: ``peak * (step + 1) / warmup`` for the first
    ``warmup`` steps (step 0 already moves; the peak is reached at step ``warmup - 1``); then a half cosine
    from ``peak`` (step ``warmup``) down to ``peak / min_div`` (the last step, ``total - 1``)."""
    if warmup > 0 and step < warmup:
        return peak * (step + 1) / warmup
    floor = peak / min_div
    span = max(1, total - warmup - 1)
    progress = min(1.0, max(0.0, (step - warmup) / span))
    return floor + (peak - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))
