"""Gradient accumulation and keyed random draws (issue 18 items 1 and 5).

- the EBT's per-sample draws depend on (seed, step, global sample index) only: samples 4..7 draw the same in a
  batch of 8, in a micro-batch of 4, and on a worker whose shard starts at sample 4;
- one optimizer step over micro-batches gives the whole batch's gradient, loss and metrics (T++, S1, S2 with its
  replay buffer), and a short ``train()`` run with micro-batches (a remainder included) the same losses;
- bad ``micro_batch_size`` / ``schedule_steps`` values are one ``ConfigError`` line; neither changes the hash
  when unset, and ``schedule_steps`` changes the LR curve;
- resume stays exact with micro-batches (S2: step count, step size, noise, replay buffer).
"""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch

from ebt_scaling.config import RECIPE_OVERRIDES, DataConfig, ModelConfig, RunSpec, TrainConfig, model_config
from ebt_scaling.errors import ConfigError
from ebt_scaling.models import build_model
from ebt_scaling.records import ListSink
from ebt_scaling.train import keyed, lr_at, train
from ebt_scaling.train.accumulate import draws_for, forward_backward, micro_slices, step_rows

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # conftest.py

V, T = 17, 8
SHAPE = dict(n_layer=1, n_embd=32, n_head=2, vocab_size=V, sequence_len=T)
MODELS = {
    "transformer_pp": dict(family="transformer_pp"),
    "ebt_s1": dict(family="ebt", **RECIPE_OVERRIDES["ebt_s1"]),
    "ebt_s2": dict(family="ebt", **dict(RECIPE_OVERRIDES["ebt_s2"], replay_buffer_size=16)),
}


def _model(name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    m = build_model(ModelConfig(**SHAPE, **MODELS[name]))
    m.train()
    return m


def _batch(b: int = 8, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, V, (b, T + 1), generator=g)
    return x[:, :-1], x[:, 1:]


def test_micro_slices_cover_the_batch_with_a_smaller_last_one():
    assert micro_slices(8, None) == [slice(0, 8)]
    assert micro_slices(8, 8) == [slice(0, 8)]
    assert micro_slices(8, 3) == [slice(0, 3), slice(3, 6), slice(6, 8)]
    assert micro_slices(8, 1) == [slice(i, i + 1) for i in range(8)]


def test_keys_are_stable_and_distinct():
    assert keyed.key(0, keyed.TRAIN, 3, 5) == keyed.key(0, keyed.TRAIN, 3, 5) < 2**63
    ks = {keyed.key(s, st, step, i) for s in (0, 1) for st in (keyed.TRAIN, keyed.EVAL) for step in (0, 1)
          for i in range(4)}
    assert len(ks) == 2 * 2 * 2 * 4


def test_keyed_draws_do_not_depend_on_the_split_or_the_worker():
    """S2 draws everything (z0, Langevin noise of every step, alpha's multiplier): the draws of samples 4..7 are
    the same as rows 4..7 of a batch of 8, as a micro-batch of 4, and on a worker holding samples 4..7 only."""
    m = _model("ebt_s2")
    idx, tgt = _batch(8)
    rows = step_rows(m, idx, tgt, seed=3, step=5)
    whole = draws_for(m, rows, slice(0, 8), 3)
    assert whole.noise is not None and whole.step_scale is not None and len(whole.landscapes) in (2, 3)
    part = draws_for(m, rows, slice(4, 8), 3)
    shard = step_rows(m, idx[4:], tgt[4:], seed=3, step=5, row_offset=4)  # a worker's shard (item 2)
    for other in (part, draws_for(m, shard, slice(0, 4), 3)):
        assert other.landscapes == whole.landscapes
        for a, b in ((whole.z0[4:], other.z0), (whole.noise[4:], other.noise),
                     (whole.step_scale[4:], other.step_scale)):
            assert torch.equal(a, b)
    # another step, seed or sample draws something else
    assert not torch.equal(draws_for(m, step_rows(m, idx, tgt, seed=3, step=6), slice(0, 8), 3).z0, whole.z0)
    assert not torch.equal(draws_for(m, step_rows(m, idx, tgt, seed=4, step=5), slice(0, 8), 4).z0, whole.z0)
    assert not torch.equal(whole.z0[0], whole.z0[1])
    # the multiplier stays in [1/s, s] and the step count is drawn per step, 2 or 3 steps
    s = m.cfg.step_size_random_scale
    assert float(whole.step_scale.min()) >= 1 / s and float(whole.step_scale.max()) <= s
    counts = {len(step_rows(m, idx, tgt, seed=3, step=k).landscapes) for k in range(20)}
    assert counts == {2, 3}


def _step(m, idx, tgt, micro, step=0):
    m.zero_grad(set_to_none=True)
    loss, info = forward_backward(m, m.loss, step_rows(m, idx, tgt, seed=0, step=step), seed=0, micro=micro,
                                  autocast=lambda: torch.autocast("cpu", enabled=False))
    grads = {n: p.grad.clone() for n, p in m.named_parameters() if p.grad is not None}
    return loss, info, grads


@pytest.mark.parametrize("name", list(MODELS))
def test_accumulated_step_equals_the_whole_batch(name):
    """The gradient, loss and metrics of one step over micro-batches of 2 and 3 (a remainder) equal the whole
    batch's to float32 rounding. S2 runs a second step so that rows come back from its replay buffer."""
    ref = _model(name)
    idx, tgt = _batch(8)
    if name == "ebt_s2":
        _step(ref, idx, tgt, None, step=0)  # fills the buffer with 8 rows
        assert len(ref.replay) == 8
    copies = {mb: copy.deepcopy(ref) for mb in (None, 2, 3)}
    idx, tgt = _batch(8, seed=2)
    out = {mb: _step(m, idx, tgt, mb, step=1) for mb, m in copies.items()}
    loss0, info0, g0 = out[None]
    for mb in (2, 3):
        loss, info, g = out[mb]
        torch.testing.assert_close(loss, loss0, rtol=1e-5, atol=1e-6)
        assert g.keys() == g0.keys() and g0
        for n in g0:
            # rounding relative to the gradient's scale (S1's alpha 500 makes some entries tiny next to others)
            err = float((g[n] - g0[n]).abs().max()) / max(float(g0[n].abs().max()), 1e-12)
            assert err < 1e-5, (mb, n, err)
        assert info.keys() == info0.keys()
        for k, v in info0.items():
            torch.testing.assert_close(torch.as_tensor(info[k]), torch.as_tensor(v), rtol=1e-5, atol=1e-5, msg=k)
    if name == "ebt_s2":
        assert info0["replayed"] == 4.0  # half the batch came from the buffer
        for m in copies.values():  # the same buffer afterwards: the fresh rows of the step, in order
            assert len(m.replay) == 16
            for (a, b, c), (a0, b0, c0) in zip(m.replay, copies[None].replay, strict=True):
                assert torch.equal(a, a0) and torch.equal(b, b0)
                torch.testing.assert_close(c, c0, rtol=1e-4, atol=1e-5)


def _spec(family: str, recipe: str | None = None, ckpt=None, **train_kw) -> RunSpec:
    kw = dict(steps=5, batch_size=8, lr=3e-3, warmup_steps=2, eval_interval=0, eval_batches=2, log_interval=1,
              seed=0, threads=1, precision="fp32", device="cpu")
    kw.update(train_kw)
    recipe = recipe if family == "ebt" else None
    m = model_config(family, "nano", vocab_size=32, sequence_len=32, recipe=recipe)
    return RunSpec(model=m, train=TrainConfig(**kw), data=DataConfig(source="synthetic", vocab_size=32),
                   recipe=recipe, checkpoint_dir=str(ckpt) if ckpt else None)


@pytest.mark.parametrize("family, recipe", [("transformer_pp", None), ("ebt", "ebt_s1"), ("ebt", "ebt_s2")])
def test_training_with_micro_batches_equals_the_whole_batch(family, recipe):
    """``train()`` 5 steps, batch 8, fp32: micro-batches of 2 and 3 give the whole batch's losses (train and
    validation, every step) to 1e-4 relative, under the same config hash."""
    runs = {}
    for mb in (None, 2, 3):
        spec = _spec(family, recipe, micro_batch_size=mb)
        sink = ListSink()
        r = train(spec, sink)
        assert r.status == "completed", r.reason
        runs[mb] = (spec.config_hash, [v for _, v in sink.series("train_loss")], r)
    h0, l0, r0 = runs[None]
    for mb in (2, 3):
        h, losses, r = runs[mb]
        assert h == h0
        assert losses == pytest.approx(l0, rel=1e-4)
        assert r.final_val_loss == pytest.approx(r0.final_val_loss, rel=1e-4)
        assert r.tokens == r0.tokens


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("precision, rel", [("fp32", 1e-4), ("bf16", 2e-2)])
@pytest.mark.parametrize("family, recipe", [("transformer_pp", None), ("ebt", "ebt_s1")])
def test_micro_batches_on_cuda_equal_the_whole_batch(family, recipe, precision, rel):
    """The same on CUDA: fp32 to 1e-4 as on CPU, bf16 autocast to its rounding (2e-2 relative over 5 steps)."""
    out = {}
    for mb in (None, 2):
        r = train(_spec(family, recipe, micro_batch_size=mb, device="cuda", precision=precision), ListSink())
        assert r.status == "completed", r.reason
        out[mb] = (r.final_train_loss, r.final_val_loss)
    assert out[2] == pytest.approx(out[None], rel=rel)


def test_resume_with_micro_batches_is_exact(tmp_path):
    """S2 (random step count and size, noise, replay buffer) with micro-batches of 3: 8 steps straight vs resumed
    from the step-4 checkpoint, bit for bit."""
    spec = _spec("ebt", "ebt_s2", ckpt=tmp_path / "a", steps=8, micro_batch_size=3, checkpoint_interval=4,
                 eval_interval=4)
    straight = ListSink()
    r1 = train(spec, straight)
    ck4 = straight.checkpoints[0][0]
    resumed = ListSink()
    r2 = train(spec.with_(checkpoint_dir=str(tmp_path / "b")), resumed, resume_from=ck4)
    assert resumed.series("train_loss") == straight.series("train_loss")[4:]
    assert resumed.series("grad_norm") == straight.series("grad_norm")[4:]
    assert resumed.series("val_loss") == straight.series("val_loss")[1:]
    assert r2.final_val_loss == r1.final_val_loss


@pytest.mark.parametrize("value, needle", [
    (0, "must be an integer in 1..batch_size (8), got 0"),
    (9, "must be an integer in 1..batch_size (8), got 9"),
    ("auto", "'auto' is not a number of sequences"),
    (2.5, "must be an integer, got 2.5"),
    (True, "must be an integer, got True"),
])
def test_bad_micro_batch_size_is_one_line(value, needle):
    with pytest.raises(ConfigError) as e:
        TrainConfig(batch_size=8, micro_batch_size=value)
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith("TrainConfig.micro_batch_size:") and needle in msg, msg


def test_micro_batch_size_with_cuda_graph_is_refused_and_a_whole_batch_is_not():
    with pytest.raises(ConfigError, match="micro_batch_size: cannot be combined with cuda_graph"):
        TrainConfig(batch_size=8, micro_batch_size=4, cuda_graph=True)
    TrainConfig(batch_size=8, micro_batch_size=8, cuda_graph=True)


def test_micro_batch_size_is_not_hashed_and_schedule_steps_only_when_set():
    base = _spec("ebt", "ebt_s1")
    h = base.config_hash
    t = base.train
    assert base.with_(train=dataclasses.replace(t, micro_batch_size=2)).config_hash == h
    assert "micro_batch_size" not in base.identity()["train"]
    assert "schedule_steps" not in base.identity()["train"]
    longer = base.with_(train=dataclasses.replace(t, schedule_steps=100))
    assert longer.config_hash != h and longer.identity()["train"]["schedule_steps"] == 100
    # a stored config from before the fields existed reads back with the same hash
    d = base.to_dict()
    for k in ("micro_batch_size", "schedule_steps"):
        del d["train"][k]
    assert RunSpec.from_dict(d).config_hash == h
    with pytest.raises(ConfigError, match=r"^TrainConfig.schedule_steps: 4 is shorter than the run \(steps = 5\)"):
        TrainConfig(steps=5, schedule_steps=4)


def test_schedule_steps_changes_the_lr_curve():
    """6 steps of a 100-step schedule: the warm-up, then the top of a 100-step cosine (not the 6-step one)."""
    curves = {}
    for sched in (None, 100):
        sink = ListSink()
        train(_spec("transformer_pp", steps=6, warmup_steps=2, schedule_steps=sched), sink)
        curves[sched] = [v for _, v in sink.series("lr")]
    assert curves[100] == pytest.approx([lr_at(s, peak=3e-3, warmup=2, total=100, min_div=10) for s in range(6)])
    assert curves[None] == pytest.approx([lr_at(s, peak=3e-3, warmup=2, total=6, min_div=10) for s in range(6)])
    assert curves[100][:2] == curves[None][:2] and curves[100][-1] > 0.99 * 3e-3 > curves[None][-1]
