"""``train(spec, sink) -> RunResult``: one training run, knowing nothing of Ray or the database.

Per optimizer step ``s = 1..steps``: set the LR of every group to ``lr_at(s - 1)`` (a schedule over
``schedule_steps``, default ``steps``; the run may stop before the schedule ends), times ``lr_mult`` for the EBT's
alpha group with the floor its ``step_size_lr_floor`` names (``schedule.group_lr_at``); draw the step's batch of
``batch_size`` samples of ``sequence_len + 1`` tokens (``open_data(...).train_batch``: packed windows or padded
documents, docs/data.md; tokens count real targets only); forward and backward over micro-batches of
``micro_batch_size`` rows, the EBT's random inputs keyed by (seed, step, sample) (``accumulate.forward_backward``;
bf16 autocast on CUDA, fp32 on CPU); clip the accumulated gradient's norm (the pre-clip norm is recorded); check
for divergence; AdamW step. Then, in this order: metric points (every ``log_interval`` steps and the last),
validation (every ``eval_interval`` steps and the last), checkpoint (every ``checkpoint_interval`` steps and the
last, when ``spec.checkpoint_dir`` is set).

Validation loss = token-weighted mean (real tokens) of ``info["ce"]`` (the EBT's final-step CE) over the run's
fixed validation set (``validation_batches``: ``eval_tokens``, else ``eval_batches`` batches; in micro-batches
too), the EBT's noise keyed by (seed, window): it is a deterministic function of the weights and never perturbs
the training RNG stream, which is what makes resume bit-exact on CPU.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import math
import random
import shutil
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from ebt_scaling.config import RunSpec, TrainConfig
from ebt_scaling.data import open_data
from ebt_scaling.data.cache import Progress
from ebt_scaling.errors import ConfigError, TrainingDiverged
from ebt_scaling.models import build_model
from ebt_scaling.models.ebt import Draws
from ebt_scaling.models.flops import flops_per_token, param_counts
from ebt_scaling.records import MetricPoint, MetricSink, RunResult
from ebt_scaling.train import keyed
from ebt_scaling.train.accumulate import draws_for, forward_backward, micro_slices, step_rows
from ebt_scaling.train.checkpoint import load_checkpoint, save_checkpoint
from ebt_scaling.train.distributed import (
    Rank,
    all_reduce_sums,
    broadcast_module,
    check_world,
    gather_objects,
    rank_of,
    reduce_step,
)
from ebt_scaling.train.graphed import GraphedStep, check_cuda_graph
from ebt_scaling.train.precision import matmul_precision
from ebt_scaling.train.schedule import group_lr_at, lr_at

EVAL_SEED_OFFSET = 7919  # anything else drawn at validation uses seed + this, in a forked RNG


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


def _as_loss(out: Any) -> tuple[torch.Tensor, dict[str, Any]]:
    if isinstance(out, tuple):
        return out[0], dict(out[1])
    return out, {}


def _f(x: Any) -> float:
    return float(x.detach().float().item()) if isinstance(x, torch.Tensor) else float(x)


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def validation_batches(corpus: Any, tcfg: TrainConfig, seq_len: int) -> list[np.ndarray]:
    """The run's validation windows in batches of its batch size. With ``eval_tokens`` they are the same
    windows for every batch size (one validation set per sweep); without, ``eval_batches`` x batch size."""
    n_windows = -(-tcfg.eval_tokens // seq_len) if tcfg.eval_tokens else None
    return corpus.val_batches(tcfg.eval_batches, tcfg.batch_size, seq_len, n_windows)


def inputs_targets(batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(inputs, targets) of sample rows (B, T+1). Document-mode rows are padded with -100 (the models' ignore
    index): the targets keep it, so pads drop out of the CE; the inputs get token 0 there (a pad input
    sits after every real position of its row, which causal attention never lets a real position see)."""
    return batch[:, :-1].clamp(min=0), batch[:, 1:]


def evaluate(model: torch.nn.Module, batches: list[torch.Tensor], *, seed: int, device: torch.device,
             autocast: Callable[[], Any], family: str, micro_batch_size: int | None = None,
             rank: Rank | None = None) -> dict[str, float]:
    """Token-weighted validation CE (nats) and, for the EBT, initial-step CE and energy gap. Batches run in
    micro-batches of ``micro_batch_size`` rows; the EBT's noise is keyed by (seed, window index in the validation
    set), so neither the batch size nor the split changes it. With ``rank`` (data-parallel workers) each rank
    evaluates its slice of every batch and the sums are reduced: every rank returns the same numbers."""
    was_training = model.training
    model.eval()
    sums: dict[str, float] = {}
    n_tok = 0
    devices = [device.index if device.index is not None else torch.cuda.current_device()] \
        if device.type == "cuda" else []
    # The EBT's energy descent needs autograd even at evaluation; the model enables it internally when
    # asked under no_grad, but we simply leave grad mode on for it (no backward is ever run here).
    grad_ctx = torch.no_grad if family == "transformer_pp" else contextlib.nullcontext
    try:
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(seed + EVAL_SEED_OFFSET)
            window = 0
            for whole in batches:
                own = rank.shard(whole.shape[0]) if rank is not None else slice(None)
                batch = whole[own]
                window += own.start or 0
                slices = micro_slices(batch.shape[0], micro_batch_size) if batch.shape[0] else []
                for sl in slices:
                    b = batch[sl]
                    idx, tgt = inputs_targets(b)
                    with grad_ctx(), autocast():
                        if family == "ebt":
                            rows = range(window, window + b.shape[0])
                            gens = [keyed.generator(idx.device, seed, keyed.EVAL, w) for w in rows]
                            draws = model.draw(gens, idx.shape[1], model.landscapes(False), idx.device, train=False)
                            loss, info = _as_loss(model.loss(idx, tgt, draws))
                        else:
                            loss, info = _as_loss(model.loss(idx, tgt))
                    window += b.shape[0]
                    n = int((tgt != -100).sum())
                    n_tok += n
                    vals = {"val_loss": _f(info.get("ce", loss))}
                    if "ce_initial" in info:
                        vals["val_loss_initial"] = _f(info["ce_initial"])
                    if "energy_initial" in info and "energy_final" in info:
                        vals["val_energy_gap"] = _f(info["energy_initial"]) - _f(info["energy_final"])
                    for k, v in vals.items():
                        sums[k] = sums.get(k, 0.0) + v * n
                window += whole.shape[0] - (own.stop if own.stop is not None else whole.shape[0])
    finally:
        model.train(was_training)
    if rank is not None:
        sums, n_tok = all_reduce_sums(sums, n_tok, ("val_loss", "val_loss_initial", "val_energy_gap"), rank, device)
    out = {k: v / max(1, n_tok) for k, v in sums.items()}
    out["val_ppl"] = math.exp(out["val_loss"]) if out["val_loss"] < 700 else math.inf
    return out


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
    shape never triggers a recompile). The T++: ``model.loss`` compiled. The EBT: ``model.loss`` with its
    differentiable part compiled (``EBT.compile_loss``: descent and CEs as one graph, the inner gradient by
    ``torch.func.grad``); its host decisions (step count, replay buffer) and the finiteness check stay eager.
    The first call compiles (minutes on a 2-core CPU, mostly the C++ or Triton builds of the fused kernels,
    cached by torch for later runs on the same machine); S2 compiles once per step count and batch shape."""
    if model.cfg.family == "ebt":
        model.compile_loss()
        return model.loss
    return torch.compile(model.loss, dynamic=False)


def _with_matmul_precision(fn: Callable[..., RunResult]) -> Callable[..., RunResult]:
    """Run ``train`` under its spec's float32 matmul precision (TF32 flags set for the run, then restored)."""

    @functools.wraps(fn)
    def wrapper(spec: RunSpec, *args: Any, **kwargs: Any) -> RunResult:
        with matmul_precision(resolve_device(spec.train.device), spec.train.precision):
            return fn(spec, *args, **kwargs)

    return wrapper


@_with_matmul_precision
def train(spec: RunSpec, sink: MetricSink, *, resume_from: str | None = None,
          on_step: Callable[[dict[str, Any]], None] | None = None,
          data_progress: Progress | None = None, process_group: Any = None) -> RunResult:
    """Train ``spec`` and report to ``sink``; returns the RunResult (status ``completed`` or ``diverged``).

    ``resume_from``: a checkpoint folder (or a checkpoint root with ``LATEST``) written by a run of the same
    spec; the run continues after its step and reproduces the uninterrupted run exactly on CPU.
    ``on_step``: optional callback after every optimizer step (CLI progress), given a small dict.
    ``data_progress``: callback for corpus-preparation messages (default: stderr).
    ``process_group``: a ``torch.distributed`` process group of N > 1 data-parallel workers, this process one of
    them (train/distributed.py): each rank trains on its slice of every batch, gradients and metrics are
    all-reduced, and every rank calls its sink at the same points (give ranks > 0 a ``NullSink``); only rank 0
    writes checkpoint files. ``None`` (or a group of one): plain training.
    """
    t_wall0 = time.perf_counter()
    mcfg, tcfg = spec.model, spec.train
    device = resolve_device(tcfg.device)
    check_cuda_graph(spec, device)  # before any data is prepared
    check_compile(spec, device)
    if tcfg.threads and device.type == "cpu":
        torch.set_num_threads(tcfg.threads)
    autocast = autocast_context(device, tcfg.precision)
    T, B = mcfg.sequence_len, tcfg.batch_size
    dp = rank_of(process_group)
    if dp is not None and dp.world == 1:
        dp = None
    if dp is not None:
        check_world(spec, dp)
    lead = dp is None or dp.rank == 0  # writes checkpoint files

    corpus = open_data(spec.data, T, seed=tcfg.seed, progress=data_progress)
    if corpus.vocab_size > mcfg.vocab_size:
        raise ConfigError(f"ModelConfig.vocab_size: {mcfg.vocab_size} is smaller than the corpus vocabulary "
                          f"({corpus.vocab_size}); set the model's vocab_size to {corpus.vocab_size}")

    _seed_everything(tcfg.seed)
    data_rng = np.random.default_rng(tcfg.seed)
    model = build_model(mcfg).to(device)
    if dp is not None:
        broadcast_module(model, dp)
    model.train()
    groups = model.optim_groups(tcfg.weight_decay)
    for g in groups:
        g.setdefault("lr_mult", 1.0)
        g["lr"] = 0.0
    optimizer = torch.optim.AdamW(groups, lr=0.0, betas=(tcfg.beta1, tcfg.beta2), weight_decay=tcfg.weight_decay,
                                  fused=True)  # one kernel per update, CPU and CUDA (docs/training.md)
    params = [p for g in optimizer.param_groups for p in g["params"]]

    step_autocast = autocast_context(device, tcfg.precision, cache=not tcfg.cuda_graph)
    loss_fn = compiled_loss(model) if tcfg.compile else model.loss
    is_ebt = mcfg.family == "ebt"
    landscapes: tuple[int, ...] = ()  # of the current step (fixed for the recipes a CUDA graph allows)

    def captured_step(idx: torch.Tensor, tgt: torch.Tensor, *draw_tensors: torch.Tensor | None
                      ) -> tuple[torch.Tensor, dict[str, Any], torch.Tensor]:
        """The whole batch in one forward + backward + clip (what ``GraphedStep`` captures)."""
        with step_autocast():
            if is_ebt:
                loss, info = _as_loss(loss_fn(idx, tgt, Draws(landscapes, *draw_tensors)))
            else:
                loss, info = _as_loss(loss_fn(idx, tgt))
        loss.backward()
        return loss, info, torch.nn.utils.clip_grad_norm_(params, tcfg.grad_clip)

    def run_step(idx: torch.Tensor, tgt: torch.Tensor, step: int) -> tuple[torch.Tensor, dict[str, Any], torch.Tensor]:
        nonlocal landscapes
        if dp is not None:  # this rank's slice of the global batch; draws keyed by the global sample index
            sl = dp.shard(idx.shape[0])
            rows = step_rows(model, idx[sl], tgt[sl], seed=tcfg.seed, step=step, row_offset=sl.start, rank=dp.rank)
            error: TrainingDiverged | None = None
            try:
                loss, info = forward_backward(model, loss_fn, rows, seed=tcfg.seed, micro=tcfg.micro_batch_size,
                                              autocast=step_autocast)
            except TrainingDiverged as exc:  # every rank must reach the collective; reduce_step re-raises
                loss, info, error = None, {}, exc
            loss, info = reduce_step(params, rows.tgt, rows.idx.shape[0], loss, info, error, dp)
            return loss, info, torch.nn.utils.clip_grad_norm_(params, tcfg.grad_clip)
        rows = step_rows(model, idx, tgt, seed=tcfg.seed, step=step)
        if graphed is None:
            loss, info = forward_backward(model, loss_fn, rows, seed=tcfg.seed, micro=tcfg.micro_batch_size,
                                          autocast=step_autocast)
            return loss, info, torch.nn.utils.clip_grad_norm_(params, tcfg.grad_clip)
        landscapes = rows.landscapes
        d = draws_for(model, rows, slice(None), tcfg.seed) if is_ebt else None
        return graphed(rows.idx, rows.tgt, *((d.z0, d.noise, d.step_scale) if d is not None else ()))

    graphed = GraphedStep(captured_step, params, device) if tcfg.cuda_graph else None

    fpt = {c: flops_per_token(mcfg, c, mode="train") for c in ("paper", "exact")}
    counts = param_counts(mcfg)

    step, tokens, elapsed_before, initial_loss = 0, 0, 0.0, None
    ckpt_path: str | None = None
    last_val: dict[str, float] = {}
    last_train_loss: float | None = None
    if resume_from is not None:
        st = load_checkpoint(resume_from, spec, model, optimizer, device)
        step, tokens = int(st["step"]), int(st["tokens"])
        elapsed_before, initial_loss = float(st["elapsed"]), st["initial_loss"]
        last_val, last_train_loss = dict(st.get("last_val", {})), st.get("last_train_loss")
        ckpt_path = st["path"]
        random.setstate(st["python_rng"])
        data_rng.bit_generator.state = st["data_rng"]
        torch.set_rng_state(st["torch_rng"])
        if isinstance(getattr(model, "replay", None), list):
            per_rank = st.get("ebt_replay_ranks")
            mine = per_rank[dp.rank] if dp is not None and per_rank and len(per_rank) == dp.world \
                else st.get("ebt_replay", [])
            model.replay[:] = [tuple(t.to(device) for t in item) for item in mine]
        if device.type == "cuda" and st.get("cuda_rng") is not None:
            torch.cuda.set_rng_state_all(st["cuda_rng"])

    val_batches = [torch.from_numpy(b).to(device) for b in validation_batches(corpus, tcfg, T)]
    # Divergence reference: the first training loss. For the EBT that is the CE after one large descent step
    # from noise, often far above log V, so the explosion test is loose there; NaN/inf checks still apply.
    status, reason = "completed", None
    train_time = 0.0  # seconds spent in training steps since the last log (for tokens/s)
    interval_tokens = 0
    total_train_time = 0.0

    def wall() -> float:
        return elapsed_before + (time.perf_counter() - t_wall0)

    def trainer_state(replay_ranks: list[Any] | None = None) -> dict[str, Any]:
        return {
            "step": step, "tokens": tokens, "elapsed": wall(), "initial_loss": initial_loss,
            "last_val": last_val, "last_train_loss": last_train_loss,
            "python_rng": random.getstate(), "data_rng": data_rng.bit_generator.state,
            "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if device.type == "cuda" else None,
            # The EBT's replay buffer (S2) is plain Python state of the model: saved here so that resume
            # stays exact for the S2 recipe too.
            "ebt_replay": list(getattr(model, "replay", None) or []),
            # data-parallel: every rank's buffer (the replay buffer is per worker), rank r resumes with entry r
            "ebt_replay_ranks": replay_ranks,
            "lr_schedule": {"step": step, "lr": lr_at(max(0, step - 1), peak=tcfg.lr, warmup=tcfg.warmup_steps,
                                                      total=tcfg.schedule_length, min_div=tcfg.min_lr_div)},
        }

    def run_eval() -> None:
        nonlocal last_val
        last_val = evaluate(model, val_batches, seed=tcfg.seed, device=device, autocast=autocast,
                            family=mcfg.family, micro_batch_size=tcfg.micro_batch_size, rank=dp)
        sink.log([MetricPoint(k, step, v) for k, v in sorted(last_val.items())])

    if step >= tcfg.steps and not last_val:
        run_eval()

    while step < tcfg.steps:
        t0 = time.perf_counter()
        reason = None
        lr = lr_at(step, peak=tcfg.lr, warmup=tcfg.warmup_steps, total=tcfg.schedule_length, min_div=tcfg.min_lr_div)
        for g in optimizer.param_groups:
            g["lr"] = group_lr_at(step, peak=tcfg.lr, warmup=tcfg.warmup_steps, total=tcfg.schedule_length,
                                  min_div=tcfg.min_lr_div, lr_mult=g["lr_mult"], floor_mode=mcfg.step_size_lr_floor)
        batch_np = corpus.train_batch(step, B, T, data_rng)  # step's global batch, a function of (seed, step)
        n_real = int((batch_np[:, 1:] >= 0).sum())  # target tokens; fewer than B x T with document padding
        idx, tgt = inputs_targets(torch.from_numpy(batch_np).to(device))
        try:
            loss, info, norm = run_step(idx, tgt, step)
            grad_norm = float(norm)
            loss_v = _f(loss)
        except TrainingDiverged as exc:  # raised by the EBT's descent on a non-finite energy gradient
            loss_v, grad_norm, info = math.nan, math.nan, {}
            reason = f"{exc} (step {step + 1})"
        step += 1
        tokens += n_real
        if initial_loss is None:
            initial_loss = loss_v
        if reason is not None:
            pass
        elif not math.isfinite(loss_v):
            reason = f"non-finite training loss ({loss_v}) at step {step}"
        elif not math.isfinite(grad_norm):
            reason = f"non-finite gradient norm ({grad_norm}) at step {step}"
        elif step > tcfg.warmup_steps and loss_v > tcfg.divergence_factor * initial_loss:
            reason = (f"training loss {loss_v:.4g} exceeds {tcfg.divergence_factor:g} x the initial loss "
                      f"{initial_loss:.4g} at step {step} (after warm-up)")
        if reason is None:
            optimizer.step()
        if graphed is None or not graphed.captured:
            optimizer.zero_grad(set_to_none=True)  # a captured step overwrites its gradient buffers instead
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        dt = time.perf_counter() - t0
        train_time += dt
        total_train_time += dt
        interval_tokens += n_real
        last_train_loss = loss_v

        if reason is not None or step % tcfg.log_interval == 0 or step == tcfg.steps:
            tps = interval_tokens / train_time if train_time > 0 else 0.0
            pts = {"train_loss": loss_v, "lr": lr, "grad_norm": grad_norm, "tokens": float(tokens),
                   "flops_paper": tokens * fpt["paper"], "flops_exact": tokens * fpt["exact"],
                   "tokens_per_s": tps, "wall_time_s": wall()}
            if is_ebt:
                if "ce" in info:
                    pts["train_ce"] = _f(info["ce"])
                if "ce_initial" in info:
                    pts["train_ce_initial"] = _f(info["ce_initial"])
                if "alpha" in info:
                    pts["alpha"] = _f(info["alpha"])
            sink.log([MetricPoint(k, step, float(v)) for k, v in pts.items()])
            train_time, interval_tokens = 0.0, 0
        if reason is None and ((tcfg.eval_interval and step % tcfg.eval_interval == 0) or step == tcfg.steps):
            run_eval()
        if on_step is not None:  # after this step's validation, so progress shows it at once
            on_step({"step": step, "steps": tcfg.steps, "loss": loss_v, "lr": lr, "grad_norm": grad_norm,
                     "tokens": tokens, "tokens_per_s": n_real / dt if dt > 0 else 0.0,
                     "val_loss": last_val.get("val_loss")})
        if reason is not None:
            status = "diverged"
            break
        if spec.checkpoint_dir and ((tcfg.checkpoint_interval and step % tcfg.checkpoint_interval == 0)
                                    or step == tcfg.steps):
            replay_ranks = None
            if dp is not None and getattr(model, "replay", None) is not None and mcfg.replay_buffer_size:
                replay_ranks = gather_objects([tuple(t.cpu() for t in item) for item in model.replay], dp)
            if lead:
                ckpt_path = save_checkpoint(spec.checkpoint_dir, step, spec, model, optimizer,
                                            trainer_state(replay_ranks))
                sink.checkpoint(ckpt_path, step)
            else:  # rank 0 wrote it; the call keeps every rank's sink in step (see train/distributed.py)
                sink.checkpoint("", step)

    extra: dict[str, Any] = {"unigram_loss": corpus.unigram_entropy(), "initial_loss": initial_loss,
                             "train_tokens_available": int(corpus.train_tokens),
                             "tokens_per_s": (tokens / total_train_time) if total_train_time > 0 else None,
                             "resumed_from": resume_from}
    if graphed is not None:  # how many steps ran as graph replays (the first few are eager)
        extra["cuda_graph_replays"] = graphed.replays
    if corpus.entropy_rate is not None:
        extra["entropy_rate"] = corpus.entropy_rate
    for k in ("val_loss_initial", "val_energy_gap"):
        if k in last_val:
            extra[k] = last_val[k]
    return RunResult(
        status=status, steps=step, tokens=tokens, final_train_loss=last_train_loss,
        final_val_loss=last_val.get("val_loss"), final_val_ppl=last_val.get("val_ppl"),
        wall_time_s=wall(),
        params=counts, flops_per_token=fpt, reason=reason, checkpoint_dir=ckpt_path,
        device=str(device), extra=extra,
    )
