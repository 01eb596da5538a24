"""One optimizer step's forward and backward, over micro-batches (gradient accumulation, issue 18).

The batch (its rows: fresh samples, then, for an EBT with a replay buffer, the replayed ones) is cut into
micro-batches of ``TrainConfig.micro_batch_size`` rows (the last may be smaller). Each micro-batch's loss is a
token mean, so it is weighted by its share of the batch's tokens before its backward: the accumulated gradient is
the whole batch's gradient, and so are the reported loss and the EBT's CE and energy metrics, up to rounding. One
weighting rule (``UNIT_MEANS``) serves micro-batches here and data-parallel ranks (``distributed.reduce_step``).

The EBT's random inputs (``EBT.draw``) come from one generator per row, keyed by (seed, step, global sample
index) (train/keyed.py), and are drawn one micro-batch at a time (never the whole batch's noise at once). S2's
inner-step count is drawn once per optimizer step. The replay buffer is the one per-worker exception: which
stored rows a step replays is drawn per worker (keyed by (seed, step, rank)), and the fresh rows' final logits are
pushed after the last micro-batch, so within one worker the split does not change it either.

Item 2 (data-parallel workers) reuses ``step_rows`` and ``forward_backward`` with ``row_offset`` = the worker's
first global sample index and ``rank``; everything but the replay buffer then equals one worker on the whole batch.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from ebt_scaling.train import keyed
from ebt_scaling.train.modality import target_count

# The info entries that are means over the real (non-padding) target tokens of the rows they were computed on: the
# CEs, and the EBT's energies (models/ebt.py averages them over real positions too); ``UNIT_MEANS`` adds the video
# SmoothL1s, means over the target frames. Parts of a batch (micro-batches, data-parallel ranks) combine them
# weighted by their share of the batch's real tokens (frames: ``modality.target_count``). Every other entry (alpha,
# inner_steps) is the same for every part of a step.
TOKEN_MEANS = ("ce", "ce_initial", "energy_initial", "energy_final", "energy_steps")
UNIT_MEANS = (*TOKEN_MEANS, "smooth_l1", "smooth_l1_initial")  # with the video losses: what parts combine by weight


def micro_slices(rows: int, micro: int | None) -> list[slice]:
    """Consecutive slices of at most ``micro`` rows covering ``rows`` (one slice when ``micro`` is None)."""
    m = rows if not micro else micro
    return [slice(a, min(a + m, rows)) for a in range(0, rows, m)] or [slice(0, 0)]


@dataclass
class StepRows:
    """The rows of one optimizer step on one worker: tokens, targets, and for the EBT the landscapes of the step,
    every row's generator key (stream, index) and, for replayed rows, their stored start logits."""

    idx: torch.Tensor  # (R, T)
    tgt: torch.Tensor  # (R, T)
    n_fresh: int
    landscapes: tuple[int, ...] = ()
    keys: list[tuple[str, tuple[int, ...]]] = field(default_factory=list)
    starts: list[torch.Tensor | None] = field(default_factory=list)

    @property
    def n_replayed(self) -> int:
        return self.idx.shape[0] - self.n_fresh


def step_rows(model: torch.nn.Module, idx: torch.Tensor, tgt: torch.Tensor, *, seed: int, step: int,
              row_offset: int = 0, rank: int = 0) -> StepRows:
    """Host decisions of optimizer step ``step`` (0-based) for a worker holding global samples ``row_offset ..
    row_offset + B - 1``: the model's landscapes (the EBT's; S2's step count keyed by (seed, step); the T++ has
    none), every row's draw key and, for a model with a replay buffer (EBT S2), its replayed rows (keyed by
    (seed, step, rank))."""
    b, t = idx.shape[:2]  # (B, T) tokens or (B, T, E) frames
    device = idx.device
    landscapes = tuple(model.landscapes(True, keyed.generator("cpu", seed, keyed.STEPS, step)))
    keys = [(keyed.TRAIN, (step, row_offset + j)) for j in range(b)]
    starts: list[torch.Tensor | None] = [None] * b
    if model.cfg.replay_buffer_size and getattr(model, "replay", None) is not None:
        r_idx, r_tgt, r_z = model.replay_pick(b, t, keyed.generator("cpu", seed, keyed.REPLAY_PICK, step, rank))
        idx, tgt = torch.cat((idx, r_idx.to(device))), torch.cat((tgt, r_tgt.to(device)))
        keys += [(keyed.REPLAYED, (step, rank, j)) for j in range(len(r_z))]
        starts += list(r_z)
    return StepRows(idx, tgt, b, landscapes, keys, starts)


def draws_for(model: torch.nn.Module, rows: StepRows, sl: slice, seed: int, *, train: bool = True) -> Any:
    """The model's random inputs (``model.draw``: the EBT's ``Draws``, the T++'s None) of rows ``sl`` of ``rows``,
    one keyed generator per row."""
    gens = keyed.Generators(rows.idx.device, seed, rows.keys[sl])
    return model.draw(gens, rows.idx.shape[1], rows.landscapes, rows.idx.device, train=train,
                      starts=rows.starts[sl])


def forward_backward(model: torch.nn.Module, loss_fn: Callable[..., Any], rows: StepRows, *, seed: int,
                     micro: int | None, autocast: Callable[[], Any]) -> tuple[torch.Tensor, dict[str, Any]]:
    """Accumulate the gradient of the step's rows, one micro-batch at a time; return the batch's loss and info
    (detached). Raises ``TrainingDiverged`` from the EBT's descent as the whole-batch step would."""
    n_tok = target_count(rows.tgt)
    total: torch.Tensor | None = None
    info: dict[str, Any] = {}
    finals: list[torch.Tensor] = []
    for sl in micro_slices(rows.idx.shape[0], micro):
        idx, tgt = rows.idx[sl], rows.tgt[sl]
        w = target_count(tgt) / max(1, n_tok)
        with autocast():
            loss, part = loss_fn(idx, tgt, draws_for(model, rows, sl, seed))
        # One micro-batch (the whole batch) keeps the unweighted loss: bit for bit the step without accumulation.
        (loss if w == 1.0 else loss * w).backward()
        finals += [part.pop("final_logits")] if "final_logits" in part else []
        total = loss.detach() * w if total is None else total + loss.detach() * w
        for k, v in part.items():
            if k not in UNIT_MEANS:
                info[k] = v  # alpha, inner_steps: the same for every micro-batch
            else:
                v = v if w == 1.0 else v * w
                info[k] = v if k not in info else info[k] + v
    info["replayed"] = float(rows.n_replayed)
    if finals:  # a replay buffer's fresh rows' final logits, in batch order, after the whole step
        model.replay_push(rows.idx[:rows.n_fresh], rows.tgt[:rows.n_fresh], torch.cat(finals)[:rows.n_fresh])
    assert total is not None
    return total, info
