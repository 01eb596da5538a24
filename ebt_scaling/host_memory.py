"""Host-memory reuse for CPU training (stdlib only).

A CPU training step allocates and frees the same large tensors every step. PyTorch's CPU allocator hands
them straight to the C library, and glibc's malloc returns freed memory at the top of the heap to the kernel
once it exceeds a trim threshold that adapts only up to 2 x 32 MiB. The kernel then zeroes fresh pages on
first touch at the next step. The EBT's (B, T, V) candidates overflow that threshold: at the issue-7 shape
(2 layers, width 128, vocab 2048, batch 8 x 128) an S1 step took 14,000-20,700 minor page faults (55-80 MiB
of pages zeroed per step), the T++ step none (``benchmarks/step_cost.py`` reports the faults per step).

``keep_freed_memory()`` makes glibc keep freed memory for reuse instead, as CUDA's caching allocator does on
a GPU: large blocks come from the heap up to ``MMAP_THRESHOLD`` and up to ``TRIM_THRESHOLD`` bytes of free
heap stay mapped. The process keeps its peak footprint until it exits (a training process needs that peak
at every step anyway). It changes no value, only where memory comes from.

It does nothing when the C library is not glibc, when the user configured glibc's malloc through the
environment (``MALLOC_*_`` variables or ``GLIBC_TUNABLES``), or with ``EBT_SCALE_HOST_MALLOC=system``.
"""

from __future__ import annotations

import ctypes
import os
import platform
import threading

from ebt_scaling.errors import ConfigError

ENV = "EBT_SCALE_HOST_MALLOC"
CHOICES = ("keep", "system")
MMAP_THRESHOLD = 1 << 30  # blocks up to 1 GiB come from the heap (glibc's adaptive default stops at 32 MiB)
TRIM_THRESHOLD = 2 << 30  # keep up to 2 GiB of free heap mapped (glibc pairs trim = 2 x mmap threshold)
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # mallopt parameters (malloc.h)
_USER_ENV = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_", "MALLOC_MMAP_MAX_")

_lock = threading.Lock()
_state: str | None = None  # the first call's outcome; later calls return it


def keep_freed_memory(device_type: str = "cpu") -> str:
    """Configure glibc's malloc once per process (see the module docstring) when the work runs on the CPU
    (``device_type``, e.g. ``torch.device(...).type``). Returns what happened: ``"kept"`` (configured now or
    by an earlier call), ``"system"`` (turned off by the environment variable), ``"user"`` (the user's own
    malloc settings left alone), ``"unsupported"`` (not glibc) or ``"not cpu"`` (nothing done: the large
    tensors live on the device). Raises ConfigError for an unknown value of ``EBT_SCALE_HOST_MALLOC``."""
    global _state
    choice = host_malloc_choice()
    if device_type != "cpu":
        return "not cpu"
    with _lock:
        if _state is None:
            _state = _configure(choice)
        return _state


def host_malloc_choice() -> str:
    """The value of ``EBT_SCALE_HOST_MALLOC`` (default ``keep``); ConfigError for an unknown one. Commands
    call it before they prepare or write anything, so a typo fails fast."""
    raw = os.environ.get(ENV, "")
    choice = raw.strip().lower() or "keep"
    if choice not in CHOICES:
        raise ConfigError(f"{ENV}: unknown value {raw!r}; use one of {', '.join(CHOICES)} "
                          "(keep = reuse freed host memory, system = the C library's defaults)")
    return choice


def _configure(choice: str) -> str:
    if choice == "system":
        return "system"
    if any(v in os.environ for v in _USER_ENV) or "glibc.malloc." in os.environ.get("GLIBC_TUNABLES", ""):
        return "user"
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return "unsupported"
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return "unsupported"
    # Both at once: setting either turns glibc's adaptive thresholds off, and a trim threshold alone would
    # leave the mmap threshold at its 128 KiB start (every large block a fresh mapping: far more faults).
    ok = libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1
    ok = libc.mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1 and ok
    return "kept" if ok else "unsupported"


def minor_faults() -> int:
    """Minor page faults of this process so far (0 where ``resource`` is unavailable): the measure of the
    memory the kernel had to map and zero, used by the benchmarks."""
    try:
        import resource
    except ImportError:  # not on Windows
        return 0
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
