"""Time training steps of a run's shape on this machine's device (``ebt-scale calibrate``): the real model, loss,
backward over the run's micro-batches (``accumulate.forward_backward``, the EBT's keyed draws included), gradient
clipping and fused AdamW step of ``train()``, at the run's precision (autocast and TF32 flags as
the trainer sets them) and torch.compile setting, on synthetic tokens or frame embeddings (no corpus needed:
throughput does not depend on the values). Knows nothing of the database; the command module stores what it measures.

The timed steps follow ``warmup`` untimed ones (allocator, cuDNN/cuBLAS heuristics, compilation). CUDA is
synchronised before the clock starts and after the last step. A captured CUDA graph (``cuda_graph``) is not
replayed here: the time is that of the eager (or compiled) step.
"""

from __future__ import annotations

import time

import torch

from ebt_scaling.config import RunSpec
from ebt_scaling.errors import ConfigError
from ebt_scaling.models import build_model
from ebt_scaling.train.accumulate import forward_backward, step_rows
from ebt_scaling.train.modality import inputs_targets
from ebt_scaling.train.precision import matmul_precision
from ebt_scaling.train.runtime import autocast_context, compiled_loss, resolve_device


def time_training_steps(spec: RunSpec, steps: int = 3, warmup: int = 2) -> float:
    """Mean wall seconds of one training step of ``spec`` (its batch, shape, precision, device and threads) over
    ``steps`` timed steps after ``warmup`` untimed ones. Restores torch's CPU thread count and TF32 flags."""
    if steps < 1 or warmup < 0:
        raise ConfigError(f"calibrate: steps must be >= 1 and warm-up >= 0, got {steps} and {warmup}")
    tcfg = spec.train
    device = resolve_device(tcfg.device)
    old_threads = torch.get_num_threads()
    if tcfg.threads and device.type == "cpu":
        torch.set_num_threads(tcfg.threads)
    try:
        with matmul_precision(device, tcfg.precision):
            return _time(spec, device, steps, warmup)
    finally:
        torch.set_num_threads(old_threads)


def _time(spec: RunSpec, device: torch.device, steps: int, warmup: int) -> float:
    mcfg, tcfg = spec.model, spec.train
    gen = torch.Generator().manual_seed(tcfg.seed)
    torch.manual_seed(tcfg.seed)
    model = build_model(mcfg).to(device)
    model.train()
    groups = model.optim_groups(tcfg.weight_decay)
    for g in groups:
        g["lr"] = tcfg.lr * g.get("lr_mult", 1.0)  # the value does not change the time; a real LR keeps it finite
    optimizer = torch.optim.AdamW(groups, lr=tcfg.lr, betas=(tcfg.beta1, tcfg.beta2), weight_decay=tcfg.weight_decay,
                                  fused=True)
    params = [p for g in optimizer.param_groups for p in g["params"]]
    autocast = autocast_context(device, tcfg.precision)
    loss_fn = compiled_loss(model) if tcfg.compile else model.loss
    B, T, V = tcfg.batch_size, mcfg.sequence_len, mcfg.vocab_size
    # Synthetic windows of T + 1 tokens (a video model: T + 1 standard-normal frame embeddings), drawn on the host
    # like the trainer's batches and copied per step.
    shape = (B, T + 1) if mcfg.frame_dim is None else (B, T + 1, mcfg.frame_dim)
    batches = [torch.randint(0, V, shape, generator=gen) if mcfg.frame_dim is None else
               torch.randn(shape, generator=gen) for _ in range(min(steps + warmup, 4))]

    def step(i: int) -> None:  # the trainer's step (step.TrainStep without a captured graph)
        b = batches[i % len(batches)].to(device, non_blocking=True)
        rows = step_rows(model, *inputs_targets(b), seed=tcfg.seed, step=i)
        forward_backward(model, loss_fn, rows, seed=tcfg.seed, micro=tcfg.micro_batch_size, autocast=autocast)
        torch.nn.utils.clip_grad_norm_(params, tcfg.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    for i in range(warmup):
        step(i)
    sync()
    t0 = time.perf_counter()
    for i in range(steps):
        step(warmup + i)
    sync()
    return (time.perf_counter() - t0) / steps
