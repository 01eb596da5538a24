"""Blocks shared by the Transformer++ and the EBT (ebt-paper.md section 2.1: a Llama-2 block).

Shape legend: B batch, T sequence (predicted positions), S rows of a stream, H heads, Dh head size,
D width, F SwiGLU hidden width.

Every attention used by the EBT is written by hand (matmul, additive mask, fp32 softmax, matmul) because
EBT training differentiates through it twice; flash / memory-efficient SDPA have no double backward
(scaling-fits.md section 12). The Transformer++ may use SDPA (``attn_impl="sdpa"``) or the same explicit
path (``attn_impl="math"``) for like-for-like timing.

The EBT block is split per stream (``Block.observed`` / ``Block.observed_kv`` and ``Block.predicted``):
observed rows never read prediction rows, so a caller can compute the observed stream once and hand its
per-layer keys/values to any number of prediction-stream passes (the reuse of ebt-paper.md section 18).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterable, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from ebt_scaling.errors import ConfigError

ATTN_IMPLS = ("sdpa", "math")

# Vocabulary-sized matmuls run at a width rounded up to a multiple of VOCAB_ALIGN once V >= VOCAB_PAD_MIN.
VOCAB_ALIGN = 64
VOCAB_PAD_MIN = 4096


def padded_vocab(v: int) -> int:
    """The width at which the models run their vocabulary-sized matmuls: V rounded up to a multiple of 64
    when V >= 4096 (at most 1.6% more columns), else V.

    GPU GEMM kernels want row strides that are multiples of 16 bytes; with an odd V such as GPT-NeoX's
    50,277 every (B, T, V) x (V, D) product falls back to unaligned kernels (measured on an H200:
    docs/models.md, GPU figures). The extra columns are exact no-ops: their logits are -inf (T++ head) or
    masked out of the softmax (EBT candidates) and their weights are zeros built at compute time, so
    parameters, checkpoints, outputs and losses keep the true V. Small vocabularies are left alone
    (padding 37 to 64 would cost more than it saves). The models pad only on the device types in their
    ``pad_vocab_on`` (default: CUDA; on CPU the padded T++ head measured slower, docs/models.md)."""
    if v < VOCAB_PAD_MIN or v % VOCAB_ALIGN == 0:
        return v
    return -(-v // VOCAB_ALIGN) * VOCAB_ALIGN


PAD_VOCAB_ON = ("cuda",)


def vocab_pad_mask(v: int, vp: int) -> torch.Tensor:
    """(vp,) additive mask: 0 for the V real columns, -inf for the padding."""
    m = torch.zeros(vp)
    m[v:] = float("-inf")
    return m


def upcast(x: torch.Tensor) -> torch.Tensor:
    """At least fp32 (fp64 stays fp64, so float64 gradchecks are exact)."""
    return x if x.dtype == torch.float64 else x.float()


class RMSNorm(nn.Module):
    """Pre-norm RMSNorm, computed in fp32 and cast back (Llama reference code)."""

    def __init__(self, dim: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.normalize(x) * self.weight

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """x / rms(x) without the gain: a caller that feeds a linear layer folds ``weight`` into that layer's
        matrix instead (``scale_columns``), one (D,)-wide product on the weights in place of one per row."""
        xf = upcast(x)
        return (xf * _InverseRms.apply(xf, self.eps)).type_as(x)


class _InverseRms(torch.autograd.Function):
    """r = 1 / sqrt(mean(x^2, -1) + eps), shape (..., 1), with a hand-written backward
    dr/dx = -(r^3 / D) x: one full-size product per backward where autograd's own derivation of pow, mean,
    add and rsqrt runs three, plus scalar-to-tensor conversions. The EBT's double backward multiplies the
    difference (aten calls per step: docs/models.md, "RMSNorm in the double backward"). The backward is built
    from differentiable ops on the saved input and output, so it supports that double backward (gradgradcheck
    in tests/test_models.py)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, eps: float) -> torch.Tensor:
        r = torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)
        ctx.save_for_backward(x, r)
        return r

    @staticmethod
    def backward(ctx, grad_r: torch.Tensor):
        x, r = ctx.saved_tensors
        return (grad_r * r.pow(3) * (-1.0 / x.shape[-1])) * x, None


def scale_columns(w: torch.Tensor, gain: torch.Tensor) -> torch.Tensor:
    """W diag(gain): F.linear(x_hat, scale_columns(W, g)) equals F.linear(x_hat * g, W) up to rounding."""
    return w * gain


class Rotary(nn.Module):
    """RoPE tables (theta from the config) for positions 0..max_pos-1, as Llama's complex rotations
    ``freqs_cis`` (P, Dh/2): pairs (2j, 2j+1) of a head rotate together. Under ``torch.compile`` the same
    table as reals (P, Dh/2, 2) = (cos, sin): Inductor generates no code for complex operators."""

    def __init__(self, head_dim: int, max_pos: int, theta: float) -> None:
        super().__init__()
        inv = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim))
        freqs = torch.outer(torch.arange(max_pos, dtype=torch.float64), inv)  # (P, Dh/2)
        self.max_pos = max_pos
        self.register_buffer("freqs_cis", torch.polar(torch.ones_like(freqs), freqs).to(torch.complex64),
                             persistent=False)
        self.register_buffer("cos_sin", torch.view_as_real(self.freqs_cis).clone(), persistent=False)

    def forward(self, start: int, length: int) -> torch.Tensor:
        if start + length > self.max_pos:
            raise ConfigError(f"sequence: positions up to {start + length} exceed the model's RoPE table "
                              f"({self.max_pos}); use inputs no longer than ModelConfig.sequence_len")
        table = self.cos_sin if torch.compiler.is_compiling() else self.freqs_cis
        return table[start:start + length]


def apply_rope(x: torch.Tensor, freqs_cis: torch.Tensor) -> torch.Tensor:
    """x: (B, S, H, Dh) -> rotated, same shape and dtype; freqs_cis: (S, Dh/2) complex, or (S, Dh/2, 2) real
    (cos, sin) under ``torch.compile`` (``Rotary``).

    One complex multiply (Llama's formulation, computed in at least fp32): far fewer autograd nodes than
    the real-valued pair arithmetic, which matters because EBT training differentiates it twice.
    """
    if not freqs_cis.is_complex():  # the same rotation in reals, for torch.compile
        xr = upcast(x).unflatten(-1, (-1, 2))  # (B, S, H, Dh/2, 2)
        f = freqs_cis.unsqueeze(1)  # (S, 1, Dh/2, 2): cos, sin
        a, b, c, s = xr[..., 0], xr[..., 1], f[..., 0], f[..., 1]
        return torch.stack((a * c - b * s, a * s + b * c), dim=-1).flatten(-2).type_as(x)
    xc = torch.view_as_complex(upcast(x).unflatten(-1, (-1, 2)))  # (B, S, H, Dh/2)
    return torch.view_as_real(xc * freqs_cis.unsqueeze(1)).flatten(-2).type_as(x)


def causal_mask(n: int, device: torch.device, offset: int = 0, cols: int | None = None) -> torch.Tensor:
    """Additive fp32 mask (n, cols): row i sees columns 0..i+offset."""
    cols = n if cols is None else cols
    i = torch.arange(n, device=device).unsqueeze(1)
    j = torch.arange(cols, device=device).unsqueeze(0)
    return torch.zeros(n, cols, device=device).masked_fill(j > i + offset, float("-inf"))


def math_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor,
                   scale: float | None = None) -> torch.Tensor:
    """Explicit attention: softmax(scale * q k^T + mask) v, softmax in fp32. Supports double backward.

    q: (B, H, Sq, Dh); k, v: (B, H, Sk, Dh); mask: additive (Sq, Sk) fp32; scale: 1/sqrt(Dh) when None
    (``Block`` passes 1.0: its queries are pre-scaled inside the RoPE rotation, one op fewer per pass).
    """
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    scores = q @ k.transpose(-2, -1)  # (B, H, Sq, Sk)
    if scale != 1.0:
        scores = scores * scale
    att = (upcast(scores) + mask).softmax(dim=-1).to(q.dtype)
    return att @ v


def prediction_attention(q_p: torch.Tensor, k_p: torch.Tensor, v_p: torch.Tensor,
                         k_o: torch.Tensor, v_o: torch.Tensor, mask: torch.Tensor,
                         scale: float | None = None) -> torch.Tensor:
    """Leakage-free attention of the prediction stream (ebt-paper.md section 4).

    Prediction row i attends to the observed keys allowed by ``mask`` (row i: observed columns up to the
    last token before its target) and to its own key (the "self slot"), in one softmax. This is the
    paper's superdiagonal construction without its wasted column: the paper computes Q_p K_o^T, zeroes the
    target entry, writes the self score there and masks; the same softmax arguments result.

    q_p, k_p, v_p: (B, H, T, Dh); k_o, v_o: (B, H, So, Dh); mask: additive (T, So); scale as in
    ``math_attention``.
    """
    scale = 1.0 / math.sqrt(q_p.shape[-1]) if scale is None else scale
    if scale != 1.0:
        q_p = q_p * scale  # (B, H, T, Dh): cheaper than scaling the (T, So) scores
    cross = q_p @ k_o.transpose(-2, -1)  # (B, H, T, So)
    self_s = (q_p * k_p).sum(-1, keepdim=True)  # (B, H, T, 1)
    att = torch.cat((upcast(cross) + mask, upcast(self_s)), dim=-1).softmax(dim=-1).to(q_p.dtype)
    # One split (its backward is a cat) rather than two slices (each backward fills a zero tensor of the
    # full score shape and copies into it): fewer kernels in the backward and double backward.
    att_o, att_s = att.split((k_o.shape[-2], 1), dim=-1)  # (B, H, T, So), (B, H, T, 1)
    return att_o @ v_o + att_s * v_p  # (B, H, T, Dh)


class SwiGLU(nn.Module):
    """W2(silu(W1 x) * W3 x), no biases."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.w1 = nn.Linear(dim, hidden, bias=False)
        self.w2 = nn.Linear(hidden, dim, bias=False)
        self.w3 = nn.Linear(dim, hidden, bias=False)

    def forward(self, x: torch.Tensor, w13: torch.Tensor | None = None) -> torch.Tensor:
        """``w13``: [W1; W3] as one (2F, D) matrix, prepared by the caller (``Block`` folds the preceding
        norm's gain into it); None builds it here."""
        # W1 and W3 stay separate parameters (the paper's layout) but run as one matmul.
        w = torch.cat((self.w1.weight, self.w3.weight)) if w13 is None else w13
        a, b = F.linear(x, w).chunk(2, dim=-1)
        return self.w2(F.silu(a) * b)


class Block(nn.Module):
    """Llama block: x + Attn(Norm(x)); x + FFN(Norm(x)). Shared W_q/W_k/W_v/W_o for both EBT streams."""

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
        self._weights: dict | None = None  # merged weights shared by the passes in a share_weights() block

    # -- merged weights ----------------------------------------------------------------------------------
    def _merged(self, name: str) -> torch.Tensor:
        """W_q/W_k/W_v ("qkv"), W_k/W_v ("kv") or W_1/W_3 ("w13") concatenated, with the preceding norm's gain
        folded in and, under autocast, cast to the autocast dtype (the cast autocast would make anyway).

        Inside ``share_weights`` every pass of the block (the EBT's observed streams, every inner step's
        prediction stream, best-of-N samples) uses one such tensor, so its concatenation, product and cast
        run, and are kept for the backward, once instead of once per pass."""
        dev = self.wq.weight.device.type
        amp = torch.get_autocast_dtype(dev) if torch.is_autocast_enabled(dev) else None
        key = (name, amp, torch.is_grad_enabled())  # one built under no_grad has no graph to the parameters
        cache = self._weights  # read once: another thread's share_weights may end meanwhile
        if cache is not None and key in cache:
            return cache[key]
        if name == "w13":
            ff = self.feed_forward
            w = scale_columns(torch.cat((ff.w1.weight, ff.w3.weight)), self.ffn_norm.weight)
        else:
            parts = (self.wk.weight, self.wv.weight)
            if name == "qkv":
                parts = (self.wq.weight, *parts)
            w = scale_columns(torch.cat(parts), self.attention_norm.weight)
        if amp is not None:
            w = w.to(amp)
        if cache is not None:
            cache[key] = w
        return w

    # -- helpers ---------------------------------------------------------------------------------------
    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        return x.unflatten(-1, (self.n_head, -1))  # (B, S, D) -> (B, S, H, Dh)

    def _merge(self, y: torch.Tensor) -> torch.Tensor:
        return y.transpose(1, 2).flatten(2)  # (B, H, S, Dh) -> (B, S, D)

    def _qkv(self, x: torch.Tensor, rope: torch.Tensor):
        """Queries (pre-scaled by 1/sqrt(Dh)), keys, values, each (B, H, S, Dh). W_q, W_k, W_v stay
        separate parameters (the paper's layout) but run as one matmul: fewer kernels in forward, backward
        and double backward. The attention scale rides on the queries' RoPE rotation (no extra op)."""
        q, k, v = F.linear(self.attention_norm.normalize(x), self._merged("qkv")).chunk(3, dim=-1)  # 3 x (B, S, D)
        dh = q.shape[-1] // self.n_head
        q = apply_rope(self._heads(q), rope * (1.0 / math.sqrt(dh))).transpose(1, 2)
        k = apply_rope(self._heads(k), rope).transpose(1, 2)
        return q, k, self._heads(v).transpose(1, 2)

    def _finish(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        x = x + self.wo(self._merge(y))
        return x + self.feed_forward(self.ffn_norm.normalize(x), self._merged("w13"))

    # -- Transformer++ ---------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor, rope: torch.Tensor, attn_impl: str = "math",
                mask: torch.Tensor | None = None) -> torch.Tensor:
        """Plain causal block. x: (B, S, D)."""
        q, k, v = self._qkv(x, rope)
        if attn_impl == "sdpa":
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=1.0)
        else:
            y = math_attention(q, k, v, causal_mask(x.shape[1], x.device) if mask is None else mask, scale=1.0)
        return self._finish(x, y)

    # -- EBT observed stream ---------------------------------------------------------------------------
    def observed(self, x: torch.Tensor, rope: torch.Tensor, mask: torch.Tensor):
        """Observed rows (causal among themselves). Returns (new x, k, v); k/v feed the prediction stream."""
        q, k, v = self._qkv(x, rope)
        return self._finish(x, math_attention(q, k, v, mask, scale=1.0)), k, v

    def observed_kv(self, x: torch.Tensor, rope: torch.Tensor):
        """Only the keys/values of the observed rows. Used in the last block, whose observed outputs never
        reach an energy (the energy head reads prediction rows only), so computing them would be waste."""
        k, v = F.linear(self.attention_norm.normalize(x), self._merged("kv")).chunk(2, dim=-1)
        return apply_rope(self._heads(k), rope).transpose(1, 2), self._heads(v).transpose(1, 2)

    # -- EBT prediction stream -------------------------------------------------------------------------
    def predicted(self, x: torch.Tensor, rope: torch.Tensor, k_o: torch.Tensor,
                  v_o: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Prediction rows: attend to allowed observed keys and to themselves. x: (B, T, D)."""
        q, k, v = self._qkv(x, rope)
        return self._finish(x, prediction_attention(q, k, v, k_o, v_o, mask, scale=1.0))


@contextlib.contextmanager
def share_weights(blocks: Iterable[Block]) -> Iterator[None]:
    """Within the block, each of ``blocks`` builds its merged weights (``Block._merged``) once and reuses them
    for every pass. Use it around work that runs the blocks several times with unchanged parameters (one
    forward/loss, one ``think``); never across an optimizer step. Re-entering is a no-op, so the outermost
    block decides the lifetime. Values and gradients are those of building the weights per pass (the
    gradient contributions of the passes are summed before, not after, the shared concatenation)."""
    fresh = [b for b in blocks if b._weights is None]
    for b in fresh:
        b._weights = {}
    try:
        yield
    finally:
        for b in fresh:
            b._weights = None


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
