"""Frozen records that cross boundaries: train -> sched -> db -> fit -> report (stdlib only)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal, Protocol

RunStatus = Literal["planned", "running", "completed", "failed", "diverged", "cancelled"]
RUN_STATUSES: tuple[str, ...] = ("planned", "running", "completed", "failed", "diverged", "cancelled")
TERMINAL_STATUSES: tuple[str, ...] = ("completed", "failed", "diverged", "cancelled")


@dataclass(frozen=True)
class MetricPoint:
    """One value of one metric at one optimizer step of one run.

    Names used by the training loop: ``train_loss``, ``val_loss`` (nats/token; EBT: final inner step),
    ``val_ppl``, ``lr``, ``grad_norm``, ``tokens``, ``flops_paper``, ``flops_exact``, ``tokens_per_s``,
    ``wall_time_s``; EBT adds ``val_loss_initial``, ``val_energy_gap``, ``alpha``.
    """

    name: str
    step: int
    value: float

    @property
    def kind(self) -> str:
        """``finite``, ``nan``, ``inf`` or ``-inf``: how the value is stored."""
        return value_kind(self.value)


def value_kind(v: float) -> str:
    if math.isnan(v):
        return "nan"
    if math.isinf(v):
        return "inf" if v > 0 else "-inf"
    return "finite"


LOSS_MARGIN_NATS = 2.0  # above ln(vocabulary): room for a model that learned little or nothing
MAX_LOSS_NATS = 20.0  # no vocabulary known: ln(485 million), beyond any tokenizer


def plausible_loss_bound(vocab_size: float | None) -> float:
    """The largest plausible loss in nats per token of a measured result: ``ln(vocab_size) + 2`` (a uniform
    guess scores ``ln(vocab_size)``), else ``MAX_LOSS_NATS``. ``ebt-scale import`` refuses a larger one unless
    ``--allow-outliers``, and the fit leaves such an imported point out."""
    if vocab_size is None or not vocab_size >= 2:
        return MAX_LOSS_NATS
    return math.log(vocab_size) + LOSS_MARGIN_NATS


class MetricSink(Protocol):
    """Where the training loop sends metric points and checkpoints. Implemented by the scheduler
    (reports to the Ray driver), by the CLI (prints, keeps in memory) and by tests."""

    def log(self, points: list[MetricPoint]) -> None: ...

    def checkpoint(self, path: str, step: int) -> None:
        """A complete checkpoint was written to directory ``path`` after optimizer step ``step``."""
        ...


@dataclass
class ListSink:
    """A MetricSink that keeps everything in memory (CLI, tests)."""

    points: list[MetricPoint] = field(default_factory=list)
    checkpoints: list[tuple[str, int]] = field(default_factory=list)

    def log(self, points: list[MetricPoint]) -> None:
        self.points.extend(points)

    def checkpoint(self, path: str, step: int) -> None:
        self.checkpoints.append((path, step))

    def series(self, name: str) -> list[tuple[int, float]]:
        return [(p.step, p.value) for p in self.points if p.name == name]


@dataclass(frozen=True)
class RunResult:
    """What ``train(spec, sink)`` returns."""

    status: RunStatus
    steps: int
    tokens: int
    final_train_loss: float | None
    final_val_loss: float | None
    final_val_ppl: float | None
    wall_time_s: float
    params: dict[str, int] = field(default_factory=dict)
    flops_per_token: dict[str, float] = field(default_factory=dict)
    reason: str | None = None
    checkpoint_dir: str | None = None
    device: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class PlannedRun:
    """A run as planned by a sweep (or built from an imported row), before it is stored.

    ``config`` is ``RunSpec.to_dict()`` for trained runs; ``params`` and ``flops_per_token`` are keyed by
    group / convention name (e.g. ``{"non_embedding": ..}``, ``{"paper": .., "exact": ..}``).
    """

    family: str
    axis: str
    x: float
    seed: int
    config_hash: str
    config: dict[str, Any] = field(default_factory=dict)
    params: dict[str, int] = field(default_factory=dict)
    flops_per_token: dict[str, float] = field(default_factory=dict)
    tokens: int | None = None


@dataclass(frozen=True)
class SweepRecord:
    id: int
    name: str
    axis: str
    spec: dict[str, Any]
    created_at: datetime
    code_version: str | None = None


@dataclass(frozen=True)
class RunRecord:
    """A run as stored in the database."""

    id: int
    sweep: str
    family: str
    axis: str
    x: float
    seed: int
    config_hash: str
    status: str
    config: dict[str, Any] = field(default_factory=dict)
    reason: str | None = None
    attempts: int = 0
    final_val_loss: float | None = None
    final_train_loss: float | None = None
    final_val_ppl: float | None = None
    params: dict[str, int] = field(default_factory=dict)
    flops_per_token: dict[str, float] = field(default_factory=dict)
    tokens: int | None = None
    fit_eligible: bool = False
    source: str = "trained"  # trained | imported
    created_at: datetime | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    heartbeat_at: datetime | None = None
    host: str | None = None
    device: str | None = None
    checkpoint_dir: str | None = None
    extra_metrics: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class FitRecord:
    """One stored fit: ``method`` names the model (``ols_log_ppl``, ``saturating_huber``,
    ``comparison``, ``crossover``); ``family`` is a family name or ``"ebt_vs_transformer_pp"``."""

    id: int | None
    sweep: str
    axis: str
    family: str
    method: str
    params: dict[str, Any]
    run_ids: tuple[int, ...]
    fingerprint: str
    created_at: datetime | None = None


@dataclass(frozen=True)
class CalibrationRecord:
    """A measured training throughput (``ebt-scale calibrate``): FLOP/s of one (device, family, shape, precision,
    recipe, threads) under the exact FLOPs convention, from ``steps`` timed steps after ``warmup`` untimed ones.

    ``device_kind`` is ``cpu`` or ``cuda``; ``device_name`` the GPU's name (``torch.cuda.get_device_name``) or the
    CPU model (``/proc/cpuinfo``). ``shape_key`` names the model shape and the batch a step runs
    (``sweeps.calibration.shape_key``). ``recipe`` is None for a Transformer++. ``threads``: torch's CPU threads
    of a CPU measurement (0 on CUDA). ``flops_per_s = flops_per_step / seconds_per_step``.
    """

    device_kind: str
    device_name: str
    family: str
    shape_key: str
    precision: str
    recipe: str | None
    threads: int
    batch_size: int
    flops_per_step: float
    seconds_per_step: float
    steps: int
    warmup: int
    host: str | None = None
    torch_version: str | None = None
    measured_at: datetime | None = None
    id: int | None = None

    @property
    def flops_per_s(self) -> float:
        return self.flops_per_step / self.seconds_per_step
