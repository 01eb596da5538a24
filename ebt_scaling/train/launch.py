"""The local multi-process launcher (``ebt-scale train --workers N``): N data-parallel ranks on this machine.

``launch_local(spec, workers, ...)``: this process is rank 0 (it keeps the caller's sink and progress callback),
ranks 1..N-1 are spawned and given a ``NullSink``; gloo on CPU, NCCL on CUDA with one GPU each. Every rank calls
``train(spec, sink, process_group=WORLD)`` (what the ranks do together: ``distributed.py``). The launcher sits above
the loop (it imports ``train``); the collectives the loop uses sit below it, in ``distributed.py``.
"""

from __future__ import annotations

import datetime
import os
import socket
import sys
import threading
from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist

from ebt_scaling.config import RunSpec
from ebt_scaling.errors import ConfigError
from ebt_scaling.records import RunResult
from ebt_scaling.train.distributed import NullSink
from ebt_scaling.train.loop import train


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
