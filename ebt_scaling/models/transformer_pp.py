"""Transformer++: the feed-forward baseline (ebt-paper.md section 10).

Shape legend: B batch, T sequence, D width, V vocabulary.

Token embedding V->D, L Llama blocks (pre-norm RMSNorm, RoPE, SwiGLU with hidden = cfg.ffn_dim, no
biases; ``layers.Block``), final RMSNorm, an untied output head D->V. Xavier-normal init on every linear
layer.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ebt_scaling.config import ModelConfig
from ebt_scaling.errors import ConfigError
from ebt_scaling.models.layers import Block, RMSNorm, Rotary, check_attn_impl, init_linear_xavier


class TransformerPP(nn.Module):
    """``model(idx)`` -> logits (B, T, V); ``model.loss(idx, targets)`` -> (CE, info).

    ``attn_impl``: ``"sdpa"`` (fused kernel, default) or ``"math"`` (explicit matmul/softmax, as the EBT's
    prediction stream; for like-for-like timing and FLOP counting). Assign ``model.attn_impl`` at any time.
    """

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

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        """idx: (B, T) token ids -> next-token logits (B, T, V)."""
        impl = check_attn_impl(self.attn_impl)
        rope = self.rotary(0, idx.shape[1])
        h = self.tok_embeddings(idx)  # (B, T, D)
        for layer in self.layers:
            h = layer(h, rope, impl)
        return self.output(self.norm(h))

    def loss(self, idx: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, dict]:
        """Mean next-token cross-entropy in nats; targets equal to -100 are ignored."""
        logits = self(idx)
        ce = F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), ignore_index=-100)
        return ce, {"ce": ce.detach()}

    def optim_groups(self, weight_decay: float) -> list[dict]:
        """One AdamW group: weight decay on every parameter (the paper's single group)."""
        return [{"params": [p for p in self.parameters() if p.requires_grad], "weight_decay": weight_decay,
                 "lr_mult": 1.0}]
