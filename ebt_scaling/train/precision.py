"""The float32 matmul precision of a run: TF32 on CUDA for ``precision = "tf32"``, true fp32 for ``"fp32"``.

``tf32`` keeps fp32 weights, activations and gradients (no autocast) and lets cuBLAS and cuDNN run fp32
matmuls and convolutions on TF32 tensor cores (10-bit mantissa inputs, fp32 accumulation): PyTorch's
``set_float32_matmul_precision("high")``. The paper's scripts set ``"medium"`` (``ebt-paper.md`` section 13),
which PyTorch defines as "bf16 internal computation if a fast algorithm exists, else as 'high'"; its own note
says that on CUDA both "high" and "medium" mean TF32 (``allow_tf32 = True``), so on a GPU the paper's setting
and ours run the same kernels. We set only the CUDA flags, not the global precision: in torch 2.13
``set_float32_matmul_precision`` also switches oneDNN's CPU matmuls (``torch.backends.mkldnn``) to TF32 ("high")
or bf16 ("medium"), and a CPU run of a tf32 spec trains as plain fp32 (a paper spec is dry-run and
smoke-tested on laptops).

The flags are process-global, so ``matmul_precision`` sets them for one run and restores them afterwards: a
tf32 run does not turn a later fp32 run of the same process (a reused Ray worker, a test session) into TF32.
It uses the legacy ``allow_tf32`` flags on purpose: in torch 2.13 setting the new per-backend
``fp32_precision`` makes ``torch.get_float32_matmul_precision()`` raise while the backends differ, and
torch.compile's cache key calls it; the legacy setters keep both views consistent (``fp32_precision`` reads
``"tf32"`` / ``"ieee"``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

from ebt_scaling.errors import ConfigError


def tf32_wanted(device: torch.device, precision: str) -> bool | None:
    """The TF32 setting a run of ``precision`` on ``device`` needs: True (``tf32`` on CUDA), False (``fp32`` on
    CUDA: true fp32 whatever the process set before), None (leave the flags alone: CPU, and the bf16 autocast
    of ``auto``/``bf16``, whose matmuls are bf16 anyway)."""
    if device.type != "cuda":
        return None
    return {"tf32": True, "fp32": False}.get(precision)


@contextlib.contextmanager
def matmul_precision(device: torch.device, precision: str) -> Iterator[None]:
    """Set cuBLAS's and cuDNN's TF32 flags for a run of ``precision`` on ``device`` and restore them after."""
    want = tf32_wanted(device, precision)
    if want is None:
        yield
        return
    try:
        old = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    except RuntimeError:  # the process set TF32 through torch's new fp32_precision API
        raise ConfigError(f"TrainConfig.precision {precision}: this process set TF32 through "
                          "torch.backends.*.fp32_precision, which cannot be combined with the allow_tf32 flags "
                          "the trainer sets; leave the flags to the trainer") from None
    torch.backends.cuda.matmul.allow_tf32 = want
    torch.backends.cudnn.allow_tf32 = want
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old
