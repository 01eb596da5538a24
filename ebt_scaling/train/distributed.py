"""Data-parallel training through ``torch.distributed`` (issue 18 item 2); never imports Ray.

``train(spec, sink, process_group=pg)`` runs one rank of N. What each rank does (``loop.py``):

* the same initial weights: every rank seeds the same way, then rank 0's parameters and buffers are broadcast;
* the same data order: every rank draws the whole global batch from the same generator (a pure function of seed
  and step) and keeps its slice, rows ``[r*B/N, (r+1)*B/N)``; a batch size not divisible by N is refused;
* the EBT's per-sample draws keyed by the GLOBAL sample index (``step_rows(row_offset=r*B/N)``), so N workers
  equal one worker up to rounding for the T++ and EBT S1 (S2's replay buffer is per worker, as in the paper);
* gradients: after the rank's forward + backward over its micro-batches, every gradient is scaled by the rank's
  share of the batch's tokens and summed over ranks with one ``all_reduce`` per bucket (``reduce_step``).
  Not DistributedDataParallel: the EBT's loss differentiates the energy inside the forward
  (``torch.autograd.grad(create_graph=True)``, or ``torch.func.grad`` when compiled), and DDP's reducer hooks
  fire on every gradient computed for a parameter, inner ones included, and ``find_unused_parameters`` / static
  graph assumptions do not hold for a double backward; a manual all-reduce after ``backward`` has none of that,
  overlaps nothing (the step is compute-bound at these sizes) and is what the loss-weighting needs anyway;
* metrics (loss, CE) reduced the same way, so every rank sees the same numbers and makes the same divergence,
  validation and checkpoint decisions; validation is sharded over the ranks and reduced;
* the sink: every rank calls its sink at the same points (a sink may synchronise, as Ray Train's report does);
  callers give rank 0 the real sink and the other ranks ``NullSink`` or a barrier-only sink. Only rank 0 writes
  checkpoint files; the other ranks call ``sink.checkpoint("", step)``. Resume: every rank loads the checkpoint.

``launch_local(spec, workers, ...)`` runs N processes on this machine: this process is rank 0 (it keeps the
caller's sink and progress callback), ranks 1..N-1 are spawned; gloo on CPU, NCCL on CUDA with one GPU each.
"""

from __future__ import annotations

import datetime
import os
import socket
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from ebt_scaling.config import RunSpec
from ebt_scaling.errors import ConfigError, TrainingDiverged
from ebt_scaling.records import MetricPoint, RunResult

TOKEN_MEANS = ("ce", "ce_initial")
ROW_MEANS = ("energy_initial", "energy_final", "energy_steps")
BUCKET_ELEMS = 1 << 25  # gradient elements per all_reduce (128 MiB in fp32)


class NullSink:
    """The sink of ranks > 0: takes part in nothing, keeps nothing."""

    def log(self, points: list[MetricPoint]) -> None:
        pass

    def checkpoint(self, path: str, step: int) -> None:
        pass


@dataclass(frozen=True)
class Rank:
    """Where this process stands in its process group."""

    group: Any
    rank: int
    world: int

    def shard(self, rows: int) -> slice:
        """This rank's rows of a batch of ``rows``: ``[r*rows//N, (r+1)*rows//N)`` (possibly empty)."""
        return slice(self.rank * rows // self.world, (self.rank + 1) * rows // self.world)

    def src0(self) -> int:
        return dist.get_global_rank(self.group, 0) if self.group is not dist.group.WORLD else 0


def rank_of(process_group: Any) -> Rank | None:
    """``Rank`` of this process in ``process_group`` (``None`` or a group of one: ``None``, plain training)."""
    if process_group is None:
        return None
    world = dist.get_world_size(process_group)
    return Rank(process_group, dist.get_rank(process_group), world)


def check_world(spec: RunSpec, r: Rank) -> None:
    """Refuse in one line what N workers cannot do."""
    b = spec.train.batch_size
    if b % r.world:
        raise ConfigError(f"TrainConfig.batch_size: {b} is not divisible by {r.world} workers; use a batch size "
                          f"that is a multiple of {r.world} (each worker takes an equal slice of every batch)")
    if spec.train.cuda_graph:
        raise ConfigError("TrainConfig.cuda_graph: not supported with data-parallel workers (the gradient "
                          "all-reduce runs between capture and step); drop --cuda-graph or use --workers 1")


@torch.no_grad()
def broadcast_module(module: torch.nn.Module, r: Rank) -> None:
    """Rank 0's parameters and buffers on every rank (they are equal already when seeded alike; this makes sure)."""
    for t in list(module.parameters()) + list(module.buffers()):
        dist.broadcast(t.data, src=r.src0(), group=r.group)


def _detach(v: Any) -> Any:
    return v.detach().double() if isinstance(v, torch.Tensor) else float(v)


def reduce_step(params: list[torch.nn.Parameter], tgt: torch.Tensor, n_rows: int, loss: torch.Tensor | None,
                info: dict[str, Any], error: BaseException | None, r: Rank) -> tuple[torch.Tensor, dict[str, Any]]:
    """Turn this rank's gradient and metrics (token means over its own rows) into the whole batch's, on every
    rank. ``tgt``: the rank's targets (its token count weights it); ``error``: a ``TrainingDiverged`` this rank
    raised, re-raised on every rank so that none waits in a collective the others skip."""
    device = tgt.device
    n_tok = float((tgt != -100).sum())
    head = torch.tensor([n_tok, float(n_rows), 1.0 if error is not None else 0.0], dtype=torch.float64,
                        device=device)
    dist.all_reduce(head, group=r.group)
    if head[2] > 0:
        raise error if error is not None else TrainingDiverged("non-finite energy gradient on another worker")
    w_tok, w_row = n_tok / max(1.0, float(head[0])), n_rows / max(1.0, float(head[1]))
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    for p, g in zip(params, grads, strict=True):
        p.grad = g
    # Buckets of one dtype: flatten, scale by this rank's token share, sum over ranks, copy back.
    bucket: list[torch.Tensor] = []
    size = 0

    def flush() -> None:
        nonlocal bucket, size
        if bucket:
            flat = torch.cat([g.reshape(-1) for g in bucket]).mul_(w_tok)
            dist.all_reduce(flat, group=r.group)
            off = 0
            for g in bucket:
                g.copy_(flat[off:off + g.numel()].view_as(g))
                off += g.numel()
        bucket, size = [], 0

    for g in grads:
        if bucket and (g.dtype != bucket[0].dtype or size + g.numel() > BUCKET_ELEMS):
            flush()
        bucket.append(g)
        size += g.numel()
    flush()
    # Metrics: scalars and per-step vectors (``energy_steps``), each weighted, in one all_reduce.
    keys = sorted(k for k in info if k in TOKEN_MEANS or k in ROW_MEANS)
    parts = [torch.as_tensor(_detach(loss), dtype=torch.float64, device=device).reshape(1) * w_tok]
    parts += [torch.as_tensor(_detach(info[k]), dtype=torch.float64, device=device).reshape(-1)
              * (w_tok if k in TOKEN_MEANS else w_row) for k in keys]
    vals = torch.cat(parts)
    dist.all_reduce(vals, group=r.group)
    out = dict(info)
    off = 1
    for k, p in zip(keys, parts[1:], strict=True):
        v = vals[off:off + p.numel()]
        off += p.numel()
        shape = info[k].shape if isinstance(info[k], torch.Tensor) else ()
        out[k] = v.reshape(shape).float() if shape else float(v[0])
    return vals[0].float(), out


def all_reduce_sums(sums: dict[str, float], n_tok: int, keys: tuple[str, ...], r: Rank,
                    device: torch.device) -> tuple[dict[str, float], int]:
    """Sum validation sums over ranks; a key counts when any rank has it (a rank may hold no rows)."""
    t = torch.tensor([sums.get(k, 0.0) for k in keys] + [1.0 if k in sums else 0.0 for k in keys] + [float(n_tok)],
                     dtype=torch.float64, device=device)
    dist.all_reduce(t, group=r.group)
    n = len(keys)
    return {k: float(t[i]) for i, k in enumerate(keys) if t[n + i] > 0}, int(t[2 * n])


def gather_objects(obj: Any, r: Rank) -> list[Any]:
    out: list[Any] = [None] * r.world
    dist.all_gather_object(out, obj, group=r.group)
    return out


# ---- local launcher (ebt-scale train --workers N) ----

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def backend_for(device: str) -> str:
    return "nccl" if device.startswith("cuda") or (device == "auto" and torch.cuda.is_available()) else "gloo"


def check_local(spec: RunSpec, workers: int) -> str:
    """Validate ``workers`` local processes for ``spec``; return the backend (gloo on CPU, NCCL on CUDA)."""
    if workers < 1:
        raise ConfigError(f"--workers: {workers} is not a positive number of workers")
    if spec.train.batch_size % workers:
        raise ConfigError(f"--workers {workers}: the batch size {spec.train.batch_size} is not divisible by "
                          f"{workers}; use a batch size that is a multiple of {workers}")
    backend = backend_for(spec.train.device)
    if backend == "nccl":
        if spec.train.device not in ("cuda", "auto"):
            raise ConfigError(f"--workers {workers}: --device {spec.train.device} names one GPU; use --device "
                              "cuda (worker r trains on cuda:r)")
        if torch.cuda.device_count() < workers:
            raise ConfigError(f"--workers {workers}: one GPU per worker is needed and {torch.cuda.device_count()} "
                              f"are visible; use --workers {torch.cuda.device_count()} or fewer")
    return backend


def _init(rank: int, world: int, backend: str, port: int, device: str, threads: int) -> None:
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    if backend == "nccl":
        torch.cuda.set_device(rank)
    elif threads:
        torch.set_num_threads(threads)
    dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world,
                            timeout=datetime.timedelta(minutes=30))


def _child(rank: int, world: int, backend: str, port: int, spec_dict: dict[str, Any], resume_from: str | None,
           threads: int) -> None:
    from ebt_scaling.train.loop import train

    spec = RunSpec.from_dict(spec_dict)
    _init(rank, world, backend, port, spec.train.device, threads)
    try:
        train(spec, NullSink(), resume_from=resume_from, process_group=dist.group.WORLD,
              data_progress=lambda m: None)
    finally:
        dist.destroy_process_group()


def launch_local(spec: RunSpec, workers: int, sink: Any, *, resume_from: str | None = None,
                 on_step: Callable[[dict[str, Any]], None] | None = None,
                 data_progress: Callable[[str], None] | None = None) -> RunResult:
    """Train ``spec`` on ``workers`` local processes (this one is rank 0) and return rank 0's RunResult.

    A worker that dies ends the run: this process prints one line and exits with status 1 (the others would
    otherwise wait in a collective until its timeout)."""
    from ebt_scaling.train.loop import train

    backend = check_local(spec, workers)
    if workers == 1:
        return train(spec, sink, resume_from=resume_from, on_step=on_step, data_progress=data_progress)
    threads = spec.train.threads or max(1, (os.cpu_count() or 1) // workers)
    port = free_port()
    ctx = torch.multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_child, args=(r, workers, backend, port, spec.to_dict(), resume_from, threads),
                         daemon=True, name=f"ebt-worker-{r}") for r in range(1, workers)]
    for p in procs:
        p.start()
    done = threading.Event()

    def watch() -> None:
        while not done.wait(0.5):
            for p in procs:
                if p.exitcode not in (None, 0):
                    sys.stderr.write(f"error: worker {p.name} exited with status {p.exitcode}; the run stops "
                                     "(resume it from its last checkpoint with --resume)\n")
                    sys.stderr.flush()
                    os._exit(1)

    threading.Thread(target=watch, name="ebt-worker-watch", daemon=True).start()
    _init(0, workers, backend, port, spec.train.device, threads)
    try:
        result = train(spec, sink, resume_from=resume_from, on_step=on_step, data_progress=data_progress,
                       process_group=dist.group.WORLD)
    finally:
        dist.destroy_process_group()
    done.set()
    for p in procs:
        p.join()
    bad = [p for p in procs if p.exitcode != 0]
    if bad:
        raise RuntimeError(f"worker {bad[0].name} exited with status {bad[0].exitcode}")
    return result
