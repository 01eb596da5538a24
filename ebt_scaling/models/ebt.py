"""Autoregressive Energy-Based Transformer (Gladstone et al. 2025; ebt-paper.md sections 2-9, 16.3).

Shape legend: B batch, T predicted positions (= input tokens), V vocabulary, D width, L blocks,
So = T + s observed rows (s = 1 with the step token, the paper's ``time_embed`` variant, else 0).

The algorithm in one reading:

  energy E(x, p)   The observed rows [step token ; Embed(x_0..x_{T-1})] and the prediction rows
                   e = p W_v2e^T (a candidate distribution p over V per position, projected to D) run through
                   the same Llama blocks. Prediction row i attends to the step token, x_0..x_i and itself,
                   never to its target x_{i+1} or another candidate (layers.prediction_attention). After the
                   final norm an energy head D -> 1 reads every prediction row: E is (B, T).
  inner descent    z ~ N(0, 1) (B, T, V); per step: (S2) z += sigma * noise, p = softmax(z),
                   z <- p - alpha * dE/dp        (section 6.4: the released code descends on p)
                   Landscape = which step token the step sees; S1 runs 2 landscapes x 1 step.
  S1 loss          every step starts from a detached candidate; loss = mean over steps of the CE of z.
  S2 loss          1 landscape, 2-3 steps drawn per batch, alpha * U[1/2, 2] per (batch, position),
                   Langevin noise, steps chained (no detach) but truncated: loss and second-order graph on
                   the last step only; a replay buffer restarts part of each batch from stored final logits.
  thinking         more steps and best-of-N samples; per position keep the candidate of lowest energy.

Randomness enters as inputs (``Draws``: z0, the noise of every step, alpha's multiplier, the step count), drawn
row by row from one generator per sample (``draw``), so ``loss`` is a deterministic function of its inputs. The
training loop keys those generators by (seed, step, global sample index) (train/keyed.py): a sample's draws do not
depend on how its batch is split into micro-batches. Without ``draws``, ``loss`` draws them from torch's global
generator and runs the replay buffer itself (the whole batch in one call).

Training differentiates the CE through dE/dp, i.e. twice through the prediction stream. ``energy_grad``
computes the inner gradient with ``torch.autograd.grad(create_graph=True)`` (eager, the reference) or with
``torch.func.grad``, which ``torch.compile`` traces into one graph whose outer backward is an ordinary
backward (``compile_loss``). The observed stream is differentiated once only, so it uses fused attention.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from ebt_scaling.config import ModelConfig
from ebt_scaling.errors import ConfigError, TrainingDiverged
from ebt_scaling.models.layers import Block, RMSNorm, Rotary, causal_mask, init_linear_xavier, upcast

KV = list[tuple[torch.Tensor, torch.Tensor]]  # per layer: observed keys, values, each (B, H, So, Dh)


ALPHA_FLOOR = 1e-4  # alpha's clamp (section 6.3): below it a learnable alpha gets no gradient


@dataclass(frozen=True)
class Draws:
    """The random inputs of one EBT forward (``EBT.draw``), row by row: row j of a batch's draws is what that row
    draws alone."""

    landscapes: tuple[int, ...]  # landscape of every inner step (S2: the step count is drawn per optimizer step)
    z0: torch.Tensor  # (B, T, V) initial candidate logits, N(0, init_noise_scale^2), or a replayed row's stored ones
    noise: torch.Tensor | None = None  # (B, steps, T, V) standard normal Langevin noise; None when sigma = 0
    step_scale: torch.Tensor | None = None  # (B, T, 1) alpha's multiplier U[1/s, s]; None: the fixed alpha

    def tensors(self) -> tuple[torch.Tensor | None, ...]:
        """(z0, noise, step_scale): what a captured CUDA graph copies into its static inputs."""
        return self.z0, self.noise, self.step_scale

    def with_tensors(self, z0: torch.Tensor, noise: torch.Tensor | None, step_scale: torch.Tensor | None) -> Draws:
        """These landscapes with other tensors (the graph's static copies of ``tensors()``)."""
        return Draws(self.landscapes, z0, noise, step_scale)


class EBT(nn.Module):
    """``model(idx)`` -> logits after the validation-time descent; ``model.loss(idx, targets, draws=None)`` ->
    (loss, info); ``model.think(idx, steps, samples)`` -> (logits, energies)."""

    # info key -> training metric the loop logs (besides the loss): the final-step CE, the first step's, alpha
    logged_metrics: ClassVar[dict[str, str]] = {"ce": "train_ce", "ce_initial": "train_ce_initial", "alpha": "alpha"}

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        if cfg.family != "ebt":
            raise ConfigError(f"family: EBT got {cfg.family!r}; build it with family='ebt'")
        self.cfg = cfg
        d = cfg.n_embd
        self.tok_embeddings = nn.Embedding(cfg.vocab_size, d)
        # One learned row per energy landscape, prepended as observed row 0 (section 4.2).
        self.step_embeddings = nn.Embedding(cfg.mcmc_num_steps, d) if cfg.step_embedding else None
        self.vocab_to_embed = nn.Linear(cfg.vocab_size, d, bias=False)  # W_v2e (D, V): candidate -> row
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
        # Replay buffer (section 7): FIFO of (tokens, targets, final logits) per sample; training only, not in
        # the state dict (~10 GB at paper scale); the training loop saves it with its own state.
        self.replay: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
        # Observed-stream reuse (ebt-paper.md section 18; ``_observed``): one observed pass per landscape
        # serves every inner step and best-of-N sample on it. False recomputes it at every step, as the
        # paper's code does (the reference; tests/test_observed_reuse.py).
        self.reuse_observed = True
        # How ``energy_grad`` differentiates: "autograd" (the eager reference) or "func" (torch.func.grad,
        # always taken under torch.compile; tests/test_compile.py checks they agree in float64).
        self.inner_grad = "autograd"
        self._compiled_core = None  # set by compile_loss()

    # ------------------------------------------------------------------------------------------------
    # The energy function E(x, p)
    # ------------------------------------------------------------------------------------------------
    def observed_stream(self, idx: torch.Tensor, landscape: int) -> KV:
        """Per-layer (k, v) of the observed rows [step token ; x_0..x_{T-1}]. Independent of the candidates."""
        b, t = idx.shape
        x = self.tok_embeddings(idx)  # (B, T, D)
        if self.step_embeddings is not None:
            step = self.step_embeddings.weight[landscape].view(1, 1, -1).expand(b, 1, -1)
            x = torch.cat((step.to(x.dtype), x), dim=1)  # (B, So, D)
        rope = self.rotary(0, t + self.s)  # positions 0..So-1
        kvs: KV = []
        for layer in self.layers[:-1]:
            x, k, v = layer.observed(x, rope)
            kvs.append((k, v))
        # The last block's observed outputs never reach an energy (the head reads prediction rows only).
        last = self.layers[-1]
        kvs.append(last.kv(last.attention_norm(x), rope))
        return kvs

    def energies_from_embedding(self, h: torch.Tensor, kvs: KV) -> torch.Tensor:
        """Prediction rows h (B, T, D) = p W_v2e^T against the observed keys/values -> energies (B, T), fp32."""
        t = h.shape[1]
        rope = self.rotary(1 + self.s, t)  # row i sits at the position of its target x_{i+1}
        mask = causal_mask(t, h.device, offset=self.s, cols=t + self.s)  # (T, So): row i sees columns <= i+s
        for layer, (k, v) in zip(self.layers, kvs, strict=True):
            h = layer.predicted(h, rope, k, v, mask)
        return upcast(self.energy_head(self.norm(h)).squeeze(-1))

    def energies(self, idx: torch.Tensor, p: torch.Tensor, landscape: int = 0) -> torch.Tensor:
        """E(x, p) for candidate distributions p (B, T, V): (B, T)."""
        self._check_idx(idx)
        return self.energies_from_embedding(self.vocab_to_embed(p), self.observed_stream(idx, landscape))

    def energy_grad(self, emb: torch.Tensor, kvs: KV, graph: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """Energies (B, T) of the prediction rows emb (B, T, D) and the inner gradient d(sum E)/d emb (B, T, D).

        graph: keep the gradient's own graph, so that an outer loss can be differentiated through it
        (second order). The energies of different positions are independent (each row sees only itself
        among the candidates), so the gradient of the sum is every position's own gradient."""
        if self.inner_grad == "func" or torch.compiler.is_compiling():
            def total(h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
                e = self.energies_from_embedding(h, kvs)
                return e.sum(), e

            # torch.func.grad differentiates ``total`` whatever the grad mode; the grad mode outside decides
            # whether its result carries a graph (create_graph).
            with torch.set_grad_enabled(graph):
                g, e = torch.func.grad(total, has_aux=True)(emb)
            return e, g
        with torch.enable_grad():
            if not emb.requires_grad:
                emb = emb.detach().requires_grad_()
            e = self.energies_from_embedding(emb, kvs)
            (g,) = torch.autograd.grad(e.sum(), emb, create_graph=graph)
        return e, g

    # ------------------------------------------------------------------------------------------------
    # The inner descent
    # ------------------------------------------------------------------------------------------------
    def descend(self, idx: torch.Tensor, z: torch.Tensor, landscapes: list[int], *, alpha: torch.Tensor,
                sigma: float, need_graph: bool, generator: torch.Generator | None = None,
                kv_cache: dict | None = None, noise: torch.Tensor | None = None
                ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Run the inner loop from candidate logits z (B, T, V), one step per entry of ``landscapes``.

        Returns the logits after every step and the detached energies (B, T) at every step's input.
        ``alpha``: a scalar or (B, T, 1). ``sigma``: Langevin noise std. ``need_graph``: keep the
        second-order graph so an outer loss can train through the descent (with truncation, on the last step
        only); without it every step is first order and the results are detached. ``noise``: the standard
        normal Langevin noise of every step (B, steps, T, V); without it each step draws from ``generator``
        (None: torch's global generator). ``kv_cache``: a dict that shares the observed stream across calls on
        the same ``idx`` (best-of-N samples); it must not outlive a parameter update. Raises
        ``TrainingDiverged`` on a non-finite inner gradient."""
        zs, es, grad_sums = self._descend(idx, z, landscapes, alpha=alpha, sigma=sigma, need_graph=need_graph,
                                          generator=generator, kv_cache=kv_cache, noise=noise)
        self._check_finite(grad_sums)
        return zs, es

    def _descend(self, idx: torch.Tensor, z: torch.Tensor, landscapes: list[int], *, alpha: torch.Tensor,
                 sigma: float, need_graph: bool, generator: torch.Generator | None = None,
                 kv_cache: dict | None = None, noise: torch.Tensor | None = None
                 ) -> tuple[list[torch.Tensor], list[torch.Tensor], torch.Tensor]:
        """``descend`` without the finiteness check (no host sync: compilable); also returns every step's
        inner-gradient sum (steps,) for that check."""
        cfg = self.cfg
        n = len(landscapes)
        cache: dict = {} if kv_cache is None else kv_cache
        zs: list[torch.Tensor] = []
        es: list[torch.Tensor] = []
        grad_sums: list[torch.Tensor] = []
        with torch.enable_grad():  # the descent differentiates even at validation under no_grad
            w = self.vocab_to_embed.weight if need_graph else self.vocab_to_embed.weight.detach()  # (D, V)
            for i, landscape in enumerate(landscapes):
                # The second-order graph: on every training step (S1), or on the last one (truncation, S2).
                graph = need_graph and (not cfg.truncate_steps or i == n - 1)
                if cfg.detach_between_steps or not need_graph:
                    z = z.detach()  # S1: the outer gradient flows through one step at a time
                if sigma > 0:  # Langevin noise, logit space
                    eps = noise[:, i] if noise is not None else self._noise(z.shape, z.device, generator)
                    z = z + sigma * eps
                p = upcast(z).softmax(dim=-1)  # (B, T, V), fp32
                kvs = self._observed(idx, landscape, graph, need_graph, cache)
                e, g_emb = self.energy_grad(F.linear(p, w), kvs, graph)  # (B, T), (B, T, D)
                # dE/dp = (dE/de) W_v2e, since e = p W_v2e^T is linear: the gradient is taken w.r.t. the
                # (B, T, D) rows, not the (B, T, V) candidate, which then needs no gradient of its own.
                g = upcast(g_emb @ (w if graph else w.detach()))  # (B, T, V)
                if cfg.descent_wrt == "logits":  # the paper's listing: descend on z, dE/dz = softmax VJP
                    z = z - alpha * (p * (g - (p * g).sum(-1, keepdim=True)))
                else:
                    z = p - alpha * g  # the released code: the new logits are p - alpha dE/dp
                zs.append(z if need_graph else z.detach())
                es.append(e.detach())
                grad_sums.append(g_emb.detach().sum())
        return zs, es, torch.stack(grad_sums)

    def _observed(self, idx: torch.Tensor, landscape: int, graph: bool, need_graph: bool, cache: dict) -> KV:
        """The observed keys/values an inner step on ``landscape`` attends to.

        Observed rows never read the candidates, so with ``reuse_observed`` they are computed once per
        landscape (per descent, or per ``cache``) and shared by every step on it: with a graph when the
        descent needs one (the outer backward then sums every step's gradient into the shared keys/values
        before running through the observed stream once), detached for a step without a second-order graph.
        Without reuse they are recomputed at every step, as the paper's code does. Same values and gradients
        (tests/test_observed_reuse.py)."""
        if not self.reuse_observed:
            with torch.set_grad_enabled(graph):
                return self.observed_stream(idx, landscape)
        key = landscape if self.s else 0  # without the step token every landscape sees the same rows
        if key not in cache:
            with torch.set_grad_enabled(need_graph):
                cache[key] = self.observed_stream(idx, landscape)
        kvs = cache[key]
        return kvs if graph else [(k.detach(), v.detach()) for k, v in kvs]

    def _check_finite(self, grad_sums: torch.Tensor) -> None:
        """Raise if an inner step's energy gradient was not finite (its sum is NaN/inf iff an element is, or
        it is so large that the run has diverged anyway). One host sync per descent, after the loop; skipped
        while a CUDA graph is being captured (no sync allowed there; the NaN then reaches the loss)."""
        if grad_sums.is_cuda and torch.cuda.is_current_stream_capturing():
            return
        ok = torch.isfinite(grad_sums)
        if not bool(ok.all()):
            step = int((~ok).nonzero()[0, 0])
            raise TrainingDiverged(f"EBT inner step {step}: non-finite energy gradient; lower the step "
                                   "size or the learning rate")

    def _check_idx(self, idx: torch.Tensor) -> None:
        if idx.dim() != 2:
            raise ConfigError(f"idx: expected token ids of shape (B, T), got {tuple(idx.shape)}")
        if idx.shape[1] > self.cfg.sequence_len:
            raise ConfigError(f"idx: sequence length {idx.shape[1]} exceeds sequence_len="
                              f"{self.cfg.sequence_len}; crop the input or build a longer model")

    def alpha_value(self) -> torch.Tensor:
        """alpha = clamp(param, min 1e-4) (section 6.3)."""
        return self.alpha.clamp(min=ALPHA_FLOOR)

    @property
    def alpha_died(self) -> bool:
        """A learnable alpha at or below its floor: the clamp (the official code's) passes it no gradient, so it
        stays there for the rest of the run (issue 28.7b; the training loop records it in the run's result)."""
        return bool(self.cfg.step_size_learnable and float(self.alpha.detach()) <= ALPHA_FLOOR)

    def landscapes(self, train: bool, generator: torch.Generator | None = None) -> list[int]:
        """Landscape index of every inner step (section 6.2; repetition on the last landscape only). In training
        the repetition count is drawn from ``generator`` (None: torch's global generator)."""
        cfg = self.cfg
        m, k = cfg.mcmc_num_steps, cfg.randomize_num_steps
        if not k:
            r = 1
        elif train:
            lo = max(cfg.randomize_num_steps_min, 1)
            r = int(torch.randint(lo, k + 2, (1,), generator=generator).item())  # r ~ U{lo..k+1}
        else:
            r = k + 1
        return list(range(m - 1)) + [m - 1] * r

    def _noise(self, shape, device, generator: torch.Generator | None) -> torch.Tensor:
        # Candidates live in fp32 (fp64 when the whole model was cast to double, e.g. for gradcheck).
        dtype = torch.float64 if self.vocab_to_embed.weight.dtype == torch.float64 else torch.float32
        return torch.randn(shape, generator=generator, device=device, dtype=dtype)

    def draw(self, generators: Sequence[torch.Generator | None], t: int, landscapes: Sequence[int], device, *,
             train: bool, starts: Sequence[torch.Tensor | None] | None = None) -> Draws:
        """The random inputs of a batch of ``len(generators)`` rows of length ``t``, each row from its own
        generator in a fixed order (initial logits, alpha's multiplier in training, the Langevin noise of every
        step), so a row's draws depend on its generator alone. ``starts``: per row, stored logits (T, V) to start
        from instead of noise (a replayed row), or None."""
        cfg = self.cfg
        s = cfg.step_size_random_scale
        z0s, scales, noises = [], [], []
        for j, g in enumerate(generators):
            z0 = self._noise((t, cfg.vocab_size), device, g) * cfg.init_noise_scale  # (T, V)
            if starts is not None and starts[j] is not None:
                z0 = starts[j].to(z0.device, z0.dtype)
            z0s.append(z0)
            if train and s != 1.0:
                u = torch.rand((t, 1), generator=g, device=device)
                scales.append(1.0 / s + (s - 1.0 / s) * u)  # alpha ~ U[alpha/s, alpha*s] per position
            if cfg.langevin_noise_std > 0:
                noises.append(self._noise((len(landscapes), t, cfg.vocab_size), device, g))  # (steps, T, V)
        return Draws(tuple(landscapes), torch.stack(z0s), torch.stack(noises) if noises else None,
                     torch.stack(scales) if scales else None)

    def _initial_logits(self, b: int, t: int, device, generator: torch.Generator | None) -> torch.Tensor:
        """z0 ~ N(0, init_noise_scale^2), (B, T, V)."""
        z0 = self._noise((b, t, self.cfg.vocab_size), device, generator)
        scale = self.cfg.init_noise_scale
        return z0 if scale == 1.0 else z0 * scale

    # ------------------------------------------------------------------------------------------------
    # Training objective (section 8), validation forward, thinking
    # ------------------------------------------------------------------------------------------------
    def loss(self, idx: torch.Tensor, targets: torch.Tensor, draws: Draws | None = None) -> tuple[torch.Tensor, dict]:
        """Training objective and metrics (section 8).

        loss = mean over inner steps of the CE (S1) or the last step's CE (truncation, S2). ``info``: ``ce``
        (final step, what validation reports), ``ce_initial`` (after the first update), ``energy_initial``,
        ``energy_final``, ``energy_steps`` (mean energy at every step's input), ``alpha``, ``inner_steps``,
        ``replayed``; all detached. Training mode applies the recipe's randomisation (step count,
        per-element step size, replay buffer); evaluation mode none of it except Langevin noise (kept at NLP
        validation in the paper).

        ``draws``: the random inputs of every row (``draw``), e.g. keyed per sample by the training loop, which
        then also runs the replay buffer (rows of ``idx`` may be replayed ones) and gets the final logits back in
        ``info["final_logits"]`` when the buffer is on. Without ``draws`` they come from torch's global generator
        and, in training, the replay buffer runs here: stored rows are appended to the batch and the fresh rows'
        final logits pushed. Host decisions happen here; ``_loss_core`` holds the differentiable rest.
        """
        self._check_idx(idx)
        if targets.shape != idx.shape:
            raise ConfigError(f"targets: shape {tuple(targets.shape)} differs from idx {tuple(idx.shape)}")
        cfg = self.cfg
        train = self.training
        replay = train and cfg.replay_buffer_size > 0
        b, t = idx.shape
        own_draws = draws is None
        n_replayed = 0
        if draws is None:
            starts: list[torch.Tensor | None] = [None] * b
            if replay:
                r_idx, r_tgt, r_z = self.replay_pick(b, t, None)
                idx, targets, n_replayed = torch.cat((idx, r_idx)), torch.cat((targets, r_tgt)), len(r_z)
                starts += list(r_z)
            draws = self.draw([None] * len(starts), t, self.landscapes(train), idx.device, train=train,
                              starts=starts)
        alpha = self.alpha_value()
        if draws.step_scale is not None:
            alpha = alpha * draws.step_scale  # (B, T, 1)
        need_graph = train and torch.is_grad_enabled()
        core = self._compiled_core if (need_graph and self._compiled_core is not None) else self._loss_core
        loss, ce_initial, ce_final, z_final, energy_steps, grad_sums = core(idx, targets, draws.z0, alpha,
                                                                            draws.noise, draws.landscapes,
                                                                            need_graph)
        self._check_finite(grad_sums)
        info = {"ce": ce_final, "ce_initial": ce_initial, "energy_initial": energy_steps[0],
                "energy_final": energy_steps[-1], "energy_steps": energy_steps,
                "alpha": self.alpha_value().detach(), "inner_steps": float(len(draws.landscapes)),
                "replayed": float(n_replayed)}
        if replay and own_draws:
            self.replay_push(idx[:b], targets[:b], z_final[:b])
        elif replay:
            info["final_logits"] = z_final  # (B, T, V), detached: the caller pushes its fresh rows
        return loss, info

    def _loss_core(self, idx: torch.Tensor, targets: torch.Tensor, z0: torch.Tensor, alpha: torch.Tensor,
                   noise: torch.Tensor | None, landscapes: tuple[int, ...], need_graph: bool):
        """The descent and its cross-entropies: (loss, ce_initial, ce_final, final logits, mean energy per step,
        inner-gradient sums). No random draw, host decision or sync, so ``torch.compile`` traces it as one
        graph."""
        zs, es, grad_sums = self._descend(idx, z0, list(landscapes), alpha=alpha, sigma=self.cfg.langevin_noise_std,
                                          need_graph=need_graph, noise=noise)

        def ce(z: torch.Tensor) -> torch.Tensor:
            return F.cross_entropy(upcast(z).flatten(0, 1), targets.flatten(), ignore_index=-100)

        if self.cfg.truncate_steps:
            loss = ce(zs[-1])
            with torch.no_grad():
                ce_initial = ce(zs[0])
            ce_final = loss.detach()
        else:
            ces = [ce(z) for z in zs]
            loss = torch.stack(ces).mean()
            ce_initial, ce_final = ces[0].detach(), ces[-1].detach()
        # Mean energy per step over the real positions: targets of -100 (document padding) are left out, as
        # in the CE. Without padding this is e.mean() (same sum, same count).
        real = targets != -100  # (B, T)
        n_real = real.sum().clamp(min=1)
        energy_steps = torch.stack([torch.where(real, e, 0.0).sum() / n_real for e in es])  # (steps,)
        return loss, ce_initial, ce_final, zs[-1].detach(), energy_steps, grad_sums

    def compile_loss(self, **options) -> None:
        """Run the training part of ``loss`` (``_loss_core``, when a graph is needed) under ``torch.compile``
        from now on. Its inner gradient is then ``torch.func.grad`` (``energy_grad``), which the compiler
        traces with the rest into one first-order graph. It draws nothing: the noise comes in as ``Draws``
        (``fallback_random`` only keeps any draw added later in step with eager)."""
        self._compiled_core = torch.compile(self._loss_core, dynamic=False,
                                            options={"fallback_random": True, **options})

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        """Next-token logits (B, T, V) after the validation-time descent (``cfg.eval_steps`` steps, fixed
        alpha, no step randomisation; Langevin noise if configured, as the paper's NLP validation does).
        Works under ``torch.no_grad()`` (the descent enables grad internally; the result is detached)."""
        self._check_idx(idx)
        grad_on = torch.is_grad_enabled()
        b, t = idx.shape
        z0 = self._initial_logits(b, t, idx.device, None)
        zs, _ = self.descend(idx, z0, self.landscapes(train=False), alpha=self.alpha_value(),
                             sigma=self.cfg.langevin_noise_std, need_graph=self.training and grad_on)
        return zs[-1] if grad_on else zs[-1].detach()

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
        cache: dict = {}  # observed keys/values shared by every sample and the scoring passes
        best_z = best_e = None
        for _ in range(samples):
            z0 = self._initial_logits(b, t, idx.device, generator)
            zs, _ = self.descend(idx, z0, landscapes, alpha=alpha, sigma=sigma, need_graph=False,
                                 generator=generator, kv_cache=cache)
            z = zs[-1]
            with torch.no_grad():  # score the final candidate on the last landscape
                kvs = self._observed(idx, landscapes[-1], False, False, cache)
                e = self.energies_from_embedding(self.vocab_to_embed(upcast(z).softmax(-1)), kvs)  # (B, T)
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
    def replay_pick(self, b: int, t: int, generator: torch.Generator | None
                    ) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
        """The stored rows to replay with a batch of ``b`` fresh rows of length ``t``: min(fraction * b, len(buffer))
        records chosen by ``generator`` (None: torch's global one) -> tokens (n, T), targets (n, T) and their
        stored final logits (n of (T, V)); they start from those logits instead of noise."""
        if self.replay and self.replay[0][0].shape[0] != t:
            self.replay.clear()  # a different sequence length: stored candidates no longer fit
        n = min(int(self.cfg.replay_buffer_fraction * b), len(self.replay))
        device = self.vocab_to_embed.weight.device
        if n == 0:
            empty = torch.empty((0, t), dtype=torch.long, device=device)
            return empty, empty, []
        pick = torch.randperm(len(self.replay), generator=generator)[:n].tolist()
        r_idx = torch.stack([self.replay[j][0] for j in pick]).to(device)
        r_tgt = torch.stack([self.replay[j][1] for j in pick]).to(device)
        return r_idx, r_tgt, [self.replay[j][2] for j in pick]

    def replay_push(self, idx: torch.Tensor, targets: torch.Tensor, z: torch.Tensor) -> None:
        """Push the fresh rows' final logits; keep the newest ``replay_buffer_size`` records."""
        z = z.detach()
        for j in range(idx.shape[0]):
            self.replay.append((idx[j].detach().clone(), targets[j].detach().clone(), z[j].clone()))
        del self.replay[: max(0, len(self.replay) - self.cfg.replay_buffer_size)]
