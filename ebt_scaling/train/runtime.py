"""Where and how a run executes: its device, autocast, torch.compile and seeding (no training logic).

Used by ``train()`` (``loop.py``), its step (``step.py``) and ``ebt-scale calibrate`` (``calibrate.py``), so that the
timed step is the trained one.
"""

from __future__ import annotations

import contextlib
import importlib.util
import random
import shutil
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from ebt_scaling.config import RunSpec
from ebt_scaling.errors import ConfigError


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"TrainConfig.device: unknown device {name!r}; use auto, cpu, cuda or cuda:N") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"TrainConfig.device: {name} requested but CUDA is not available; use --device cpu or auto")
    if dev.type not in ("cpu", "cuda"):
        raise ConfigError(f"TrainConfig.device: device type {dev.type!r} is not supported; use cpu or cuda")
    return dev


def autocast_context(device: torch.device, precision: str, cache: bool = True) -> Callable[[], Any]:
    """bf16 autocast on CUDA by default (``precision`` auto), or as asked; none for fp32 and tf32 (whose TF32
    matmuls are the flags ``train.precision.matmul_precision`` sets around the run); ``cache=False`` turns
    autocast's weight-cast cache off, which a captured CUDA graph needs."""
    bf16 = precision == "bf16" or (precision == "auto" and device.type == "cuda")
    if bf16:
        return lambda: torch.autocast(device_type=device.type, dtype=torch.bfloat16, cache_enabled=cache)
    return contextlib.nullcontext


def check_compile(spec: RunSpec, device: torch.device) -> None:
    """Raise ``ConfigError`` (one line, with the fix) when ``spec`` asks for torch.compile and the toolchain its
    kernels need is missing: a C++ compiler on CPU (the candidates Inductor searches, ``config.cpp.cxx``: ``$CXX``
    as it was when torch loaded Inductor, else ``g++``), Triton on CUDA. Otherwise the first step would fail deep
    inside Inductor after the data was prepared."""
    if not spec.train.compile:
        return
    if device.type == "cuda":
        if importlib.util.find_spec("triton") is None:
            raise ConfigError("TrainConfig.compile: torch.compile on CUDA needs Triton, which this Python lacks; "
                              "install the triton package that matches torch or drop --compile")
        return
    from torch._inductor import config as inductor_config

    cxx = [c for c in inductor_config.cpp.cxx if c]  # None = a conda download Inductor makes only on request
    if not any(shutil.which(c) for c in cxx):
        raise ConfigError(f"TrainConfig.compile: torch.compile on {device.type} needs a C++ compiler and "
                          f"{' or '.join(map(repr, cxx))} was not found; install g++ (or set CXX to one) or drop "
                          "--compile")


def compiled_loss(model: torch.nn.Module) -> Callable[..., Any]:
    """The training loss under ``torch.compile`` (training steps only; evaluation stays eager, so its batch
    shape never triggers a recompile): ``model.compile_loss()``, then ``model.loss``. The T++ compiles its CE;
    the EBT the differentiable part of its loss (``EBT.compile_loss``: descent and CEs as one graph, the inner
    gradient by ``torch.func.grad``), its host decisions (step count, replay buffer) and finiteness check staying
    eager. The first call compiles (minutes on a 2-core CPU, mostly the C++ or Triton builds of the fused kernels,
    cached by torch for later runs on the same machine); S2 compiles once per step count and batch shape."""
    model.compile_loss()
    return model.loss


def seed_everything(seed: int) -> None:
    """Python's, numpy's legacy and torch's global generators (the data sampler has its own, ``TrainState``)."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def scalar(x: Any) -> float:
    """A Python float of a (0-d) tensor or number."""
    return float(x.detach().float().item()) if isinstance(x, torch.Tensor) else float(x)
