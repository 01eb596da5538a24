"""Data-parallel training through ``torch.distributed`` (issue 18 item 2); never imports Ray.

``train(spec, sink, process_group=pg)`` runs one rank of N. What each rank does (``loop.py``):

* the same initial weights: every rank seeds the same way, then rank 0's parameters and buffers are broadcast;
* the same data order: every rank draws the whole global batch from the same generator (a pure function of seed
  and step) and keeps its slice, rows ``[r*B/N, (r+1)*B/N)``; a batch size not divisible by N is refused;
* the EBT's per-sample draws keyed by the GLOBAL sample index (``step_rows(row_offset=r*B/N)``), so N workers
  equal one worker up to rounding for the T++ and EBT S1 (S2's replay buffer is per worker, as in the paper);
* gradients: after the rank's forward + backward over its micro-batches, every gradient is scaled by the rank's
  share of the batch's real tokens and summed over ranks with one ``all_reduce`` per bucket (``reduce_step``);
  the loss and the info's token means (``accumulate.UNIT_MEANS``, the rule micro-batches follow too) likewise.
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

These are the collectives, below the loop (``loop.py`` and ``step.py`` import them); the local launcher that starts
N processes and calls ``train`` in each sits above the loop, in ``launch.py``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from ebt_scaling.config import RunSpec
from ebt_scaling.errors import ConfigError, TrainingDiverged
from ebt_scaling.records import MetricPoint
from ebt_scaling.train.accumulate import UNIT_MEANS
from ebt_scaling.train.modality import target_count

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
    return Rank(process_group, dist.get_rank(process_group), world) if world > 1 else None


def data_parallel(spec: RunSpec, process_group: Any) -> Rank | None:
    """This process's ``Rank`` for training ``spec`` in ``process_group`` (checked: ``check_world``), or ``None``."""
    r = rank_of(process_group)
    if r is not None:
        check_world(spec, r)
    return r


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


def reduce_step(params: list[torch.nn.Parameter], tgt: torch.Tensor, loss: torch.Tensor | None,
                info: dict[str, Any], error: BaseException | None, r: Rank) -> tuple[torch.Tensor, dict[str, Any]]:
    """Turn this rank's gradient and metrics (token means over its own rows) into the whole batch's, on every
    rank. ``tgt``: the rank's targets (its real-token count weights it); ``error``: a ``TrainingDiverged`` this
    rank raised, re-raised on every rank so that none waits in a collective the others skip."""
    device = tgt.device
    n_tok = float(target_count(tgt))
    head = torch.tensor([n_tok, 1.0 if error is not None else 0.0], dtype=torch.float64, device=device)
    dist.all_reduce(head, group=r.group)
    if head[1] > 0:
        raise error if error is not None else TrainingDiverged("non-finite energy gradient on another worker")
    w_tok = n_tok / max(1.0, float(head[0]))
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
    keys = sorted(k for k in info if k in UNIT_MEANS)
    parts = [torch.as_tensor(_detach(v), dtype=torch.float64, device=device).reshape(-1) * w_tok
             for v in [loss] + [info[k] for k in keys]]
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
