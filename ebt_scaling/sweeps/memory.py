"""Peak memory per device of one training step, and the micro-batch that fits (pure Python: no torch).

Shape legend: B micro-batch (sequences per device per forward), T sequence, V vocabulary, D width, F SwiGLU
hidden width, L blocks, H heads, s = 1 with the EBT's step token (So = T + s observed rows), P parameters.

What is counted, per device, for one optimizer step of a RunSpec at micro-batch B:

* weights 4P, gradients 4P and AdamW's two moments 8P bytes: the parameters stay fp32 under bf16 autocast
  (they are the master weights; autocast casts a bf16 copy per step, counted with the activations);
* the activations: what autograd saves for the backward (``saved``) plus the transient buffers of the
  forward, backward, gradient clipping and AdamW step above that (``transient``). Both are linear in element
  counts of the run's shape (``features``) with bytes-per-element coefficients fitted to exact CPU
  measurements (``benchmarks/memory_calibration.py``; dated results in benchmarks/RESULTS.md). For the EBT the
  counts follow its inner loop: every step that keeps the second-order graph (all steps in S1; the last one
  with ``truncate_steps``, S2) holds the prediction stream's activations twice over (its forward and its inner
  backward) including the math attention's (B, H, T, So + 1) scores; each landscape's observed stream is kept
  once (fused attention); the (B, T, V) candidates, probabilities and cross-entropies of every graph step (S2's
  first-order steps hold theirs only transiently; their graphs are freed before the backward); a replay
  buffer adds ``replay_buffer_fraction`` x B replayed rows to each forward and holds its own
  ``replay_buffer_size`` x T x V fp32 logits on the device. The random step count is taken at its maximum
  (``ModelConfig.train_steps_max``);
* a margin: ``MARGIN_FRACTION`` of all the above for what a CPU calibration cannot see on a GPU (kernels'
  workspaces, autocast details; see the comparison with measured CUDA peaks in benchmarks/RESULTS.md) plus
  ``MARGIN_FIXED_GIB`` on a GPU for the CUDA context and the caching allocator's slack. On a CPU the figure is
  the tensors' memory (the process itself, Python and torch's libraries, comes on top).

Precision: the run's ``precision``; ``auto`` is bf16 autocast on a GPU and fp32 on a CPU (as the trainer).

Video models (``ModelConfig.frame_dim``, issue 31) are priced with the same coefficients, the vocabulary V read as
the frame-embedding size E (``priced_model``): the blocks, attention and descent structure are the text models'
(the same ``layers.Block``, the same S1/S2 graph), and the (B, T, V) candidates, logits and losses become (B, T, E)
embeddings. Those buffers are priced at the text models' bytes per element, which hold a softmax and a
cross-entropy the video models do not have, so that term leans high; the parameters are ``video_param_counts``.
Checked, not fitted, against exact CPU peaks of video models (``benchmarks/video_memory_check.py``, the
calibration's method, fp32, 5 small shapes per family): the EBT's estimate within 3%, the Transformer++'s 14-57%
high (``VIDEO_NOTE`` says so wherever the figure is shown).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from ebt_scaling.config import RunSpec
from ebt_scaling.errors import ConfigError

# Bytes per element of each feature, per (variant, precision) and part ("saved": autograd's saved tensors alive
# when the backward starts; "transient": the step's allocation peak above them, the weights, the gradients and
# AdamW's state), fitted by benchmarks/memory_calibration.py.
from ebt_scaling.sweeps.memory_coefficients import COEFFICIENTS

GIB = 2**30
# What the plan adds on top of the calibrated estimate (docs/sweeps.md). The estimate is exact-count calibrated on
# the CPU; against the CUDA peaks measured on the pre-issue-17 code (which kept 8-15% less for the EBT's backward)
# it came out 4-8% low (benchmarks/RESULTS.md), so up to ~15% may be CUDA's own (kernels' workspaces, autocast
# differences); 20% covers that, and 1 GiB the CUDA context and the caching allocator's slack.
MARGIN_FRACTION = 0.20
MARGIN_FIXED_GIB = 1.0
# The device memory a GPU plan assumes when none is given (an A100/H100 80 GB).
DEFAULT_GPU_MEMORY_GIB = 80.0
VIDEO_NOTE = ("video runs: the text calibration with the vocabulary read as frame_dim (checked against exact CPU peaks "
              "of small video models: EBT within 3%, Transformer++ up to 1.6x high)")


class _FramesAsVocab:
    """A video model's config read with ``vocab_size`` = its frame-embedding size (the text features' V is E)."""

    def __init__(self, model: Any) -> None:
        self._model = model
        self.vocab_size = model.frame_dim

    def __getattr__(self, name: str) -> Any:
        return getattr(self._model, name)


def priced_model(model: Any) -> Any:
    """The config the coefficients price: ``model`` itself, or for a video model the same with V read as E."""
    return _FramesAsVocab(model) if getattr(model, "frame_dim", None) is not None else model


def variant(model: Any) -> str:
    """Which coefficient set a model uses: the Transformer++, the EBT keeping every step's graph (S1-like) or
    only the last one's (``truncate_steps``, S2-like)."""
    if model.family == "transformer_pp":
        return "transformer_pp"
    return "ebt_truncated" if model.truncate_steps else "ebt_full"


def precision_of(spec: RunSpec, device: str) -> str:
    """The precision the trainer uses for ``spec`` on ``device`` ("gpu" or "cpu")."""
    p = spec.train.precision
    if p == "auto":
        return "bf16" if device == "gpu" else "fp32"
    return p


def replayed_rows(model: Any, batch: int) -> int:
    """Rows one training forward of ``batch`` fresh sequences runs (the replay buffer adds a fraction)."""
    if model.family == "ebt" and model.replay_buffer_size:
        return batch + min(int(model.replay_buffer_fraction * batch), model.replay_buffer_size)
    return batch


def features(model: Any, batch: int) -> dict[str, float]:
    """Element counts of one training forward of ``batch`` sequences whose bytes the coefficients price."""
    t, d, f, n_layer, h, v = (model.sequence_len, model.n_embd, model.ffn_dim, model.n_layer, model.n_head,
                              model.vocab_size)
    w = n_layer * (4 * d * d + 3 * d * f) + v * d  # linear weights (autocast's bf16 copies)
    if model.family == "transformer_pp":
        b = batch
        return {"l_d": n_layer * b * t * d, "l_f": n_layer * b * t * f, "l_h": n_layer * b * h * t,
                "v": b * t * v, "d": b * t * d, "w": w}
    b = replayed_rows(model, batch)
    s = 1 if model.step_embedding else 0
    so = t + s
    steps = model.train_steps_max
    graph_steps = 1 if model.truncate_steps else steps  # steps whose second-order graph the loss keeps
    landscapes = model.mcmc_num_steps if model.step_embedding else 1  # observed passes (one per landscape)
    out = {
        # prediction stream of every graph step: forward and inner backward, math attention over So + 1 keys
        "g_d": graph_steps * n_layer * b * t * d, "g_f": graph_steps * n_layer * b * t * f,
        "att": graph_steps * n_layer * b * h * t * (so + 1),
        # observed stream per landscape: L - 1 full blocks (fused attention) and the last block's keys/values
        "o_d": landscapes * (n_layer - 1) * b * so * d, "o_f": landscapes * (n_layer - 1) * b * so * f,
        "g_v": graph_steps * b * t * v, "g_0": graph_steps * b * t * d, "w": w,
    }
    if model.truncate_steps:  # every step's (B, T, V) buffers: the first-order steps' transients (their graphs
        out["s_v"] = steps * b * t * v  # are freed before the backward, and with a fixed alpha nothing chains)
    else:  # separable from g_0 only when graph steps and landscapes differ (S1)
        out["o_kv"] = landscapes * b * so * d
    return out


def param_count(model: Any) -> int:
    if getattr(model, "frame_dim", None) is not None:
        from ebt_scaling.models.video_flops import video_param_counts  # pure Python

        return int(video_param_counts(model, model.frame_dim)["total"])
    from ebt_scaling.models.flops import param_counts  # pure Python

    return int(param_counts(model)["total"])


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes per device of one training step at ``micro_batch_size``, by part; ``total_bytes`` includes the
    margin."""

    micro_batch_size: int
    precision: str
    weights_bytes: float
    gradients_bytes: float
    optimizer_bytes: float
    saved_bytes: float  # autograd's saved activations when the backward starts
    transient_bytes: float  # the step's peak above saved activations, weights, gradients and AdamW state
    replay_bytes: float  # the EBT replay buffer's stored candidates
    margin_bytes: float

    @property
    def estimate_bytes(self) -> float:
        """The calibrated estimate, before the margin (comparable to ``torch.cuda.max_memory_allocated``)."""
        return (self.weights_bytes + self.gradients_bytes + self.optimizer_bytes + self.saved_bytes
                + self.transient_bytes + self.replay_bytes)

    @property
    def total_bytes(self) -> float:
        return self.estimate_bytes + self.margin_bytes

    @property
    def total_gib(self) -> float:
        return self.total_bytes / GIB

    def parts_gib(self) -> dict[str, float]:
        """Each part in GiB (``estimate``: before the margin; ``total``: with it)."""
        return {k.removesuffix("_bytes"): round(getattr(self, k) / GIB, 4)
                for k in ("weights_bytes", "gradients_bytes", "optimizer_bytes", "saved_bytes", "transient_bytes",
                          "replay_bytes", "margin_bytes", "estimate_bytes", "total_bytes")}


def _priced(coef: dict[str, float], feats: dict[str, float]) -> float:
    return sum(coef.get(k, 0.0) * v for k, v in feats.items())


def activation_bytes(model: Any, batch: int, precision: str) -> tuple[float, float]:
    """(saved, saved + transient) activation bytes of one training step of ``batch`` sequences at ``precision``
    ("fp32" or "bf16"): what autograd keeps for the backward, and the step's peak above weights, gradients and
    AdamW state (the peak is taken with every gradient live, an upper bound)."""
    try:  # TF32 matmuls keep fp32 tensors: the fp32 coefficients
        coef = COEFFICIENTS[variant(model)]["fp32" if precision == "tf32" else precision]
    except KeyError:
        raise ConfigError(f"memory plan: no calibration for {variant(model)} at precision {precision!r}; "
                          "use fp32 or bf16") from None
    feats = features(priced_model(model), batch)
    saved = _priced(coef["saved"], feats)
    return saved, saved + max(0.0, _priced(coef["transient"], feats))


def estimate_memory(spec: RunSpec, micro_batch_size: int, *, device: str = "gpu") -> MemoryEstimate:
    """Peak memory per device of one training step of ``spec`` at ``micro_batch_size`` sequences per forward
    on ``device`` ("gpu" or "cpu": it decides what precision ``auto`` means)."""
    if micro_batch_size < 1:
        raise ConfigError(f"memory plan: micro-batch must be >= 1, got {micro_batch_size}")
    m = spec.model
    precision = precision_of(spec, device)
    n = param_count(m)
    saved, peak = activation_bytes(m, micro_batch_size, precision)
    replay = 0.0
    if m.family == "ebt" and m.replay_buffer_size:  # (tokens, targets, final fp32 logits) per stored sample
        replay = float(m.replay_buffer_size * m.sequence_len * (2 * 8 + 4 * m.vocab_size))
    base = 4.0 * n + 4.0 * n + 8.0 * n + peak + replay
    return MemoryEstimate(
        micro_batch_size=micro_batch_size, precision=precision, weights_bytes=4.0 * n, gradients_bytes=4.0 * n,
        optimizer_bytes=8.0 * n, saved_bytes=saved, transient_bytes=peak - saved, replay_bytes=replay,
        margin_bytes=MARGIN_FRACTION * base + (MARGIN_FIXED_GIB * GIB if device == "gpu" else 0.0))


def divisors(n: int) -> list[int]:
    """The divisors of ``n``, ascending."""
    small = [k for k in range(1, math.isqrt(n) + 1) if n % k == 0]
    return sorted(set(small + [n // k for k in small]))


@dataclass(frozen=True)
class MemoryPlan:
    """The largest micro-batch (a divisor of the batch) whose estimate fits ``memory_gib_available``; when none
    does, ``fits`` is False and ``micro_batch_size`` is 1 (what the run would need is ``memory_gib``)."""

    memory_gib: float  # per device, at micro_batch_size, margin included
    micro_batch_size: int
    fits: bool
    memory_gib_available: float
    estimate: MemoryEstimate


def plan_micro_batch(spec: RunSpec, gpu_memory_gib: float, *, device: str = "gpu",
                     batch_size: int | None = None) -> MemoryPlan:
    """The largest divisor of the batch whose estimated peak per device fits in ``gpu_memory_gib`` (for
    ``micro_batch_size = "auto"``). ``batch_size``: the sequences one device processes per optimizer step
    (default the run's ``batch_size``; with N data-parallel workers pass batch_size / N). Each micro-batch runs
    the whole forward and backward; accumulating their gradients costs nothing beyond the gradients counted
    once."""
    if not gpu_memory_gib > 0:
        raise ConfigError(f"--gpu-memory must be > 0 GiB, got {gpu_memory_gib:g}; e.g. 80 for an A100 80GB")
    batch = spec.train.batch_size if batch_size is None else batch_size
    if batch < 1:
        raise ConfigError(f"memory plan: batch per device must be >= 1, got {batch}")
    best: MemoryEstimate | None = None
    for mb in divisors(batch):  # the estimate grows with the micro-batch: stop at the first miss
        est = estimate_memory(spec, mb, device=device)
        if est.total_gib > gpu_memory_gib:
            break
        best = est
    if best is None:
        one = estimate_memory(spec, 1, device=device)
        return MemoryPlan(memory_gib=round(one.total_gib, 4), micro_batch_size=1, fits=False,
                          memory_gib_available=gpu_memory_gib, estimate=one)
    return MemoryPlan(memory_gib=round(best.total_gib, 4), micro_batch_size=best.micro_batch_size, fits=True,
                      memory_gib_available=gpu_memory_gib, estimate=best)


def refusal(label: str, plan: MemoryPlan) -> str:
    """The one-line refusal of a run that does not fit even at micro-batch 1."""
    return (f"run {label} needs {plan.memory_gib:.1f} GiB per device at micro-batch 1, above --gpu-memory "
            f"{plan.memory_gib_available:g}; use a smaller model/sequence or more memory")
