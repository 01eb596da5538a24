"""A plain dispatch-mode matmul FLOP counter (2*M*N*K per product).

``torch.utils.flop_counter.FlopCounterMode`` raises inside ``torch.autograd.grad`` with
``create_graph=True`` (scaling-fits.md section 9), so this counter intercepts the aten ops directly. It
sees forward, backward and double-backward matmuls alike, because every one of them is dispatched.
Fused attention kernels (``F.scaled_dot_product_attention``: the EBT's observed stream, the T++) count as
the two products they stand for, 4*Sq*Sk*Dh per head forward and 8*Sq*Sk*Dh backward (no causal discount,
no recomputation). Elementwise work is not counted.
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


def _sdpa(name: str, args) -> int:
    """Fused attention forward or backward: q (B, H, Sq, Dh), k (B, H, Sk, Dh); backward ops take the output
    gradient first."""
    q, k = (args[1], args[2]) if name.endswith("backward") else (args[0], args[1])
    per_product = 2 * q.shape[0] * q.shape[1] * q.shape[2] * k.shape[2] * q.shape[3]
    return per_product * (4 if name.endswith("backward") else 2)


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
        elif packet.__name__.startswith("_scaled_dot_product") and "attention" in packet.__name__:
            self.by_op["sdpa"] += _sdpa(packet.__name__, args)
        return func(*args, **kwargs)
