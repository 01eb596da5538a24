"""The fused S1 cross-entropy (EBT._EmbedWithPrevCE): a non-final step's CE rides on the next step's embedding of
the same softmax. Equal to the reference path (``model.fuse_ce = False``) in loss, metrics and every gradient,
and used only where that holds."""

from __future__ import annotations

import pytest
import torch

import ebt_scaling.models.ebt as ebt_module
from ebt_scaling.config import RECIPE_OVERRIDES, ModelConfig
from ebt_scaling.models import build_model

SHAPE = dict(n_layer=2, n_embd=16, n_head=2, vocab_size=37, sequence_len=8)
S1 = RECIPE_OVERRIDES["ebt_s1"]


@pytest.fixture
def fused_calls(monkeypatch):
    calls = []
    orig = ebt_module._EmbedWithPrevCE.apply

    def counted(*args):
        calls.append(1)
        return orig(*args)

    monkeypatch.setattr(ebt_module._EmbedWithPrevCE, "apply", counted)
    return calls


def _run(m, x, y, fuse: bool):
    m.fuse_ce = fuse
    m.zero_grad(set_to_none=True)
    torch.manual_seed(1)  # the same initial candidates (and step-size draws) on both paths
    loss, info = m.loss(x, y)
    loss.backward()
    grads = {n: p.grad.clone() for n, p in m.named_parameters() if p.grad is not None}
    return loss.detach(), info, grads


@pytest.mark.parametrize("opts", [{}, dict(mcmc_num_steps=3), dict(step_embedding=False),
                                  dict(step_size_random_scale=2.0), dict(step_conditioning="prediction")],
                         ids=["s1", "three-landscapes", "no-step-token", "random-step-size", "prediction-only"])
def test_fused_ce_matches_the_reference_path(opts, fused_calls):
    torch.manual_seed(0)
    cfg = ModelConfig(family="ebt", **SHAPE, **{**S1, **opts})
    m = build_model(cfg).double().train()
    idx = torch.randint(0, cfg.vocab_size, (3, cfg.sequence_len + 1))
    x, y = idx[:, :-1], idx[:, 1:].clone()
    y[0, :3] = -100  # ignored positions count in neither path's mean
    loss_f, info_f, grads_f = _run(m, x, y, fuse=True)
    assert len(fused_calls) == cfg.mcmc_num_steps - 1  # every non-final step's CE was fused
    loss_r, info_r, grads_r = _run(m, x, y, fuse=False)
    assert len(fused_calls) == cfg.mcmc_num_steps - 1  # and the reference path used none
    assert loss_f.item() == pytest.approx(loss_r.item(), rel=1e-12)
    for k in ("ce", "ce_initial", "energy_initial", "energy_final", "alpha"):
        assert float(info_f[k]) == pytest.approx(float(info_r[k]), rel=1e-12, abs=1e-12), k
    assert grads_f.keys() == grads_r.keys() and "vocab_to_embed.weight" in grads_f
    for name, g in grads_r.items():
        err = (grads_f[name] - g).norm() / g.norm().clamp_min(1e-300)
        assert err < 1e-12, (name, err.item())


def test_fused_ce_handles_a_batch_with_every_position_of_a_row_ignored(fused_calls):
    torch.manual_seed(0)
    m = build_model(ModelConfig(family="ebt", **SHAPE, **S1)).double().train()
    idx = torch.randint(0, 37, (2, 9))
    x, y = idx[:, :-1], idx[:, 1:].clone()
    y[1] = -100
    loss_f, _, grads_f = _run(m, x, y, fuse=True)
    loss_r, _, grads_r = _run(m, x, y, fuse=False)
    assert fused_calls and torch.isfinite(loss_f) and loss_f.item() == pytest.approx(loss_r.item(), rel=1e-12)
    for name, g in grads_r.items():
        assert torch.allclose(grads_f[name], g, rtol=1e-10, atol=1e-14), name


@pytest.mark.parametrize("case", ["s2", "langevin-noise", "logits-descent", "chained-steps", "eval", "no-grad"])
def test_fused_ce_is_used_only_where_it_is_exact(case, fused_calls):
    opts = dict(RECIPE_OVERRIDES["ebt_s2"]) if case == "s2" else dict(S1)
    if case == "langevin-noise":  # noise between the steps: the next p is not the softmax of this z
        opts["langevin_noise_std"] = 0.5
    if case == "logits-descent":
        opts["descent_wrt"] = "logits"
    if case == "chained-steps":  # the next step's p carries a gradient path of its own
        opts["detach_between_steps"] = False
    torch.manual_seed(0)
    m = build_model(ModelConfig(family="ebt", **SHAPE, **opts)).train()
    idx = torch.randint(0, 37, (2, 9))
    x, y = idx[:, :-1], idx[:, 1:]
    if case == "eval":
        m.eval()
    if case == "no-grad":
        with torch.no_grad():
            loss, _ = m.loss(x, y)
    else:
        loss, _ = m.loss(x, y)
    assert torch.isfinite(loss)
    assert not fused_calls, case


def test_fused_ce_float32_default_recipe_agrees_within_rounding(fused_calls):
    torch.manual_seed(0)
    cfg = ModelConfig(family="ebt", n_layer=2, n_embd=32, n_head=4, vocab_size=128, sequence_len=16, **S1)
    m = build_model(cfg).train()
    idx = torch.randint(0, 128, (4, 17))
    loss_f, _, grads_f = _run(m, idx[:, :-1], idx[:, 1:], fuse=True)
    loss_r, _, grads_r = _run(m, idx[:, :-1], idx[:, 1:], fuse=False)
    assert fused_calls
    assert loss_f.item() == pytest.approx(loss_r.item(), rel=1e-5)
    for name, g in grads_r.items():
        err = (grads_f[name] - g).norm() / g.norm().clamp_min(1e-30)
        assert err < 1e-3, (name, err.item())


def test_fused_ce_at_a_padded_vocabulary_matches_the_reference_path(fused_calls):
    """The CUDA layout (V rounded up to a multiple of 64, the padding masked out of every softmax), run on
    the CPU: the fused path covers it with the same values and gradients."""
    torch.manual_seed(0)
    cfg = ModelConfig(family="ebt", n_layer=2, n_embd=16, n_head=2, vocab_size=4100, sequence_len=8, **S1)
    m = build_model(cfg).double().train()
    assert m.vocab_padded == 4160
    m.pad_vocab_on = ("cpu",)
    idx = torch.randint(0, 4100, (2, 9))
    x, y = idx[:, :-1], idx[:, 1:].clone()
    y[0, :2] = -100
    loss_f, _, grads_f = _run(m, x, y, fuse=True)
    assert len(fused_calls) == 1
    loss_r, _, grads_r = _run(m, x, y, fuse=False)
    assert loss_f.item() == pytest.approx(loss_r.item(), rel=1e-12)
    for name, g in grads_r.items():
        err = (grads_f[name] - g).norm() / g.norm().clamp_min(1e-300)
        assert err < 1e-12, (name, err.item())


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=[pytest.mark.gpu, pytest.mark.skipif(
    not torch.cuda.is_available(), reason="no CUDA device visible to torch")])])
def test_fused_ce_under_bf16_autocast_matches_the_reference_path_to_bf16_rounding(device, fused_calls):
    """Under autocast the products run in bf16 as on the reference path. The forward values are the
    reference's; gradients agree to bf16 rounding (measured on CPU: ~1% relative, where the reference's own
    bf16 gradients differ from fp32 by ~7%). On CUDA the vocabulary is also padded (4100 -> 4160)."""
    torch.manual_seed(0)
    v = 4100 if device == "cuda" else 128
    cfg = ModelConfig(family="ebt", n_layer=2, n_embd=32, n_head=4, vocab_size=v, sequence_len=16, **S1)
    m = build_model(cfg).to(device).train()
    idx = torch.randint(0, v, (4, 17), device=device)
    out = {}
    for fuse in (True, False):
        with torch.autocast(device, dtype=torch.bfloat16):
            out[fuse] = _run(m, idx[:, :-1], idx[:, 1:], fuse=fuse)
    assert len(fused_calls) == 1
    (loss_f, info_f, grads_f), (loss_r, info_r, grads_r) = out[True], out[False]
    assert loss_f.item() == pytest.approx(loss_r.item(), rel=1e-5)
    assert float(info_f["ce_initial"]) == pytest.approx(float(info_r["ce_initial"]), rel=1e-5)
    for name, g in grads_r.items():
        err = (grads_f[name] - g).norm() / g.norm().clamp_min(1e-30)
        assert err < 5e-2, (name, err.item())


def test_fused_ce_with_replayed_candidates_matches_the_reference_path(fused_calls):
    """S1 with a replay buffer: replayed rows (their stored logits as start) join the batch; both paths start
    from the same buffer."""
    torch.manual_seed(0)
    cfg = ModelConfig(family="ebt", **SHAPE, **{**S1, "replay_buffer_size": 6, "replay_buffer_fraction": 0.5})
    m = build_model(cfg).double().train()
    idx = torch.randint(0, 37, (4, 9))
    x, y = idx[:, :-1], idx[:, 1:]
    m.loss(x, y)  # fills the buffer
    state = m.replay_state()
    out = {}
    for fuse in (True, False):
        m.load_replay_state(state)
        out[fuse] = _run(m, x, y, fuse=fuse)
    (loss_f, info_f, grads_f), (loss_r, info_r, grads_r) = out[True], out[False]
    assert info_f["replayed"] == info_r["replayed"] == 2.0 and fused_calls
    assert loss_f.item() == pytest.approx(loss_r.item(), rel=1e-12)
    for name, g in grads_r.items():
        err = (grads_f[name] - g).norm() / g.norm().clamp_min(1e-300)
        assert err < 1e-12, (name, err.item())
