"""Data-parallel trials on Ray Train V2 (issue 18 item 2): a Tune trial whose run trains on N workers.

Ray 2.60 runs Ray Train V2 (``RAY_TRAIN_V2_ENABLED`` defaults on). A V2 ``TorchTrainer`` is started from inside
the Tune function trainable (the pattern Ray documents for Tune + Train V2): the trial is the run's Train
driver and holds no CPU of its own; the trainer's controller (an actor with 0 CPU) creates one placement group
of N bundles, ``{CPU: cpus_per_trial, GPU: 1 or 0}`` each, for the run's workers (placement groups do not nest,
so the workers' resources are reserved by that group, not by the trial's own request). Ray Train initialises
torch.distributed in every worker: gloo on CPU, NCCL on GPUs (one GPU per worker, ``CUDA_VISIBLE_DEVICES`` set by
Ray). Each worker calls ``train(spec, sink, process_group=WORLD)``.

Reports. ``ray.train.report`` is a barrier: every worker must call it the same number of times. ``train()``
calls its sink at the same points on every rank, and ``LockstepSink`` decides when to report on rank 0 (every
``report_every_s`` seconds, as ``RaySink``) and broadcasts the decision, so the workers stay in step. Rank 0's
metrics reach the trial through ``_Relay`` (a Train callback in the controller) and a Ray queue; the trial
passes them to ``tune.report`` in order, so the driver's ``SweepCallback`` sees the same ``ebt_*`` results as
for a one-device trial. A checkpoint is reported by rank 0 only; Ray Train persists it in the sweep's storage
(``<storage>/<experiment>-r<run id>/step_*``) and the relay adds its path as ``ebt_ckpt_path``, which the
callback records (not a Tune checkpoint).

Failures. The trainer's own ``FailureConfig`` is 0: a worker that dies (kill -9) fails the Train run, the trial
raises, and Tune's ``FailureConfig`` retries the trial as for any run (the database records the retry). An error
that would repeat (``worker_failure``: a worker raised what ``trial_common.permanent_error`` calls permanent, such
as bad data or a bad config) is reported as the run's final result (``failed``, ``permanent``) and the trial
returns, as a one-device trial does, so the run fails once with one line, not ``max_retries`` + 1 times. The
retried trial starts a trainer with the same name and storage, so Ray Train hands every worker the latest
checkpoint of the run (``ray.train.get_checkpoint()``); without one, the task's ``resume_from`` (an earlier
invocation's checkpoint from the database) is used, else the run starts fresh.
"""

from __future__ import annotations

import dataclasses
import os
import queue
import shutil
import socket
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from ebt_scaling.config import RunSpec
from ebt_scaling.errors import TrainingDiverged
from ebt_scaling.records import MetricPoint
from ebt_scaling.sched.trial_common import (
    DEFAULT_TRAIN_FN,
    MARKER,
    device_name,
    load_fn,
    permanent_error,
    resume_path,
)


class LockstepSink:
    """MetricSink of every Ray Train worker: reports at the same calls on every rank (rank 0 decides when)."""

    def __init__(self, rank: int, report_every_s: float = 2.0) -> None:
        import ray.train

        self._train = ray.train
        self.rank = rank
        self.report_every_s = report_every_s
        self.buf: list[MetricPoint] = []
        self.last = time.monotonic()
        self.step = 0

    def _due(self) -> bool:
        import torch
        import torch.distributed as dist

        due = time.monotonic() - self.last >= self.report_every_s
        if not dist.is_initialized():
            return due
        dev = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" \
            else torch.device("cpu")
        t = torch.tensor([1 if due else 0], device=dev)
        dist.broadcast(t, src=0)
        return bool(t.item())

    def log(self, points: list[MetricPoint]) -> None:
        self.buf.extend(points)
        for p in points:
            self.step = max(self.step, int(p.step))
        if self._due():
            self.flush()

    def checkpoint(self, path: str, step: int) -> None:
        self.step = max(self.step, int(step))
        if self.rank == 0 and path:
            p = Path(path)
            (p / MARKER).write_text(f'{{"step": {int(step)}, "entry": null}}', encoding="utf-8")
            self.flush(checkpoint=self._train.Checkpoint.from_directory(str(p)), name=p.name,
                       ebt_ckpt_step=int(step))
        else:
            self.flush(ebt_ckpt_step=int(step))

    def flush(self, checkpoint: Any = None, name: str | None = None, **extra: Any) -> None:
        metrics: dict[str, Any] = {"ebt_step": self.step}
        if self.buf and self.rank == 0:
            metrics["ebt_points"] = [(p.name, int(p.step), float(p.value)) for p in self.buf]
        metrics.update(extra)
        self.buf = []
        self.last = time.monotonic()
        if checkpoint is not None:
            self._train.report(metrics, checkpoint=checkpoint, checkpoint_dir_name=name)
        else:
            self._train.report(metrics)


def _worker(config: dict[str, Any]) -> None:
    """One Ray Train worker: ``train()`` on its rank of the process group Ray Train set up."""
    import ray.train
    import torch
    import torch.distributed as dist

    task = config["task"]
    rank = ray.train.get_context().get_world_rank()
    spec = RunSpec.from_dict(task["spec"])
    if spec.train.device.startswith("cuda"):
        import ray.train.torch

        torch.cuda.set_device(ray.train.torch.get_device())
    work = tempfile.mkdtemp(prefix="ebt-run-")
    spec = spec.with_(checkpoint_dir=work)
    sink = LockstepSink(rank, float(task.get("report_every_s", 2.0)))
    sink.flush(ebt_hello={"host": socket.gethostname(), "device": device_name(spec), "pid": os.getpid(),
                          "workers": dist.get_world_size(), "backend": dist.get_backend()})
    train_fn = load_fn(task.get("train_fn") or DEFAULT_TRAIN_FN)
    ckpt = ray.train.get_checkpoint()
    try:
        if ckpt is not None:  # a retry of this trial: the run's latest checkpoint, from Ray Train's storage
            with ckpt.as_directory() as d:
                result = train_fn(spec, sink, resume_from=resume_path(d), process_group=dist.group.WORLD)
        elif task.get("resume_from"):  # an earlier invocation's checkpoint, recorded in the database
            result = train_fn(spec, sink, resume_from=resume_path(task["resume_from"]),
                              process_group=dist.group.WORLD)
        else:
            result = train_fn(spec, sink, process_group=dist.group.WORLD)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    res = dataclasses.asdict(result)
    if result.status == "diverged":
        sink.flush(ebt_diverged=str(result.reason or "diverged"), ebt_result=res)
    else:
        sink.flush(ebt_final=res)


def _relay_class() -> type:
    from ray.train.v2.api.callback import UserCallback

    class _Relay(UserCallback):
        """Runs in the Train controller: rank 0's metrics of every report (+ the persisted checkpoint's path)
        into the trial's queue."""

        def __init__(self, q: Any) -> None:
            self.q = q

        def after_report(self, run_context: Any, metrics: list[dict[str, Any]], checkpoint: Any) -> None:
            m = dict(metrics[0])
            if checkpoint is not None:
                m["ebt_ckpt_path"] = checkpoint.path
            self.q.put(m)

    return _Relay


def trainer_for(task: dict[str, Any], q: Any) -> Any:
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    workers = int(task["workers"])
    gpus = float(task.get("gpus_per_worker") or 0.0)
    per_worker: dict[str, float] = {"CPU": float(task.get("cpus_per_worker") or 1.0)}
    if gpus:
        per_worker["GPU"] = gpus
    return TorchTrainer(
        _worker,
        train_loop_config={"task": task},
        scaling_config=ScalingConfig(num_workers=workers, use_gpu=gpus > 0, resources_per_worker=per_worker),
        run_config=RunConfig(
            name=f"{task.get('experiment') or 'sweep'}-r{task['run_id']}",
            storage_path=task["storage"],
            failure_config=FailureConfig(max_failures=0),  # Tune retries the trial (the database sees it)
            checkpoint_config=CheckpointConfig(num_to_keep=2),
            callbacks=[_relay_class()(q)],
        ),
    )


def worker_failure(exc: BaseException, spec: RunSpec | None = None) -> tuple[str, bool]:
    """The one-line reason of a failed Ray Train run and whether it would repeat on a retry. A worker's own
    exception (``WorkerGroupError.worker_failures``, by rank) is classified as a one-device trial's
    (``trial_common.permanent_error``): a permanent one on any rank is the reason; else the lowest rank's. Without
    worker failures (a controller error, a lost node) the error's last line, never permanent."""
    failures = [e for _rank, e in sorted((getattr(exc, "worker_failures", None) or {}).items())]
    for e in failures:
        if permanent_error(e, spec):
            return f"{type(e).__name__}: {e}"[:2000], True
    if failures:
        e = failures[0]
        return f"{type(e).__name__}: {e}"[:2000], False
    text = (str(exc).strip().splitlines() or [type(exc).__name__])[-1]
    return f"{type(exc).__name__}: {text}"[:2000], False


def ddp_trial(task: dict[str, Any]) -> None:
    """The Tune trial of a run with ``task["workers"]`` > 1: a TorchTrainer, its reports relayed to Tune."""
    from ray import tune
    from ray.util.queue import Empty, Queue

    q = Queue(actor_options={"num_cpus": 0})
    trainer = trainer_for(task, q)
    box: dict[str, Any] = {}

    def fit() -> None:
        try:
            box["result"] = trainer.fit()
        except BaseException as exc:  # noqa: BLE001 - handed to the trial's thread
            box["error"] = exc

    th = threading.Thread(target=fit, name=f"ebt-train-r{task['run_id']}", daemon=True)
    th.start()
    diverged: str | None = None
    result: dict[str, Any] | None = None
    while True:
        alive = th.is_alive()
        try:
            item = q.get(timeout=0.5)
        except (Empty, queue.Empty):
            if not alive:
                break
            continue
        diverged = item.get("ebt_diverged") or diverged
        result = item.get("ebt_result") or result
        tune.report(item)
    if "error" in box:
        msg, permanent = worker_failure(box["error"], RunSpec.from_dict(task["spec"]))
        if permanent:  # it would repeat (bad data, bad config, OOM at micro-batch 1): fail once, no retry
            tune.report({"ebt_error": msg, "ebt_permanent": True})
            tune.report({"ebt_final": {"status": "failed", "reason": msg, "permanent": True}})
            return
        tune.report({"ebt_error": msg})
        raise RuntimeError(f"run {task['run_id']}: Ray Train failed: {msg}"[:2000]) from None
    if diverged:
        raise TrainingDiverged(f"run {task['run_id']} diverged: {diverged}")
