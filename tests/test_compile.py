"""The EBT under torch.compile (issue 17 item 2).

Compiled, the inner gradient dE/d(prediction rows) is ``torch.func.grad`` (``EBT.energy_grad``), which the
compiler traces with the rest of the descent into one first-order graph. Here:

- float64, eager: the ``torch.func.grad`` path against the ``torch.autograd.grad(create_graph=True)``
  reference for S1, S2 (noise, random step count and size, replay buffer), S2 untruncated, the logits
  descent and thinking: logits and energies after every step, losses, metrics, every parameter gradient;
- CPU Inductor (``slow``): one training step from the same weights and keyed draws equals eager to float32
  rounding (S1, S2); ``train()`` with ``compile=True`` follows the eager run's losses over 20 steps within what
  the descent's amplification of that rounding allows (S1: see its measured figures); S2 follows eager within
  1e-9 in float64, and in float32 within 10x eager's own rounding noise over the same steps (see the note above
  the S2 tests).
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from ebt_scaling.config import RECIPE_OVERRIDES, DataConfig, ModelConfig, RunSpec, TrainConfig, model_config
from ebt_scaling.models import build_model
from ebt_scaling.records import ListSink
from ebt_scaling.train import train

V, T, B = 23, 10, 3
SHAPE = dict(n_layer=2, n_embd=32, n_head=2, vocab_size=V, sequence_len=T)
CASES = {
    "s1": dict(RECIPE_OVERRIDES["ebt_s1"]),
    "s2": dict(RECIPE_OVERRIDES["ebt_s2"], replay_buffer_size=8),
    "s2-untruncated-3-landscapes": dict(RECIPE_OVERRIDES["ebt_s2"], truncate_steps=False, mcmc_num_steps=3,
                                        replay_buffer_size=0),
    "s1-logits-nostep": dict(RECIPE_OVERRIDES["ebt_s1"], descent_wrt="logits", step_embedding=False),
}
F64 = dict(rtol=1e-10, atol=1e-10)


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # conftest.py


def pair(opts: dict):
    """(reference on autograd.grad, the same weights on torch.func.grad), float64."""
    torch.manual_seed(0)
    ref = build_model(ModelConfig(family="ebt", **SHAPE, **opts)).double()
    with torch.no_grad():  # a non-trivial step embedding and alpha
        for p in ref.parameters():
            p.add_(0.01 * torch.randn_like(p))
    fn = copy.deepcopy(ref)
    fn.inner_grad = "func"
    assert ref.inner_grad == "autograd"
    return ref, fn


def data(seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, V, (B, T), generator=g), torch.randint(0, V, (B, T), generator=g)


def assert_close_scaled(a: torch.Tensor, b: torch.Tensor, msg: str = "") -> None:
    """float64 agreement relative to the tensor's scale (alpha = 500 makes logits of size ~1e3)."""
    torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10 * max(b.abs().max().item(), 1.0), msg=msg)


@pytest.mark.parametrize("name", list(CASES))
def test_func_grad_descent_matches_autograd_in_float64(name):
    ref, fn = pair(CASES[name])
    ref.train(), fn.train()
    idx, tgt = data()
    landscapes = ref.landscapes(train=False)
    # Every step's logits and energies with the second-order graph, and the gradient of a loss through them.
    out = []
    for m in (ref, fn):
        torch.manual_seed(5)
        z0 = torch.randn(B, T, V, dtype=torch.float64)
        zs, es = m.descend(idx, z0, landscapes, alpha=m.alpha_value(), sigma=m.cfg.langevin_noise_std,
                           need_graph=True)
        loss = sum(F.cross_entropy(z.flatten(0, 1), tgt.flatten()) for z in zs)
        params = [p for p in m.parameters() if p.requires_grad]
        grads = torch.autograd.grad(loss, params, allow_unused=True)
        out.append((zs, es, grads))
    (zr, er, gr), (zf, ef, gf) = out
    assert len(zr) == len(zf) == len(landscapes)
    for i, (a, b) in enumerate(zip(zf, zr, strict=True)):
        assert_close_scaled(a.detach(), b.detach(), f"logits after step {i}")
    for i, (a, b) in enumerate(zip(ef, er, strict=True)):
        torch.testing.assert_close(a, b, **F64, msg=f"energies at step {i}")
    names = [n for n, p in ref.named_parameters() if p.requires_grad]
    for n, a, b in zip(names, gf, gr, strict=True):
        assert (a is None) == (b is None), n
        if b is not None:
            assert_close_scaled(a, b, n)
    # Training steps through ``loss``: the recipe's randomness, the replay buffer filling up (S2).
    for seed in range(3):
        res = []
        for m in (ref, fn):
            m.zero_grad(set_to_none=True)
            torch.manual_seed(seed)
            loss, info = m.loss(idx, tgt)
            loss.backward()
            grads = {n: p.grad.clone() for n, p in m.named_parameters() if p.grad is not None}
            res.append((loss.detach(), info, grads))
        (lr_, ir, gr_), (lf, if_, gf_) = res
        torch.testing.assert_close(lf, lr_, **F64)
        assert ir["inner_steps"] == if_["inner_steps"] and ir["replayed"] == if_["replayed"]
        for k in ("ce", "ce_initial", "energy_initial", "energy_final", "energy_steps"):
            torch.testing.assert_close(if_[k], ir[k], **F64, msg=k)
        assert gf_.keys() == gr_.keys() and gr_
        for n in gr_:
            assert_close_scaled(gf_[n], gr_[n], f"step {seed}: {n}")


@pytest.mark.parametrize("name", ["s1", "s2"])
def test_func_grad_thinking_matches_autograd_in_float64(name):
    ref, fn = pair(CASES[name])
    ref.eval(), fn.eval()
    idx, _ = data()
    (lr_, er), (lf, ef) = (m.think(idx, steps=4, samples=3, generator=torch.Generator().manual_seed(3))
                           for m in (ref, fn))
    assert_close_scaled(lf, lr_)
    torch.testing.assert_close(ef, er, **F64)
    with torch.no_grad():  # validation forward (no_grad outside, the descent differentiates inside)
        torch.manual_seed(4)
        a = ref(idx)
        torch.manual_seed(4)
        b = fn(idx)
    assert_close_scaled(b, a)


def _spec(recipe: str, compile: bool, threads: int = 1) -> RunSpec:
    m = model_config("ebt", "nano", vocab_size=32, sequence_len=32, recipe=recipe)
    t = TrainConfig(steps=20, batch_size=4, lr=3e-3, warmup_steps=4, eval_interval=20, eval_batches=2,
                    log_interval=1, seed=0, threads=threads, compile=compile)
    return RunSpec(model=m, train=t, data=DataConfig(source="synthetic", vocab_size=32), recipe=recipe)


def _losses(spec: RunSpec) -> tuple[list[float], object]:
    sink = ListSink()
    r = train(spec, sink)
    assert r.status == "completed", r.reason
    losses = [v for _, v in sink.series("train_loss")]
    assert len(losses) == 20 and losses[0] != losses[-1]
    return losses, r


def _run(spec: RunSpec, monkeypatch, *, double: bool = False, inner_grad: str = "autograd") -> dict:
    """``train(spec)`` with the model built as asked: its training losses unrounded (``train`` logs float32),
    the trained model, and a digest of torch's global RNG state after every optimizer step (equal digests:
    the same random draws, i.e. initial candidates, step sizes, step counts, replay picks, Langevin noise)."""
    import hashlib

    from ebt_scaling.train import loop

    built, raw, rng = [], [], []

    def build(cfg):
        m = build_model(cfg)
        m.inner_grad = inner_grad
        m = m.double() if double else m
        inner = m.loss

        def loss(*args, **kwargs):  # the training steps' losses, before train() rounds them to float32
            out = inner(*args, **kwargs)
            if m.training:
                raw.append(out[0].item())
            return out

        m.loss = loss
        built.append(m)
        return m

    monkeypatch.setattr(loop, "build_model", build)
    r = loop.train(spec, ListSink(), on_step=lambda _: rng.append(
        hashlib.sha1(torch.get_rng_state().numpy().tobytes()).hexdigest()))
    monkeypatch.undo()
    assert r.status == "completed", r.reason
    assert len(raw) == 20 and raw[0] != raw[-1]
    return {"losses": raw, "model": built[0], "rng": rng, "result": r}


def _drift(a: list[float], b: list[float]) -> list[float]:
    """Largest relative difference of a from b over the first k steps, for k = 1..len."""
    out, m = [], 0.0
    for x, y in zip(a, b, strict=True):
        m = max(m, abs(x - y) / abs(y))
        out.append(m)
    return out


@pytest.mark.slow  # a cold Inductor compile of the EBT step: 250-450 s on the 2-core build machine (29 s warm)
def test_compiled_ebt_s1_training_follows_eager():
    """``ebt-scale train --family ebt --compile``: 20 S1 steps on CPU Inductor (one compilation) follow the eager
    run's losses. Step by step they are equal to float32 rounding (the step test below); along the run S1's alpha
    500 amplifies it. Measured with issue 18's keyed draws: compiled vs eager below 1.5e-5 over the first 10
    steps, then 4.6e-4 at step 12 and 1.3e-3 at step 20, where eager itself moves by 6.5e-5 and 4.2e-5 between
    1 and 2 threads (the same sensitive steps; on the noise realisation before the keyed draws all 20 steps
    stayed within 1e-4). Held to 1e-4 over the first 10 steps and 1e-2 over all 20."""
    le, r_e = _losses(_spec("ebt_s1", False))
    lc, r_c = _losses(_spec("ebt_s1", True))
    assert lc[:10] == pytest.approx(le[:10], rel=1e-4)
    assert lc == pytest.approx(le, rel=1e-2)
    assert r_c.final_val_loss == pytest.approx(r_e.final_val_loss, rel=1e-2)


@pytest.mark.slow  # one more compilation of the S1 step, in float64
def test_compiled_ebt_s1_training_follows_eager_in_float64(monkeypatch):
    """S1 in float64: the float32 bound above is loose because alpha's descent amplifies rounding along the run;
    without float32 rounding, compiled and eager agree over all 20 steps to 1e-9 (losses and trained weights)."""
    e = _run(_spec("ebt_s1", False), monkeypatch, double=True)
    c = _run(_spec("ebt_s1", True), monkeypatch, double=True)
    assert max(_drift(c["losses"], e["losses"])) < 1e-9
    for (n, a), (_, b) in zip(c["model"].state_dict().items(), e["model"].state_dict().items(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9 * max(b.abs().max().item(), 1e-3), msg=n)


@pytest.mark.slow
@pytest.mark.parametrize("recipe", ["ebt_s1", "ebt_s2"])
def test_compiled_ebt_step_equals_eager_given_the_same_draws(recipe):
    """The EBT compiled against eager, one training step at a time from the same weights and the same keyed draws
    (train/accumulate.py; S2: both inner-step counts, rows replayed from the buffer): the loss to 1e-5 relative
    and every gradient to 1e-4 of its own scale, i.e. float32 rounding of Inductor's fused kernels (measured
    with issue 18's keyed draws: S1 1e-7 and 2.1e-6, S2 1.1e-6 and 3.9e-5). The draws being inputs is what
    makes this comparable step by step."""
    from ebt_scaling.train.accumulate import draws_for, step_rows

    torch.manual_seed(0)
    eager = build_model(model_config("ebt", "nano", vocab_size=32, sequence_len=32, recipe=recipe)).train()
    comp = copy.deepcopy(eager)
    comp.compile_loss()
    g = torch.Generator().manual_seed(1)
    x = torch.randint(0, 32, (4, 33), generator=g)
    idx, tgt = x[:, :-1], x[:, 1:]
    eager.loss(idx, tgt)  # S2: fills the replay buffer (the whole-batch path pushes the fresh rows)
    counts, replayed = set(), set()
    for step in range(6):
        rows = step_rows(eager, idx, tgt, seed=0, step=step)
        draws = draws_for(eager, rows, slice(None), 0)
        counts.add(len(rows.landscapes))
        replayed.add(rows.n_replayed)
        out = []
        for m in (eager, comp):
            m.zero_grad(set_to_none=True)
            loss, _ = m.loss(rows.idx, rows.tgt, draws)
            loss.backward()
            out.append((loss.detach(), {n: p.grad.clone() for n, p in m.named_parameters() if p.grad is not None}))
        (le, ge), (lc, gc) = out
        assert float(lc) == pytest.approx(float(le), rel=1e-5)
        assert ge.keys() == gc.keys() and ge
        for n in ge:
            err = float((gc[n] - ge[n]).abs().max()) / max(float(ge[n].abs().max()), 1e-12)
            assert err < 1e-4, (step, n, err)
    if recipe == "ebt_s2":
        assert counts == {2, 3} and replayed == {2}


# S2 compiled against eager (benchmarks/RESULTS.md, "Issue 17: why compiled S2 drifts from eager in float32").
# The cause is rounding, not randomness: every S2 draw but the Langevin noise happens in EBT.loss, outside the
# compiled region, and the noise inside it is drawn by torch's own generator (``fallback_random``), so compiled
# and eager leave the RNG in the same state after every step, and in float64 their losses agree to 4.6e-12
# over 20 steps. S2's chained 2-3 step descent (alpha 5, no detach) amplifies rounding ~4e4-fold over 20 steps,
# in float32 as in float64: measured (benchmarks/compile_drift.py, 2026-12-02, AMD EPYC, torch 2.13) float32
# drift over 20 steps compiled vs eager 2.9e-3, and eager against eager with only the summation order changed
# 1.3e-3 (2 threads instead of 1) and 8.1e-3 (the inner gradient by torch.func.grad instead of
# torch.autograd.grad); one unchained step (randomize_num_steps=0) 2.6e-7; S1 4.6e-5. So for S2, 1e-4 over 20
# float32 steps is below eager's own noise floor: the tight test is float64, and float32 is held to 10x the
# floor measured in the test (as tests/test_observed_reuse.py does), which leaves the first steps at 1e-4.


@pytest.mark.slow  # S2 compiles once per inner-step count and batch shape: 25 s warm, ~400 s cold (2 cores)
def test_compiled_ebt_s2_training_follows_eager_in_float64(monkeypatch):
    """S2 in float64 (the model cast to double; otherwise ``train``): compiled and eager draw the same random
    numbers at every step and their losses and trained weights agree to 1e-9 relative over 20 steps
    (measured 4.6e-12 for the losses; float32 rounding would be 1e-3 here, a different draw O(1))."""
    e = _run(_spec("ebt_s2", False), monkeypatch, double=True)
    c = _run(_spec("ebt_s2", True), monkeypatch, double=True)
    assert c["rng"] == e["rng"]
    assert max(_drift(c["losses"], e["losses"])) < 1e-9
    for (n, a), (_, b) in zip(c["model"].state_dict().items(), e["model"].state_dict().items(), strict=True):
        assert a.dtype == torch.float64 or not a.is_floating_point(), n
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9 * max(b.abs().max().item(), 1e-3), msg=n)
    assert c["model"].replay and len(c["model"].replay) == len(e["model"].replay)


@pytest.mark.slow  # two eager runs for the noise floor and the compiled one: ~60-150 s warm (2 cores)
def test_compiled_ebt_s2_training_follows_eager(monkeypatch):
    """S2 in float32: compiled draws what eager draws, and over the first k steps (k = 1..20) its losses stay
    within max(1e-4, 10x) of what changing only eager's summation order does over the same k steps."""
    e = _run(_spec("ebt_s2", False), monkeypatch)
    floors = [_drift(_run(_spec("ebt_s2", False, threads=2), monkeypatch)["losses"], e["losses"]),
              _drift(_run(_spec("ebt_s2", False), monkeypatch, inner_grad="func")["losses"], e["losses"])]
    c = _run(_spec("ebt_s2", True), monkeypatch)
    assert c["rng"] == e["rng"]
    floor = [max(f) for f in zip(*floors, strict=True)]
    drift = _drift(c["losses"], e["losses"])
    for k, (d, f) in enumerate(zip(drift, floor, strict=True), 1):
        assert d <= max(1e-4, 10 * f), f"first {k} steps: compiled vs eager {d:.2e}, eager noise floor {f:.2e}"
