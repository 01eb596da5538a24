"""What a run's modality changes in the loop, in one place: text (tokens) or video (frame embeddings; issue 31).

``modality_of(ModelConfig)`` (``cfg.modality``: "video" when ``frame_dim`` is set) gives a ``Modality``:

  unit           what one predicted position is ("token" or "frame"); the ``tokens`` metric counts them
  val_key        the loss info entry validation averages (``ce`` for text, ``smooth_l1`` for video; the EBT's
                 final step), and ``initial_key`` its first-step twin (``val_loss_initial``)
  perplexity     whether ``val_ppl`` = exp(val_loss) is reported (text only)
  flops_per_unit FLOPs per predicted unit (``flops.flops_per_token`` / ``video_flops.video_flops_per_frame``)
  param_counts   the model's parameter groups (``non_embedding`` and ``total`` in both)
  baselines      the result's reference losses: text ``unigram_loss``; video ``copy_loss`` and ``mean_loss``
  think_measure  what ``ebt-scale think`` reports (``ppl`` or ``smooth_l1``), from ``unit_losses`` (per predicted
                 unit) and ``from_mean_loss``

The sample rows themselves say how they split and count (``inputs_targets``, ``target_count``): integer rows
(B, T+1) are tokens, padded with -100 in document mode; float rows (B, T+1, E) are frame embeddings, every target
frame real. So the step, the micro-batches and the data-parallel ranks need no modality at all.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from ebt_scaling.config import ModelConfig
from ebt_scaling.models.flops import flops_per_token, param_counts
from ebt_scaling.models.layers import upcast
from ebt_scaling.models.video_flops import video_flops_per_frame, video_param_counts

PAD = -100  # the token rows' padding (data/sampler.py), the models' ignore index


def inputs_targets(batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(inputs, targets) of sample rows. Tokens (B, T+1): document-mode rows are padded with -100 (the models'
    ignore index): the targets keep it, so pads drop out of the CE; the inputs get token 0 there (a pad input
    sits after every real position of its row, which causal attention never lets a real position see).
    Frames (B, T+1, E): frames 0..T-1 and 1..T."""
    if batch.is_floating_point():
        return batch[:, :-1], batch[:, 1:]
    return batch[:, :-1].clamp(min=0), batch[:, 1:]


def target_count(tgt: torch.Tensor) -> int:
    """Predicted units of targets: the real (non-pad) tokens of (B, T) token targets; B x T of frame targets."""
    if tgt.is_floating_point():
        return int(tgt.shape[0] * tgt.shape[1])
    return int((tgt != PAD).sum())


@dataclass(frozen=True)
class Modality:
    name: str
    unit: str
    val_key: str
    initial_key: str
    perplexity: bool

    def flops_per_unit(self, cfg: ModelConfig, convention: str, mode: str = "train") -> float:
        if cfg.frame_dim is not None:
            return video_flops_per_frame(cfg, cfg.frame_dim, convention, mode=mode)
        return flops_per_token(cfg, convention, mode=mode)

    def param_counts(self, cfg: ModelConfig) -> dict[str, int]:
        return video_param_counts(cfg, cfg.frame_dim) if cfg.frame_dim is not None else param_counts(cfg)

    @property
    def think_measure(self) -> str:
        """What ``ebt-scale think`` reports per (steps, samples): "ppl" (text) or "smooth_l1" (video; no perplexity)."""
        return "ppl" if self.perplexity else self.val_key

    def unit_losses(self, pred: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """The loss of every predicted unit (B, T) in fp32 or wider: text, the cross-entropy (nats) of logits (B, T, V)
        against ids (B, T) (padding, -100, gives 0); video, SmoothL1 (beta 1) of embeddings (B, T, E) averaged over E,
        so the mean over units is the models' loss."""
        if self.name == "video":
            return F.smooth_l1_loss(upcast(pred), upcast(targets), reduction="none", beta=1.0).mean(-1)
        return F.cross_entropy(pred.float().flatten(0, 1), targets.flatten(), reduction="none").view(targets.shape)

    def from_mean_loss(self, mean: float) -> float:
        """The reported measure of a mean unit loss: perplexity exp(mean) (inf past exp(700)) or the loss itself."""
        if self.name == "video":
            return mean
        return math.exp(mean) if mean < 700 else math.inf

    def baselines(self, corpus: Any, n_val_windows: int) -> dict[str, float]:
        """The result's reference losses on the validation set of ``n_val_windows`` windows."""
        if self.name == "video":
            return dict(corpus.baselines(n_val_windows))
        return {"unigram_loss": corpus.unigram_entropy()}


TEXT = Modality("text", "token", "ce", "ce_initial", True)
VIDEO = Modality("video", "frame", "smooth_l1", "smooth_l1_initial", False)


def modality_of(cfg: ModelConfig) -> Modality:
    return VIDEO if cfg.modality == "video" else TEXT
