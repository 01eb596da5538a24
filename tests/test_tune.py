"""Tuned sweeps (issue 28): the [tune] grid of a spec, the selection set disjoint from the evaluation set, the
official LR schedule for new runs and the record of a learnable alpha stuck at its floor."""

from __future__ import annotations

import math
import re
import sys

import numpy as np
import pytest

from ebt_scaling.config import (
    LEGACY_LR_SCHEDULE,
    DataConfig,
    RunSpec,
    TrainConfig,
    model_config,
)
from ebt_scaling.data.sampler import StoreData
from ebt_scaling.data.store import FORMAT, TokenStore, store_dtype, write_documents
from ebt_scaling.errors import DataError, SpecError
from ebt_scaling.sweeps import expand, load_spec, parse_spec, spec_path
from ebt_scaling.sweeps.plan import Resources, format_plan, plan_cost

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

SPEC = """
[sweep]
name = "t"
axis = "{axis}"
families = ["ebt", "transformer_pp"]
seeds = [0, 1]

[model]
preset = "nano"
sequence_len = 32

[train]
steps = 40
batch_size = 4
warmup_steps = 2
lr = 0.004

[data]
source = "synthetic"
vocab_size = 64

{tune}

[axis]
{axis_body}
"""


def _spec(tune: str, axis: str = "depth", body: str = "values = [1, 2]"):
    return parse_spec(tomllib.loads(SPEC.format(axis=axis, axis_body=body, tune=tune)))


def _by_hash(spec):
    return {r.config_hash: r for r in expand(spec)}


# ------------------------------------------------------------------------------------------------ the grid
def test_every_family_level_and_seed_trains_every_grid_point():
    spec = _spec("[tune]\nlr = [0.002, 0.004]\nwarmup_steps = [2, 4]\n[tune.ebt]\nlr = [0.001, 0.01, 0.03]")
    runs = expand(spec)
    # T++: 2 lr x 2 warm-ups; EBT: its own lr grid (3) x the shared warm-ups (2); x 2 levels x 2 seeds
    assert len(runs) == 2 * 2 * (4 + 6)
    tpp = {(r.label, r.spec.seed, r.spec.train.lr, r.spec.train.warmup_steps)
           for r in runs if r.spec.family == "transformer_pp"}
    assert tpp == {(lv, s, lr, w) for lv in ("1", "2") for s in (0, 1) for lr in (0.002, 0.004) for w in (2, 4)}
    ebt_lrs = {r.spec.train.lr for r in runs if r.spec.family == "ebt"}
    assert ebt_lrs == {0.001, 0.01, 0.03}
    for r in runs:  # the grid point is recorded beside the config, for the fit to group by
        t = r.planned.config["tune"]
        assert t["lr"] == r.spec.train.lr and t["warmup_steps"] == r.spec.train.warmup_steps
        # every run is also scored on a selection set as large as its evaluation set (eval_batches x batch x T)
        assert r.spec.train.select_tokens == 8 * 4 * 32
        assert "tune" not in r.spec.to_dict()  # not part of the run's identity


def test_widening_a_grid_plans_exactly_the_new_points():
    old = _by_hash(_spec("[tune]\nlr = [0.002, 0.004]"))
    new = _by_hash(_spec("[tune]\nlr = [0.002, 0.004, 0.008]"))
    assert set(old) < set(new)  # every old run keeps its identity
    added = [new[h] for h in set(new) - set(old)]
    assert len(added) == 2 * 2 * 2 and {r.spec.train.lr for r in added} == {0.008}
    # a family's own grid leaves the other family's runs alone
    ebt_only = _by_hash(_spec("[tune]\nlr = [0.002, 0.004]\n[tune.ebt]\nlr = [0.002, 0.004, 0.008]"))
    assert {h for h, r in ebt_only.items() if r.spec.family == "transformer_pp"} == \
        {h for h, r in old.items() if r.spec.family == "transformer_pp"}


def test_lr_scale_multiplies_each_levels_own_lr():
    spec = _spec("[tune]\nlr_scale = [0.5, 1, 3]", axis="params", body='values = ["nano", "tiny"]')
    runs = expand(spec)
    assert len(runs) == 2 * 2 * 3 * 2
    for r in runs:
        base = 3e-3  # nano's and tiny's preset peak LR (paper-style Table D.1 rule: each size its own)
        assert r.spec.train.lr == {0.5: 1.5e-3, 1: base, 3: 9e-3}[r.planned.config["tune"]["lr_scale"]]
    # scale 1 is each level's LR as written, and widening a scale grid keeps the runs planned before
    one = expand(_spec("[tune]\nlr_scale = [1]", axis="params", body='values = ["nano", "tiny"]'))
    assert {r.config_hash for r in one} == \
        {r.config_hash for r in runs if r.planned.config["tune"]["lr_scale"] == 1}
    assert all(r.spec.train.lr == 3e-3 for r in one)


@pytest.mark.parametrize(("tune", "axis", "body", "msg"), [
    ("[tune]\nlr = [0.001, 0.002]", "params", 'values = ["nano", "tiny"]',
     "tune.lr: the params axis gives every level its own peak LR (axis.lrs or the size presets'); give the grid as "
     "multipliers of it instead: lr_scale = [0.5, 1, 2]"),
    ("[tune.ebt]\nlr = [0.001]", "flops", 'values = ["nano", "tiny"]', "tune.ebt.lr: the flops axis gives"),
    ("[tune]\nlr = [0.001]\nlr_scale = [1, 2]", "depth", "values = [1, 2]", "tune.lr_scale: given with lr"),
    ("[tune]\nlr = 0.001", "depth", "values = [1, 2]", "tune.lr: must be a non-empty list"),
    ("[tune]\nlr = []", "depth", "values = [1, 2]", "tune.lr: must be a non-empty list"),
    ("[tune]\nlr = [0.001, 0.001]", "depth", "values = [1, 2]", "tune.lr: duplicate values"),
    ("[tune]\nlr = [\"0.001\"]", "depth", "values = [1, 2]", "tune.lr: '0.001' is not a number"),
    ("[tune]\nlr_scale = [0, 1]", "depth", "values = [1, 2]", "tune.lr_scale: 0 is not a positive multiplier"),
    ("[tune]\nlrs = [0.001]", "depth", "values = [1, 2]", "tune.lrs: unknown key (did you mean 'lr'?)"),
    ("[tune.ebt]\nsteps = [10]", "depth", "values = [1, 2]", "tune.ebt.steps: unknown key"),
    ("[tune]\nlr = [-0.001]", "depth", "values = [1, 2]", "tune.lr: must be > 0"),
    ("[tune]\nwarmup_steps = [2.5]", "depth", "values = [1, 2]", "tune.warmup_steps: must be an integer"),
    ("[tune]\nwarmup_steps = [40]", "depth", "values = [1, 2]", "tune.warmup_steps: a run of 40 steps is not longer"),
])
def test_bad_grids_are_one_line(tune, axis, body, msg):
    with pytest.raises(SpecError) as e:
        _spec(tune, axis, body)
    assert msg in str(e.value) and "\n" not in str(e.value), str(e.value)


def test_custom_shapes_on_the_params_axis_take_an_lr_grid():
    body = 'values = [{ name = "a", n_layer = 1, n_embd = 32, n_head = 2 }, { name = "b", n_layer = 2, n_embd = 32, ' \
           'n_head = 2 }]'
    runs = expand(_spec("[tune]\nlr = [0.001, 0.002]", "params", body))
    assert {r.spec.train.lr for r in runs} == {0.001, 0.002} and len(runs) == 2 * 2 * 2 * 2


def test_dry_run_shows_the_grid_and_its_cost():
    spec = _spec("[tune]\nlr = [0.002, 0.004]\n[tune.ebt]\nlr = [0.001, 0.01, 0.03]")
    runs = expand(spec)
    plan = plan_cost(spec, runs, Resources(cpus_per_trial=1, total_cpus=2))
    text = format_plan(plan)
    assert re.search(r"tune: ebt: lr = \[0\.001, 0\.01, 0\.03\]: 3 point\(s\) x 2 seed\(s\) per level; 12 runs, "
                     r"480 steps, .* of trial time", text), text
    assert "tune: transformer_pp: lr = [0.002, 0.004]: 2 point(s) x 2 seed(s) per level; 8 runs, 320 steps" in text
    assert "total: 20 runs, 800 steps," in text
    d = plan.to_dict()
    assert d["tune"]["ebt"] == {"lr": [0.001, 0.01, 0.03]} and d["total"]["steps"] == 800
    assert all(r["tune"]["lr"] == r["lr"] for r in d["runs"])
    assert "tune:" not in format_plan(plan_cost(_spec(""), expand(_spec("")), Resources(cpus_per_trial=1)))


@pytest.mark.parametrize("axis", ["params", "flops", "depth", "width"])
def test_paper_specs_tune_the_lr_of_every_level(axis):
    spec = load_spec(spec_path(axis, "paper"))
    assert spec.tune["ebt"] == spec.tune["transformer_pp"] == {"lr_scale": [0.5, 1, 2]}
    runs = expand(spec)
    assert len(runs) == len(spec.values) * len(spec.families) * len(spec.seeds) * 3
    plan = plan_cost(spec, runs, Resources(gpus_per_trial=1, cpus_per_trial=4, total_gpus=8))
    assert plan.to_dict()["total"]["runs"] == len(runs)  # the cost covers every grid point
    assert all(r.spec.train.lr_schedule == "official" and r.spec.train.select_tokens for r in runs)


def test_paper_flops_sweep_plans_the_params_sweeps_runs():
    p, f = (expand(load_spec(spec_path(a, "paper"))) for a in ("params", "flops"))
    assert [r.config_hash for r in p] == [r.config_hash for r in f]


def test_tiny_specs_run_two_seeds():
    for axis in ("data", "batch", "depth", "width", "params", "flops"):
        assert len(load_spec(spec_path(axis, "tiny")).seeds) >= 2, axis


# ------------------------------------------------------------------------------------------------ identity
def test_new_fields_are_hashed_only_where_they_change_the_run():
    m = model_config("transformer_pp", "nano", vocab_size=32, sequence_len=32)
    base = RunSpec(model=m, train=TrainConfig())
    assert TrainConfig().lr_schedule == LEGACY_LR_SCHEDULE and TrainConfig().select_tokens is None
    ident = base.identity()["train"]
    assert "lr_schedule" not in ident and "select_tokens" not in ident
    official = base.with_(train=TrainConfig(lr_schedule="official"))
    sel = base.with_(train=TrainConfig(select_tokens=512))
    assert len({base.config_hash, official.config_hash, sel.config_hash}) == 3
    # a stored config of before the fields existed reads back with the held schedule and its hash
    d = base.to_dict()
    for k in ("lr_schedule", "select_tokens"):
        del d["train"][k]
    assert RunSpec.from_dict(d).config_hash == base.config_hash
    assert RunSpec.from_dict(official.to_dict()).config_hash == official.config_hash


def test_sweeps_plan_new_runs_on_the_official_schedule():
    assert {r.spec.train.lr_schedule for r in expand(_spec(""))} == {"official"}


# ------------------------------------------------------------------------------------------------ selection set
@pytest.fixture(scope="module")
def unique_store(tmp_path_factory):
    """A store whose every token is distinct (token = its position), so that shared tokens = shared windows."""
    root = tmp_path_factory.mktemp("uniq") / "s"
    rng = np.random.default_rng(0)
    lens = rng.integers(20, 200, 400)
    bounds = np.concatenate(([0], np.cumsum(lens)))
    docs = [np.arange(bounds[i], bounds[i + 1]) for i in range(len(lens))]
    vocab = int(bounds[-1]) + 1
    params = {"format": FORMAT, "source": "test:unique", "field": None, "data_files": None, "tokenizer": "none",
              "tokenizer_hash": "none", "vocab_size": vocab, "dtype": store_dtype(vocab).name, "shard_tokens": 8192}
    write_documents(root, params, docs)
    return root


@pytest.mark.parametrize(("split", "sampling"), [("documents", "packed"), ("documents", "document"),
                                                 ("blocks", "packed")])
def test_selection_and_evaluation_sets_are_disjoint_and_fixed(unique_store, split, sampling):
    def data(seed):
        return StoreData(TokenStore(unique_store), seq_len=32, sampling=sampling, val_fraction=0.2, split_seed=3,
                         seed=seed, split=split)

    a = data(0)
    ev = np.concatenate(a.val_batches(1, 8, 32, n_windows=40))
    sel = np.concatenate(a.select_batches(8, 32, n_eval_windows=40, n_windows=40))
    assert len(ev) >= 1 and len(sel) >= 1
    ev_tok, sel_tok = set(ev[ev >= 0].tolist()), set(sel[sel >= 0].tolist())
    assert not ev_tok & sel_tok  # no token window of one set overlaps one of the other
    train_tok = {int(t) for s in range(5) for t in a.sample_batch(s, range(8)).ravel()} if split == "documents" \
        else {int(t) for t in a.train_batch(0, 8, 32, np.random.default_rng(0)).ravel()}
    assert not train_tok & sel_tok  # and the selection set is validation data
    # fixed for the sweep: another run (seed, batch size) gets the same windows of both sets
    b = data(7)
    assert np.array_equal(np.concatenate(b.select_batches(5, 32, 40, 40)), sel)
    assert np.array_equal(np.concatenate(b.val_batches(1, 5, 32, n_windows=40)), ev)


def test_a_validation_split_too_small_for_a_selection_set_is_one_line(unique_store):
    d = StoreData(TokenStore(unique_store), seq_len=32, val_fraction=0.01, split_seed=3)
    with pytest.raises(DataError) as e:
        d.select_batches(8, 32, n_eval_windows=100_000, n_windows=10)
    assert "after the evaluation set" in str(e.value) and "\n" not in str(e.value)


# ------------------------------------------------------------------------------------------------ training
def _tiny(family: str, **train):
    recipe = "ebt_s1" if family == "ebt" else None
    m = model_config(family, "nano", vocab_size=32, sequence_len=32, recipe=recipe)
    t = TrainConfig(**{**dict(steps=12, batch_size=4, lr=3e-3, warmup_steps=3, eval_interval=6, eval_batches=2,
                              log_interval=1, seed=0, threads=1), **train})
    return RunSpec(model=m, train=t, data=DataConfig(source="synthetic", vocab_size=32), recipe=recipe)


def test_selection_loss_is_logged_beside_an_unchanged_val_loss():
    from ebt_scaling.records import ListSink
    from ebt_scaling.train import train

    plain, tuned = ListSink(), ListSink()
    r0 = train(_tiny("transformer_pp"), plain)
    r1 = train(_tiny("transformer_pp", select_tokens=256), tuned)
    # the selection set changes neither training nor the evaluation set's loss (the run's identity aside)
    assert tuned.series("val_loss") == plain.series("val_loss") and r1.final_val_loss == r0.final_val_loss
    assert tuned.series("train_loss") == plain.series("train_loss")
    sel = tuned.series("val_select_loss")
    assert [s for s, _ in sel] == [6, 12] and not plain.series("val_select_loss")
    assert r1.extra["val_select_loss"] == sel[-1][1] and sel[-1][1] != r1.final_val_loss
    assert "val_select_loss" not in r0.extra


def test_training_follows_the_official_schedule_exactly():
    """The official trainer's WarmUpCosineAnnealingLR: warm-up (s + 1) / W, then torch's CosineAnnealingLR(T_max =
    N - W) stepped once per optimizer step from step W (its first step already one in): the exact LRs."""
    import torch

    from ebt_scaling.records import ListSink
    from ebt_scaling.train import train
    from ebt_scaling.train.schedule import lr_at

    peak, W, N, div = 3e-3, 3, 12, 10.0
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=peak)
    cos = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=N - W, eta_min=peak / div)
    official = []
    for s in range(N):
        if s < W:
            official.append(peak * (s + 1) / W)
        else:
            opt.step()
            cos.step()
            official.append(cos.get_last_lr()[0])
    ours = [lr_at(s, peak=peak, warmup=W, total=N, min_div=div, shape="official") for s in range(N)]
    np.testing.assert_allclose(ours, official, rtol=1e-12)
    assert ours[W - 1] == pytest.approx(peak) and ours[W] < peak and ours[-1] == pytest.approx(peak / div, rel=1e-12)
    held = [lr_at(s, peak=peak, warmup=W, total=N, min_div=div) for s in range(N)]
    assert held[W] == peak and held[-1] == pytest.approx(peak / div)  # the legacy shape, kept for old runs
    sink = ListSink()
    train(_tiny("transformer_pp", lr_schedule="official"), sink)
    assert [v for _, v in sink.series("lr")] == ours  # step s (1-based) logs the LR it used, lr_at(s - 1)
    for s in range(N):  # the closed form the issue gives
        if s >= W:
            f = 0.5 * (1 + math.cos(math.pi * (s - W + 1) / (N - W)))
            assert ours[s] == pytest.approx(peak / div + (peak - peak / div) * f, rel=1e-12)


def test_an_alpha_stuck_at_its_floor_is_recorded():
    from ebt_scaling.records import ListSink
    from ebt_scaling.train import train

    spec = _tiny("ebt", steps=2, eval_interval=0)
    dead = spec.with_(model=model_config("ebt", "nano", vocab_size=32, sequence_len=32, recipe="ebt_s1",
                                         step_size=5e-5))
    r = train(dead, ListSink())
    assert r.extra["alpha_died"] == 1.0 and r.extra["alpha_final"] <= 1e-4
    assert "alpha_died" not in train(spec, ListSink()).extra
