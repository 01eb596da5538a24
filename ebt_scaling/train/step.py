"""One optimizer step of ``train()``: the global batch's gradient, clipped, then the AdamW update.

``TrainStep(idx, tgt, step)`` computes the gradient of optimizer step ``step`` (0-based) in one of three ways:

* eager: forward and backward over micro-batches of ``micro_batch_size`` rows, the model's random inputs keyed by
  (seed, step, sample) (``accumulate.forward_backward``), under the step's autocast;
* graphed (``cuda_graph``): the whole batch in one forward + backward + clip, captured once and replayed
  (``graphed.GraphedStep``); the model's draws enter as static inputs;
* data-parallel (a ``Rank``): this rank's slice of the batch, eager, then gradient and metrics all-reduced
  (``distributed.reduce_step``; a ``TrainingDiverged`` on any rank is raised on every rank).

It then clips the gradient's norm (the pre-clip norm is returned). A non-finite energy gradient in the EBT's
descent (``TrainingDiverged``) becomes a ``StepOutcome`` with NaNs and its reason, not an exception. ``update``
applies AdamW unless the loop found the step diverged and clears the gradients (a captured graph overwrites its
gradient buffers, so they stay). Both families go through the same calls (``model.loss(idx, tgt, draws)``,
``model.draw``): no family branch here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch

from ebt_scaling.config import TrainConfig
from ebt_scaling.errors import TrainingDiverged
from ebt_scaling.train.accumulate import draws_for, forward_backward, step_rows
from ebt_scaling.train.distributed import Rank, reduce_step
from ebt_scaling.train.graphed import GraphedStep
from ebt_scaling.train.runtime import autocast_context, compiled_loss, scalar

Grads = tuple[torch.Tensor, dict[str, Any], torch.Tensor]  # (loss, info, pre-clip gradient norm)


@dataclass
class StepOutcome:
    """What one step reports: the batch's loss and pre-clip gradient norm (NaN when the model raised), the
    loss's info, and ``reason`` when the model found the step diverged."""

    loss: float
    grad_norm: float
    info: dict[str, Any] = field(default_factory=dict)
    reason: str | None = None


class TrainStep:
    """The step of a run: eager, graphed or one data-parallel rank's, as its ``TrainConfig`` and ``rank`` say."""

    def __init__(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, tcfg: TrainConfig,
                 device: torch.device, rank: Rank | None = None) -> None:
        self.model, self.optimizer, self.tcfg, self.device, self.rank = model, optimizer, tcfg, device, rank
        self.params = [p for g in optimizer.param_groups for p in g["params"]]
        self.autocast = autocast_context(device, tcfg.precision, cache=not tcfg.cuda_graph)
        self.loss_fn = compiled_loss(model) if tcfg.compile else model.loss
        self.graphed = GraphedStep(self._whole_batch, self.params, device) if tcfg.cuda_graph else None
        self._draws: Any = None  # the graphed step's draws (their landscapes; the tensors go in as static inputs)

    @property
    def graph_replays(self) -> int | None:
        """Steps computed by replaying the captured graph (None: not graphed)."""
        return self.graphed.replays if self.graphed is not None else None

    def __call__(self, idx: torch.Tensor, tgt: torch.Tensor, step: int) -> StepOutcome:
        """Gradient of optimizer step ``step`` (0-based) on the global batch (``idx``, ``tgt``: (B, T))."""
        try:
            loss, info, norm = self._gradient(idx, tgt, step)
            grad_norm = float(norm)
            return StepOutcome(scalar(loss), grad_norm, info)
        except TrainingDiverged as exc:  # raised by the EBT's descent on a non-finite energy gradient
            return StepOutcome(math.nan, math.nan, {}, f"{exc} (step {step + 1})")

    def update(self, apply: bool) -> None:
        """AdamW (``apply``: the step did not diverge), then the gradients cleared; waits for the device."""
        if apply:
            self.optimizer.step()
        if self.graphed is None or not self.graphed.captured:
            self.optimizer.zero_grad(set_to_none=True)  # a captured step overwrites its gradient buffers instead
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def _clip(self) -> torch.Tensor:
        return torch.nn.utils.clip_grad_norm_(self.params, self.tcfg.grad_clip)

    def _gradient(self, idx: torch.Tensor, tgt: torch.Tensor, step: int) -> Grads:
        seed, micro, r = self.tcfg.seed, self.tcfg.micro_batch_size, self.rank
        if r is not None:  # this rank's slice of the global batch; draws keyed by the global sample index
            sl = r.shard(idx.shape[0])
            rows = step_rows(self.model, idx[sl], tgt[sl], seed=seed, step=step, row_offset=sl.start, rank=r.rank)
            error: TrainingDiverged | None = None
            try:
                loss, info = forward_backward(self.model, self.loss_fn, rows, seed=seed, micro=micro,
                                              autocast=self.autocast)
            except TrainingDiverged as exc:  # every rank must reach the collective; reduce_step re-raises
                loss, info, error = None, {}, exc
            loss, info = reduce_step(self.params, rows.tgt, loss, info, error, r)
            return loss, info, self._clip()
        rows = step_rows(self.model, idx, tgt, seed=seed, step=step)
        if self.graphed is None:
            loss, info = forward_backward(self.model, self.loss_fn, rows, seed=seed, micro=micro,
                                          autocast=self.autocast)
            return loss, info, self._clip()
        self._draws = draws_for(self.model, rows, slice(None), seed)
        return self.graphed(rows.idx, rows.tgt, *(self._draws.tensors() if self._draws is not None else ()))

    def _whole_batch(self, idx: torch.Tensor, tgt: torch.Tensor, *tensors: torch.Tensor | None) -> Grads:
        """The whole batch in one forward + backward + clip (what ``GraphedStep`` captures)."""
        draws = self._draws.with_tensors(*tensors) if self._draws is not None else None
        with self.autocast():
            loss, info = self.loss_fn(idx, tgt, draws)
        loss.backward()
        return loss, info, self._clip()
