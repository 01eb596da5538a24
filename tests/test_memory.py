"""The memory plan (sweeps/memory.py): the estimator's shape, its calibration against exact counts at shapes the
fit never saw, the micro-batch planner, and the sweep command's memory columns and refusal."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ebt_scaling.config import DataConfig, ModelConfig, RunSpec, TrainConfig, model_config
from ebt_scaling.sweeps import expand, load_spec, spec_path
from ebt_scaling.sweeps.memory import (
    divisors,
    estimate_memory,
    features,
    plan_micro_batch,
    variant,
)

ROOT = Path(__file__).resolve().parents[1]


def _spec(family: str = "ebt", recipe: str | None = "ebt_s1", *, batch: int = 32, precision: str = "bf16") -> RunSpec:
    """An xxs run at the paper's context and vocabulary."""
    recipe = recipe if family == "ebt" else None
    m = model_config(family, "xxs", vocab_size=50277, sequence_len=256, recipe=recipe)
    return RunSpec(model=m, train=TrainConfig(batch_size=batch, precision=precision), data=DataConfig(), recipe=recipe)


@pytest.mark.parametrize("family,recipe", [("transformer_pp", None), ("ebt", "ebt_s1"), ("ebt", "ebt_s2")])
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_estimate_is_monotone_in_batch_sequence_vocabulary_and_depth(family, recipe, precision):
    base = _spec(family, recipe, precision=precision)

    def total(spec: RunSpec, mb: int = 4) -> float:
        return estimate_memory(spec, mb).total_bytes

    t0 = total(base)
    assert total(base, 8) > t0 > total(base, 1) > 0
    m = base.model
    for change in ({"sequence_len": 512}, {"vocab_size": 100000}, {"n_layer": m.n_layer + 2}):
        bigger = base.with_(model=ModelConfig(**{**m.to_dict(), **change}))
        assert total(bigger) > t0, change


def test_estimate_parts_and_precision():
    spec = _spec("transformer_pp", None, precision="auto")
    gpu, cpu = estimate_memory(spec, 4, device="gpu"), estimate_memory(spec, 4, device="cpu")
    assert (gpu.precision, cpu.precision) == ("bf16", "fp32")
    n = (gpu.weights_bytes / 4)
    assert gpu.gradients_bytes == 4 * n and gpu.optimizer_bytes == 8 * n
    assert gpu.total_bytes > gpu.estimate_bytes > gpu.weights_bytes
    from ebt_scaling.sweeps.memory import activation_bytes

    assert activation_bytes(spec.model, 4, "tf32") == activation_bytes(spec.model, 4, "fp32")
    parts = gpu.parts_gib()
    assert parts["total"] == pytest.approx(sum(v for k, v in parts.items() if k not in ("estimate", "total")),
                                           abs=1e-3)
    s2 = _spec("ebt", "ebt_s2")  # the replay buffer's stored fp32 logits are device memory
    assert estimate_memory(s2, 1).replay_bytes == pytest.approx(192 * 256 * (16 + 4 * 50277))


def _calibration():
    sys.path.insert(0, str(ROOT))
    from benchmarks import memory_calibration

    return memory_calibration


# Shapes that benchmarks/memory_calibration.py never fits to (its CHECK list), one per variant; small enough to
# count in well under a second each.
HELD_OUT = [("transformer_pp", 1, "fp32"), ("ebt_full", 0, "bf16"), ("ebt_truncated", 1, "fp32")]


@pytest.mark.parametrize("var,index,precision", HELD_OUT)
def test_saved_activations_match_the_exact_count_at_held_out_shapes(var, index, precision, one_torch_thread):
    """The estimate of what autograd keeps for the backward is within 3% of saved_memory's exact count (alive
    when the forward ends, parameters left out) at shapes the fit did not use."""
    cal = _calibration()
    shape = cal.CHECK[var][index]
    for fit_shape in cal.FIT[var]:
        assert {**cal.BASE, **fit_shape} != shape
    cfg = cal.model_config(var, shape)
    assert variant(cfg) == var
    measured = cal.measure(var, shape, precision, peak=False)["saved_bytes"]
    from ebt_scaling.sweeps.memory import activation_bytes

    saved, peak = activation_bytes(cfg, shape["batch"], precision)
    assert saved == pytest.approx(measured, rel=0.03)
    assert peak >= saved


def test_divisors():
    assert divisors(1) == [1]
    assert divisors(90) == [1, 2, 3, 5, 6, 9, 10, 15, 18, 30, 45, 90]
    assert divisors(49) == [1, 7, 49]


def test_planner_picks_the_largest_divisor_that_fits():
    spec = _spec("ebt", "ebt_s1", batch=90)
    totals = {mb: estimate_memory(spec, mb).total_gib for mb in divisors(90)}
    assert list(totals.values()) == sorted(totals.values())
    for mb in (1, 5, 18, 45):
        nxt = divisors(90)[divisors(90).index(mb) + 1]
        budget = (totals[mb] + totals[nxt]) / 2
        plan = plan_micro_batch(spec, budget)
        assert plan.fits and plan.micro_batch_size == mb, (mb, budget)
        assert plan.memory_gib == pytest.approx(totals[mb], abs=0.01) and plan.memory_gib <= budget
    whole = plan_micro_batch(spec, 10_000)
    assert whole.fits and whole.micro_batch_size == 90
    per_worker = plan_micro_batch(spec, 10_000, batch_size=45)  # two data-parallel workers: 45 per device
    assert per_worker.micro_batch_size == 45
    none = plan_micro_batch(spec, totals[1] * 0.9)
    assert not none.fits and none.micro_batch_size == 1 and none.memory_gib == pytest.approx(totals[1], abs=0.01)


def test_features_follow_the_ebt_inner_loop():
    s1 = model_config("ebt", "xxs", vocab_size=512, sequence_len=64, recipe="ebt_s1")
    s2 = model_config("ebt", "xxs", vocab_size=512, sequence_len=64, recipe="ebt_s2")
    f1, f2 = features(s1, 4), features(s2, 4)
    assert f1["g_v"] == 2 * 4 * 64 * 512  # two graph steps (S1)
    assert f2["g_v"] == 6 * 64 * 512 and f2["s_v"] == 3 * 6 * 64 * 512  # S2: one graph step of 4 + 2 replayed rows


def _paper_dry_run(*extra: str) -> dict:
    from ebt_scaling.cli.main import app

    r = CliRunner().invoke(app, ["sweep", "--axis", "params", "--scale", "paper", "--dry-run", "--json",
                                 "--no-db-check", *extra])
    assert r.exit_code == 0, r.output
    return json.loads(r.stdout)


def test_paper_params_dry_run_has_memory_and_micro_batch_for_every_run():
    plan = _paper_dry_run()
    assert plan["memory"]["gpu_memory_gib"] == 80 and plan["memory"]["gpu_memory_assumed"] is True
    runs = {x.config_hash: x for x in expand(load_spec(spec_path("params", "paper")))}
    for row in plan["runs"]:
        assert row["memory_gib"] > 0 and row["memory_fits"] is True
        assert runs[row["config_hash"]].spec.train.batch_size % row["micro_batch_size"] == 0
        assert row["memory_gib"] <= 80
    given = _paper_dry_run("--gpu-memory", "40")
    assert given["memory"]["gpu_memory_assumed"] is False
    for a, b in zip(plan["runs"], given["runs"], strict=True):
        assert b["micro_batch_size"] <= a["micro_batch_size"] and b["memory_gib"] <= 40


def test_text_plan_shows_memory_and_the_assumption():
    from ebt_scaling.cli.main import app

    r = CliRunner().invoke(app, ["sweep", "--axis", "params", "--scale", "paper", "--dry-run", "--no-db-check"])
    assert r.exit_code == 0, r.output
    assert "assumed 80 GiB per GPU (--gpu-memory not given)" in r.output and "mem GiB" in r.output
    r = CliRunner().invoke(app, ["sweep", "--axis", "depth", "--dry-run", "--no-db-check", "--json"])
    assert r.exit_code == 0, r.output
    plan = json.loads(r.stdout)  # CPU runs: host memory of the whole batch, nothing refused
    assert plan["memory"]["device"] == "cpu"
    assert all(row["memory_gib"] > 0 and row["micro_batch_size"] == row["batch_size"] for row in plan["runs"])


@pytest.mark.parametrize("dry_run", [True, False])
def test_a_gpu_run_that_cannot_fit_is_refused_in_one_line_before_anything_is_written(tmp_path, dry_run):
    from ebt_scaling.cli.main import app

    db = tmp_path / "x.db"
    args = ["sweep", "--axis", "depth", "--gpus-per-trial", "1", "--gpu-memory", "0.5", "--db", f"sqlite:///{db}",
            "--storage", str(tmp_path / "runs")] + (["--dry-run"] if dry_run else [])
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 2, r.output
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "at micro-batch 1, above --gpu-memory 0.5" in lines[0], r.stderr
    assert "use a smaller model/sequence or more memory" in lines[0]
    assert not db.exists() and not (tmp_path / "runs").exists()
    assert r.stdout == ""
    r = CliRunner().invoke(app, ["sweep", "--axis", "depth", "--dry-run", "--no-db-check", "--gpu-memory", "0"])
    assert r.exit_code == 2 and "--gpu-memory must be > 0" in r.output


def test_micro_batch_size_auto_in_a_spec_takes_the_memory_plans_choice(tmp_path):
    """`[train] micro_batch_size = "auto"`: every run gets the micro-batch of its memory plan (the `micro` column),
    with the same config hash as the whole-batch run (micro-batches change rounding only)."""
    from ebt_scaling.sweeps import expand, load_spec
    from ebt_scaling.sweeps.expand import with_micro_batch
    from ebt_scaling.sweeps.plan import MemorySetting, Resources, plan_memory

    root = Path(__file__).resolve().parents[1]
    text = (root / "experiments" / "paper" / "params.toml").read_text()
    text = text.replace("[train]\n", '[train]\nmicro_batch_size = "auto"\n', 1)
    p = tmp_path / "p.toml"
    p.write_text(text)
    sw = load_spec(p)
    assert sw.micro_batch_auto and "micro_batch_size" not in sw.train
    runs = expand(sw)
    plans = plan_memory(runs, Resources(gpus_per_trial=1), MemorySetting(80.0))
    picked = [with_micro_batch(r, mp.micro_batch_size) for r, mp in zip(runs, plans, strict=True)]
    assert [r.spec.train.micro_batch_size for r in picked] == [mp.micro_batch_size for mp in plans]
    assert any(mp.micro_batch_size < r.spec.train.batch_size for r, mp in zip(runs, plans, strict=True))
    assert [r.config_hash for r in picked] == [r.spec.config_hash for r in picked] == [r.config_hash for r in runs]
    assert all(r.planned.config["train"]["micro_batch_size"] == r.spec.train.micro_batch_size for r in picked)
