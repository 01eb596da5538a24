"""A plain dispatch-mode matmul FLOP counter (2*M*N*K per product).

``torch.utils.flop_counter.FlopCounterMode`` raises inside ``torch.autograd.grad`` with
``create_graph=True`` (scaling-fits.md section 9), so this counter intercepts the aten ops directly. It
sees forward, backward and double-backward matmuls alike, because every one of them is dispatched.
Elementwise work and fused SDPA kernels are not counted.
"""

from __future__ import annotations

from collections import Counter

import torch
from torch.utils._python_dispatch import TorchDispatchMode

aten = torch.ops.aten


def _mm(a, b) -> int:
    return 2 * a.shape[0] * a.shape[1] * b.shape[1]


def _bmm(a, b) -> int:
    return 2 * a.shape[0] * a.shape[1] * a.shape[2] * b.shape[2]


class MatmulFlopCounter(TorchDispatchMode):
    """``with MatmulFlopCounter() as c: ...``; then ``c.total`` and ``c.by_op``."""

    def __init__(self) -> None:
        super().__init__()
        self.by_op: Counter[str] = Counter()

    @property
    def total(self) -> int:
        return sum(self.by_op.values())

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        packet = func._overloadpacket
        if packet is aten.mm:
            self.by_op["mm"] += _mm(args[0], args[1])
        elif packet is aten.addmm:
            self.by_op["addmm"] += _mm(args[1], args[2])
        elif packet is aten.bmm:
            self.by_op["bmm"] += _bmm(args[0], args[1])
        elif packet is aten.baddbmm:
            self.by_op["baddbmm"] += _bmm(args[1], args[2])
        return func(*args, **kwargs)
