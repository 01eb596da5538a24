"""Autoregressive Energy-Based Transformer (Gladstone et al. 2025; ebt-paper.md sections 2-9, 16.3).

Shape legend: B batch, T predicted positions (= input tokens), V vocabulary, D width, L blocks,
So = T + s observed rows (s = 1 with the step token, the paper's ``time_embed`` variant, else 0).

The energy function E(x, z): the candidate logits z (B, T, V) are softmaxed to p and projected by
``vocab_to_embed`` (V -> D, no bias) into the prediction rows; the observed rows hold [step token ;
Embed(x_0..x_{T-1})]. Prediction row i attends to observed rows up to x_i (and the step token) and to
itself only (section 4), so it never sees its target x_{i+1} or any other candidate. After the final
RMSNorm an energy head D -> 1 reads each prediction row: energies (B, T).

Prediction = gradient descent on sum(E) w.r.t. p (released code) or z (paper listing):
    z <- p - alpha * dE/dp        (section 6.4)
starting from z ~ N(0, init_noise_scale^2). Training backpropagates the per-step cross-entropy through
the descent, which needs ``autograd.grad(..., create_graph=True)`` and double backward through attention;
all attention here is explicit matmul/softmax (no SDPA, no torch.compile).

Computation is split per stream (``observed_stream`` -> per-layer keys/values, ``prediction_energies``):
observed rows never read prediction rows, so one observed pass per landscape serves every inner step on it
and every best-of-N sample (``reuse_observed``, default True; ebt-paper.md section 18). With
``step_conditioning="prediction"`` the token rows are computed once for all landscapes and only the one-row
step stream is per landscape. ``reuse_observed = False`` is the reference path that recomputes the observed
stream at every step, as the paper's code does (equivalence: tests/test_observed_reuse.py).
The observed outputs of the last block never reach an energy, so that block only computes observed
keys/values (exactly the same energies, fewer FLOPs). Likewise dE/dp is computed as (dE/de) W_v2e from
the gradient w.r.t. the embedded rows e = p W_v2e^T, so a detached candidate needs no gradient of its own
and the outer backward spends nothing on it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ebt_scaling.config import ModelConfig
from ebt_scaling.errors import ConfigError, TrainingDiverged
from ebt_scaling.models.flops import fused_ce
from ebt_scaling.models.layers import (
    PAD_VOCAB_ON,
    Block,
    RMSNorm,
    Rotary,
    causal_mask,
    init_linear_xavier,
    padded_vocab,
    scale_columns,
    share_weights,
    upcast,
    vocab_pad_mask,
)

KV = list[tuple[torch.Tensor, torch.Tensor]]


class _EmbedWithPrevCE(torch.autograd.Function):
    """(emb, ce) = (p W^T, CE of the previous step's logits z = p_prev + s W, whose softmax is p).

    In S1 every step starts from the detached softmax of the previous step's logits, so step i+1 embeds
    exactly the distribution whose cross-entropy step i is scored on. The reference path differentiates
    the CE through z (a (B, T, V) gradient (p - onehot) / n, then s's gradient by a (B, T, V) x (V, D)
    product and W's by a (D, N) x (N, V) one) and the embedding separately (W's gradient by another
    (D, N) x (N, V) product). Here, with c the CE's per-row weight times its upstream gradient:
        d s = c (p W^T - W[:, t]^T) = c (emb - W[:, t]^T)             (the saved output: no product)
        d W = (d emb + c s)^T p  -  c s scattered to the target columns  (one product for both)
    Same values; no (B, T, V) gradient is formed and the CE's log-probabilities are not kept.

    p: (B, T, V or padded V) detached, fp32; w: (D, V or padded V), in the autocast dtype under autocast (then
    p is cast to it for the product, as autocast casts F.linear's input); s: (B, T, D) the previous update's
    -alpha * dE/de, with its graph; ce: 0-dim value (``EBT._ce_from_softmax``); t: (N,) targets (ignored rows
    clamped to 0); wt: (N,) row weights of the mean (0 for ignored rows). The products run in w's dtype, the
    CE terms in fp32. First-order only (the outer backward).
    """

    @staticmethod
    def forward(ctx, p, w, s, ce, t, wt):
        p = p.to(w.dtype)  # what autocast would hand F.linear (a no-op in fp32)
        emb = F.linear(p, w)  # (B, T, D)
        ctx.save_for_backward(p, w, s, emb, t, wt)
        return emb, ce.clone()

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g_emb, g_ce):
        p, w, s, emb, t, wt = ctx.saved_tensors
        grad_s = grad_w = cs = None
        if g_ce is not None:
            c = (g_ce * wt).unsqueeze(-1)  # (N, 1), fp32
            cs = upcast(s.flatten(0, 1)) * c  # (N, D)
            a = cs if g_emb is None else upcast(g_emb.flatten(0, 1)) + cs
            if ctx.needs_input_grad[2]:
                grad_s = (c * (upcast(emb.flatten(0, 1)) - upcast(w.t()[t]))).view_as(s).to(s.dtype)
        else:
            a = g_emb.flatten(0, 1)
        if ctx.needs_input_grad[1]:
            grad_w = a.to(w.dtype).t() @ p.flatten(0, 1)  # (D, V) in w's dtype, as F.linear's backward
            if cs is not None:
                grad_w.index_add_(1, t, -cs.t().to(w.dtype))  # the one-hot part of the CE gradient
        return None, grad_w, grad_s, None, None, None


class EBT(nn.Module):
    """``model(idx)`` -> logits after the validation-time descent; ``model.loss(idx, targets)`` ->
    (loss, info); ``model.think(idx, steps, samples)`` -> (logits, energies)."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        if cfg.family != "ebt":
            raise ConfigError(f"family: EBT got {cfg.family!r}; build it with family='ebt'")
        self.cfg = cfg
        d = cfg.n_embd
        self.tok_embeddings = nn.Embedding(cfg.vocab_size, d)
        # One learned row per energy landscape, prepended as observed row 0 (section 4.2).
        self.step_embeddings = nn.Embedding(cfg.mcmc_num_steps, d) if cfg.step_embedding else None
        self.vocab_to_embed = nn.Linear(cfg.vocab_size, d, bias=False)
        self.layers = nn.ModuleList(Block(d, cfg.n_head, cfg.ffn_dim, cfg.norm_eps) for _ in range(cfg.n_layer))
        self.norm = RMSNorm(d, cfg.norm_eps)
        self.energy_head = nn.Linear(d, 1, bias=False)
        self.s = 1 if cfg.step_embedding else 0
        self.rotary = Rotary(cfg.head_dim, cfg.sequence_len + 1 + self.s, cfg.rope_theta)
        init_linear_xavier(self)
        alpha = torch.tensor(float(cfg.step_size))
        if cfg.step_size_learnable:
            self.alpha = nn.Parameter(alpha)
        else:
            self.register_buffer("alpha", alpha)
        # Replay buffer (section 7): FIFO of (tokens, targets, final logits) per sample; training only and
        # deliberately not part of the state dict (it is rebuilt within a few batches).
        self.replay: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
        # Per inner step of the last descent: landscape, create_graph, detached (for tests and logging).
        self.last_trace: list[dict] = []
        self.last_energy_steps: torch.Tensor | None = None
        self._mask_cache: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}
        # Observed-stream reuse (ebt-paper.md section 18): one observed pass per landscape serves every
        # inner step and best-of-N sample on it. False = the reference path (recompute at every step).
        self.reuse_observed = True
        # S1 (detached steps, every step's CE in the loss): the CE of a non-final step is fused with the next
        # step's embedding of the same softmax (``_EmbedWithPrevCE``): same values and gradients, two
        # (B, T, V) x (V, D) products and the CE's (B, T, V) backward fewer. False = the reference path.
        self.fuse_ce = True
        # On the device types in pad_vocab_on the descent runs its candidates at the aligned width
        # (layers.padded_vocab): the padding logits are masked out of the softmax and the projection's
        # padding columns are zeros, so every value and gradient is that of the true V. Public results
        # are V wide.
        self.vocab_padded = padded_vocab(cfg.vocab_size)
        self.pad_vocab_on = PAD_VOCAB_ON
        if self.vocab_padded != cfg.vocab_size:
            self.register_buffer("_vocab_mask", vocab_pad_mask(cfg.vocab_size, self.vocab_padded),
                                 persistent=False)

    # ------------------------------------------------------------------------------------------------
    # The energy function
    # ------------------------------------------------------------------------------------------------
    def _masks(self, t: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        key = (t, str(device))
        if key not in self._mask_cache:
            self._mask_cache[key] = self._build_masks(t, device)
        return self._mask_cache[key]

    def _build_masks(self, t: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        so = t + self.s
        mask_o = causal_mask(so, device)  # (So, So) ordinary causal
        if self.s and self.cfg.step_conditioning == "prediction":
            mask_o[1:, 0] = float("-inf")  # observed tokens do not see the step token
        # Prediction row i sees observed columns 0..i+s (step token, x_0..x_i), never x_{i+1}.
        mask_p = causal_mask(t, device, offset=self.s, cols=so)  # (T, So)
        return mask_o, mask_p

    def observed_stream(self, idx: torch.Tensor, landscape: int) -> KV:
        """Per-layer (k, v) of the observed rows, each (B, H, So, Dh). Independent of the candidates.

        With ``step_conditioning="prediction"`` and ``reuse_observed`` this is assembled from the
        landscape-free token rows (``token_stream``) and the step row (``step_row_stream``); the reference
        path (``reuse_observed=False``) runs all So rows with the step column masked for the tokens.
        """
        if self._split_step_row():
            return self.join_observed(self.step_row_stream(landscape, idx.shape[0]), self.token_stream(idx))
        b, t = idx.shape
        x = self.tok_embeddings(idx)  # (B, T, D)
        if self.step_embeddings is not None:
            step = self.step_embeddings.weight[landscape].view(1, 1, -1).expand(b, 1, -1)
            x = torch.cat((step.to(x.dtype), x), dim=1)  # (B, So, D)
        mask_o, _ = self._masks(t, idx.device)
        return self._run_observed(x, self.rotary(0, t + self.s), mask_o)

    def _run_observed(self, x: torch.Tensor, rope: torch.Tensor, mask: torch.Tensor) -> KV:
        kvs: KV = []
        last = len(self.layers) - 1
        for i, layer in enumerate(self.layers):
            if i == last:
                kvs.append(layer.observed_kv(x, rope))
            else:
                x, k, v = layer.observed(x, rope, mask)
                kvs.append((k, v))
        return kvs

    def _split_step_row(self) -> bool:
        return bool(self.reuse_observed and self.s and self.cfg.step_conditioning == "prediction")

    def token_stream(self, idx: torch.Tensor) -> KV:
        """``step_conditioning="prediction"``: per-layer (k, v) of the T token rows alone (RoPE positions
        s..So-1, causal among themselves). They never see the step token, so these are exactly the token
        rows of ``observed_stream`` for every landscape."""
        t = idx.shape[1]
        key = ("tokens", t, str(idx.device))
        if key not in self._mask_cache:
            self._mask_cache[key] = (causal_mask(t, idx.device), causal_mask(t, idx.device))
        return self._run_observed(self.tok_embeddings(idx), self.rotary(self.s, t), self._mask_cache[key][0])

    def step_row_stream(self, landscape: int, b: int) -> KV:
        """``step_conditioning="prediction"``: per-layer (k, v) of the step row alone, (B, H, 1, Dh). Row 0
        attends only to itself under the causal mask, so it depends on the landscape only."""
        w = self.step_embeddings.weight  # type: ignore[union-attr]
        x = w[landscape].view(1, 1, -1).expand(b, 1, -1)
        return self._run_observed(x, self.rotary(0, 1), torch.zeros(1, 1, device=w.device))

    @staticmethod
    def join_observed(step: KV, tokens: KV) -> KV:
        return [(torch.cat((ks, kt), dim=2), torch.cat((vs, vt), dim=2))
                for (ks, vs), (kt, vt) in zip(step, tokens, strict=True)]

    def prediction_energies(self, p: torch.Tensor, kvs: KV) -> torch.Tensor:
        """p: (B, T, V) candidate distributions; kvs from ``observed_stream`` -> energies (B, T), fp32."""
        return self.energies_from_embedding(self._embed(p), kvs)

    def _width(self, device: torch.device) -> int:
        """The candidates' width on ``device``: padded V on a device type in ``pad_vocab_on``, else V."""
        return self.vocab_padded if device.type in self.pad_vocab_on else self.cfg.vocab_size

    def _v2e_weight(self, width: int) -> torch.Tensor:
        """``vocab_to_embed.weight`` (D, V), zero-padded to (D, width)."""
        w = self.vocab_to_embed.weight
        return F.pad(w, (0, width - self.cfg.vocab_size)) if width != self.cfg.vocab_size else w

    def _embed(self, p: torch.Tensor, w: torch.Tensor | None = None) -> torch.Tensor:
        """(B, T, V or padded V) distributions -> (B, T, D) prediction rows."""
        if w is None:
            w = self._v2e_weight(p.shape[-1])
        return F.linear(p, w)

    def _probs(self, z: torch.Tensor) -> torch.Tensor:
        """Softmax of candidate logits in fp32; at the padded width the padding columns get probability 0."""
        z = upcast(z)
        if z.shape[-1] != self.cfg.vocab_size:
            z = z + self._vocab_mask.to(z.dtype)
        return z.softmax(dim=-1)

    def energies_from_embedding(self, h: torch.Tensor, kvs: KV) -> torch.Tensor:
        """h: (B, T, D) prediction rows (``vocab_to_embed(p)``) -> energies (B, T), fp32."""
        t = h.shape[1]
        rope = self.rotary(1 + self.s, t)  # row i sits at the slot of its target x_{i+1}
        _, mask_p = self._masks(t, h.device)
        for layer, (k, v) in zip(self.layers, kvs, strict=True):
            h = layer.predicted(h, rope, k, v, mask_p)
        w = scale_columns(self.energy_head.weight, self.norm.weight)  # the final norm's gain folded in
        return upcast(F.linear(self.norm.normalize(h), w).squeeze(-1))  # (B, T)

    def energies(self, idx: torch.Tensor, p: torch.Tensor, landscape: int = 0) -> torch.Tensor:
        """E(x, p) for every position: (B, T)."""
        self._check_idx(idx)
        return self.prediction_energies(p, self.observed_stream(idx, landscape))

    # ------------------------------------------------------------------------------------------------
    # The inner loop
    # ------------------------------------------------------------------------------------------------
    def _check_idx(self, idx: torch.Tensor) -> None:
        if idx.dim() != 2:
            raise ConfigError(f"idx: expected token ids of shape (B, T), got {tuple(idx.shape)}")
        if idx.shape[1] > self.cfg.sequence_len:
            raise ConfigError(f"idx: sequence length {idx.shape[1]} exceeds sequence_len="
                              f"{self.cfg.sequence_len}; crop the input or build a longer model")

    def alpha_value(self) -> torch.Tensor:
        """alpha = clamp(param, min 1e-4) (section 6.3)."""
        return self.alpha.clamp(min=1e-4)

    def _landscapes(self, train: bool) -> list[int]:
        """Landscape index of every inner step (section 6.2; repetition on the last landscape only)."""
        cfg = self.cfg
        m, k = cfg.mcmc_num_steps, cfg.randomize_num_steps
        if not k:
            r = 1
        elif train:
            lo = max(cfg.randomize_num_steps_min, 1)
            r = int(torch.randint(lo, k + 2, (1,)).item())  # r ~ U{lo..k+1}, once per forward
        else:
            r = k + 1
        return list(range(m - 1)) + [m - 1] * r

    def _noise(self, shape, device, generator: torch.Generator | None) -> torch.Tensor:
        # Candidates live in fp32 (fp64 when the whole model was cast to double, e.g. for gradcheck).
        dtype = torch.float64 if self.vocab_to_embed.weight.dtype == torch.float64 else torch.float32
        return torch.randn(shape, generator=generator, device=device, dtype=dtype)

    def _initial_logits(self, b: int, t: int, device, generator: torch.Generator | None) -> torch.Tensor:
        """z0 ~ N(0, init_noise_scale^2), (B, T, V). At the default scale 1 the draw is used as is: the product
        would be one more (B, T, V) pass for the same values."""
        z0 = self._noise((b, t, self.cfg.vocab_size), device, generator)
        scale = self.cfg.init_noise_scale
        return z0 if scale == 1.0 else z0 * scale

    def descend(self, idx: torch.Tensor, z: torch.Tensor, landscapes: list[int], *, alpha: torch.Tensor,
                sigma: float, need_graph: bool, generator: torch.Generator | None = None,
                kv_cache: dict | None = None, targets: torch.Tensor | None = None,
                ces: list[torch.Tensor] | None = None) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Run the inner loop from candidate logits z (B, T, V).

        Returns the logits after every step and the (detached) energies (B, T) evaluated at every step's
        input. ``need_graph``: keep the second-order graph so an outer loss can train through the descent
        (with truncation only on the last step). Without it every step is first order and detached.

        With ``reuse_observed`` the observed stream is computed once per landscape (once in all with
        ``step_conditioning="prediction"``, plus a one-row step stream per landscape) and shared by every
        step on it: with a graph when any step on it needs one (the outer backward then accumulates every
        step's gradient into the shared keys/values before going through the observed stream once), and
        detached for first-order steps. ``kv_cache`` (a dict) carries it across calls on the same ``idx``
        (best-of-N samples); it must not outlive a parameter update.

        ``targets`` (B, T) and ``ces`` (an empty list): when ``flops.fused_ce`` holds (S1), every step's
        cross-entropy against ``targets``, with its graph, is appended to ``ces``; a non-final step's CE then
        rides on the next step's embedding of the same softmax (``_EmbedWithPrevCE``). Otherwise ``ces`` stays
        empty and the caller computes the CE from the returned logits.
        """
        cfg = self.cfg
        n = len(landscapes)
        graph_ls = {ls for i, ls in enumerate(landscapes) if need_graph and (not cfg.truncate_steps or i == n - 1)}
        cache = {} if kv_cache is None else kv_cache
        outs: list[torch.Tensor] = []
        energies: list[torch.Tensor] = []
        grad_sums: list[torch.Tensor] = []  # one finiteness check after the loop: no GPU sync per step
        self.last_trace = []
        v, vp = cfg.vocab_size, self._width(z.device)
        if vp != v:  # run at the aligned width; the padding logits never reach a softmax (masked)
            z = F.pad(z, (0, vp - v))
        amp = torch.get_autocast_dtype(z.device.type) if torch.is_autocast_enabled(z.device.type) else None
        fuse = (ces is not None and targets is not None and need_graph and self.fuse_ce and sigma == 0
                and fused_ce(cfg))  # sigma: the noise this descent adds (loss() passes the config's)
        pending: tuple[torch.Tensor, torch.Tensor] | None = None  # (previous step's update, its CE value)
        p_next: torch.Tensor | None = None  # softmax of the previous step's logits, from its CE
        if fuse:
            assert targets is not None
            flat_t = targets.flatten()
            valid = flat_t != -100  # F.cross_entropy's ignore_index
            ce_w = valid.to(z.dtype) / valid.sum()  # per-row weight of the mean over valid rows
            ce_t = flat_t.clamp(min=0)
        with torch.enable_grad(), share_weights(self.layers):
            w_all = self._v2e_weight(vp) if need_graph else self._v2e_weight(vp).detach()
            if amp is not None:  # the cast autocast would make at every use, made once per descent
                w_all = w_all.to(amp)
            for i, landscape in enumerate(landscapes):
                graph = need_graph and (not cfg.truncate_steps or i == n - 1)
                detached = cfg.detach_between_steps or not need_graph or i == 0
                if detached or not z.requires_grad:
                    # Only the logits variant differentiates w.r.t. z itself; otherwise a detached
                    # candidate needs no gradient (so the outer backward wastes none on it).
                    z = z.detach().requires_grad_(cfg.descent_wrt == "logits")
                if sigma > 0:  # Langevin noise in logit space, before the softmax (drawn V wide)
                    noise = self._noise((*z.shape[:-1], v), z.device, generator)
                    # z + sigma * noise as one (B, T, V) pass (add with alpha) instead of two.
                    z = torch.add(z, F.pad(noise, (0, vp - v)) if vp != v else noise, alpha=sigma)
                p = self._probs(z) if p_next is None else p_next  # (B, T, V), fp32
                p_next = None
                if self.reuse_observed:
                    kvs = self._shared_kvs(idx, landscape, graph_ls, cache)
                    if not graph:  # the inner gradient never flows into the observed stream
                        kvs = [(k.detach(), v.detach()) for k, v in kvs]
                elif graph:
                    kvs = self.observed_stream(idx, landscape)
                else:  # the inner gradient never flows into the observed stream
                    with torch.no_grad():
                        kvs = self.observed_stream(idx, landscape)
                if cfg.descent_wrt == "probs":
                    # dE/dp = (dE/de) W_v2e with e = p W_v2e^T: differentiate w.r.t. the embedded rows and
                    # apply the (bias-free, linear) projection explicitly. Same values as autograd w.r.t. p,
                    # but p itself needs no gradient unless the chain of steps is kept (no detach).
                    if pending is not None:  # this embedding also carries the previous step's CE
                        emb, ce_prev = _EmbedWithPrevCE.apply(p, w_all, pending[0], pending[1], ce_t, ce_w)
                        ces.append(ce_prev)  # type: ignore[union-attr]
                        pending = None
                    else:
                        emb = self._embed(p, w_all)  # (B, T, D)
                    if not emb.requires_grad:
                        emb.requires_grad_()
                    e = self.energies_from_embedding(emb, kvs)  # (B, T)
                    (g_emb,) = torch.autograd.grad(e.sum(), emb, create_graph=graph)
                    grad_sums.append(g_emb.detach().sum())
                    w = w_all if graph else w_all.detach()
                    if fuse and i < n - 1:
                        # p + (-alpha * dE/de) @ W as in _update, run without a graph: the CE's gradient
                        # reaches the update through _EmbedWithPrevCE at the next step, whose candidate is
                        # this step's softmax(z).
                        step = g_emb * (-alpha)  # (B, T, D), with its graph
                        with torch.no_grad():  # the values _update gives (under autocast too)
                            z = self._update(p, g_emb.detach(), w.detach(), alpha.detach())
                            p_next = self._probs(z)  # the next step's candidate distribution
                            ce_val = self._ce_from_softmax(z[..., :v].flatten(0, 1), p_next[..., :v].flatten(0, 1),
                                                           ce_t, ce_w)
                        pending = (step, ce_val)
                    else:
                        z = self._update(p, g_emb, w, alpha)  # p - alpha * dE/dp (section 6.4)
                        if fuse:  # the final step's CE, as loss() would compute it
                            ces.append(F.cross_entropy(upcast(z[..., :v]).flatten(0, 1),  # type: ignore[union-attr]
                                                       flat_t, ignore_index=-100))
                    grad_graph = g_emb.requires_grad
                else:
                    e = self.energies_from_embedding(self._embed(p, w_all), kvs)
                    (g,) = torch.autograd.grad(e.sum(), z, create_graph=graph)
                    grad_sums.append(g.detach().sum())
                    z = z - alpha * g  # new logits (section 6.4)
                    grad_graph = g.requires_grad
                if not need_graph:
                    z = z.detach()
                outs.append(z[..., :v] if vp != v else z)
                energies.append(e.detach())
                self.last_trace.append({"landscape": landscape, "create_graph": graph, "detached": detached,
                                        "grad_has_graph": grad_graph, "chain_grad": p.requires_grad})
        self._check_finite(grad_sums)
        return outs, energies

    @staticmethod
    def _check_finite(grad_sums: list[torch.Tensor]) -> None:
        """Raise if an inner step's energy gradient was not finite. Each entry is the sum of one step's
        gradient (NaN/inf iff an element is, or the gradient is so large that the run has diverged anyway;
        with descent_wrt="probs" the (B, T, D) gradient w.r.t. the embedded rows, 1/V the work of dE/dp).
        Checked once after the loop, so a GPU waits for the device once per descent, not once per step
        (steps after a non-finite one only carry NaNs forward). Skipped while a CUDA graph is being
        captured (no host sync is allowed there; the loss then carries the NaN to the caller's check)."""
        if not grad_sums or (grad_sums[0].is_cuda and torch.cuda.is_current_stream_capturing()):
            return
        ok = torch.isfinite(torch.stack(grad_sums))
        if not bool(ok.all()):
            step = int((~ok).nonzero()[0, 0])
            raise TrainingDiverged(f"EBT inner step {step}: non-finite energy gradient; lower the step "
                                   "size or the learning rate")

    @staticmethod
    def _ce_from_softmax(z: torch.Tensor, p: torch.Tensor, t: torch.Tensor, wt: torch.Tensor) -> torch.Tensor:
        """Mean cross-entropy of logits z (N, V) against t from their softmax p, without a log-softmax pass:
        log-sum-exp = z_max - log p_max, accurate to rounding (p_max = 1 / sum exp(z - z_max) >= 1/V: no underflow,
        where -log p_t would overflow for the very unlikely targets of early S1 training), and
        CE_r = lse_r - z_r[t_r]. wt: the rows' weights of the mean (0 for ignored rows). p's largest entry is the
        one at z's largest (softmax is monotone), so two index-free maxima replace a max with indices and a
        gather: the same values, 0.9 ms instead of 2.9 ms at N 1024, V 2048 (2 CPU threads)."""
        lse = z.amax(-1, keepdim=True) - p.amax(-1, keepdim=True).log()  # (N, 1)
        return ((lse - z.gather(-1, t.unsqueeze(-1))).squeeze(-1) * wt).sum()

    @staticmethod
    def _update(p: torch.Tensor, g_emb: torch.Tensor, w: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
        """p - alpha * (g_emb @ W) as p + (-alpha * g_emb) @ W: alpha (a scalar or one value per (batch,
        position)) scales the (B, T, D) gradient before the projection to V, and the add rides on the matmul
        (addmm), so no (B, T, V) elementwise op runs in the forward or the outer backward. Under autocast
        (g_emb in bf16/fp16) it stays p - alpha * g with g = g_emb @ W, so alpha keeps its fp32 precision.
        It also stays unfused on a first-order step with a learnable alpha (truncated S2 steps): there the
        gradient w.r.t. alpha is one elementwise product with g, where the fused form would need a
        (B, T, V) x (V, D) matmul in the outer backward."""
        fused = g_emb.requires_grad or not alpha.requires_grad
        if fused and g_emb.dtype == p.dtype and not torch.is_autocast_enabled(p.device.type):
            step = g_emb * (-alpha)  # (B, T, D)
            return torch.addmm(p.flatten(0, 1), step.flatten(0, 1), w).view_as(p)  # (B, T, V)
        return p - alpha * (g_emb @ w.to(g_emb.dtype))

    def _shared_kvs(self, idx: torch.Tensor, landscape: int, graph_ls: set[int], cache: dict) -> KV:
        """The observed keys/values of ``landscape`` from ``cache``, computed on first use (with a graph iff
        some step on that landscape, or for the token rows some step at all, needs one)."""

        def get(key, want_graph: bool, compute):
            hit = cache.get(key)
            if hit is None or (want_graph and not hit[1]):
                if want_graph:
                    hit = (compute(), True)
                else:
                    with torch.no_grad():
                        hit = (compute(), False)
                cache[key] = hit
            return hit[0]

        if self._split_step_row():
            tok = get(("tokens",), bool(graph_ls), lambda: self.token_stream(idx))
            step = get(("step", landscape), landscape in graph_ls,
                       lambda: self.step_row_stream(landscape, idx.shape[0]))
            key = ("joined", landscape)
            hit = cache.get(key)
            if hit is None or hit[1] is not step or hit[2] is not tok:
                hit = (self.join_observed(step, tok), step, tok)
                cache[key] = hit
            return hit[0]
        if not self.s:  # no step token: one observed stream for every landscape
            return get(("observed",), bool(graph_ls), lambda: self.observed_stream(idx, 0))
        return get(("observed", landscape), landscape in graph_ls, lambda: self.observed_stream(idx, landscape))

    # ------------------------------------------------------------------------------------------------
    # Public API
    # ------------------------------------------------------------------------------------------------
    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        """Next-token logits (B, T, V) after the validation-time descent (``cfg.eval_steps`` steps, fixed
        alpha, no step randomisation; Langevin noise if configured, as the paper's NLP validation does).
        Works under ``torch.no_grad()`` (the descent enables grad internally; the result is detached)."""
        self._check_idx(idx)
        grad_on = torch.is_grad_enabled()
        b, t = idx.shape
        z0 = self._initial_logits(b, t, idx.device, None)
        zs, _ = self.descend(idx, z0, self._landscapes(train=False), alpha=self.alpha_value(),
                             sigma=self.cfg.langevin_noise_std, need_graph=self.training and grad_on)
        return zs[-1] if grad_on else zs[-1].detach()

    def loss(self, idx: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, dict]:
        """Training objective and metrics (section 8).

        loss = mean over inner steps of the CE (S1) or the last step's CE (truncation, S2). ``info["ce"]``
        is the final step's CE (what validation reports), ``ce_initial`` the CE after the first update;
        every value is a detached 0-dim tensor or a float. Per-step mean energies: ``last_energy_steps``.
        Training mode applies the recipe's randomisation (step count, per-element step size, replay buffer);
        evaluation mode uses none of it except Langevin noise (kept at NLP validation in the paper).
        """
        self._check_idx(idx)
        if targets.shape != idx.shape:
            raise ConfigError(f"targets: shape {tuple(targets.shape)} differs from idx {tuple(idx.shape)}")
        cfg = self.cfg
        train = self.training
        need_graph = train and torch.is_grad_enabled()
        b, t = idx.shape
        z0 = self._initial_logits(b, t, idx.device, None)
        n_replayed = 0
        if train and cfg.replay_buffer_size:
            idx, targets, z0, n_replayed = self._replay_draw(idx, targets, z0)
        alpha = self.alpha_value()
        if train and cfg.step_size_random_scale != 1.0:
            s = cfg.step_size_random_scale
            u = torch.rand((idx.shape[0], t, 1), device=idx.device)
            alpha = alpha * (1.0 / s + (s - 1.0 / s) * u)  # alpha ~ U[alpha/s, alpha*s] per (batch, position)
        step_ces: list[torch.Tensor] = []
        zs, es = self.descend(idx, z0, self._landscapes(train), alpha=alpha, sigma=cfg.langevin_noise_std,
                              need_graph=need_graph, targets=targets, ces=step_ces)

        def ce(z: torch.Tensor) -> torch.Tensor:
            return F.cross_entropy(upcast(z.flatten(0, 1)), targets.flatten(), ignore_index=-100)

        if step_ces:  # every step's CE, computed by the descent (the fused S1 path)
            loss = torch.stack(step_ces).mean()
            ce_initial, ce_final = step_ces[0].detach(), step_ces[-1].detach()
        elif cfg.truncate_steps:
            loss = ce(zs[-1])
            with torch.no_grad():
                ce_initial = ce(zs[0])
            ce_final = loss.detach()
        else:
            ces = [ce(z) for z in zs]
            loss = torch.stack(ces).mean()
            ce_initial, ce_final = ces[0].detach(), ces[-1].detach()
        if train and cfg.replay_buffer_size:
            self._replay_push(idx[:b], targets[:b], zs[-1][:b])
        energy_steps = torch.stack([e.mean() for e in es])
        self.last_energy_steps = energy_steps  # mean energy at every step's input, (steps,)
        info = {"ce": ce_final, "ce_initial": ce_initial.detach(), "energy_initial": energy_steps[0],
                "energy_final": energy_steps[-1],
                "alpha": self.alpha_value().detach(), "inner_steps": float(len(zs)),
                "replayed": float(n_replayed)}
        return loss, info

    @torch.no_grad()
    def _score(self, idx: torch.Tensor, z: torch.Tensor, landscape: int, cache: dict) -> torch.Tensor:
        p = self._probs(z)
        if self.reuse_observed:
            kvs = [(k.detach(), v.detach()) for k, v in self._shared_kvs(idx, landscape, set(), cache)]
            return self.prediction_energies(p, kvs)
        return self.energies(idx, p, landscape)

    def think(self, idx: torch.Tensor, steps: int, samples: int = 1, step_size: float | None = None,
              langevin_noise_std: float | None = None, generator: torch.Generator | None = None
              ) -> tuple[torch.Tensor, torch.Tensor]:
        """System-2 inference (section 16.3): ``steps`` inner steps (step j on landscape min(j, M-1), so
        extra steps stay on the last landscape) from ``samples`` independent noise draws; one extra no-grad
        energy evaluation scores each final candidate and the minimum-energy one is kept independently per
        (batch, position). Returns detached logits (B, T, V) and their energies (B, T).

        ``step_size`` replaces the trained alpha; ``langevin_noise_std`` replaces the configured sigma.
        Samples run one after another, so sample 0 equals the ``samples=1`` result under the same seed.
        """
        self._check_idx(idx)
        if not isinstance(steps, int) or steps < 1:
            raise ConfigError(f"steps: must be an integer >= 1, got {steps!r}")
        if not isinstance(samples, int) or samples < 1:
            raise ConfigError(f"samples: must be an integer >= 1, got {samples!r}")
        if step_size is not None and not step_size > 0:
            raise ConfigError(f"step_size: must be > 0, got {step_size!r}; pass None for the trained alpha")
        if langevin_noise_std is not None and langevin_noise_std < 0:
            raise ConfigError(f"langevin_noise_std: must be >= 0, got {langevin_noise_std!r}")
        m = self.cfg.mcmc_num_steps
        landscapes = [min(j, m - 1) for j in range(steps)]
        alpha = (torch.tensor(float(step_size), device=idx.device) if step_size is not None
                 else self.alpha_value().detach())
        sigma = self.cfg.langevin_noise_std if langevin_noise_std is None else float(langevin_noise_std)
        b, t = idx.shape
        best_z: torch.Tensor | None = None
        best_e: torch.Tensor | None = None
        cache: dict = {}  # observed keys/values shared by every sample and the scoring passes
        with share_weights(self.layers):  # one set of merged weights for every sample and score
            for _ in range(samples):
                z0 = self._initial_logits(b, t, idx.device, generator)
                zs, _ = self.descend(idx, z0, landscapes, alpha=alpha, sigma=sigma, need_graph=False,
                                     generator=generator, kv_cache=cache)
                z = zs[-1].detach()
                e = self._score(idx, z, landscapes[-1], cache)
                if best_z is None or best_e is None:
                    best_z, best_e = z, e
                else:
                    better = e < best_e  # (B, T)
                    best_z = torch.where(better.unsqueeze(-1), z, best_z)
                    best_e = torch.where(better, e, best_e)
        assert best_z is not None and best_e is not None
        return best_z, best_e

    def optim_groups(self, weight_decay: float) -> list[dict]:
        """AdamW groups: weight decay on every parameter except a learnable alpha, which gets its own group
        (no weight decay, LR multiplier ``cfg.step_size_lr_multiplier``; section 6.3)."""
        alpha = [self.alpha] if isinstance(self.alpha, nn.Parameter) else []
        rest = [p for p in self.parameters() if p.requires_grad and not any(p is a for a in alpha)]
        groups = [{"params": rest, "weight_decay": weight_decay, "lr_mult": 1.0}]
        if alpha:
            groups.append({"params": alpha, "weight_decay": 0.0, "lr_mult": float(self.cfg.step_size_lr_multiplier)})
        return groups

    # ------------------------------------------------------------------------------------------------
    # Replay buffer (section 7)
    # ------------------------------------------------------------------------------------------------
    def _replay_draw(self, idx: torch.Tensor, targets: torch.Tensor, z0: torch.Tensor):
        b, t = idx.shape
        if self.replay and self.replay[0][0].shape[0] != t:
            self.replay.clear()  # a different sequence length: stored candidates no longer fit
        n = min(int(self.cfg.replay_buffer_fraction * b), len(self.replay))
        if n == 0:
            return idx, targets, z0, 0
        pick = torch.randperm(len(self.replay))[:n].tolist()
        r_idx = torch.stack([self.replay[j][0] for j in pick]).to(idx.device)
        r_tgt = torch.stack([self.replay[j][1] for j in pick]).to(idx.device)
        r_z = torch.stack([self.replay[j][2] for j in pick]).to(z0.device, z0.dtype)
        return torch.cat((idx, r_idx)), torch.cat((targets, r_tgt)), torch.cat((z0, r_z)), n

    def replay_state(self) -> dict:
        """The replay buffer as plain tensors (for a checkpoint that must resume S2 training exactly; it is
        not in ``state_dict()`` because at paper scale it is ~10 GB)."""
        if not self.replay:
            return {"idx": None, "targets": None, "logits": None}
        return {k: torch.stack([r[j] for r in self.replay]).cpu() for j, k in enumerate(("idx", "targets", "logits"))}

    def load_replay_state(self, state: dict) -> None:
        self.replay.clear()
        if state.get("idx") is None:
            return
        dev = self.vocab_to_embed.weight.device
        for i in range(state["idx"].shape[0]):
            self.replay.append((state["idx"][i].to(dev), state["targets"][i].to(dev), state["logits"][i].to(dev)))

    def _replay_push(self, idx: torch.Tensor, targets: torch.Tensor, z: torch.Tensor) -> None:
        z = z.detach()
        for j in range(idx.shape[0]):
            self.replay.append((idx[j].detach().clone(), targets[j].detach().clone(), z[j].clone()))
        del self.replay[: max(0, len(self.replay) - self.cfg.replay_buffer_size)]
