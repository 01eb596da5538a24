"""Transformer++: the feed-forward baseline (ebt-paper.md section 10).

Shape legend: B batch, T sequence, D width, V vocabulary.

Token embedding V->D, L Llama blocks (pre-norm RMSNorm, RoPE, SwiGLU with hidden = cfg.ffn_dim, no
biases; ``layers.Block``), final RMSNorm, an untied output head D->V. Xavier-normal init on every linear
layer.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from ebt_scaling.config import ModelConfig
from ebt_scaling.errors import ConfigError
from ebt_scaling.models.layers import Block, RMSNorm, Rotary, check_attn_impl, init_linear_xavier


class TransformerPP(nn.Module):
    """``model(idx)`` -> logits (B, T, V); ``model.loss(idx, targets, draws=None)`` -> (CE, info).

    ``attn_impl``: ``"sdpa"`` (fused kernel, default) or ``"math"`` (explicit matmul/softmax, as the EBT's
    prediction stream; for like-for-like timing and FLOP counting). Assign ``model.attn_impl`` at any time.

    The training loop treats both families alike (``loss``, ``landscapes``, ``draw``, ``compile_loss``,
    ``logged_metrics``, ``optim_groups``); the T++ has no random inputs, so its ``draw`` returns None.
    """

    logged_metrics: ClassVar[dict[str, str]] = {}  # info key -> training metric (the CE is the loss itself)

    def __init__(self, cfg: ModelConfig, attn_impl: str = "sdpa") -> None:
        super().__init__()
        if cfg.family != "transformer_pp":
            raise ConfigError(f"family: TransformerPP got {cfg.family!r}; build it with family='transformer_pp'")
        self.cfg = cfg
        self.attn_impl = check_attn_impl(attn_impl)
        self.tok_embeddings = nn.Embedding(cfg.vocab_size, cfg.n_embd)
        self.layers = nn.ModuleList(Block(cfg.n_embd, cfg.n_head, cfg.ffn_dim, cfg.norm_eps)
                                    for _ in range(cfg.n_layer))
        self.norm = RMSNorm(cfg.n_embd, cfg.norm_eps)
        self.output = nn.Linear(cfg.n_embd, cfg.vocab_size, bias=False)
        self.rotary = Rotary(cfg.head_dim, cfg.sequence_len, cfg.rope_theta)
        init_linear_xavier(self)
        self._compiled_ce: Any = None  # set by compile_loss()

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        """idx: (B, T) token ids -> next-token logits (B, T, V)."""
        impl = check_attn_impl(self.attn_impl)
        rope = self.rotary(0, idx.shape[1])
        h = self.tok_embeddings(idx)  # (B, T, D)
        for layer in self.layers:
            h = layer(h, rope, impl)
        return self.output(self.norm(h))

    def loss(self, idx: torch.Tensor, targets: torch.Tensor, draws: None = None) -> tuple[torch.Tensor, dict]:
        """Mean next-token cross-entropy in nats; targets equal to -100 are ignored. ``draws``: ignored (what
        ``draw`` returns, None; the argument is there so that both families take the same call)."""
        train = self._compiled_ce is not None and self.training and torch.is_grad_enabled()
        ce = (self._compiled_ce if train else self._ce)(idx, targets)
        return ce, {"ce": ce.detach()}

    def _ce(self, idx: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        logits = self(idx)  # (B, T, V)
        return F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), ignore_index=-100)

    def compile_loss(self, **options: Any) -> None:
        """Run the training loss (``loss`` in training mode with grad on) under ``torch.compile`` from now on;
        evaluation stays eager, so its batch shape never triggers a recompile."""
        self._compiled_ce = torch.compile(self._ce, dynamic=False, **({"options": options} if options else {}))

    def landscapes(self, train: bool, generator: torch.Generator | None = None) -> list[int]:
        """No inner steps (the EBT's landscapes per step): an empty list."""
        return []

    def draw(self, generators: Sequence[torch.Generator | None], t: int, landscapes: Sequence[int], device: Any, *,
             train: bool, starts: Sequence[torch.Tensor | None] | None = None) -> None:
        """No random inputs: None (reads none of ``generators``)."""
        return None

    def optim_groups(self, weight_decay: float) -> list[dict]:
        """One AdamW group: weight decay on every parameter (the paper's single group)."""
        return [{"params": [p for p in self.parameters() if p.requires_grad], "weight_decay": weight_decay,
                 "lr_mult": 1.0}]
