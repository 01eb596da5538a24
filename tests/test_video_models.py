"""The video Transformer++ and video EBT (issue 31 item 1): causality, the inner step's gradient, and agreement
with a straightforward re-implementation of the paper's algorithm written here (float64)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from ebt_scaling.config import ModelConfig
from ebt_scaling.errors import ConfigError
from ebt_scaling.models.video import (
    VIDEO_RECIPE_OVERRIDES,
    VideoEBT,
    VideoTransformerPP,
    build_video_model,
    copy_last_frame_loss,
)

E, T = 12, 6

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # conftest.py


def cfg(family: str, recipe: str = "ebt_vid_s1", **kw) -> ModelConfig:
    base = dict(family=family, n_layer=2, n_embd=16, n_head=2, vocab_size=2, sequence_len=T)
    if family == "ebt":
        base.update(VIDEO_RECIPE_OVERRIDES[recipe])
    base.update(kw)
    return ModelConfig(**base)


def clip(b: int = 2, seed: int = 0, dtype=torch.float32) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, T + 1, E, generator=g, dtype=dtype)


# S2 mechanics without randomness: fixed step count and alpha, chained steps, truncation; alpha small enough.
S2_PLAIN = dict(randomize_num_steps=0, step_size_random_scale=1.0, langevin_noise_std=0.0, mcmc_num_steps=3)


# --------------------------------------------------------------------------------------------------------
# The paper's algorithm, written plainly (section 4.2 superdiagonal attention, section 6.4 descent, without the
# softmax: continuous candidates), reading the model's weights only.
# --------------------------------------------------------------------------------------------------------
def ref_rope(x: torch.Tensor, positions: torch.Tensor, theta: float) -> torch.Tensor:
    """Llama's complex-number RoPE. x (B, S, H, Dh)."""
    dh = x.shape[-1]
    freqs = 1.0 / theta ** (torch.arange(0, dh, 2, dtype=torch.float64) / dh)
    cis = torch.polar(torch.ones(len(positions), dh // 2, dtype=torch.float64),
                      torch.outer(positions.double(), freqs))  # (S, Dh/2)
    xc = torch.view_as_complex(x.reshape(*x.shape[:-1], dh // 2, 2).contiguous())
    return torch.view_as_real(xc * cis[None, :, None, :]).flatten(-2)


def ref_norm(x: torch.Tensor, w: torch.Tensor, eps: float) -> torch.Tensor:
    return x / torch.sqrt((x * x).mean(-1, keepdim=True) + eps) * w


def ref_energies(model: VideoEBT, frames: torch.Tensor, y: torch.Tensor, landscape: int) -> torch.Tensor:
    c = model.cfg
    b, t, _ = frames.shape
    nh, dh = c.n_head, c.n_embd // c.n_head
    wf, bf = model.frame_to_embed.weight, model.frame_to_embed.bias
    xo = frames @ wf.T + bf
    xo = torch.cat((model.step_embeddings.weight[landscape].expand(b, 1, -1), xo), 1)  # (B, T+1, D)
    xp = y @ wf.T + bf  # (B, T, D)
    so = t + 1
    full = torch.triu(torch.full((t + 2, t + 2), float("-inf"), dtype=torch.float64), 1)  # M' (T+2, T+2)
    for blk in model.layers:
        def proj(x, pos, blk=blk):
            h = ref_norm(x, blk.attention_norm.weight, c.norm_eps)
            q = ref_rope((h @ blk.wq.weight.T).view(b, -1, nh, dh), pos, c.rope_theta).transpose(1, 2)
            k = ref_rope((h @ blk.wk.weight.T).view(b, -1, nh, dh), pos, c.rope_theta).transpose(1, 2)
            return q, k, (h @ blk.wv.weight.T).view(b, -1, nh, dh).transpose(1, 2)

        qo, ko, vo = proj(xo, torch.arange(so))
        qp, kp, vp = proj(xp, torch.arange(2, t + 2))
        ao = (qo @ ko.transpose(-1, -2) / math.sqrt(dh) + full[:so, :so]).softmax(-1)
        out_o = ao @ vo
        p = qp @ ko.transpose(-1, -2) / math.sqrt(dh)  # (B, H, T, T+1)
        p = torch.cat((p, torch.zeros(b, nh, t, 1, dtype=p.dtype)), -1)  # (B, H, T, T+2)
        sup = torch.zeros(t, t + 2, dtype=p.dtype)
        sup[torch.arange(t), torch.arange(t) + 2] = 1.0
        selfs = (qp * kp).sum(-1, keepdim=True) / math.sqrt(dh)
        p = p * (1 - sup) + selfs * sup
        a = (p + full[2:, :]).softmax(-1)
        w_self = (a * sup).sum(-1, keepdim=True)
        a = (a * (1 - sup))[..., :-1]  # (B, H, T, T+1)
        out_p = a @ vo + w_self * vp

        def finish(x, o, blk=blk):
            x = x + o.transpose(1, 2).reshape(b, -1, c.n_embd) @ blk.wo.weight.T
            h = ref_norm(x, blk.ffn_norm.weight, c.norm_eps)
            ff = blk.feed_forward
            return x + (F.silu(h @ ff.w1.weight.T) * (h @ ff.w3.weight.T)) @ ff.w2.weight.T

        xo, xp = finish(xo, out_o), finish(xp, out_p)
    return (ref_norm(xp, model.norm.weight, c.norm_eps) @ model.energy_head.weight.T).squeeze(-1)


def exact_rope(m: VideoEBT) -> VideoEBT:
    """The model keeps its RoPE table in fp32 (layers.Rotary); for a float64 comparison, recompute it in fp64."""
    c = m.cfg
    inv = 1.0 / c.rope_theta ** (torch.arange(0, c.head_dim, 2, dtype=torch.float64) / c.head_dim)
    ang = torch.outer(torch.arange(m.rotary.max_pos, dtype=torch.float64), inv)
    m.rotary.cos_sin = torch.stack((ang.cos(), ang.sin()), -1)
    return m


def ref_loss(model: VideoEBT, frames, targets, y0, landscapes, alpha):
    """Section 6.4 without the softmax: y <- y - alpha dE/dy; S1 detaches and averages, S2 truncates."""
    c = model.cfg
    y, ys = y0, []
    for i, ls in enumerate(landscapes):
        last = i == len(landscapes) - 1
        if c.detach_between_steps:
            y = y.detach().requires_grad_()
        elif not y.requires_grad:
            y = y.requires_grad_()
        e = ref_energies(model, frames, y, ls)
        (g,) = torch.autograd.grad(e.sum(), y, create_graph=(last or not c.truncate_steps))
        y = y - alpha * g
        ys.append(y)
    losses = [F.smooth_l1_loss(y_, targets, beta=1.0) for y_ in ys]
    return (losses[-1] if c.truncate_steps else torch.stack(losses).mean()), ys


@pytest.mark.parametrize("recipe,extra", [("ebt_vid_s1", {}), ("ebt_vid_s2", dict(S2_PLAIN, step_size=3.0))])
def test_ebt_equals_the_papers_algorithm(recipe, extra):
    torch.manual_seed(0)
    m = exact_rope(VideoEBT(cfg("ebt", recipe, **extra), E).double().train())
    x = clip(dtype=torch.float64)
    frames, targets = x[:, :-1], x[:, 1:]
    y = torch.randn(2, T, E, dtype=torch.float64)
    # the energy
    torch.testing.assert_close(m.energies(frames, y, 1 if m.cfg.mcmc_num_steps > 1 else 0),
                               ref_energies(m, frames, y, 1 if m.cfg.mcmc_num_steps > 1 else 0), rtol=0, atol=1e-10)
    # the inner steps and the loss, and the loss's gradient with respect to every parameter
    draws = m.draw([torch.Generator().manual_seed(j) for j in range(2)], T, m.landscapes(True), "cpu", train=True)
    loss, info = m.loss(frames, targets, draws)
    ref, ys = ref_loss(m, frames, targets, draws.z0, draws.landscapes, m.alpha_value())
    torch.testing.assert_close(loss, ref, rtol=0, atol=1e-10)
    torch.testing.assert_close(info["smooth_l1"], F.smooth_l1_loss(ys[-1], targets).detach(), rtol=0, atol=1e-10)
    params = [p for p in m.parameters() if p.requires_grad]
    got = torch.autograd.grad(loss, params)
    want = torch.autograd.grad(ref, params)
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-9, atol=1e-10)


def test_inner_step_gradcheck():
    """The descent's output is differentiable twice: gradcheck of one step (through dE/dy) in float64, with respect
    to the frames and the starting candidate (S2 mechanics: the candidate is not detached)."""
    torch.manual_seed(1)
    m = VideoEBT(cfg("ebt", "ebt_vid_s2", n_layer=1, **dict(S2_PLAIN, mcmc_num_steps=1)), E).double().train()
    x = clip(b=1, dtype=torch.float64)
    frames = x[:, :-1].clone().requires_grad_()
    y0 = torch.randn(1, T, E, dtype=torch.float64, requires_grad=True)

    def step(fr, y):
        ys, _ = m.descend(fr, y, [0], alpha=torch.tensor(0.7, dtype=torch.float64), sigma=0.0, need_graph=True)
        return ys[-1]

    assert torch.autograd.gradcheck(step, (frames, y0))


@pytest.mark.parametrize("family", ["transformer_pp", "ebt"])
def test_causality(family):
    """Changing frame k changes no prediction at positions < k."""
    torch.manual_seed(2)
    m = build_video_model(cfg(family), E).double().eval()
    x = clip(dtype=torch.float64)[:, :-1]
    k = 3
    x2 = x.clone()
    x2[:, k] += 5.0
    torch.manual_seed(5)
    a = m(x)
    torch.manual_seed(5)
    b = m(x2)
    assert torch.allclose(a[:, :k], b[:, :k], rtol=0, atol=1e-12)
    assert not torch.allclose(a[:, k:], b[:, k:])


@pytest.mark.slow
def test_both_families_learn_a_next_frame_below_copy_baseline():
    """Training on clips whose next frame is a fixed rotation of the current one: both families end below the
    copy-last-frame baseline (the T++ far below; the EBT starts from noise and is slower)."""
    torch.manual_seed(3)
    rot = torch.linalg.qr(torch.randn(E, E))[0]
    xs = [torch.randn(32, 1, E)]
    for _ in range(T):
        xs.append(xs[-1] @ rot)
    data = torch.cat(xs, 1)
    frames, targets = data[:, :-1], data[:, 1:]
    copy = float(copy_last_frame_loss(frames, targets))
    for family, bound in (("transformer_pp", 0.5 * copy), ("ebt", 0.95 * copy)):
        m = build_video_model(cfg(family, step_size=30.0, step_size_lr_multiplier=100.0), E).train()
        opt = torch.optim.AdamW([dict(params=g["params"], lr=3e-3 * g["lr_mult"], weight_decay=0.0)
                                 for g in m.optim_groups(0.0)])
        first = None
        for _ in range(100):
            loss, info = m.loss(frames, targets)
            first = float(info["smooth_l1"]) if first is None else first
            opt.zero_grad()
            loss.backward()
            opt.step()
        m.eval()
        final = float(m.loss(frames, targets)[1]["smooth_l1"])
        assert final < bound and final < first, (family, first, final, copy)


def test_bad_inputs_are_one_line():
    m = VideoTransformerPP(cfg("transformer_pp"), E)
    with pytest.raises(ConfigError, match="frames: expected"):
        m(torch.zeros(2, T, E + 1))
    with pytest.raises(ConfigError, match="exceed sequence_len"):
        m(torch.zeros(2, T + 1, E))
    with pytest.raises(ConfigError, match="targets: shape"):
        m.loss(torch.zeros(2, T, E), torch.zeros(2, T - 1, E))
    with pytest.raises(ConfigError, match="replay buffer"):
        VideoEBT(cfg("ebt", replay_buffer_size=8), E)
    with pytest.raises(ConfigError, match="family"):
        VideoEBT(cfg("transformer_pp"), E)


# --------------------------------------------------------------------------------------------------------
# Parameters and FLOPs (models/video_flops.py) against the built models and the matmul counter
# --------------------------------------------------------------------------------------------------------
S2_FIXED = dict(VIDEO_RECIPE_OVERRIDES["ebt_vid_s2"], randomize_num_steps=0, step_size_random_scale=1.0,
                langevin_noise_std=0.0, mcmc_num_steps=3)


@pytest.mark.parametrize("family,opts", [("transformer_pp", {}), ("ebt", {}), ("ebt", S2_FIXED),
                                         ("ebt", dict(S2_FIXED, step_embedding=False, truncate_steps=False)),
                                         ("ebt", dict(S2_FIXED, step_size_learnable=True))],
                         ids=["tpp", "s1", "s2-fixed", "s2-untruncated-nostep", "s2-learnable-alpha"])
def test_exact_flops_and_params_match_the_model(family, opts):
    from ebt_scaling.models.flop_counter import MatmulFlopCounter
    from ebt_scaling.models.video_flops import video_flops_per_frame, video_param_counts

    c = cfg(family, **opts) if family == "ebt" else cfg(family, ffn_hidden=24)
    m = build_video_model(c, E).train()
    if family == "transformer_pp":
        m.attn_impl = "math"  # fused kernels are invisible to a matmul counter
    assert video_param_counts(c, E)["total"] == sum(p.numel() for p in m.parameters())
    x = clip(b=2)
    frames, targets = x[:, :-1], x[:, 1:]

    def count(fn) -> int:
        with MatmulFlopCounter() as counter:
            fn()
        return counter.total

    def train():
        loss, _ = m.loss(frames, targets)
        loss.backward()

    for counted, mode in ((count(train), "train"), (None, "eval")):
        if counted is None:
            m.eval()
            with torch.no_grad():
                counted = count(lambda: m(frames))
        predicted = video_flops_per_frame(c, E, "exact", mode=mode)
        assert abs(counted / (2 * T) - predicted) <= 1e-3 * predicted, (mode, counted / (2 * T), predicted)
    # paper convention: the text's, on the non-embedding parameters
    n = video_param_counts(c, E)["non_embedding"]
    if family == "transformer_pp":
        assert video_flops_per_frame(c, E, "paper") == 6 * n
    elif opts == {}:
        assert video_flops_per_frame(c, E, "paper") == 40 * n  # S1: 2 graph steps of 20N (6.66x T++)
    with pytest.raises(ConfigError, match="mode"):
        video_flops_per_frame(c, E, "exact", mode="think")
