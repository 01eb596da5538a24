"""The learning-rate schedule (ebt-paper.md section 13): linear warm-up from 0, then cosine to a floor.

A pure function of the optimizer step, so the "scheduler state" of a checkpoint is just the step count.

Parameter groups with an LR multiplier (the EBT's learnable step size alpha: ``lr_mult =
step_size_lr_multiplier``) follow one of two schedules, chosen by ``ModelConfig.step_size_lr_floor``:

* ``"shared"`` (the official EBT code, the default): every group warms up to ``peak * lr_mult`` and then
  cosine-decays to the **same absolute floor** ``peak / min_div``, as one ``CosineAnnealingLR(eta_min =
  peak / min_lr_scale)`` does for all groups of the released trainer. At S1's multiplier 1500 the alpha LR
  ends 1500x lower relative to its peak than the model LR does.
* ``"scaled"``: the whole model schedule times ``lr_mult``, so the alpha group ends at ``lr_mult * peak /
  min_div`` (e.g. 0.18 for peak 1.2e-3). This was the only behaviour before the setting existed.

A group with ``lr_mult == 1`` gets exactly ``lr_at`` under both.

The cosine's phase (``TrainConfig.lr_schedule``, issue 28.7): ``"official"`` is the released trainer's
``WarmUpCosineAnnealingLR``: its warm-up ends at step ``W - 1`` and the wrapped ``CosineAnnealingLR(T_max = N - W)``
takes its first step at step ``W``, so step ``s >= W`` gets the cosine factor ``cos(pi (s - W + 1) / (N - W))`` and
the last step ``N - 1`` sits on the floor. ``"held"`` is this project's first schedule (every run stored before the
setting existed): ``cos(pi (s - W) / (N - W - 1))``, which holds the peak one step longer (steps ``W - 1`` and
``W``; relative LR difference up to 2.2e-2 at W = 10, N = 100).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from ebt_scaling.config import LEGACY_LR_SCHEDULE, LR_SCHEDULES, STEP_SIZE_LR_FLOORS, RunSpec


def lr_at(step: int, *, peak: float, warmup: int, total: int, min_div: float, floor: float | None = None,
          shape: str = LEGACY_LR_SCHEDULE) -> float:
    """LR of optimizer step ``step`` (0-based). Warm-up: ``peak * (step + 1) / warmup`` for the first
    ``warmup`` steps (step 0 already moves; the peak is reached at step ``warmup - 1``); then a half cosine
    down to ``floor`` (default ``peak / min_div``) at the last step, ``total - 1``: ``shape`` ``"official"``
    (the released EBT trainer's) is one cosine step in at step ``warmup``, ``"held"`` (the legacy default) starts
    it at the peak there (module doc)."""
    if warmup > 0 and step < warmup:
        return peak * (step + 1) / warmup
    if floor is None:
        floor = peak / min_div
    if shape == "official":
        progress = min(1.0, max(0.0, (step - warmup + 1) / max(1, total - warmup)))
    elif shape == "held":
        progress = min(1.0, max(0.0, (step - warmup) / max(1, total - warmup - 1)))
    else:
        raise ValueError(f"shape: unknown LR schedule {shape!r}; use one of {', '.join(LR_SCHEDULES)}")
    return floor + (peak - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))


def group_lr_at(step: int, *, peak: float, warmup: int, total: int, min_div: float, lr_mult: float,
                floor_mode: str, shape: str = LEGACY_LR_SCHEDULE) -> float:
    """LR of a parameter group with multiplier ``lr_mult`` at optimizer step ``step`` under ``floor_mode``.
    Both: ``lr_mult * lr_at(step)`` during the warm-up (a ramp to ``peak * lr_mult``). After it, ``"shared"``:
    a half cosine from ``peak * lr_mult`` down to ``peak / min_div``; ``"scaled"``: ``lr_mult * lr_at(step)``,
    floor ``lr_mult * peak / min_div``."""
    kw: dict[str, Any] = dict(warmup=warmup, total=total, min_div=min_div, shape=shape)
    if lr_mult == 1.0 or (warmup > 0 and step < warmup):  # the warm-up is the same ramp under both settings
        return lr_at(step, peak=peak, **kw) * lr_mult
    if floor_mode == "shared":
        return lr_at(step, peak=peak * lr_mult, floor=peak / min_div, **kw)
    if floor_mode == "scaled":
        return lr_at(step, peak=peak, **kw) * lr_mult
    raise ValueError(f"floor_mode: unknown value {floor_mode!r}; use one of {', '.join(STEP_SIZE_LR_FLOORS)}")


@dataclass(frozen=True)
class Schedule:
    """A run's schedule: ``lr_at`` over ``TrainConfig.schedule_length`` steps, with the EBT alpha group's floor
    (``group_lr_at``). Stateless: ``state_dict(step)`` records what the LR was, for the checkpoint's reader."""

    peak: float
    warmup: int
    total: int
    min_div: float
    floor_mode: str
    shape: str = LEGACY_LR_SCHEDULE

    @classmethod
    def of(cls, spec: RunSpec) -> Schedule:
        t = spec.train
        return cls(t.lr, t.warmup_steps, t.schedule_length, t.min_lr_div, spec.model.step_size_lr_floor,
                   t.lr_schedule)

    def lr(self, step: int) -> float:
        """The base LR (a group without multiplier) of optimizer step ``step`` (0-based)."""
        return lr_at(step, peak=self.peak, warmup=self.warmup, total=self.total, min_div=self.min_div,
                     shape=self.shape)

    def apply(self, optimizer: Any, step: int) -> float:
        """Set every parameter group's LR for step ``step`` (its ``lr_mult`` applied); return the base LR."""
        for g in optimizer.param_groups:
            g["lr"] = group_lr_at(step, peak=self.peak, warmup=self.warmup, total=self.total, min_div=self.min_div,
                                  lr_mult=g["lr_mult"], floor_mode=self.floor_mode, shape=self.shape)
        return self.lr(step)

    def state_dict(self, step: int) -> dict[str, Any]:
        """After ``step`` optimizer steps: the step and the base LR the last one used."""
        return {"step": step, "lr": self.lr(max(0, step - 1))}
