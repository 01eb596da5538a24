"""The Ray Tune trainable: runs ``train(spec, sink)`` inside a Ray worker.

Workers never touch the database. Everything goes back to the driver through ``tune.report``:
metric points batched every ``report_every_s`` seconds, checkpoints (copied by Ray into the
experiment's storage, so a retried trial - also on another node - resumes from it), and one final
report with the run's result. A run that raises or diverges reports its reason, then raises so that
Tune's ``FailureConfig`` retries it from its latest checkpoint; an error that would repeat
(``trial_common.permanent_error``: bad data, bad config, out of memory at micro-batch 1) is reported as the
run's final result (``failed``, ``permanent``) and the trial returns, so Tune does not retry it.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import socket
import tempfile
import time
from pathlib import Path
from typing import Any

from ebt_scaling.config import RunSpec
from ebt_scaling.errors import TrainingDiverged
from ebt_scaling.records import MetricPoint
from ebt_scaling.sched.ddp import ddp_trial
from ebt_scaling.sched.trial_common import (  # noqa: F401  (checkpoint_info, resume_path: imported from here too)
    DEFAULT_TRAIN_FN,
    MARKER,
    checkpoint_info,
    device_name,
    load_fn,
    permanent_error,
    resume_path,
)


class RaySink:
    """MetricSink that batches points into ``tune.report`` calls."""

    def __init__(self, report_every_s: float = 2.0) -> None:
        from ray import tune

        self._tune = tune
        self.report_every_s = report_every_s
        self.buf: list[MetricPoint] = []
        self.last = time.monotonic()
        self.step = 0
        self._staging: list[str] = []

    def log(self, points: list[MetricPoint]) -> None:
        self.buf.extend(points)
        for p in points:
            self.step = max(self.step, int(p.step))
        if time.monotonic() - self.last >= self.report_every_s:
            self.flush()

    def checkpoint(self, path: str, step: int) -> None:
        p = Path(path)
        if p.is_dir():
            ckdir, entry = p, None
        else:  # a single checkpoint file: stage it in a directory of its own for Ray
            ckdir = Path(tempfile.mkdtemp(prefix="ebt-ckstage-"))
            self._staging.append(str(ckdir))
            shutil.copy2(p, ckdir / p.name)
            entry = p.name
        (ckdir / MARKER).write_text(json.dumps({"step": int(step), "entry": entry}), encoding="utf-8")
        self.step = max(self.step, int(step))
        self.flush(checkpoint=self._tune.Checkpoint.from_directory(str(ckdir)), ebt_ckpt_step=int(step))

    def flush(self, checkpoint: Any = None, **extra: Any) -> None:
        metrics: dict[str, Any] = {"ebt_step": self.step}
        if self.buf:
            metrics["ebt_points"] = [(p.name, int(p.step), float(p.value)) for p in self.buf]
        metrics.update(extra)
        self.buf = []
        self.last = time.monotonic()
        self._tune.report(metrics, checkpoint=checkpoint)

    def close(self) -> None:
        for d in self._staging:
            shutil.rmtree(d, ignore_errors=True)


def ebt_trial(config: dict[str, Any]) -> None:
    """Tune function trainable. ``config["run"]`` is a task dict built by the runner; a task with ``workers`` > 1
    runs its training on Ray Train (``sched/ddp.py``)."""
    from ray import tune

    task = config["run"]
    if int(task.get("workers") or 1) > 1:
        ddp_trial(task)
        return
    spec = RunSpec.from_dict(task["spec"])
    sink = RaySink(float(task.get("report_every_s", 2.0)))
    work = tempfile.mkdtemp(prefix="ebt-run-")
    spec = spec.with_(checkpoint_dir=work)
    sink.flush(ebt_hello={"host": socket.gethostname(), "device": device_name(spec), "pid": os.getpid()})
    train_fn = load_fn(task.get("train_fn") or DEFAULT_TRAIN_FN)
    ckpt = tune.get_checkpoint()
    try:
        if ckpt is not None:  # a retry inside this sweep invocation: Ray's latest checkpoint
            with ckpt.as_directory() as d:
                result = train_fn(spec, sink, resume_from=resume_path(d))
        elif task.get("resume_from"):  # an earlier invocation's checkpoint, recorded in the database
            result = train_fn(spec, sink, resume_from=resume_path(task["resume_from"]))
        else:
            result = train_fn(spec, sink)
    except Exception as exc:
        msg = f"{type(exc).__name__}: {exc}"[:2000]
        if permanent_error(exc, spec):  # it would repeat: the run fails once, the trial ends without a retry
            sink.flush(ebt_error=msg, ebt_permanent=True)
            sink.flush(ebt_final={"status": "failed", "reason": msg, "permanent": True})
            return
        sink.flush(ebt_error=msg)
        raise
    finally:
        shutil.rmtree(work, ignore_errors=True)
        sink.close()
    res = dataclasses.asdict(result)
    if result.status == "diverged":
        sink.flush(ebt_diverged=str(result.reason or "diverged"), ebt_result=res)
        raise TrainingDiverged(f"run {task['run_id']} diverged: {result.reason}")
    sink.flush(ebt_final=res)
