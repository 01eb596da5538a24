"""Blocks shared by the Transformer++ and the EBT (ebt-paper.md section 2.1: a Llama-2 block).

Shape legend: B batch, S rows of a stream, T predicted positions, So observed rows, H heads, Dh head size,
D width, F SwiGLU hidden width.

A textbook Llama block: pre-norm RMSNorm (computed in fp32), RoPE on queries and keys, SwiGLU, no biases.
The EBT runs the same block over two streams (``Block.observed`` and ``Block.predicted``): observed rows
never read prediction rows, so one observed pass can serve many prediction passes (ebt-paper.md section 18).

Which attention where: EBT training differentiates the prediction stream twice (the inner gradient, then the
outer loss through it), so its attention is explicit matmul + mask + fp32 softmax, which has a double
backward. The observed stream and the Transformer++ are differentiated once: they use
``F.scaled_dot_product_attention`` (fused kernels where the device has them).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ebt_scaling.errors import ConfigError

ATTN_IMPLS = ("sdpa", "math")


def upcast(x: torch.Tensor) -> torch.Tensor:
    """At least fp32 (fp64 stays fp64, so float64 gradchecks are exact)."""
    return x if x.dtype == torch.float64 else x.float()


class RMSNorm(nn.Module):
    """x / rms(x) * gain, the normalisation computed in fp32 and cast back (Llama reference code)."""

    def __init__(self, dim: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = upcast(x)
        return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)).type_as(x) * self.weight


class Rotary(nn.Module):
    """RoPE table for positions 0..max_pos-1 as (P, Dh/2, 2) = (cos, sin): pairs (2j, 2j+1) of a head rotate
    together by angle pos * theta^(-2j/Dh), as Llama's complex ``freqs_cis`` (written in reals, which every
    compiler backend can generate code for)."""

    def __init__(self, head_dim: int, max_pos: int, theta: float) -> None:
        super().__init__()
        inv = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim))
        angles = torch.outer(torch.arange(max_pos, dtype=torch.float64), inv)  # (P, Dh/2)
        self.max_pos = max_pos
        self.register_buffer("cos_sin", torch.stack((angles.cos(), angles.sin()), -1).float(), persistent=False)

    def forward(self, start: int, length: int) -> torch.Tensor:
        """The table rows of positions start..start+length-1: (length, Dh/2, 2)."""
        if start + length > self.max_pos:
            raise ConfigError(f"sequence: positions up to {start + length} exceed the model's RoPE table "
                              f"({self.max_pos}); use inputs no longer than ModelConfig.sequence_len")
        return self.cos_sin[start:start + length]


def apply_rope(x: torch.Tensor, rope: torch.Tensor) -> torch.Tensor:
    """x: (B, S, H, Dh) -> rotated, same shape and dtype (computed in at least fp32); rope: (S, Dh/2, 2)."""
    xr = upcast(x).unflatten(-1, (-1, 2))  # (B, S, H, Dh/2, 2)
    a, b = xr[..., 0], xr[..., 1]
    cos, sin = rope[..., 0].unsqueeze(1), rope[..., 1].unsqueeze(1)  # (S, 1, Dh/2)
    return torch.stack((a * cos - b * sin, a * sin + b * cos), dim=-1).flatten(-2).type_as(x)


def causal_mask(n: int, device: torch.device, offset: int = 0, cols: int | None = None) -> torch.Tensor:
    """Additive fp32 mask (n, cols): row i sees columns 0..i+offset."""
    cols = n if cols is None else cols
    i = torch.arange(n, device=device).unsqueeze(1)
    j = torch.arange(cols, device=device).unsqueeze(0)
    return torch.zeros(n, cols, device=device).masked_fill(j > i + offset, float("-inf"))


def math_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """softmax(q k^T / sqrt(Dh) + mask) v with the softmax in fp32. q: (B, H, Sq, Dh); k, v: (B, H, Sk, Dh);
    mask: additive (Sq, Sk)."""
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])  # (B, H, Sq, Sk)
    return (upcast(scores) + mask).softmax(dim=-1).to(q.dtype) @ v


def prediction_attention(q_p: torch.Tensor, k_p: torch.Tensor, v_p: torch.Tensor,
                         k_o: torch.Tensor, v_o: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Leakage-free attention of the prediction stream (ebt-paper.md section 4).

    Prediction row i attends to the observed keys that ``mask`` allows (the step token and x_0..x_i: never
    its target x_{i+1}) and to its own key (the "self slot"), in one softmax. This is the paper's
    superdiagonal construction (compute Q_p K_o^T, zero the target column, write the self score there, mask,
    split the weights) without its wasted column: the softmax arguments are the same.

    q_p, k_p, v_p: (B, H, T, Dh); k_o, v_o: (B, H, So, Dh); mask: additive (T, So) -> (B, H, T, Dh).
    """
    scale = 1.0 / math.sqrt(q_p.shape[-1])
    cross = q_p @ k_o.transpose(-2, -1) * scale  # (B, H, T, So): scores against observed rows
    self_s = (q_p * k_p).sum(-1, keepdim=True) * scale  # (B, H, T, 1): each row against itself
    att = torch.cat((upcast(cross) + mask, upcast(self_s)), dim=-1).softmax(dim=-1).to(q_p.dtype)
    att_o, att_s = att.split((k_o.shape[-2], 1), dim=-1)  # (B, H, T, So), (B, H, T, 1)
    return att_o @ v_o + att_s * v_p


class SwiGLU(nn.Module):
    """W2(silu(W1 x) * W3 x), no biases."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.w1 = nn.Linear(dim, hidden, bias=False)
        self.w2 = nn.Linear(hidden, dim, bias=False)
        self.w3 = nn.Linear(dim, hidden, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class Block(nn.Module):
    """Llama block: x + Attn(Norm(x)); x + FFN(Norm(x)). The EBT's two streams share W_q/W_k/W_v/W_o."""

    def __init__(self, dim: int, n_head: int, ffn_hidden: int, eps: float) -> None:
        super().__init__()
        self.n_head = n_head
        self.attention_norm = RMSNorm(dim, eps)
        self.wq = nn.Linear(dim, dim, bias=False)
        self.wk = nn.Linear(dim, dim, bias=False)
        self.wv = nn.Linear(dim, dim, bias=False)
        self.wo = nn.Linear(dim, dim, bias=False)
        self.ffn_norm = RMSNorm(dim, eps)
        self.feed_forward = SwiGLU(dim, ffn_hidden)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        return x.unflatten(-1, (self.n_head, -1))  # (B, S, D) -> (B, S, H, Dh)

    def kv(self, h: torch.Tensor, rope: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys (with RoPE) and values of normalised rows h (B, S, D): each (B, H, S, Dh)."""
        k = apply_rope(self._heads(self.wk(h)), rope).transpose(1, 2)
        return k, self._heads(self.wv(h)).transpose(1, 2)

    def qkv(self, x: torch.Tensor, rope: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Queries, keys, values of rows x (B, S, D), each (B, H, S, Dh), RoPE on queries and keys."""
        h = self.attention_norm(x)
        q = apply_rope(self._heads(self.wq(h)), rope).transpose(1, 2)
        return (q, *self.kv(h, rope))

    def finish(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Attention output y (B, H, S, Dh) -> the block's output rows (B, S, D)."""
        x = x + self.wo(y.transpose(1, 2).flatten(2))  # (B, H, S, Dh) -> (B, S, D)
        return x + self.feed_forward(self.ffn_norm(x))

    def forward(self, x: torch.Tensor, rope: torch.Tensor, attn_impl: str = "sdpa") -> torch.Tensor:
        """Causal block (Transformer++, and the EBT's observed rows). x: (B, S, D)."""
        q, k, v = self.qkv(x, rope)
        if attn_impl == "sdpa":
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:
            y = math_attention(q, k, v, causal_mask(x.shape[1], x.device))
        return self.finish(x, y)

    # -- EBT ---------------------------------------------------------------------------------------------
    def observed(self, x: torch.Tensor, rope: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Observed rows, causal among themselves: (new x, k, v); k/v feed the prediction stream."""
        q, k, v = self.qkv(x, rope)
        return self.finish(x, F.scaled_dot_product_attention(q, k, v, is_causal=True)), k, v

    def predicted(self, x: torch.Tensor, rope: torch.Tensor, k_o: torch.Tensor, v_o: torch.Tensor,
                  mask: torch.Tensor) -> torch.Tensor:
        """Prediction rows x (B, T, D): attend to the allowed observed keys and to themselves."""
        q, k, v = self.qkv(x, rope)
        return self.finish(x, prediction_attention(q, k, v, k_o, v_o, mask))


def init_linear_xavier(module: nn.Module) -> None:
    """Xavier-normal (gain 1) on every linear layer, as in the paper's code; embeddings keep N(0, 1)."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.xavier_normal_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


def check_attn_impl(impl: str) -> str:
    if impl not in ATTN_IMPLS:
        raise ConfigError(f"attn_impl: unknown value {impl!r}; use one of {', '.join(ATTN_IMPLS)}")
    return impl
