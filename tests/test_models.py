"""Behaviour of the Transformer++ and the EBT at the public API (tiny CPU shapes)."""

from __future__ import annotations

import pytest
import torch

from ebt_scaling.config import RECIPE_OVERRIDES, ModelConfig
from ebt_scaling.errors import ConfigError, TrainingDiverged
from ebt_scaling.models import EBT, TransformerPP, build_model
from ebt_scaling.models.flops import param_counts

V, T = 23, 10


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # conftest.py


def tpp_cfg(**kw) -> ModelConfig:
    base = dict(family="transformer_pp", n_layer=2, n_embd=32, n_head=2, vocab_size=V, sequence_len=T)
    base.update(kw)
    return ModelConfig(**base)


def ebt_cfg(recipe: str = "ebt_s1", **kw) -> ModelConfig:
    base = dict(family="ebt", n_layer=2, n_embd=32, n_head=2, vocab_size=V, sequence_len=T)
    base.update(RECIPE_OVERRIDES[recipe])
    base.update(kw)
    return ModelConfig(**base)


# S2 without its randomness: deterministic step count and step size, no noise, no replay.
S2_PLAIN = dict(randomize_num_steps=0, step_size_random_scale=1.0, langevin_noise_std=0.0, replay_buffer_size=0,
                mcmc_num_steps=3)


def tokens(b: int = 3, t: int = T, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, V, (b, t), generator=g)


def ebt_logits(model, idx, seed=0):
    torch.manual_seed(seed)
    return model(idx)


# ---------------------------------------------------------------------------------------------------
# Construction, parameter counts, optimizer groups
# ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("cfg", [
    tpp_cfg(), tpp_cfg(ffn_hidden=40, n_layer=3), ebt_cfg(), ebt_cfg("ebt_s2"),
    ebt_cfg(step_embedding=False, step_size_learnable=False), ebt_cfg(ffn_hidden=24, mcmc_num_steps=4),
])
def test_param_counts_match_the_built_model(cfg):
    model = build_model(cfg)
    counts = param_counts(cfg)
    assert counts["total"] == sum(p.numel() for p in model.parameters())
    assert counts["embedding"] == model.tok_embeddings.weight.numel()
    proj = model.output if cfg.family == "transformer_pp" else model.vocab_to_embed
    assert counts["vocab_projection"] == proj.weight.numel()
    assert counts["non_embedding"] == (sum(p.numel() for p in model.layers.parameters())
                                       + model.norm.weight.numel())
    if cfg.family == "ebt":
        assert counts["energy_head"] == model.energy_head.weight.numel()
        se = model.step_embeddings
        assert counts["step_embedding"] == (se.weight.numel() if se is not None else 0)


def test_build_model_families_and_bad_input():
    assert isinstance(build_model(tpp_cfg()), TransformerPP)
    assert isinstance(build_model(ebt_cfg()), EBT)
    with pytest.raises(ConfigError, match="ModelConfig"):
        build_model({"family": "ebt"})
    with pytest.raises(ConfigError, match="attn_impl"):
        TransformerPP(tpp_cfg(), attn_impl="flash")
    with pytest.raises(ConfigError, match="family"):
        EBT(tpp_cfg())


def test_architecture_facts():
    m = build_model(ebt_cfg())
    linears = [mod for mod in m.modules() if isinstance(mod, torch.nn.Linear)]
    assert linears and all(mod.bias is None for mod in linears)
    assert m.layers[0].feed_forward.w1.weight.shape == (32, 32)  # hidden = D by default
    assert m.vocab_to_embed.weight.shape == (32, V) and m.energy_head.weight.shape == (1, 32)
    assert m.step_embeddings.weight.shape == (2, 32)
    t = build_model(tpp_cfg())
    assert t.output.weight.data_ptr() != t.tok_embeddings.weight.data_ptr()  # untied
    assert t.layers[0].attention_norm.eps == 1e-5


def test_optim_groups():
    m = build_model(ebt_cfg())
    groups = m.optim_groups(0.01)
    assert [g["lr_mult"] for g in groups] == [1.0, 1500.0]
    assert groups[1]["params"] == [m.alpha] and groups[1]["weight_decay"] == 0.0
    assert groups[0]["weight_decay"] == 0.01
    ids = [id(p) for g in groups for p in g["params"]]
    assert sorted(ids) == sorted(id(p) for p in m.parameters())
    fixed = build_model(ebt_cfg("ebt_s2"))
    assert len(fixed.optim_groups(0.01)) == 1 and "alpha" not in dict(fixed.named_parameters())
    t = build_model(tpp_cfg()).optim_groups(0.1)
    assert len(t) == 1 and t[0]["lr_mult"] == 1.0 and t[0]["weight_decay"] == 0.1


# ---------------------------------------------------------------------------------------------------
# Causality, no leak, independence
# ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("impl", ["sdpa", "math"])
def test_tpp_causal(impl):
    m = build_model(tpp_cfg()).eval()
    m.attn_impl = impl
    idx = tokens()
    out = m(idx)
    assert out.shape == (3, T, V)
    for t in (0, 4, T - 2):
        other = idx.clone()
        other[:, t + 1:] = (other[:, t + 1:] + 1) % V
        out2 = m(other)
        torch.testing.assert_close(out2[:, : t + 1], out[:, : t + 1])
        assert not torch.allclose(out2[:, t + 1:], out[:, t + 1:])


def test_tpp_sdpa_and_math_agree():
    m = build_model(tpp_cfg()).eval()
    idx = tokens()
    a = m(idx)
    m.attn_impl = "math"
    torch.testing.assert_close(m(idx), a, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kw", [dict(), dict(recipe="ebt_s2"), dict(step_embedding=False)])
def test_ebt_causal_and_no_target_leak(kw):
    m = build_model(ebt_cfg(**kw)).eval()
    idx = tokens()
    out = ebt_logits(m, idx)
    assert out.shape == (3, T, V)
    for t in (0, 3, T - 2):
        other = idx.clone()
        other[:, t + 1] = (other[:, t + 1] + 1) % V  # the target of position t only: must not leak
        torch.testing.assert_close(ebt_logits(m, other)[:, : t + 1], out[:, : t + 1])
        other[:, t + 1:] = (other[:, t + 1:] + 3) % V
        out2 = ebt_logits(m, other)
        torch.testing.assert_close(out2[:, : t + 1], out[:, : t + 1])
        assert not torch.allclose(out2[:, t + 1:], out[:, t + 1:])


def test_ebt_energies_never_see_targets():
    m = build_model(ebt_cfg()).eval()
    idx = tokens()
    torch.manual_seed(0)
    _, a = m.loss(idx, tokens(seed=1))
    torch.manual_seed(0)
    _, b = m.loss(idx, tokens(seed=2))
    torch.testing.assert_close(a["energy_steps"], b["energy_steps"])
    assert a["ce"] != b["ce"]


def test_ebt_positions_are_independent():
    m = build_model(ebt_cfg()).eval()
    idx = tokens()
    p = torch.randn(3, T, V).softmax(-1).requires_grad_()
    e = m.energies(idx, p, 1)
    (g,) = torch.autograd.grad(e[:, 4].sum(), p)
    assert g[:, 4].abs().sum() > 0
    assert g[:, :4].abs().sum() == 0 and g[:, 5:].abs().sum() == 0
    # Through the whole descent: perturbing one position's initial noise moves only that position.
    z0 = torch.randn(3, T, V)
    z1 = z0.clone()
    z1[:, 6] += torch.randn(3, V)
    a, _ = m.descend(idx, z0, [0, 1], alpha=m.alpha_value(), sigma=0.0, need_graph=False)
    b, _ = m.descend(idx, z1, [0, 1], alpha=m.alpha_value(), sigma=0.0, need_graph=False)
    keep = [i for i in range(T) if i != 6]
    torch.testing.assert_close(a[-1][:, keep], b[-1][:, keep])
    assert not torch.allclose(a[-1][:, 6], b[-1][:, 6])


# ---------------------------------------------------------------------------------------------------
# no_grad, determinism, second order, gradients to every parameter
# ---------------------------------------------------------------------------------------------------
def test_no_grad_forward_and_determinism():
    m = build_model(ebt_cfg("ebt_s2")).eval()  # Langevin noise on: determinism must come from the seed
    idx = tokens()
    a = ebt_logits(m, idx)
    with torch.no_grad():
        b = ebt_logits(m, idx)
    assert not b.requires_grad
    torch.testing.assert_close(a.detach(), b)
    torch.testing.assert_close(ebt_logits(m, idx), b)
    assert not torch.allclose(ebt_logits(m, idx, seed=1), b)
    t = build_model(tpp_cfg())
    with torch.no_grad():
        assert not t(idx).requires_grad
        loss, info = m.loss(idx, idx)
    assert torch.isfinite(loss) and float(info["ce"]) > 0


def _tiny_double(**kw):
    cfg = ModelConfig(family="ebt", n_layer=1, n_embd=8, n_head=2, vocab_size=5, sequence_len=3,
                      **{**RECIPE_OVERRIDES["ebt_s1"], "step_size": 0.7, **kw})
    torch.manual_seed(0)
    return build_model(cfg).double().eval()


def test_gradcheck_energy_function_second_order():
    m = _tiny_double()
    idx = torch.tensor([[1, 4, 2]])
    p = torch.randn(1, 3, 5, dtype=torch.float64).softmax(-1).requires_grad_()
    w = m.vocab_to_embed.weight.detach().clone().requires_grad_()

    class Wrap(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, p_):
            return self.inner.energies(idx, p_, 1)

    wrap = Wrap(m)

    def f(p_, w_):
        return torch.func.functional_call(wrap, {"inner.vocab_to_embed.weight": w_}, (p_,))

    assert torch.autograd.gradcheck(f, (p, w))
    assert torch.autograd.gradgradcheck(f, (p, w))


def test_rmsnorm_matches_the_formula_and_its_second_derivatives():
    """RMSNorm is the plain formula (computed in fp32), differentiable twice (EBT training differentiates the
    prediction stream twice)."""
    from ebt_scaling.models.layers import RMSNorm

    torch.manual_seed(0)
    norm = RMSNorm(6, eps=1e-5).double()
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
    x = torch.randn(2, 3, 6, dtype=torch.float64, requires_grad=True)

    def plain(x_, w_):
        return x_ * torch.rsqrt(x_.pow(2).mean(-1, keepdim=True) + 1e-5) * w_

    def ours(x_, w_):
        return torch.func.functional_call(norm, {"weight": w_}, (x_,))

    w = norm.weight.detach().clone().requires_grad_()
    torch.testing.assert_close(ours(x, w), plain(x, w))
    for f in (ours, plain):
        assert torch.autograd.gradcheck(f, (x, w))
        assert torch.autograd.gradgradcheck(f, (x, w))
    # Second order against the plain formula: the gradient of a function of the input gradient.
    got, want = [], []
    for f, out in ((ours, got), (plain, want)):
        xx, ww = x.detach().clone().requires_grad_(), w.detach().clone().requires_grad_()
        (g,) = torch.autograd.grad(f(xx, ww).tanh().sum(), xx, create_graph=True)
        out.extend(torch.autograd.grad(g.pow(2).sum(), (xx, ww)))
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b)


def test_gradcheck_through_the_descent():
    """The outer loss differentiates through autograd.grad(create_graph=True): check it numerically.
    Without detaching, the last step's loss depends on both steps' second-order graphs."""
    m = _tiny_double(detach_between_steps=False)
    idx = torch.tensor([[1, 4, 2]])
    targets = torch.tensor([[4, 2, 0]])
    z0 = torch.randn(1, 3, 5, dtype=torch.float64)
    names = ["vocab_to_embed.weight", "layers.0.wq.weight", "energy_head.weight", "layers.0.attention_norm.weight",
             "layers.0.ffn_norm.weight", "norm.weight"]
    params = {n: p.detach().clone().requires_grad_() for n, p in m.named_parameters() if n in names}

    class Loss(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self):
            zs, _ = self.inner.descend(idx, z0, [0, 1], alpha=self.inner.alpha_value(), sigma=0.0,
                                       need_graph=True)
            return torch.nn.functional.cross_entropy(zs[-1][0], targets[0])

    wrap = Loss(m)

    def f(*ws):
        return torch.func.functional_call(wrap, {f"inner.{n}": w for n, w in zip(names, ws, strict=True)}, ())

    assert torch.autograd.gradcheck(f, tuple(params[n] for n in names))


@pytest.mark.parametrize("cfg", [tpp_cfg(), ebt_cfg(), ebt_cfg("ebt_s2"), ebt_cfg(step_embedding=False),
                                 ebt_cfg(descent_wrt="logits")])
def test_gradients_reach_every_parameter(cfg):
    m = build_model(cfg).train()
    impls = ["sdpa", "math"] if cfg.family == "transformer_pp" else [None]
    for impl in impls:
        if impl:
            m.attn_impl = impl
        m.zero_grad(set_to_none=True)
        torch.manual_seed(0)
        loss, _ = m.loss(tokens(), tokens(seed=3))
        loss.backward()
        for name, p in m.named_parameters():
            assert p.grad is not None, name
            assert torch.isfinite(p.grad).all(), name
            assert p.grad.abs().sum() > 0, name


def test_targets_ignore_index():
    m = build_model(tpp_cfg())
    idx = tokens()
    tgt = tokens(seed=5)
    masked = tgt.clone()
    masked[:, 5:] = -100
    _, full = m.loss(idx, tgt)
    _, part = m.loss(idx, masked)
    logits = m(idx)
    ref = torch.nn.functional.cross_entropy(logits[:, :5].reshape(-1, V), tgt[:, :5].reshape(-1))
    torch.testing.assert_close(part["ce"], ref.detach())
    assert full["ce"] != part["ce"]
    e = build_model(ebt_cfg()).eval()
    torch.manual_seed(0)
    loss, info = e.loss(idx, masked)
    assert torch.isfinite(loss)


# ---------------------------------------------------------------------------------------------------
# Recipe options
# ---------------------------------------------------------------------------------------------------
def test_s1_loss_is_mean_over_steps_and_info_keys():
    m = build_model(ebt_cfg()).train()
    torch.manual_seed(0)
    loss, info = m.loss(tokens(), tokens(seed=1))
    assert {"ce", "ce_initial", "energy_initial", "energy_final", "alpha"} <= set(info)
    assert all(float(v) == float(v) for k, v in info.items() if k != "energy_steps")  # floats
    assert info["energy_steps"].shape == (2,) and not info["energy_steps"].requires_grad
    assert float(info["alpha"]) == 500.0 and info["inner_steps"] == 2.0
    torch.testing.assert_close(loss.detach(), (info["ce"] + info["ce_initial"]) / 2)
    # Both steps carry a second-order graph and start detached (the outer gradient sees one step each).
    zs, _ = m.descend(tokens(), torch.randn(3, T, V), [0, 1], alpha=m.alpha_value(), sigma=0.0, need_graph=True)
    assert all(z.requires_grad for z in zs)


def test_truncation_graph_only_on_last_step_and_loss_on_last_step():
    m = build_model(ebt_cfg("ebt_s2", **S2_PLAIN)).train()
    torch.manual_seed(0)
    loss, info = m.loss(tokens(), tokens(seed=1))
    torch.testing.assert_close(loss.detach(), info["ce"])
    assert info["ce_initial"] != info["ce"]
    # First-order steps (fixed alpha) leave no graph; only the last step's logits carry one.
    zs, _ = m.descend(tokens(), torch.randn(3, T, V), [0, 1, 2], alpha=m.alpha_value(), sigma=0.0, need_graph=True)
    assert [z.requires_grad for z in zs] == [False, False, True]
    m.eval()
    with torch.no_grad():
        zs, _ = m.descend(tokens(), torch.randn(3, T, V), [0, 1, 2], alpha=m.alpha_value(), sigma=0.0,
                          need_graph=False)
    assert not any(z.requires_grad for z in zs)


def test_detach_changes_gradients_not_values():
    grads, losses = [], []
    for detach in (True, False):
        torch.manual_seed(0)
        m = build_model(ebt_cfg("ebt_s2", **{**S2_PLAIN, "truncate_steps": False,
                                             "detach_between_steps": detach})).train()
        torch.manual_seed(1)
        loss, _ = m.loss(tokens(), tokens(seed=1))
        loss.backward()
        losses.append(loss.detach())
        grads.append(m.layers[0].wq.weight.grad.clone())
    torch.testing.assert_close(losses[0], losses[1])
    assert not torch.allclose(grads[0], grads[1])


def test_random_step_count_and_eval_steps():
    m = build_model(ebt_cfg("ebt_s2", replay_buffer_size=0)).train()
    seen = set()
    torch.manual_seed(0)
    for _ in range(12):
        _, info = m.loss(tokens(), tokens())
        seen.add(info["inner_steps"])
    assert seen == {2.0, 3.0}
    m.eval()
    _, info = m.loss(tokens(), tokens())
    assert info["inner_steps"] == 3.0 == m.cfg.eval_steps


def test_random_step_size_only_in_training():
    cfg = ebt_cfg("ebt_s2", **{**S2_PLAIN, "step_size_random_scale": 2.0})
    torch.manual_seed(0)
    m = build_model(cfg)
    ref = build_model(ebt_cfg("ebt_s2", **S2_PLAIN))
    ref.load_state_dict(m.state_dict())
    for model in (m, ref):
        model.eval()
    idx, tgt = tokens(), tokens(seed=1)
    torch.manual_seed(3)
    a = m.loss(idx, tgt)[0]
    torch.manual_seed(3)
    b = ref.loss(idx, tgt)[0]
    torch.testing.assert_close(a, b)  # eval: no step-size randomisation
    m.train()
    ref.train()
    torch.manual_seed(3)
    a = m.loss(idx, tgt)[0]
    torch.manual_seed(3)
    b = ref.loss(idx, tgt)[0]
    assert not torch.allclose(a, b)


def test_replay_buffer_fifo_training_only():
    m = build_model(ebt_cfg("ebt_s2", replay_buffer_size=5, replay_buffer_fraction=0.5)).train()
    torch.manual_seed(0)
    _, info = m.loss(tokens(b=4), tokens(b=4))
    assert info["replayed"] == 0.0 and len(m.replay) == 4
    _, info = m.loss(tokens(b=4), tokens(b=4))
    assert info["replayed"] == 2.0 and len(m.replay) == 5  # capacity respected, fresh samples pushed
    assert not any("replay" in k for k in m.state_dict())
    m.eval()
    _, info = m.loss(tokens(b=4), tokens(b=4))
    assert info["replayed"] == 0.0 and len(m.replay) == 5
    # Restoring the buffer (as the training loop's checkpoint does): a copy continues identically.
    other = build_model(m.cfg)
    other.load_state_dict(m.state_dict())
    other.replay[:] = list(m.replay)
    m.train()
    other.train()
    torch.manual_seed(9)
    a, _ = m.loss(tokens(b=4), tokens(b=4))
    torch.manual_seed(9)
    b, _ = other.loss(tokens(b=4), tokens(b=4))
    torch.testing.assert_close(a, b)


def test_non_finite_inner_gradient_raises():
    m = build_model(ebt_cfg())
    with torch.no_grad():
        m.energy_head.weight.fill_(float("nan"))
    with pytest.raises(TrainingDiverged, match="non-finite"):
        m.loss(tokens(), tokens())


def test_alpha_is_clamped():
    m = build_model(ebt_cfg())
    with torch.no_grad():
        m.alpha.fill_(-3.0)
    assert float(m.alpha_value().detach()) == pytest.approx(1e-4)


# ---------------------------------------------------------------------------------------------------
# Thinking
# ---------------------------------------------------------------------------------------------------
def test_best_of_n_never_worse_than_one_sample():
    m = build_model(ebt_cfg("ebt_s2")).eval()
    idx = tokens()
    with torch.no_grad():
        l1, e1 = m.think(idx, steps=3, samples=1, generator=torch.Generator().manual_seed(7))
        l4, e4 = m.think(idx, steps=3, samples=4, generator=torch.Generator().manual_seed(7))
    assert l1.shape == (3, T, V) and e1.shape == (3, T)
    assert (e4 <= e1).all() and (e4 < e1).any()
    # The chosen energy is the energy of the returned logits (the scoring evaluation).
    torch.testing.assert_close(m.energies(idx, l4.softmax(-1), 0).detach(), e4)


def test_think_validation_and_overrides():
    m = build_model(ebt_cfg()).eval()
    idx = tokens()
    for bad in (dict(steps=0), dict(steps=2, samples=0), dict(steps=2, step_size=0.0),
                dict(steps=2, langevin_noise_std=-1.0)):
        with pytest.raises(ConfigError):
            m.think(idx, **bad)
    g = torch.Generator().manual_seed(0)
    a, _ = m.think(idx, steps=4, step_size=1.0, generator=g)
    g = torch.Generator().manual_seed(0)
    b, _ = m.think(idx, steps=4, generator=g)
    assert not torch.allclose(a, b)
    # Step j runs on landscape min(j, M - 1): extra steps stay on the last landscape.
    g = torch.Generator().manual_seed(0)
    z0 = m._initial_logits(3, T, torch.device("cpu"), g)
    zs, _ = m.descend(idx, z0, [0, 1, 1, 1], alpha=m.alpha_value().detach(), sigma=0.0, need_graph=False, generator=g)
    torch.testing.assert_close(zs[-1], b)
    with pytest.raises(ConfigError, match="sequence_len"):
        m(torch.zeros(1, T + 1, dtype=torch.long))


def test_energy_decreases_over_inner_steps_after_training():
    """Train a tiny S1 EBT on a repeating pattern; the descent must then lower the energy step by step."""
    torch.manual_seed(0)
    cfg = ModelConfig(family="ebt", n_layer=2, n_embd=32, n_head=2, vocab_size=12, sequence_len=12,
                      **RECIPE_OVERRIDES["ebt_s1"])
    m = build_model(cfg).train()
    opt = torch.optim.AdamW([{"params": g["params"], "weight_decay": g["weight_decay"], "lr": 3e-3 * g["lr_mult"]}
                             for g in m.optim_groups(0.01)])
    pattern = torch.tensor([3, 1, 4, 1, 5, 9, 2, 6])

    def batch(b=8):
        rows = torch.stack([pattern.roll(-int(o)).repeat(2)[:13] for o in torch.randint(0, 8, (b,))])
        return rows[:, :-1], rows[:, 1:]

    for _ in range(60):
        x, y = batch()
        loss, _ = m.loss(x, y)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(m.parameters(), 1.0)
        opt.step()
    m.eval()
    x, y = batch()
    with torch.no_grad():
        _, info = m.loss(x, y)
        zs, es = m.descend(x, torch.randn(8, 12, 12), [0, 1, 1, 1], alpha=m.alpha_value(), sigma=0.0,
                           need_graph=False)
        final = m.energies(x, zs[-1].softmax(-1), 1)
    assert float(info["ce"]) < 0.5 * torch.log(torch.tensor(12.0))  # learned well below uniform
    means = [float(e.mean()) for e in es] + [float(final.mean())]
    assert means[0] > means[1] > means[-1], means


@pytest.mark.parametrize("s", [0, 1])
def test_prediction_attention_equals_the_papers_superdiagonal_construction(s):
    """layers.prediction_attention against a literal transcription of ebt-paper.md section 4 (4.1: s=0,
    4.2 time_embed: s=1, superdiagonal at offset 1 + s)."""
    from ebt_scaling.models.layers import causal_mask, prediction_attention

    torch.manual_seed(0)
    b, h, t, dh = 2, 3, 6, 4
    off, so = 1 + s, t + s
    q_p, k_p, v_p = (torch.randn(b, h, t, dh, dtype=torch.float64) for _ in range(3))
    k_o, v_o = (torch.randn(b, h, so, dh, dtype=torch.float64) for _ in range(2))
    ours = prediction_attention(q_p, k_p, v_p, k_o, v_o, causal_mask(t, torch.device("cpu"), offset=s, cols=so))

    scale = dh ** -0.5
    p = torch.cat((q_p @ k_o.transpose(-2, -1) * scale, torch.zeros(b, h, t, 1, dtype=torch.float64)), -1)
    sup = torch.zeros(t, t + off, dtype=torch.bool)
    sup[torch.arange(t), torch.arange(t) + off] = True
    p = p * (~sup)  # remove the leak (multiplicative 0/1 mask)
    self_scores = (q_p * k_p).sum(-1) * scale  # (b, h, t)
    p = p + sup * self_scores.unsqueeze(-1)  # insert the self score on the superdiagonal
    full = torch.triu(torch.full((t + off, t + off), float("-inf"), dtype=torch.float64), diagonal=1)
    a = (p + full[off:, :]).softmax(-1)
    w = a[..., sup].reshape(b, h, t, 1)
    a = (a * (~sup))[..., :-1]
    paper = a @ v_o + w * v_p
    torch.testing.assert_close(ours, paper)


@pytest.mark.parametrize("cfg", [tpp_cfg(), ebt_cfg(), ebt_cfg("ebt_s2")])
def test_bf16_autocast_train_step(cfg):
    """The CUDA recipe trains under bf16 autocast; the same code path (incl. double backward) on CPU."""
    m = build_model(cfg).train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss, info = m.loss(tokens(), tokens(seed=1))
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in m.parameters())


def test_langevin_noise_and_descent_variable_change_the_descent():
    m = build_model(ebt_cfg()).eval()
    idx = tokens()

    def think(**kw):
        return m.think(idx, steps=2, generator=torch.Generator().manual_seed(0), **kw)[0]

    base = think()
    torch.testing.assert_close(think(langevin_noise_std=0.0), base)  # S1 has no Langevin noise
    assert not torch.allclose(think(langevin_noise_std=3.0), base)
    other = build_model(ebt_cfg(descent_wrt="logits")).eval()
    other.load_state_dict(m.state_dict())
    alt = other.think(idx, steps=2, generator=torch.Generator().manual_seed(0))[0]
    assert not torch.allclose(alt, base)
    # descent_wrt="logits": the update is z - alpha * dE/dz, checked against autograd directly.
    z0 = torch.randn(3, T, V)
    zs, _ = other.descend(idx, z0, [0], alpha=other.alpha_value(), sigma=0.0, need_graph=False)
    z = z0.clone().requires_grad_()
    (g,) = torch.autograd.grad(other.energies(idx, z.softmax(-1), 0).sum(), z)
    torch.testing.assert_close(zs[0], (z0 - other.alpha_value() * g).detach())


def test_probs_update_is_p_minus_alpha_grad():
    m = build_model(ebt_cfg()).eval()
    idx = tokens()
    z0 = torch.randn(3, T, V)
    zs, es = m.descend(idx, z0, [0], alpha=m.alpha_value(), sigma=0.0, need_graph=False)
    p = z0.softmax(-1).requires_grad_()
    e = m.energies(idx, p, 0)
    (g,) = torch.autograd.grad(e.sum(), p)
    want = (p - m.alpha_value() * g).detach()
    # The model computes dE/dp as (dE/de) W: same value, other rounding. fp32 tolerance relative to the
    # update's scale (alpha = 500 on an untrained model gives logits of size ~2e4).
    torch.testing.assert_close(zs[0], want, rtol=1e-5, atol=1e-6 * want.abs().max().item())
    assert not torch.equal(zs[0], z0)
    torch.testing.assert_close(es[0], e.detach())


def test_input_validation_messages():
    e = build_model(ebt_cfg())
    with pytest.raises(ConfigError, match="targets"):
        e.loss(tokens(), tokens()[:, :-1])
    with pytest.raises(ConfigError, match=r"idx: expected token ids of shape \(B, T\)"):
        e(torch.zeros(T, dtype=torch.long))
    t = build_model(tpp_cfg())
    with pytest.raises(ConfigError, match="sequence_len"):
        t(torch.zeros(1, T + 1, dtype=torch.long))


def test_initial_candidates_follow_init_noise_scale():
    """z0 ~ N(0, init_noise_scale^2): the default scale 1 uses the draw as is, any other scales it."""
    unit = build_model(ebt_cfg())
    wide = build_model(ebt_cfg(init_noise_scale=2.5))
    torch.manual_seed(3)
    a = unit._initial_logits(2, T, torch.device("cpu"), None)
    torch.manual_seed(3)
    b = wide._initial_logits(2, T, torch.device("cpu"), None)
    assert a.shape == (2, T, V) and a.dtype == torch.float32
    torch.testing.assert_close(b, 2.5 * a)
    assert 0.8 < float(a.std()) < 1.2


def test_rope_in_reals_equals_the_complex_rotation():
    """``apply_rope`` rotates pairs (2j, 2j+1) in reals: the same rotation as Llama's complex ``freqs_cis``."""
    from ebt_scaling.models.layers import Rotary, apply_rope

    rot = Rotary(16, 12, 1e4)
    x = torch.randn(2, 5, 3, 16)
    inv = 1.0 / (1e4 ** (torch.arange(0, 16, 2, dtype=torch.float64) / 16))
    freqs_cis = torch.polar(torch.ones(5, 8, dtype=torch.float64), torch.outer(torch.arange(3, 8.0).double(), inv))
    want = torch.view_as_real(torch.view_as_complex(x.double().unflatten(-1, (-1, 2))) * freqs_cis.unsqueeze(1))
    torch.testing.assert_close(apply_rope(x, rot(3, 5)), want.flatten(-2).float(), rtol=1e-6, atol=1e-6)
    assert not torch.allclose(apply_rope(x, rot(3, 5)), x)  # it does rotate
    assert "cos_sin" not in rot.state_dict()
