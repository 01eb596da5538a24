"""The sweep service: spec -> planned runs in the database -> the runs not yet done on Ray Tune.

Exactly once, driven by the database (not by ``Tuner.restore``): a run's identity is its config hash;
planning inserts idempotently; every invocation resets runs a killed driver left ``running``, skips
``completed`` ones (and ``failed``/``diverged`` ones unless asked to retry them) and runs the rest in a
fresh Tuner. A run with a recorded checkpoint resumes from it, after its metric series is truncated to the
checkpoint's step, so every run ends with one contiguous series without duplicated steps.

Runs are identified by their configuration across sweeps: planning links every run to the sweep (a run
another sweep already trained is the same row, a point of both), and a driver claims each run it trains
(``db/claims.py``), so two sweeps sharing configurations never train a run twice at once: the second
driver waits for the first's runs and trains only those the first left unfinished.

The store is passed in (``ebt_scaling.db.Store``, named for type checking only: this module does not import
the database package at run time).
"""

from __future__ import annotations

import dataclasses
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ebt_scaling.db.imports import ImportRow
from ebt_scaling.provenance import code_version
from ebt_scaling.records import MetricPoint
from ebt_scaling.sched.runner import RayOptions, RunnerOutcome, prefetch_ray, run_trials
from ebt_scaling.sched.trainable import checkpoint_info
from ebt_scaling.sweeps import ExpandedRun, SweepSpec, expand
from ebt_scaling.sweeps.expand import keep_stored_hash_versions, store_changes

if TYPE_CHECKING:
    from ebt_scaling.db.claims import RunClaims
    from ebt_scaling.db.store import Store
    from ebt_scaling.records import RunRecord

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
    """Driver-side sink writing to the results database (one writer: the driver). A run's claim (``claims``)
    is freed as soon as the run is finished, so a driver of another sweep waiting for it goes on at once."""

    def __init__(self, store: Store, sweep: str | None = None, claims: RunClaims | None = None) -> None:
        self.store = store
        self.sweep = sweep
        self.claims = claims

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
        if self.claims is not None:
            self.claims.release(run_id)

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
        self.store.heartbeat_many(run_ids)


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


def run_sweep(spec: SweepSpec, store: Store, ray_opts: RayOptions, *, retry_failed: bool = False,
              echo: Callable[[str], None] | None = None, runs: list[ExpandedRun] | None = None) -> SweepOutcome:
    """Plan ``spec`` in ``store`` and run what is not done yet. ``echo(str)`` prints status lines.
    ``runs``: the planned runs (default: ``expand(spec)``), e.g. runs of several specs under one sweep."""
    say = echo or (lambda s: None)
    runs = expand(spec) if runs is None else runs
    store.reconnect_s = db_retry_s()  # ride out a database restart (connections retried with backoff)
    # One driver per sweep, before any run is touched; one trainer per run across sweeps (the claims).
    with store.lease(spec.name), store.run_claims() as claims:
        runs = keep_stored_hash_versions(runs, store.stored_hashes)
        for line in store_changes(spec.name, runs, lambda: [r.config for r in store.list_runs(sweep=spec.name)]):
            say(line)  # a store re-prepared under the same path: new runs, never the old ones reused
        prefetch_ray()
        return _run_sweep(spec, store, ray_opts, runs, retry_failed, say, claims)


#: Seconds between two looks at the runs another driver trains (tests lower it).
WAIT_POLL_S = 2.0


@dataclass
class _Selection:
    tasks: list[dict[str, Any]] = field(default_factory=list)
    waiting: dict[int, dict] = field(default_factory=dict)  # run id -> the live driver that trains it
    completed: int = 0
    failed: int = 0
    resumed: int = 0


def _select(store: Store, claims: RunClaims, spec: SweepSpec, ray_opts: RayOptions, records: list[RunRecord],
            by_hash: dict[str, ExpandedRun], retry_failed: bool) -> _Selection:
    """Claim the runs to train: a run another live driver trains (for this sweep or any other that links
    it) is not started here but waited for; a run left ``running`` by a dead driver is claimed and resumed."""
    sel = _Selection()
    mine: list[RunRecord] = []
    for rec in records:
        if rec.config_hash not in by_hash or rec.status == "completed":
            sel.completed += rec.config_hash in by_hash
            continue
        if rec.status in SKIP_BY_DEFAULT and not retry_failed:
            sel.failed += 1
            continue
        holder = claims.take(rec.id)
        if holder is not None:
            sel.waiting[rec.id] = holder
            continue
        fresh = store.get_run(rec.id)  # the other driver may have finished it since planning
        if fresh.status == "completed" or (fresh.status in SKIP_BY_DEFAULT and not retry_failed):
            claims.release(rec.id)
            sel.completed += fresh.status == "completed"
            sel.failed += fresh.status != "completed"
            continue
        mine.append(fresh)
    # Runs left running by a dead driver: this driver holds their claims, so nobody else trains them.
    store.reset_interrupted(spec.name, [r.id for r in mine if r.status == "running"])
    for rec in mine:
        run = by_hash[rec.config_hash]
        ckpt, step = _checkpoint_usable(rec.checkpoint_dir)
        if ckpt is not None and step is not None:
            store.truncate_metrics(rec.id, step)
            sel.resumed += 1
        elif ckpt is None:
            store.truncate_metrics(rec.id, -1)  # restart from scratch: drop a partial series
        train = dataclasses.replace(
            run.spec.train,
            device="cuda" if ray_opts.gpus_per_trial > 0 else "cpu",
            threads=max(1, int(ray_opts.cpus_per_trial)),
        )
        rspec = run.spec.with_(train=train)
        sel.tasks.append({
            "run_id": rec.id, "config_hash": rec.config_hash, "spec": rspec.to_dict(),
            "resume_from": ckpt, "resume_step": step, "family": rec.family, "label": run.label,
            "weight": (run.planned.flops_per_token.get("exact") or 1.0) * (run.planned.tokens or 1),
        })
    # the largest runs first (stable, so equal runs keep plan order): the longest-processing-time-first schedule
    # the dry run's makespan assumes; in plan order the heaviest EBT started last and ran alone at the end
    sel.tasks.sort(key=lambda t: -t["weight"])
    return sel


def _leave_out_forgotten(store: Store, sweep: str, runs: list[ExpandedRun], retry_failed: bool,
                         say: Callable[[str], None]) -> list[ExpandedRun]:
    """The runs to plan: without those the sweep forgot (``ebt-scale runs --forget``), unless ``retry_failed``,
    which links and trains them again (the sweep's record moves them to ``restored``). Said in one line."""
    forgotten = store.forgotten_runs(sweep)
    back = [r for r in runs if r.config_hash in forgotten]
    if not back:
        return runs
    if retry_failed:
        store.restore_forgotten(sweep, [r.config_hash for r in back])
        say(f"sweep {sweep}: {len(back)} forgotten run(s) linked again and retried (--retry-failed)")
        return runs
    say(f"sweep {sweep}: {len(back)} forgotten run(s) left out (`ebt-scale runs --sweep {sweep} --forgotten` lists "
        "them; --retry-failed trains them again)")
    return [r for r in runs if r.config_hash not in forgotten]


def _run_sweep(spec: SweepSpec, store: Store, ray_opts: RayOptions, runs: list[ExpandedRun], retry_failed: bool,
               say: Callable[[str], None], claims: RunClaims) -> SweepOutcome:
    # Get or create: a rerun (or more families/seeds) reuses the sweep; a name taken by another axis is an
    # error naming the fix (the store raises it).
    store.create_sweep(spec.name, spec.axis, spec.to_dict(), code_version())
    store.clear_cancel(spec.name)  # a cancellation was meant for the driver before this one
    runs = _leave_out_forgotten(store, spec.name, runs, retry_failed, say)
    # Links every run to this sweep: a run another sweep planned or trained is the same row, not a copy.
    records = store.plan_runs(spec.name, [r.planned for r in runs])
    by_hash = {r.config_hash: r for r in runs}
    sel = _select(store, claims, spec, ray_opts, records, by_hash, retry_failed)
    say(f"sweep {spec.name}: {len(records)} run(s) planned, {sel.completed} already completed, "
        f"{sel.failed} failed/diverged skipped{' (use --retry-failed)' if sel.failed else ''}, "
        f"{len(sel.tasks)} to run ({sel.resumed} resuming from a checkpoint)"
        + (f", {len(sel.waiting)} being trained by another driver" if sel.waiting else ""))
    outcome = SweepOutcome(sweep=spec.name, planned=len(records), skipped_completed=sel.completed,
                           skipped_failed=sel.failed, launched=len(sel.tasks), resumed=sel.resumed,
                           storage_path=ray_opts.storage_path)
    waiting = dict(sel.waiting)
    tasks = sel.tasks
    while True:
        if tasks:
            _train(spec, store, ray_opts, tasks, claims, outcome)
        if not waiting or outcome.interrupted:
            break
        tasks = _wait_for_others(spec, store, claims, ray_opts, records, by_hash, retry_failed, waiting, say,
                                 outcome)
        outcome.launched += len(tasks)
    for rec in records:
        st = store.get_run(rec.id).status
        outcome.statuses[st] = outcome.statuses.get(st, 0) + 1
    if spec.axis == "data" and spec.mode == "evaluations":
        n = import_evaluation_points(store, spec.name, [store.get_run(r.id) for r in records])
        if n:
            say(f"sweep {spec.name}: {n} intermediate evaluation(s) stored as data-axis points")
    return outcome


def _train(spec: SweepSpec, store: Store, ray_opts: RayOptions, tasks: list[dict[str, Any]], claims: RunClaims,
           outcome: SweepOutcome) -> None:
    if "://" not in ray_opts.storage_path:  # a local folder: checkpoints are results, readable by us only
        Path(ray_opts.storage_path).expanduser().mkdir(mode=0o700, parents=True, exist_ok=True)
    opts = dataclasses.replace(ray_opts, experiment_name=f"{_slug(spec.name)}-"
                               f"{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}")
    try:
        res = run_trials(tasks, StoreSink(store, spec.name, claims), opts, progress_name=spec.name)
    finally:
        for t in tasks:  # finished runs released theirs already; an interrupted one is free for the next driver
            claims.release(t["run_id"])
    if outcome.runner is None:
        outcome.runner = res
    else:
        outcome.runner.finished.update(res.finished)
        outcome.runner.cancelled += res.cancelled
        outcome.runner.wall_s += res.wall_s
        outcome.runner.cancel_requested |= res.cancel_requested
    outcome.interrupted = outcome.interrupted or res.interrupted


def _describe(holder: dict) -> str:
    if not holder:
        return "a driver that did not say who it is"
    return f"pid {holder.get('pid')} on {holder.get('host')} since {holder.get('since')}"


def _wait_for_others(spec: SweepSpec, store: Store, claims: RunClaims, ray_opts: RayOptions,
                     records: list[RunRecord], by_hash: dict[str, ExpandedRun], retry_failed: bool,
                     waiting: dict[int, dict], say: Callable[[str], None],
                     outcome: SweepOutcome) -> list[dict[str, Any]]:
    """Wait until a run another driver trains is free: done (counted), or left by a dead driver (claimed and
    returned as tasks to train here). ``waiting`` shrinks in place."""
    shown: set[int] = set()
    while waiting:
        if set(waiting) != shown:
            shown = set(waiting)
            who = "; ".join(f"run {rid} ({_describe(h)})" for rid, h in sorted(waiting.items())[:5])
            say(f"sweep {spec.name}: waiting for {len(waiting)} run(s) trained by another driver: {who}"
                + (" ..." if len(waiting) > 5 else ""))
        if store.cancel_requested(spec.name):
            say(f"sweep {spec.name}: cancelled while waiting; the other driver goes on training its runs")
            outcome.interrupted = True
            return []
        freed = [rid for rid in waiting if claims.holder(rid) is None]
        if not freed:
            time.sleep(WAIT_POLL_S)
            continue
        again = [r for r in records if r.id in freed]
        for rid in freed:
            del waiting[rid]
        sel = _select(store, claims, spec, ray_opts, again, by_hash, retry_failed)
        waiting.update(sel.waiting)  # freed and taken again by a third driver at once
        outcome.skipped_completed += sel.completed
        outcome.skipped_failed += sel.failed
        outcome.resumed += sel.resumed
        if sel.tasks:
            say(f"sweep {spec.name}: {len(sel.tasks)} run(s) left unfinished by another driver, trained here")
            return sel.tasks
    return []


def import_evaluation_points(store: Store, sweep: str, runs: list[RunRecord]) -> int:
    """Data axis, ``mode = "evaluations"``: store the validation loss of each completed long run at every
    smaller budget in its ``eval_tokens`` as a completed, fit-eligible point of ``sweep`` (x = tokens; the
    run itself is the largest budget). Idempotent. Returns the number of points."""
    import math

    points: list[ImportRow] = []
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
            points.append(ImportRow(line=run.id, family=run.family, axis="data", x=float(tokens), seed=run.seed,
                                   val_loss=float(v), tokens=int(tokens),
                                   extra=(("evaluated_from_run", float(run.id)),)))
    if points:
        store.import_rows(sweep, points, source_name=f"evaluations of the long runs of {sweep}")
    return len(points)
