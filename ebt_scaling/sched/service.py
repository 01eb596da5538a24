"""The sweep service: spec -> planned runs in the database -> the runs not yet done on Ray Tune.

Exactly once, driven by the database (not by ``Tuner.restore``): a run's identity is its config hash;
planning inserts idempotently; every invocation resets runs a killed driver left ``running``, skips
``completed`` ones (and ``failed``/``diverged`` ones unless asked to retry them) and runs the rest in a
fresh Tuner. A run with a recorded checkpoint resumes from it, after its metric series is truncated to the
checkpoint's step, so every run ends with one contiguous series without duplicated steps.

The store is passed in (duck-typed: ``ebt_scaling.db.Store`` in the product); this module never imports
the database package.
"""

from __future__ import annotations

import dataclasses
import os
import re
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ebt_scaling.records import MetricPoint
from ebt_scaling.sched.runner import RayOptions, RunnerOutcome, prefetch_ray, run_trials
from ebt_scaling.sched.trainable import checkpoint_info
from ebt_scaling.sweeps import ExpandedRun, SweepSpec, expand
from ebt_scaling.sweeps.expand import keep_stored_hash_versions

SKIP_BY_DEFAULT = ("failed", "diverged")


@dataclass
class SweepOutcome:
    sweep: str
    planned: int
    skipped_completed: int
    skipped_failed: int
    launched: int
    resumed: int
    statuses: dict[str, int] = field(default_factory=dict)
    interrupted: bool = False
    runner: RunnerOutcome | None = None
    storage_path: str = ""

    @property
    def ok(self) -> bool:
        return not self.interrupted and set(self.statuses) <= {"completed"}


def code_version() -> str:
    from ebt_scaling import __version__

    root = Path(__file__).resolve().parents[2]
    try:
        rev = subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, timeout=5)
        if rev.returncode == 0 and rev.stdout.strip():
            return f"{__version__}+g{rev.stdout.strip()}"
    except (OSError, subprocess.SubprocessError):
        pass
    return __version__


def default_storage(db_url: str) -> str:
    """Where Ray keeps trial checkpoints: ``$EBT_SCALE_STORAGE``, else next to a SQLite file
    (``<db>.runs/``), else ``~/.cache/ebt-scaling/runs``."""
    env = os.environ.get("EBT_SCALE_STORAGE")
    if env:
        return env
    m = re.match(r"^sqlite(?:\+\w+)?:///(.+)$", db_url)
    if m and m.group(1) != ":memory:":
        p = Path(m.group(1).split("?")[0]).expanduser().resolve()
        return str(p.parent / f"{p.stem}.runs")
    return str(Path("~/.cache/ebt-scaling/runs").expanduser())


class StoreSink:
    """Driver-side sink writing to the results database (one writer: the driver)."""

    def __init__(self, store: Any, sweep: str | None = None) -> None:
        self.store = store
        self.sweep = sweep

    def cancel_requested(self) -> bool:
        """Whether `ebt-scale cancel` asked this sweep's driver to stop."""
        return self.sweep is not None and bool(self.store.cancel_requested(self.sweep))

    def started(self, run_id: int, host: str | None, device: str | None) -> None:
        self.store.mark_running(run_id, host, device)

    def metrics(self, batch: dict[int, list[MetricPoint]]) -> None:
        self.store.log_metrics_many(batch)

    def checkpoint(self, run_id: int, path: str, step: int) -> None:
        self.store.set_checkpoint(run_id, path)

    def retrying(self, run_id: int, reason: str, resume_step: int | None) -> None:
        self.store.truncate_metrics(run_id, resume_step if resume_step is not None else -1)

    def finished(self, run_id: int, status: str, reason: str | None, result: dict[str, Any]) -> None:
        # The worker's checkpoint folder is a temporary copy; the durable one (Ray storage) is recorded by
        # ``checkpoint`` and must not be overwritten.
        result = {k: v for k, v in result.items() if k != "checkpoint_dir"}
        if status == "completed":
            missing = self._missing_steps(run_id)
            if missing:
                status, reason = "failed", (f"metric series incomplete: {len(missing)} train_loss point(s) missing "
                                            f"(first at step {missing[0]}); rerun with --retry-failed")
        self.store.finish_run(run_id, status, reason=reason, result=result)

    def _missing_steps(self, run_id: int) -> list[int]:
        """Logging steps of the run's train_loss series that are not stored: a run is only recorded completed
        with its whole series (the loop logs every ``log_interval`` steps and the last)."""
        train = self.store.get_run(run_id).config.get("train", {})
        steps, every = int(train.get("steps", 0)), int(train.get("log_interval", 0) or 0)
        if steps <= 0 or every <= 0:
            return []
        want = set(range(every, steps + 1, every)) | {steps}
        have = {p.step for p in self.store.get_metrics(run_id, "train_loss")}
        return sorted(want - have)

    def heartbeat(self, run_ids: list[int]) -> None:
        for rid in run_ids:
            self.store.heartbeat(rid)


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", name).strip("-")[:40] or "sweep"


def _checkpoint_usable(path: str | None) -> tuple[str | None, int | None]:
    """(path, step) of a recorded checkpoint that still exists, else (None, None)."""
    if not path:
        return None, None
    if "://" in path:  # remote storage: trust the database, the worker will read it
        return path, None
    info = checkpoint_info(path)
    if info is None:
        return None, None
    return path, int(info["step"])


DB_RETRY_ENV = "EBT_SCALE_DB_RETRY_S"
DB_RETRY_DEFAULT_S = 300.0


def db_retry_s() -> float:
    """How long a sweep driver retries a lost database connection: ``$EBT_SCALE_DB_RETRY_S`` or 300 s."""
    raw = os.environ.get(DB_RETRY_ENV)
    if raw is None:
        return DB_RETRY_DEFAULT_S
    try:
        v = float(raw)
    except ValueError:
        v = -1.0
    if not 0 <= v <= 86400:
        from ebt_scaling.errors import ConfigError

        raise ConfigError(f"{DB_RETRY_ENV}={raw!r}: must be a number of seconds between 0 and 86400; unset it for "
                          f"the default {DB_RETRY_DEFAULT_S:g}")
    return v


def run_sweep(spec: SweepSpec, store: Any, ray_opts: RayOptions, *, retry_failed: bool = False,
              echo: Any = None, runs: list[ExpandedRun] | None = None) -> SweepOutcome:
    """Plan ``spec`` in ``store`` and run what is not done yet. ``echo(str)`` prints status lines.
    ``runs``: the planned runs (default: ``expand(spec)``), e.g. runs of several specs under one sweep."""
    say = echo or (lambda s: None)
    runs = expand(spec) if runs is None else runs
    store.reconnect_s = db_retry_s()  # ride out a database restart (connections retried with backoff)
    with store.lease(spec.name):  # one driver per sweep, before any run is touched
        runs = keep_stored_hash_versions(runs, store.stored_hashes)
        prefetch_ray()
        return _run_sweep(spec, store, ray_opts, runs, retry_failed, say)


def _run_sweep(spec: SweepSpec, store: Any, ray_opts: RayOptions, runs: list[ExpandedRun], retry_failed: bool,
               say: Any) -> SweepOutcome:
    # Get or create: a rerun (or more families/seeds) reuses the sweep; a name taken by another axis is an
    # error naming the fix (the store raises it).
    store.create_sweep(spec.name, spec.axis, spec.to_dict(), code_version())
    store.clear_cancel(spec.name)  # a cancellation was meant for the driver before this one
    store.reset_interrupted(spec.name)
    records = store.plan_runs(spec.name, [r.planned for r in runs])
    by_hash = {r.config_hash: r for r in runs}
    tasks: list[dict[str, Any]] = []
    skipped_completed = skipped_failed = resumed = 0
    for rec in records:
        run = by_hash.get(rec.config_hash)
        if run is None:
            continue
        if rec.status == "completed":
            skipped_completed += 1
            continue
        if rec.status in SKIP_BY_DEFAULT and not retry_failed:
            skipped_failed += 1
            continue
        if rec.status == "running" and not _stale(rec):
            say(f"run {rec.id} is running under another driver (heartbeat {rec.heartbeat_at}); not started here")
            continue
        ckpt, step = _checkpoint_usable(rec.checkpoint_dir)
        if ckpt is not None and step is not None:
            store.truncate_metrics(rec.id, step)
            resumed += 1
        elif ckpt is None:
            store.truncate_metrics(rec.id, -1)  # restart from scratch: drop a partial series
        train = dataclasses.replace(
            run.spec.train,
            device="cuda" if ray_opts.gpus_per_trial > 0 else "cpu",
            threads=max(1, int(ray_opts.cpus_per_trial)),
        )
        rspec = run.spec.with_(train=train)
        tasks.append({
            "run_id": rec.id, "config_hash": rec.config_hash, "spec": rspec.to_dict(),
            "resume_from": ckpt, "resume_step": step, "family": rec.family, "label": run.label,
            "weight": (run.planned.flops_per_token.get("exact") or 1.0) * (run.planned.tokens or 1),
        })
    say(f"sweep {spec.name}: {len(records)} run(s) planned, {skipped_completed} already completed, "
        f"{skipped_failed} failed/diverged skipped{' (use --retry-failed)' if skipped_failed else ''}, "
        f"{len(tasks)} to run ({resumed} resuming from a checkpoint)")
    outcome = SweepOutcome(sweep=spec.name, planned=len(records), skipped_completed=skipped_completed,
                           skipped_failed=skipped_failed, launched=len(tasks), resumed=resumed,
                           storage_path=ray_opts.storage_path)
    if tasks:
        if "://" not in ray_opts.storage_path:  # a local folder: checkpoints are results, readable by us only
            Path(ray_opts.storage_path).expanduser().mkdir(mode=0o700, parents=True, exist_ok=True)
        opts = dataclasses.replace(ray_opts, experiment_name=f"{_slug(spec.name)}-"
                                   f"{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}")
        outcome.runner = run_trials(tasks, StoreSink(store, spec.name), opts, progress_name=spec.name)
        outcome.interrupted = outcome.runner.interrupted
    for rec in records:
        st = store.get_run(rec.id).status
        outcome.statuses[st] = outcome.statuses.get(st, 0) + 1
    n = import_shared_points(store, spec.name, runs, [store.get_run(r.id) for r in records])
    if n:
        say(f"sweep {spec.name}: {n} completed run(s) of other sweeps with the same configuration stored as "
            f"points of this sweep (not trained again)")
    if spec.axis == "data" and spec.mode == "evaluations":
        n = import_evaluation_points(store, spec.name, [store.get_run(r.id) for r in records])
        if n:
            say(f"sweep {spec.name}: {n} intermediate evaluation(s) stored as data-axis points")
    return outcome


@dataclass(frozen=True)
class EvalPoint:
    """A data-axis point read off a long run's validation series (the fields of ``Store.import_rows``)."""

    line: int
    family: str
    axis: str
    x: float
    seed: int
    val_loss: float
    train_loss: float | None = None
    val_ppl: float | None = None
    tokens: int | None = None
    extra: tuple[tuple[str, float], ...] = ()


def import_shared_points(store: Any, sweep: str, runs: list[ExpandedRun], records: list[Any]) -> int:
    """Runs are identified by their configuration across sweeps: a run another sweep already trained (e.g.
    the ``params`` runs for the ``flops`` axis, or Transformer++ runs shared by an S1 and an S2 sweep) is not
    trained again, and its row stays with that sweep. So that this sweep holds every point of its axis, each
    such completed run is stored here as a point with this sweep's axis and x and the run's final losses
    (``source_run`` names the trained run). Idempotent. Returns the number of points."""
    by_hash = {r.config_hash: r for r in runs}
    points: list[EvalPoint] = []
    for rec in records:
        run = by_hash.get(rec.config_hash)
        if run is None or rec.sweep == sweep or rec.status != "completed" or rec.final_val_loss is None:
            continue
        points.append(EvalPoint(line=rec.id, family=rec.family, axis=run.planned.axis, x=float(run.planned.x),
                                seed=rec.seed, val_loss=float(rec.final_val_loss), train_loss=rec.final_train_loss,
                                val_ppl=rec.final_val_ppl, tokens=rec.tokens,
                                extra=(("source_run", float(rec.id)),)))
    if points:
        store.import_rows(sweep, points, source_name=f"runs shared with other sweeps, planned by {sweep}")
    return len(points)


def import_evaluation_points(store: Any, sweep: str, runs: list[Any]) -> int:
    """Data axis, ``mode = "evaluations"``: store the validation loss of each completed long run at every
    smaller budget in its ``eval_tokens`` as a completed, fit-eligible point of ``sweep`` (x = tokens; the
    run itself is the largest budget). Idempotent. Returns the number of points."""
    import math

    points: list[EvalPoint] = []
    for run in runs:
        budgets = (run.config or {}).get("eval_tokens")
        if run.status != "completed" or not budgets:
            continue
        tr, model = run.config["train"], run.config["model"]
        per_step = int(tr["batch_size"]) * int(model["sequence_len"])
        val = {p.step: p.value for p in store.get_metrics(run.id, "val_loss")}
        for tokens in budgets[:-1]:
            v = val.get(int(tokens) // per_step)
            if v is None or not math.isfinite(v):
                continue
            points.append(EvalPoint(line=run.id, family=run.family, axis="data", x=float(tokens), seed=run.seed,
                                    val_loss=float(v), tokens=int(tokens),
                                    extra=(("evaluated_from_run", float(run.id)),)))
    if points:
        store.import_rows(sweep, points, source_name=f"evaluations of the long runs of {sweep}")
    return len(points)


def _stale(rec: Any, after_s: float = 120.0) -> bool:
    """A ``running`` record whose driver stopped sending heartbeats (reset_interrupted only resets the
    runs of this sweep; a run shared with another sweep may also be left running)."""
    hb = getattr(rec, "heartbeat_at", None)
    if hb is None:
        return True
    from datetime import datetime, timezone

    now = datetime.now(timezone.utc).replace(tzinfo=None)
    if hb.tzinfo is not None:
        hb = hb.astimezone(timezone.utc).replace(tzinfo=None)
    return (now - hb).total_seconds() > after_s
