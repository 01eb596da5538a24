"""Driver-side Tune callback: the only writer of run status and metric points.

Tune calls it inside its event loop, so it buffers metric points and hands them to the sink in batches
(every ``flush_s`` seconds, and before any status change). The sink is duck-typed (see
``ebt_scaling.sched.runner.DriverSink``); the sweep service backs it with the results database.
"""

from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from ray.tune import Callback

from ebt_scaling.records import MetricPoint
from ebt_scaling.sched.progress import SweepProgress


@dataclass
class _RunState:
    run_id: int
    total_steps: int
    weight: float
    step: int = 0
    ckpt_step: int | None = None  # last checkpoint of this invocation (or the resumed one)
    pending_ckpt_step: int | None = None
    reason: str | None = None
    diverged: bool = False
    result: dict[str, Any] = field(default_factory=dict)
    finished: bool = False
    started: bool = False
    attempts: int = 0


class SweepCallback(Callback):
    def __init__(self, sink: Any, tasks: list[dict[str, Any]], *, flush_s: float = 1.0,
                 progress: SweepProgress | None = None) -> None:
        self.sink = sink
        self.flush_s = flush_s
        self.progress = progress
        self.runs: dict[int, _RunState] = {}
        for t in tasks:
            self.runs[t["run_id"]] = _RunState(run_id=t["run_id"], total_steps=int(t["spec"]["train"]["steps"]),
                                               weight=float(t.get("weight") or 1.0),
                                               ckpt_step=t.get("resume_step"))
        self._buf: dict[int, list[MetricPoint]] = defaultdict(list)
        self._last_flush = time.monotonic()
        self.errors: list[str] = []

    def __getstate__(self) -> dict[str, Any]:
        # Tune pickles its RunConfig (callbacks included) into the experiment folder; the sink holds a
        # database engine and is never restored from there (the database drives resumption).
        d = self.__dict__.copy()
        d["sink"] = None
        d["progress"] = None
        return d

    # ---- helpers ----
    def _rs(self, trial: Any) -> _RunState:
        return self.runs[trial.config["run"]["run_id"]]

    def flush(self) -> None:
        self._last_flush = time.monotonic()
        batch = {k: list(v) for k, v in self._buf.items() if v}
        if batch:
            self.sink.metrics(batch)  # the points leave the buffer only once this write has committed
            for k, v in batch.items():
                del self._buf[k][:len(v)]
        running = [r.run_id for r in self.runs.values() if r.started and not r.finished]
        if running:
            self.sink.heartbeat(running)

    def _refresh(self) -> None:
        if self.progress is None:
            return
        s = self.progress.state
        tot = sum(r.weight for r in self.runs.values()) or 1.0
        frac = 0.0
        s.done = s.failed = s.running = 0
        for r in self.runs.values():
            if r.finished:
                frac += r.weight
                if r.result.get("status") == "completed":
                    s.done += 1
                else:
                    s.failed += 1
            elif r.started:
                s.running += 1
                frac += r.weight * min(1.0, r.step / max(1, r.total_steps))
        s.observe(frac / tot)
        self.progress.update()

    def _finish(self, rs: _RunState, status: str, reason: str | None, result: dict[str, Any]) -> None:
        if rs.finished:
            return
        self.flush()
        rs.finished = True
        rs.result = dict(result, status=status)
        self.sink.finished(rs.run_id, status, reason, result)
        if self.progress is not None and status != "completed":
            self.progress.message(f"run {rs.run_id} {status}: {reason}")
        self._refresh()

    # ---- Tune hooks ----
    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        rs = self._rs(trial)
        hello = result.get("ebt_hello")
        if hello and not rs.started:
            rs.started = True
            rs.attempts += 1
            self.sink.started(rs.run_id, hello.get("host"), hello.get("device"))
        elif hello:
            rs.started = True
        for name, step, value in result.get("ebt_points") or ():
            self._buf[rs.run_id].append(MetricPoint(name, int(step), float(value)))
        rs.step = max(rs.step, int(result.get("ebt_step") or 0))
        if "ebt_ckpt_step" in result:
            rs.pending_ckpt_step = int(result["ebt_ckpt_step"])
        if result.get("ebt_ckpt_path"):  # a data-parallel trial: Ray Train persisted rank 0's checkpoint
            rs.ckpt_step = int(result.get("ebt_ckpt_step") or rs.step)
            self.flush()  # points up to the checkpoint are stored before it is recorded
            self.sink.checkpoint(rs.run_id, str(result["ebt_ckpt_path"]), rs.ckpt_step)
        if result.get("ebt_error"):
            rs.reason = str(result["ebt_error"])
            rs.diverged = False
        if result.get("ebt_diverged"):
            rs.reason = f"diverged: {result['ebt_diverged']}"
            rs.diverged = True
            rs.result = dict(result.get("ebt_result") or {})
        final = result.get("ebt_final")
        if final is not None:
            status = final.get("status") or "completed"
            self._finish(rs, status, final.get("reason"), final)
        elif time.monotonic() - self._last_flush >= self.flush_s:
            self.flush()
        self._refresh()

    def on_checkpoint(self, iteration: int, trials: list, trial: Any, checkpoint: Any, **info: Any) -> None:
        rs = self._rs(trial)
        step = rs.pending_ckpt_step if rs.pending_ckpt_step is not None else rs.step
        rs.ckpt_step = step
        self.flush()  # points up to the checkpoint are stored before it is recorded
        self.sink.checkpoint(rs.run_id, checkpoint.path, step)

    def on_trial_recover(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        rs = self._rs(trial)
        self.flush()
        reason = rs.reason or _error_text(trial) or "worker failed"
        if self.progress is not None:
            self.progress.message(f"run {rs.run_id} failed ({reason}); retrying from "
                                  + (f"step {rs.ckpt_step}" if rs.ckpt_step is not None else "the start"))
        self.sink.retrying(rs.run_id, reason, rs.ckpt_step)
        rs.started = False
        rs.reason, rs.diverged = None, False
        rs.step = rs.ckpt_step or 0
        self._refresh()

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        rs = self._rs(trial)
        reason = rs.reason or _error_text(trial) or "worker failed"
        if "KeyboardInterrupt" in reason:  # Ctrl-C in a terminal reaches the workers too
            self._finish(rs, "cancelled", "sweep interrupted (Ctrl-C)", rs.result)
            return
        self._finish(rs, "diverged" if rs.diverged else "failed", reason, rs.result)

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        rs = self._rs(trial)
        if not rs.finished:
            self._finish(rs, "failed", "trial ended without a final result", {})

    def on_step_end(self, iteration: int, trials: list, **info: Any) -> None:
        if time.monotonic() - self._last_flush >= self.flush_s:
            self.flush()
            self._refresh()

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        self.flush()
        self._refresh()


def _error_text(trial: Any) -> str | None:
    """Last line of the trial's error file (Ray's formatted exception), if any."""
    path = getattr(trial, "error_file", None)
    try:
        if path:
            with open(path, encoding="utf-8", errors="replace") as f:
                lines = [ln.strip() for ln in f if ln.strip()]
            return lines[-1][:2000] if lines else None
    except OSError:
        return None
    return None
