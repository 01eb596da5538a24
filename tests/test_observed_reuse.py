"""Observed-stream reuse (issue 7; ebt-paper.md section 18) against the reference path that recomputes the
observed stream at every inner step (``model.reuse_observed = False``): energies, logits, losses, metrics
and every parameter gradient agree to fp32 tolerance, with identical random draws."""

from __future__ import annotations

import copy

import pytest
import torch

from ebt_scaling.config import RECIPE_OVERRIDES, ModelConfig
from ebt_scaling.models import build_model
from ebt_scaling.models.flop_counter import MatmulFlopCounter
from ebt_scaling.models.flops import flops_per_token

V, T, B = 37, 12, 3
SHAPE = dict(n_layer=2, n_embd=32, n_head=2, vocab_size=V, sequence_len=T)
TOL = dict(rtol=2e-4, atol=2e-5)

CASES = {
    "s1": dict(RECIPE_OVERRIDES["ebt_s1"]),
    "s2": dict(RECIPE_OVERRIDES["ebt_s2"], replay_buffer_size=8),
    "s2-3-landscapes": dict(RECIPE_OVERRIDES["ebt_s2"], mcmc_num_steps=3),
    "s2-untruncated": dict(RECIPE_OVERRIDES["ebt_s2"], truncate_steps=False, replay_buffer_size=0),
    "s1-logits-nostep": dict(RECIPE_OVERRIDES["ebt_s1"], descent_wrt="logits", step_embedding=False),
}


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # conftest.py


def close(a: torch.Tensor, b: torch.Tensor, rel: float = 1e-4) -> None:
    """Equal to fp32 tolerance relative to the tensor's scale (S1's alpha = 500 gives logits of size ~1e2,
    whose small entries carry the rounding of the large ones)."""
    a, b = torch.as_tensor(a).double(), torch.as_tensor(b).double()
    assert a.shape == b.shape
    err, scale = (a - b).abs().max().item(), b.abs().max().item()
    assert err <= rel * scale + 1e-6, (err, scale)


def pair(opts: dict):
    torch.manual_seed(0)
    fast = build_model(ModelConfig(family="ebt", **SHAPE, **opts))
    with torch.no_grad():  # a non-trivial step embedding / alpha so that the landscapes differ
        for p in fast.parameters():
            p.add_(0.01 * torch.randn_like(p))
    ref = copy.deepcopy(fast)
    ref.reuse_observed = False
    assert fast.reuse_observed is True
    return fast, ref


def data(seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, V, (B, T), generator=g)
    return idx, torch.randint(0, V, (B, T), generator=g)


def train_step(model, idx, tgt, seed: int):
    model.zero_grad(set_to_none=True)
    torch.manual_seed(seed)
    loss, info = model.loss(idx, tgt)
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return loss.detach(), info, grads, info["energy_steps"].clone()


def rel_err(a, b) -> float:
    """Max abs difference relative to the reference tensor's scale."""
    a, b = torch.as_tensor(a).double(), torch.as_tensor(b).double()
    assert a.shape == b.shape
    return (a - b).abs().max().item() / max(b.abs().max().item(), 1e-12)


def step_errors(a, b) -> dict[str, float]:
    """Relative discrepancy of every quantity two ``train_step`` results share."""
    (la, ia, ga, ea), (lb, ib, gb, eb) = a, b
    assert ia["inner_steps"] == ib["inner_steps"] and ia["replayed"] == ib["replayed"]
    assert ga.keys() == gb.keys()
    errs = {"loss": rel_err(la, lb), "energy_steps": rel_err(ea, eb)}
    errs.update({k: rel_err(ia[k], ib[k]) for k in ("ce", "ce_initial", "energy_initial", "energy_final")})
    errs.update({f"grad {n}": rel_err(ga[n], gb[n]) for n in ga})
    return errs


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("name", list(CASES))
def test_training_losses_energies_and_gradients_match(name, dtype):
    fast, ref = pair(CASES[name])
    floor = copy.deepcopy(ref)  # the reference path again, with another summation order (2 threads)
    if dtype == torch.float64:
        fast.double(), ref.double(), floor.double()
    fast.train(), ref.train(), floor.train()
    # fp64 shows the paths are the same function (1e-9). In fp32 the differences are summation order, and
    # the chained S2 descent (Langevin noise, replay, 3 landscapes) amplifies them: the reference path alone
    # moves by up to 1.4e-3 relative (a gradient of an S2 variant with 3 landscapes) between 1 and 2 threads.
    # So the fp32 bound is 1e-3 or 10x what reordering the reference's own sums does, whichever is larger.
    rel = 1e-3 if dtype == torch.float32 else 1e-9
    idx, tgt = data()
    for seed in range(3):  # several steps: the replay buffer fills and replayed rows enter (S2)
        fast_r = train_step(fast, idx, tgt, seed)
        ref_r = train_step(ref, idx, tgt, seed)
        errs = step_errors(fast_r, ref_r)
        bound = rel
        if dtype == torch.float32:
            torch.set_num_threads(2)
            try:
                noise = step_errors(train_step(floor, idx, tgt, seed), ref_r)
            finally:
                torch.set_num_threads(1)
            bound = max(rel, 10 * max(noise.values()))
        worst = max(errs, key=errs.get)
        assert errs[worst] <= bound, (name, seed, worst, errs[worst], bound)
        assert {n for n, p in fast.named_parameters() if p.requires_grad} == set(fast_r[2])  # all learn
    if "s2" in name and CASES[name].get("replay_buffer_size"):
        assert fast_r[1]["replayed"] > 0


@pytest.mark.parametrize("name", list(CASES))
def test_validation_and_think_match(name):
    """In float64, where the comparison tests the paths and not the processor: a fixed fp32 bound failed on
    some CPUs (4.3e-3 against 3.95e-3 for an S2 variant with 3 landscapes, whose chained noisy descent
    amplifies summation order); the training test above keeps an fp32 case with a measured noise floor."""
    dtype = torch.float64
    fast, ref = pair(CASES[name])
    fast.double(), ref.double()
    fast.eval(), ref.eval()
    rel = 1e-9
    idx, tgt = data(2)
    with torch.no_grad():
        torch.manual_seed(5)
        lf, inf_f = fast.loss(idx, tgt)
        torch.manual_seed(5)
        lr_, inf_r = ref.loss(idx, tgt)
        torch.manual_seed(6)
        zf = fast(idx)
        torch.manual_seed(6)
        zr = ref(idx)
    close(lf, lr_, rel)
    close(zf, zr, rel)
    zf, ef = fast.think(idx, steps=4, samples=3, generator=torch.Generator().manual_seed(7))
    zr, er = ref.think(idx, steps=4, samples=3, generator=torch.Generator().manual_seed(7))
    close(ef, er, rel)
    close(zf, zr, rel)
    # the energies themselves, per landscape
    p = torch.randn(B, T, V, dtype=dtype).softmax(-1)
    for landscape in range(fast.cfg.mcmc_num_steps):
        with torch.no_grad():
            close(fast.energies(idx, p, landscape), ref.energies(idx, p, landscape), rel)


def test_reuse_computes_the_observed_stream_once_per_landscape():
    calls = []
    fast, _ = pair(CASES["s2"])
    orig = fast.observed_stream
    fast.observed_stream = lambda idx, ls: calls.append(ls) or orig(idx, ls)  # type: ignore[method-assign]
    idx, tgt = data()
    fast.train()
    torch.manual_seed(0)
    loss, info = fast.loss(idx, tgt)
    loss.backward()
    assert info["inner_steps"] >= 2 and calls == [0]  # S2: every step on landscape 0, one observed pass
    calls.clear()
    fast.eval()
    fast.think(idx, steps=5, samples=3)
    assert calls == [0]  # all samples, all steps and the scoring passes share it


@pytest.mark.parametrize("name", ["s1", "s2-3-landscapes", "s2-untruncated"])
def test_exact_flops_match_the_counter_on_both_paths(name):
    opts = dict(CASES[name], randomize_num_steps=0, step_size_random_scale=1.0, replay_buffer_size=0)
    cfg = ModelConfig(family="ebt", **SHAPE, **opts)
    idx, tgt = data()
    for reuse in (True, False):
        m = build_model(cfg).train()
        m.reuse_observed = reuse
        with MatmulFlopCounter() as c:
            loss, _ = m.loss(idx, tgt)
            loss.backward()
        want = flops_per_token(cfg, "exact", reuse_observed=reuse)
        assert abs(c.total / (B * T) - want) <= 1e-3 * want, (reuse, c.total / (B * T), want)
        m.eval()
        with torch.no_grad(), MatmulFlopCounter() as c:
            m.think(idx, steps=4, samples=2)
        want = flops_per_token(cfg, "exact", mode="think", steps=4, samples=2, reuse_observed=reuse)
        assert abs(c.total / (B * T) - want) <= 1e-3 * want, (reuse, c.total / (B * T), want)
