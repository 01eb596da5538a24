"""Training steps replayed from a CUDA graph (``TrainConfig.cuda_graph``, ``ebt-scale train --cuda-graph``).

At the batch sizes a sweep uses, a GPU training step is bound by the host launching kernels one by one:
about 1,050 launches per T++ ``small`` step and 10,800 per EBT step, whose double backward is many small
kernels (benchmarks/RESULTS.md, "GPU figures (H200)"). Replaying a captured step launches them all at once; the
throughput benchmark measured 1.75-2.8x per step that way on an H200 (``throughput.py --cuda-graph``).

What is captured: forward (under the run's autocast, with the autocast weight cache off, as CUDA graphs need),
backward and gradient clipping, on static input buffers. The optimizer step stays eager, after the loop has
read the loss and the gradient norm, so a diverged step is skipped exactly as in eager training. The first
``WARMUP_STEPS`` steps of a run (or of a resumed run) are ordinary eager training steps on a side stream, as
capture requires; the capture itself computes nothing, and the step at which it happens is then replayed.

Refused: a device other than CUDA (``check_cuda_graph``), and recipes that decide on the host per step (the
EBT's random step count and replay buffer, i.e. S2; ``RunSpec`` refuses that combination when it is built).
The gradients live in the graph's memory from the capture on, so the loop must not set them to ``None``
(``zero_grad(set_to_none=True)``) afterwards.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from ebt_scaling.config import RunSpec
from ebt_scaling.errors import ConfigError

WARMUP_STEPS = 3  # eager steps on a side stream before the capture (cuBLAS workspaces, autograd state)

# step(idx, targets, *more) -> (loss, info, grad_norm); ``more``: further inputs (the EBT's keyed draws), tensors or
# None, the same kind at every call.
StepFn = Callable[..., tuple[torch.Tensor, dict[str, Any], torch.Tensor]]


def check_cuda_graph(spec: RunSpec, device: torch.device) -> None:
    """Raise ``ConfigError`` (one line, with the fix) when ``spec`` asks for CUDA graphs off CUDA. (A recipe
    that decides on the host per step, S2, is refused when the ``RunSpec`` is built.)"""
    if spec.train.cuda_graph and device.type != "cuda":
        raise ConfigError(f"TrainConfig.cuda_graph: needs a CUDA device, the run trains on {device}; "
                          "use --device cuda or drop --cuda-graph")


class GraphedStep:
    """``step(idx, targets, *more) -> (loss, info, grad_norm)``, eager for the first ``warmup`` calls (on a side
    stream), then captured once and replayed; every tensor input is copied into a static buffer of the graph.
    The returned tensors are the graph's static outputs: read them
    (``float(...)``) before the next call overwrites them."""

    def __init__(self, fn: StepFn, params: list[torch.nn.Parameter], device: torch.device,
                 warmup: int = WARMUP_STEPS) -> None:
        self.fn, self.params, self.device, self.warmup = fn, params, device, warmup
        self.eager_calls = 0
        self.replays = 0  # steps computed by replaying the graph
        self._side: torch.cuda.Stream | None = None
        self.graph: torch.cuda.CUDAGraph | None = None
        self._inputs: tuple[torch.Tensor | None, ...] | None = None
        self._out: tuple[torch.Tensor, dict[str, Any], torch.Tensor] | None = None

    @property
    def captured(self) -> bool:
        return self.graph is not None

    def __call__(self, *inputs: torch.Tensor | None) -> tuple[torch.Tensor, dict[str, Any], torch.Tensor]:
        if self.graph is None and self.eager_calls < self.warmup:
            self.eager_calls += 1
            return self._on_side_stream(lambda: self.fn(*inputs))
        if self.graph is None:
            self._capture(inputs)
        assert self._inputs is not None and self._out is not None and self.graph is not None
        for static, x in zip(self._inputs, inputs, strict=True):
            if (static is None) != (x is None) or (x is not None and static is not None and x.shape != static.shape):
                shape = None if x is None else tuple(x.shape)
                was = None if static is None else tuple(static.shape)
                raise ConfigError(f"cuda_graph: input shape {shape} differs from the captured {was}; a replayed "
                                  "step needs a fixed batch size and length")
            if static is not None and x is not None:
                static.copy_(x)
        self.graph.replay()
        self.replays += 1
        return self._out

    def _on_side_stream(self, work: Callable[[], Any]) -> Any:
        main = torch.cuda.current_stream(self.device)
        if self._side is None:
            self._side = torch.cuda.Stream(self.device)
        side = self._side
        side.wait_stream(main)
        with torch.cuda.stream(side):
            out = work()
        main.wait_stream(side)
        return out

    def _capture(self, inputs: tuple[torch.Tensor | None, ...]) -> None:
        self._inputs = tuple(None if x is None else x.clone() for x in inputs)
        graph = torch.cuda.CUDAGraph()
        # Capture starts from no gradients, so the captured backward writes (not accumulates) them, into
        # buffers of the graph's pool that every replay overwrites.
        for p in self.params:
            p.grad = None
        torch.cuda.synchronize(self.device)
        with torch.cuda.graph(graph):
            self._out = self.fn(*self._inputs)
        self.graph = graph
