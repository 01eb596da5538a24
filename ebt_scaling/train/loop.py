"""``train(spec, sink) -> RunResult``: one training run, knowing nothing of Ray or the database.

Per optimizer step ``s = 1..steps``: set the LR of every group to ``lr_at(s - 1)`` (a schedule over
``schedule_steps``, default ``steps``; the run may stop before the schedule ends), times ``lr_mult`` for the EBT's
alpha group with the floor its ``step_size_lr_floor`` names (``schedule.group_lr_at``); draw the step's batch of
``batch_size`` samples of ``sequence_len + 1`` tokens (``open_data(...).train_batch``: packed windows or padded
documents, docs/data.md; tokens count real targets only) or, for a video model (``ModelConfig.frame_dim``), of
``sequence_len + 1`` frame embeddings (``data/video_data.py``; the ``tokens`` count is then predicted frames);
forward and backward over micro-batches of
``micro_batch_size`` rows, the EBT's random inputs keyed by (seed, step, sample) (``accumulate.forward_backward``;
bf16 autocast on CUDA, fp32 on CPU); clip the accumulated gradient's norm (the pre-clip norm is recorded); check
for divergence; AdamW step. Then, in this order: metric points (every ``log_interval`` steps and the last),
validation (every ``eval_interval`` steps and the last), checkpoint (every ``checkpoint_interval`` steps and the
last, when ``spec.checkpoint_dir`` is set).

``train()`` reads top to bottom and hands each phase to a part: ``runtime.py`` (device, autocast, compile,
seeding), ``state.py`` (``TrainState``: model, optimizer, schedule, counters, RNG states and the EBT's replay buffer,
with ``state_dict``/``load_state_dict``), ``step.py`` (``TrainStep``: eager, CUDA-graphed or data-parallel),
``evaluation.py`` (``Validation``: the fixed validation set, token-weighted CE), ``modality.py`` (what text and
video differ in: the validation loss entry, perplexity, FLOPs per unit, parameter counts, the baselines),
``checkpoint.py``
(``Checkpointer``: save and restore), ``distributed.py`` (the collectives). The local multi-process launcher sits
above this module, in ``launch.py``. The loop itself knows no model family and no modality.
"""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from ebt_scaling.config import RunSpec, TrainConfig
from ebt_scaling.data import open_data
from ebt_scaling.data.cache import Progress
from ebt_scaling.errors import ConfigError
from ebt_scaling.models import build_model
from ebt_scaling.records import MetricPoint, MetricSink, RunResult
from ebt_scaling.train.checkpoint import Checkpointer
from ebt_scaling.train.distributed import broadcast_module, data_parallel
from ebt_scaling.train.evaluation import Validation, evaluate, validation_batches
from ebt_scaling.train.graphed import check_cuda_graph
from ebt_scaling.train.modality import inputs_targets, modality_of, target_count
from ebt_scaling.train.precision import matmul_precision
from ebt_scaling.train.runtime import (
    autocast_context,
    check_compile,
    compiled_loss,
    resolve_device,
    scalar,
    seed_everything,
)
from ebt_scaling.train.schedule import Schedule
from ebt_scaling.train.state import TrainState, build_optimizer
from ebt_scaling.train.step import StepOutcome, TrainStep

# Names other modules and benchmarks import from here (their homes are the parts above).
__all__ = ["train", "evaluate", "validation_batches", "inputs_targets", "resolve_device", "autocast_context",
           "check_compile", "compiled_loss"]


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
    started = time.perf_counter()
    mcfg, tcfg = spec.model, spec.train
    device = resolve_device(tcfg.device)
    check_cuda_graph(spec, device)  # before any data is prepared
    check_compile(spec, device)
    if tcfg.threads and device.type == "cpu":
        torch.set_num_threads(tcfg.threads)
    dp = data_parallel(spec, process_group)
    corpus = _open_corpus(spec, data_progress)

    seed_everything(tcfg.seed)
    data_rng = np.random.default_rng(tcfg.seed)  # the data order: a function of (seed, step)
    model = build_model(mcfg).to(device)
    if dp is not None:
        broadcast_module(model, dp)
    model.train()
    state = TrainState(model, build_optimizer(model, tcfg), Schedule.of(spec), data_rng, device, dp, started)
    train_step = TrainStep(model, state.optimizer, tcfg, device, dp)
    checkpoints = Checkpointer(spec, sink, lead=dp is None or dp.rank == 0)  # only rank 0 writes files
    if resume_from is not None:
        checkpoints.restore(state, resume_from)
    validation = Validation(model, corpus, tcfg, mcfg.sequence_len, device,
                            autocast_context(device, tcfg.precision), sink, dp)
    fpt = {c: modality_of(mcfg).flops_per_unit(mcfg, c, mode="train") for c in ("paper", "exact")}
    meter = _Meter()
    status, reason = "completed", None
    if state.step >= tcfg.steps and not state.last_val:  # resumed from the last step before its validation
        state.last_val = validation.run(state.step)

    while state.step < tcfg.steps:
        t0 = time.perf_counter()
        lr = state.schedule.apply(state.optimizer, state.step)
        batch = corpus.train_batch(state.step, tcfg.batch_size, mcfg.sequence_len, state.data_rng)  # global batch
        n_real = target_count(torch.from_numpy(batch[:, 1:]))  # targets; fewer than B x T with document padding
        out = train_step(*inputs_targets(torch.from_numpy(batch).to(device)), state.step)
        state.step += 1
        state.tokens += n_real
        if state.initial_loss is None:
            state.initial_loss = out.loss
        reason = out.reason or _divergence(out, state.step, state.initial_loss, tcfg)
        train_step.update(apply=reason is None)  # AdamW unless diverged
        dt = meter.add(time.perf_counter() - t0, n_real)
        state.last_train_loss = out.loss

        if reason is not None or state.step % tcfg.log_interval == 0 or state.step == tcfg.steps:
            sink.log(_train_points(model, out, lr, state, fpt, meter.rate()))
        if reason is None and validation.due(state.step):
            state.last_val = validation.run(state.step)
        if on_step is not None:  # after this step's validation, so progress shows it at once
            on_step({"step": state.step, "steps": tcfg.steps, "loss": out.loss, "lr": lr, "grad_norm": out.grad_norm,
                     "tokens": state.tokens, "tokens_per_s": n_real / dt if dt > 0 else 0.0,
                     "val_loss": state.last_val.get("val_loss")})
        if reason is not None:
            status = "diverged"
            break
        if checkpoints.due(state.step):
            checkpoints.save(state)
    return _result(spec, state, status, reason, corpus, validation, fpt, meter, train_step, resume_from)


def _open_corpus(spec: RunSpec, progress: Progress | None) -> Any:
    corpus = open_data(spec.data, spec.model.sequence_len, seed=spec.train.seed, progress=progress,
                       frame_dim=spec.model.frame_dim)  # a video model's frames; refuses the other modality's source
    if corpus.vocab_size > spec.model.vocab_size:
        raise ConfigError(f"ModelConfig.vocab_size: {spec.model.vocab_size} is smaller than the corpus vocabulary "
                          f"({corpus.vocab_size}); set the model's vocab_size to {corpus.vocab_size}")
    return corpus


def _divergence(out: StepOutcome, step: int, initial_loss: float, tcfg: TrainConfig) -> str | None:
    """Why the run diverged at ``step`` (1-based), or None. Reference: the first training loss; for the EBT that is
    the CE after one large descent step from noise, often far above log V, so the explosion test is loose there;
    the NaN/inf checks still apply."""
    if not math.isfinite(out.loss):
        return f"non-finite training loss ({out.loss}) at step {step}"
    if not math.isfinite(out.grad_norm):
        return f"non-finite gradient norm ({out.grad_norm}) at step {step}"
    if step > tcfg.warmup_steps and out.loss > tcfg.divergence_factor * initial_loss:
        return (f"training loss {out.loss:.4g} exceeds {tcfg.divergence_factor:g} x the initial loss "
                f"{initial_loss:.4g} at step {step} (after warm-up)")
    return None


class _Meter:
    """Seconds and tokens of the training steps: since the last log (``rate``) and in this session."""

    def __init__(self) -> None:
        self.seconds, self.tokens, self.total_seconds = 0.0, 0, 0.0

    def add(self, seconds: float, tokens: int) -> float:
        self.seconds += seconds
        self.total_seconds += seconds
        self.tokens += tokens
        return seconds

    def rate(self) -> float:
        """Tokens/s since the last call."""
        tps = self.tokens / self.seconds if self.seconds > 0 else 0.0
        self.seconds, self.tokens = 0.0, 0
        return tps


def _train_points(model: torch.nn.Module, out: StepOutcome, lr: float, state: TrainState, fpt: dict[str, float],
                  tokens_per_s: float) -> list[MetricPoint]:
    """The step's training metrics, and those the model adds (``model.logged_metrics``: the EBT's CEs, alpha)."""
    tokens = state.tokens
    pts = {"train_loss": out.loss, "lr": lr, "grad_norm": out.grad_norm, "tokens": float(tokens),
           "flops_paper": tokens * fpt["paper"], "flops_exact": tokens * fpt["exact"],
           "tokens_per_s": tokens_per_s, "wall_time_s": state.wall()}
    pts.update({name: scalar(out.info[k]) for k, name in model.logged_metrics.items() if k in out.info})
    return [MetricPoint(k, state.step, float(v)) for k, v in pts.items()]


def _result(spec: RunSpec, state: TrainState, status: str, reason: str | None, corpus: Any, validation: Validation,
            fpt: dict[str, float], meter: _Meter, train_step: TrainStep, resume_from: str | None) -> RunResult:
    """The run's result; ``extra`` starts with the baselines (text ``unigram_loss``, video ``copy_loss`` and
    ``mean_loss``: ``modality.py``)."""
    extra: dict[str, Any] = {**validation.baselines(), "initial_loss": state.initial_loss,
                             "train_tokens_available": int(corpus.train_tokens),
                             "tokens_per_s": (state.tokens / meter.total_seconds) if meter.total_seconds > 0 else None,
                             "resumed_from": resume_from}
    if train_step.graph_replays is not None:  # how many steps ran as graph replays (the first few are eager)
        extra["cuda_graph_replays"] = train_step.graph_replays
    if corpus.entropy_rate is not None:
        extra["entropy_rate"] = corpus.entropy_rate
    extra.update({k: state.last_val[k] for k in ("val_loss_initial", "val_energy_gap", "val_select_loss")
                  if k in state.last_val})
    if getattr(state.model, "alpha_died", False):  # a learnable alpha stuck at its floor, gradient-less (issue 28.7b)
        extra["alpha_died"] = 1.0  # a number, so that it reaches the run's summary metrics in the database
        extra["alpha_final"] = float(state.model.alpha.detach())
    return RunResult(
        status=status, steps=state.step, tokens=state.tokens, final_train_loss=state.last_train_loss,
        final_val_loss=state.last_val.get("val_loss"), final_val_ppl=state.last_val.get("val_ppl"),
        wall_time_s=state.wall(), params=modality_of(spec.model).param_counts(spec.model), flops_per_token=fpt,
        reason=reason,        checkpoint_dir=state.path, device=str(state.device), extra=extra,
    )
