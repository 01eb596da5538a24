"""Next-frame prediction: a video Transformer++ and a video EBT (ebt-paper.md sections 14-15; issue 31).

Shape legend: B batch, T context frames (= predicted positions), E frame-embedding size (a frozen encoder's
output, e.g. 3136 for SD-VAE latents), D width, L blocks, So = T + s observed rows (s = 1 with the step token).

Inputs are sequences of frame embeddings, not tokens: ``frames`` (B, T, E) are frames 0..T-1 and ``targets``
(B, T, E) frames 1..T, so row i predicts frame i+1 from frames 0..i. Both families project a frame to the
width with one affine map ``frame_to_embed`` (E -> D, with a bias, as the official code's encoder down
projection) and run the text models' Llama blocks (``layers.Block``); the loss is SmoothL1 (beta 1, mean
over every element) between a predicted embedding and the true one, in the encoder's space E.

  VideoTransformerPP   causal blocks over the projected frames, final norm, a head D -> E: the regression.
  VideoEBT             the text EBT's energy function with continuous candidates: a candidate next-frame
                       embedding y (B, T, E) is projected by the same ``frame_to_embed`` and read as the
                       prediction rows (leakage-free attention, step token, energy head: ``EBT``'s own
                       ``energies_from_embedding`` and ``energy_grad``, borrowed below). Inner descent:
                         y0 ~ N(0, init_noise_scale^2) (B, T, E)
                         per step: h = frame_to_embed(y) [+ sigma * noise in D, S2]; E = energies(h)
                                   y <- y - alpha * dE/dy,   dE/dy = (dE/dh) W_f2e   (affine: the bias drops)
                       No softmax: the candidate is the prediction itself. S1 (the paper's video runs: alpha
                       30,000 learnable, 2 landscapes): every step starts detached, loss = mean over steps of
                       SmoothL1(y_step, target). S2-style: chained steps, second-order graph and loss on the last
                       step only, randomised step count and per-element alpha, Langevin noise.

Why the descent is written here and not shared with ``ebt.EBT._descend``: the text descent is interleaved with
the softmax and the V-space update (``z = p - alpha dE/dp``) and keeps its numerics pinned to the official code
(tests/test_models.py); the continuous descent differs in exactly those lines. The parts that are the same
algorithm are the same code: the blocks and the prediction attention (``layers``), the energy of projected
candidate rows and its inner gradient (``EBT.energies_from_embedding``, ``EBT.energy_grad``), alpha's clamp,
the step list and the finiteness check (``EBT.alpha_value``, ``EBT.landscapes``, ``EBT._check_finite``),
which only read attributes this class has under the same names.

Langevin noise follows the official video code: it perturbs the projected rows where the energy is evaluated,
not the candidate itself. No replay buffer for video yet (a config with one is refused).

System-2 thinking (``VideoEBT.think`` / ``think_grid``, used by ``ebt-scale think``): more inner steps and
best-of-N samples kept per (batch, position) by minimum energy, the text ``EBT.think``'s rule.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from ebt_scaling.config import VIDEO_LR_DIVISOR, VIDEO_RECIPE_OVERRIDES, ModelConfig
from ebt_scaling.errors import ConfigError
from ebt_scaling.models.ebt import EBT, KV, Draws
from ebt_scaling.models.layers import Block, RMSNorm, Rotary, check_attn_impl, init_linear_xavier, upcast
from ebt_scaling.models.transformer_pp import TransformerPP

__all__ = ["VIDEO_LR_DIVISOR", "VIDEO_RECIPE_OVERRIDES", "VideoEBT", "VideoThinking", "VideoTransformerPP",
           "build_video_model", "copy_last_frame_loss", "smooth_l1"]

# The video recipes and the paper's LR divisor live in config.py (torch-free, for sweep planning); re-exported here.


def smooth_l1(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """SmoothL1 with beta 1, mean over every element, computed in at least fp32."""
    return F.smooth_l1_loss(upcast(pred), upcast(target), beta=1.0)


def _check_frames(frames: torch.Tensor, targets: torch.Tensor | None, frame_dim: int, max_len: int) -> None:
    if frames.dim() != 3 or frames.shape[-1] != frame_dim:
        raise ConfigError(f"frames: expected frame embeddings of shape (B, T, {frame_dim}), got "
                          f"{tuple(frames.shape)}; encode the frames with the store's encoder first")
    if frames.shape[1] > max_len:
        raise ConfigError(f"frames: {frames.shape[1]} context frames exceed sequence_len={max_len}; crop the input "
                          "or build a longer model")
    if targets is not None and targets.shape != frames.shape:
        raise ConfigError(f"targets: shape {tuple(targets.shape)} differs from frames {tuple(frames.shape)}")


class VideoTransformerPP(nn.Module):
    """``model(frames)`` -> predicted next-frame embeddings (B, T, E); ``model.loss(frames, targets)`` ->
    (SmoothL1, info)."""

    logged_metrics: ClassVar[dict[str, str]] = {}

    def __init__(self, cfg: ModelConfig, frame_dim: int, attn_impl: str = "sdpa") -> None:
        super().__init__()
        if cfg.family != "transformer_pp":
            raise ConfigError(f"family: VideoTransformerPP got {cfg.family!r}; build it with "
                              "family='transformer_pp'")
        if frame_dim < 1:
            raise ConfigError(f"frame_dim: must be >= 1, got {frame_dim}")
        self.cfg, self.frame_dim = cfg, frame_dim
        self.attn_impl = check_attn_impl(attn_impl)
        self.frame_to_embed = nn.Linear(frame_dim, cfg.n_embd, bias=True)  # (D, E) + (D,)
        self.layers = nn.ModuleList(Block(cfg.n_embd, cfg.n_head, cfg.ffn_dim, cfg.norm_eps)
                                    for _ in range(cfg.n_layer))
        self.norm = RMSNorm(cfg.n_embd, cfg.norm_eps)
        self.output = nn.Linear(cfg.n_embd, frame_dim, bias=False)  # D -> E
        self.rotary = Rotary(cfg.head_dim, cfg.sequence_len, cfg.rope_theta)
        init_linear_xavier(self)

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        """frames (B, T, E) -> predicted embeddings of frames 1..T (B, T, E)."""
        _check_frames(frames, None, self.frame_dim, self.cfg.sequence_len)
        impl = check_attn_impl(self.attn_impl)
        rope = self.rotary(0, frames.shape[1])
        h = self.frame_to_embed(frames)  # (B, T, D)
        for layer in self.layers:
            h = layer(h, rope, impl)
        return self.output(self.norm(h))

    def loss(self, frames: torch.Tensor, targets: torch.Tensor, draws: None = None) -> tuple[torch.Tensor, dict]:
        """SmoothL1 between the prediction and ``targets`` (B, T, E). ``draws``: ignored (the families' shared call)."""
        _check_frames(frames, targets, self.frame_dim, self.cfg.sequence_len)
        loss = smooth_l1(self(frames), targets)
        return loss, {"smooth_l1": loss.detach()}

    # the text Transformer++'s own: no inner steps, no random inputs, one AdamW group (they read only parameters)
    landscapes = TransformerPP.landscapes
    draw = TransformerPP.draw
    optim_groups = TransformerPP.optim_groups


@dataclass
class VideoThinking:
    """What ``VideoEBT.think_grid`` chose: per (steps, samples) setting the kept candidates (B, T, E) and their
    scored energies (B, T); ``energy_steps[k]`` (B, T): sample 0's energies after k = 0..max(steps) steps."""

    y: dict[tuple[int, int], torch.Tensor]
    energy: dict[tuple[int, int], torch.Tensor]
    energy_steps: list[torch.Tensor]


class VideoEBT(nn.Module):
    """``model(frames)`` -> next-frame embeddings after the validation descent; ``model.loss(frames, targets,
    draws=None)`` -> (loss, info); ``model.energies(frames, y)`` -> (B, T)."""

    logged_metrics: ClassVar[dict[str, str]] = {"smooth_l1": "train_smooth_l1",
                                                "smooth_l1_initial": "train_smooth_l1_initial", "alpha": "alpha"}

    # The text EBT's code where the algorithm is the same (see the module docstring).
    energies_from_embedding = EBT.energies_from_embedding
    energy_grad = EBT.energy_grad
    alpha_value = EBT.alpha_value
    landscapes = EBT.landscapes
    _check_finite = EBT._check_finite
    optim_groups = EBT.optim_groups

    def __init__(self, cfg: ModelConfig, frame_dim: int) -> None:
        super().__init__()
        if cfg.family != "ebt":
            raise ConfigError(f"family: VideoEBT got {cfg.family!r}; build it with family='ebt'")
        if cfg.replay_buffer_size:
            raise ConfigError("replay_buffer_size: the video EBT has no replay buffer yet; set replay_buffer_size=0 "
                              "(the ebt_vid_s2 recipe does)")
        if frame_dim < 1:
            raise ConfigError(f"frame_dim: must be >= 1, got {frame_dim}")
        self.cfg, self.frame_dim = cfg, frame_dim
        d = cfg.n_embd
        self.frame_to_embed = nn.Linear(frame_dim, d, bias=True)  # observed frames and candidates alike
        self.step_embeddings = nn.Embedding(cfg.mcmc_num_steps, d) if cfg.step_embedding else None
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
        self.inner_grad = "autograd"  # read by EBT.energy_grad

    # -- the energy function ---------------------------------------------------------------------------
    def observed_stream(self, frames: torch.Tensor, landscape: int) -> KV:
        """Per-layer (k, v) of the observed rows [step token ; frames 0..T-1]. Independent of the candidates."""
        b, t, _ = frames.shape
        x = self.frame_to_embed(frames)  # (B, T, D)
        if self.step_embeddings is not None:
            step = self.step_embeddings.weight[landscape].view(1, 1, -1).expand(b, 1, -1)
            x = torch.cat((step.to(x.dtype), x), dim=1)  # (B, So, D)
        rope = self.rotary(0, t + self.s)
        kvs: KV = []
        for layer in self.layers[:-1]:
            x, k, v = layer.observed(x, rope)
            kvs.append((k, v))
        last = self.layers[-1]  # its observed outputs never reach an energy: keys and values only
        kvs.append(last.kv(last.attention_norm(x), rope))
        return kvs

    def energies(self, frames: torch.Tensor, y: torch.Tensor, landscape: int = 0) -> torch.Tensor:
        """E(frames, y) for candidate next-frame embeddings y (B, T, E): (B, T)."""
        _check_frames(frames, y, self.frame_dim, self.cfg.sequence_len)
        return self.energies_from_embedding(self.frame_to_embed(y), self.observed_stream(frames, landscape))

    # -- the inner descent -------------------------------------------------------------------------------
    def descend(self, frames: torch.Tensor, y: torch.Tensor, landscapes: Sequence[int], *, alpha: torch.Tensor,
                sigma: float, need_graph: bool, noise: torch.Tensor | None = None,
                generator: torch.Generator | None = None) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Run the inner steps from candidates y (B, T, E): (candidate after every step, energies (B, T) at every
        step's input). ``noise`` (B, steps, T, D): the Langevin noise (None: drawn when sigma > 0)."""
        cfg = self.cfg
        n = len(landscapes)
        ys: list[torch.Tensor] = []
        es: list[torch.Tensor] = []
        grad_sums: list[torch.Tensor] = []
        cache: dict[int, KV] = {}
        with torch.enable_grad():  # the descent differentiates even at validation under no_grad
            w = self.frame_to_embed.weight if need_graph else self.frame_to_embed.weight.detach()  # (D, E)
            bias = self.frame_to_embed.bias if need_graph else self.frame_to_embed.bias.detach()
            for i, landscape in enumerate(landscapes):
                graph = need_graph and (not cfg.truncate_steps or i == n - 1)
                if cfg.detach_between_steps or not need_graph:
                    y = y.detach()  # S1: the outer gradient flows through one step at a time
                key = landscape if self.s else 0
                if key not in cache:  # observed rows never read the candidates: one pass per landscape
                    with torch.set_grad_enabled(need_graph):
                        cache[key] = self.observed_stream(frames, landscape)
                kvs = cache[key] if graph else [(k.detach(), v.detach()) for k, v in cache[key]]
                h = F.linear(upcast(y), w, bias)  # (B, T, D)
                if sigma > 0:  # Langevin noise on the projected rows (the official video code)
                    eps = noise[:, i] if noise is not None else torch.randn(h.shape, generator=generator,
                                                                            dtype=h.dtype, device=h.device)
                    h = h + sigma * eps
                e, g_h = self.energy_grad(h, kvs, graph)  # (B, T), (B, T, D)
                g = g_h @ (w if graph else w.detach())  # dE/dy (B, T, E): the affine map's transpose
                y = y - alpha * g
                ys.append(y if need_graph else y.detach())
                es.append(e.detach())
                grad_sums.append(g_h.detach().sum())
        self._check_finite(torch.stack(grad_sums))
        return ys, es

    def _dtype(self) -> torch.dtype:
        return torch.float64 if self.frame_to_embed.weight.dtype == torch.float64 else torch.float32

    def draw(self, generators: Sequence[torch.Generator | None], t: int, landscapes: Sequence[int], device: Any, *,
             train: bool, starts: Sequence[torch.Tensor | None] | None = None) -> Draws:
        """The random inputs of a batch, each row from its own generator in a fixed order: initial candidate
        (T, E), alpha's multiplier (T, 1) in training, the Langevin noise (steps, T, D)."""
        cfg = self.cfg
        s = cfg.step_size_random_scale
        dt = self._dtype()
        y0s, scales, noises = [], [], []
        for j, g in enumerate(generators):
            y0 = torch.randn((t, self.frame_dim), generator=g, device=device, dtype=dt) * cfg.init_noise_scale
            if starts is not None and starts[j] is not None:
                y0 = starts[j].to(y0.device, y0.dtype)
            y0s.append(y0)
            if train and s != 1.0:
                u = torch.rand((t, 1), generator=g, device=device, dtype=dt)
                scales.append(1.0 / s + (s - 1.0 / s) * u)
            if cfg.langevin_noise_std > 0:
                noises.append(torch.randn((len(landscapes), t, cfg.n_embd), generator=g, device=device, dtype=dt))
        return Draws(tuple(landscapes), torch.stack(y0s), torch.stack(noises) if noises else None,
                     torch.stack(scales) if scales else None)

    # -- objective, prediction -----------------------------------------------------------------------------
    def loss(self, frames: torch.Tensor, targets: torch.Tensor, draws: Draws | None = None
             ) -> tuple[torch.Tensor, dict]:
        """loss = mean over steps of SmoothL1(y_step, targets) (S1) or the last step's (truncation, S2). ``info``:
        ``smooth_l1`` (final step, what validation reports), ``smooth_l1_initial`` (after the first update),
        ``energy_initial``, ``energy_final``, ``alpha``, ``inner_steps``; all detached. ``draws``: the random
        inputs (``draw``); None draws them from torch's global generator."""
        _check_frames(frames, targets, self.frame_dim, self.cfg.sequence_len)
        train = self.training
        b, t, _ = frames.shape
        if draws is None:
            draws = self.draw([None] * b, t, self.landscapes(train), frames.device, train=train)
        alpha = self.alpha_value()
        if draws.step_scale is not None:
            alpha = alpha * draws.step_scale  # (B, T, 1)
        need_graph = train and torch.is_grad_enabled()
        ys, es = self.descend(frames, draws.z0, list(draws.landscapes), alpha=alpha,
                              sigma=self.cfg.langevin_noise_std, need_graph=need_graph, noise=draws.noise)
        if self.cfg.truncate_steps:
            loss = smooth_l1(ys[-1], targets)
            with torch.no_grad():
                first = smooth_l1(ys[0], targets)
            final = loss.detach()
        else:
            losses = [smooth_l1(y, targets) for y in ys]
            loss = torch.stack(losses).mean()
            first, final = losses[0].detach(), losses[-1].detach()
        info = {"smooth_l1": final, "smooth_l1_initial": first, "energy_initial": es[0].mean(),
                "energy_final": es[-1].mean(), "alpha": self.alpha_value().detach(),
                "inner_steps": float(len(draws.landscapes))}
        return loss, info

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        """Next-frame embeddings (B, T, E) after the validation descent (``cfg.eval_steps`` steps, fixed alpha)."""
        _check_frames(frames, None, self.frame_dim, self.cfg.sequence_len)
        grad_on = torch.is_grad_enabled()
        draws = self.draw([None] * frames.shape[0], frames.shape[1], self.landscapes(False), frames.device,
                          train=False)
        ys, _ = self.descend(frames, draws.z0, list(draws.landscapes), alpha=self.alpha_value(),
                             sigma=self.cfg.langevin_noise_std, need_graph=self.training and grad_on,
                             noise=draws.noise)
        return ys[-1] if grad_on else ys[-1].detach()


    # -- System-2 thinking (ebt-paper.md section 16; ebt_scaling/think) ------------------------------------
    def think(self, frames: torch.Tensor, steps: int, samples: int = 1, step_size: float | None = None,
              langevin_noise_std: float | None = None, generator: torch.Generator | None = None
              ) -> tuple[torch.Tensor, torch.Tensor]:
        """System-2 inference, the text ``EBT.think``'s rule on continuous candidates: ``steps`` inner steps (step j
        on landscape min(j, M-1)) from ``samples`` independent noise draws, one after another from ``generator``;
        one extra no-grad energy evaluation scores each final candidate and the minimum-energy one is kept
        independently per (batch, position). Returns detached next-frame embeddings (B, T, E) and their energies
        (B, T). ``step_size`` / ``langevin_noise_std`` replace the trained alpha / the configured sigma."""
        if not isinstance(steps, int) or steps < 1:
            raise ConfigError(f"steps: must be an integer >= 1, got {steps!r}")
        if not isinstance(samples, int) or samples < 1:
            raise ConfigError(f"samples: must be an integer >= 1, got {samples!r}")
        grid = self.think_grid(frames, [steps], [samples], [generator] * samples, step_size=step_size,
                               langevin_noise_std=langevin_noise_std)
        return grid.y[(steps, samples)], grid.energy[(steps, samples)]

    def think_grid(self, frames: torch.Tensor, steps: Sequence[int], samples: Sequence[int],
                   generators: Sequence[torch.Generator | None], step_size: float | None = None,
                   langevin_noise_std: float | None = None) -> VideoThinking:
        """Every (k in ``steps``, N in ``samples``) setting of ``think`` from one descent per sample: sample s draws
        its initial candidate y0 ~ N(0, init_noise_scale^2) (B, T, E) and then its Langevin noise from
        ``generators[s]`` and runs max(steps) steps. The candidate after k steps is exactly ``think(frames, k, 1,
        generator=<that generator>)``'s (step j's landscape and noise do not depend on the total count). Setting
        (k, N) keeps, per (batch, position), the candidate of minimum scored energy among samples 0..N-1, so its
        energy never increases with N. ``energy_steps[k]``: sample 0's scored energies (B, T) after k = 0..max
        steps (k = 0: the initial noise)."""
        _check_frames(frames, None, self.frame_dim, self.cfg.sequence_len)
        steps, samples = sorted(set(steps)), sorted(set(samples))
        if not steps or steps[0] < 1 or not samples or samples[0] < 1:
            raise ConfigError(f"think: steps {steps} and samples {samples} must be non-empty lists of integers >= 1")
        if len(generators) < samples[-1]:
            raise ConfigError(f"think: {len(generators)} generator(s) for up to {samples[-1]} samples; pass one each")
        if step_size is not None and not step_size > 0:
            raise ConfigError(f"step_size: must be > 0, got {step_size!r}; pass None for the trained alpha")
        if langevin_noise_std is not None and langevin_noise_std < 0:
            raise ConfigError(f"langevin_noise_std: must be >= 0, got {langevin_noise_std!r}")
        m = self.cfg.mcmc_num_steps
        kmax = steps[-1]
        landscapes = [min(j, m - 1) for j in range(kmax)]
        alpha = (torch.tensor(float(step_size), device=frames.device) if step_size is not None
                 else self.alpha_value().detach())
        sigma = self.cfg.langevin_noise_std if langevin_noise_std is None else float(langevin_noise_std)
        b, t, _ = frames.shape
        observed: dict[int, KV] = {}

        def score(y: torch.Tensor, landscape: int) -> torch.Tensor:  # the scoring pass, no noise: (B, T)
            key = landscape if self.s else 0
            with torch.no_grad():
                if key not in observed:
                    observed[key] = self.observed_stream(frames, landscape)
                return self.energies_from_embedding(self.frame_to_embed(y), observed[key])

        out = VideoThinking({}, {}, [])
        best_y: dict[int, torch.Tensor] = {}
        best_e: dict[int, torch.Tensor] = {}
        for s in range(samples[-1]):
            g = generators[s]
            y0 = torch.randn((b, t, self.frame_dim), generator=g, device=frames.device,
                             dtype=self._dtype()) * self.cfg.init_noise_scale
            ys, _ = self.descend(frames, y0, landscapes, alpha=alpha, sigma=sigma, need_graph=False, generator=g)
            if s == 0:  # the energy curve: every step count, from the initial noise on
                out.energy_steps = [score(y0, 0)] + [score(ys[k - 1], landscapes[k - 1]) for k in range(1, kmax + 1)]
            for k in steps:
                y = ys[k - 1]
                e = out.energy_steps[k] if s == 0 else score(y, landscapes[k - 1])
                if s == 0:
                    best_y[k], best_e[k] = y, e
                else:
                    better = e < best_e[k]  # (B, T)
                    best_y[k] = torch.where(better.unsqueeze(-1), y, best_y[k])
                    best_e[k] = torch.where(better, e, best_e[k])
                if s + 1 in samples:
                    out.y[(k, s + 1)], out.energy[(k, s + 1)] = best_y[k], best_e[k]
        return out


def copy_last_frame_loss(frames: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """The copy baseline: SmoothL1 of predicting every next frame as the current one."""
    return smooth_l1(frames, targets)


def build_video_model(cfg: ModelConfig, frame_dim: int) -> nn.Module:
    """A freshly initialised ``VideoTransformerPP`` or ``VideoEBT`` for ``cfg`` and frames of ``frame_dim``."""
    if cfg.family == "transformer_pp":
        return VideoTransformerPP(cfg, frame_dim)
    if cfg.family == "ebt":
        return VideoEBT(cfg, frame_dim)
    raise ConfigError(f"family: unknown family {cfg.family!r}; use transformer_pp or ebt")
