"""Measured throughput: ``ebt-scale calibrate`` (CPU, tiny shapes, a few steps), the dry run using the stored
calibrations and saying so per run, the throughput math, and the refusal of more than one GPU per trial."""

from __future__ import annotations

import dataclasses
import json
from datetime import datetime
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ebt_scaling.cli.main import app
from ebt_scaling.errors import ConfigError
from ebt_scaling.records import CalibrationRecord
from ebt_scaling.sweeps import expand, load_spec
from ebt_scaling.sweeps.calibration import (
    cpu_model_name,
    device_calibrations,
    shape_key,
    trained_precision,
    trial_flops_per_s,
)
from ebt_scaling.sweeps.plan import Resources, plan_cost

SPEC = """
[sweep]
name = "cal"
axis = "depth"
families = ["ebt", "transformer_pp"]
seeds = [0, 1]

[model]
preset = "nano"
sequence_len = 16

[train]
steps = 40
batch_size = 2
warmup_steps = 2
{train_extra}

[data]
source = "synthetic"
vocab_size = 32

[resources]
cpus_per_trial = 1
{resources_extra}

[cost]
cpu_flops_per_s = 1.0e10
{cost_extra}

[axis]
values = [1, 2]
"""


def _spec(tmp_path: Path, train_extra: str = "", resources_extra: str = "", cost_extra: str = "",
          name: str = "s.toml") -> Path:
    p = tmp_path / name
    p.write_text(SPEC.format(train_extra=train_extra, resources_extra=resources_extra, cost_extra=cost_extra))
    return p


def _one_line(r) -> str:
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, r.output
    return lines[0]


def test_calibrate_stores_rows_and_the_dry_run_uses_them(tmp_path):
    spec, db = _spec(tmp_path), f"sqlite:///{tmp_path / 'c.db'}"
    dry = ["sweep", "--spec", str(spec), "--dry-run", "--json", "--db", db]
    before = json.loads(CliRunner().invoke(app, dry).stdout)
    assert {r["throughput_source"] for r in before["runs"]} == {"spec [cost]"}
    assert "no ebt-scaling database yet" in before["calibrations_note"]

    r = CliRunner().invoke(app, ["calibrate", "--spec", str(spec), "--size", "1", "--steps", "2", "--warmup", "1",
                                 "--device", "cpu", "--db", db, "--json"])
    assert r.exit_code == 0, r.output
    stored = json.loads(r.stdout)
    assert [(c["family"], c["precision"], c["threads"], c["device_kind"]) for c in stored] == [
        ("transformer_pp", "fp32", 1, "cpu"), ("ebt", "fp32", 1, "cpu")]  # one per config, not per seed
    assert all(c["flops_per_s"] > 0 and c["device_name"] == cpu_model_name() for c in stored)
    progress = [ln for ln in r.stderr.splitlines() if ln.startswith("calibrate ")]
    assert len(progress) == 2 and all("FLOP/s" in ln and "s/step" in ln for ln in progress), r.stderr

    after = json.loads(CliRunner().invoke(app, dry).stdout)
    date = datetime.now().strftime("%Y-%m-%d")  # noqa: DTZ005  (the DB's naive UTC date; same day but at midnight)
    by = {(x["family"], x["value"]): x for x in after["runs"]}
    for fam in ("transformer_pp", "ebt"):
        for seed_row in (x for x in after["runs"] if x["family"] == fam and x["value"] == "1"):
            assert seed_row["throughput_source"].startswith(f"calibrated {cpu_model_name()} ")
            assert seed_row["throughput_source"][-10:] in (date, stored[0]["measured_at"][:10])
            cal = next(c for c in stored if c["family"] == fam)
            assert seed_row["flops_per_s"] == pytest.approx(cal["flops_per_s"])
            assert seed_row["duration_s"] == pytest.approx(seed_row["flops"]["exact"] / cal["flops_per_s"])
        assert by[(fam, "2")]["throughput_source"] == "spec [cost]"  # depth 2 was not calibrated: not reused
    text = CliRunner().invoke(app, dry[:-3] + ["--db", db]).stdout
    assert "4 calibrated" in text and "4 spec [cost]" in text and " calib " in text


def test_calibrate_on_another_thread_count_is_not_used(tmp_path):
    spec, db = _spec(tmp_path), f"sqlite:///{tmp_path / 'c.db'}"
    r = CliRunner().invoke(app, ["calibrate", "--spec", str(spec), "--size", "1", "--family", "transformer_pp",
                                 "--steps", "1", "--warmup", "0", "--threads", "2", "--device", "cpu", "--db", db])
    assert r.exit_code == 0, r.output
    assert "stored 1 calibration(s)" in r.stdout
    plan = json.loads(CliRunner().invoke(app, ["sweep", "--spec", str(spec), "--dry-run", "--json", "--db",
                                               db]).stdout)
    assert {x["throughput_source"] for x in plan["runs"]} == {"spec [cost]"}  # trials train on 1 thread


@pytest.mark.parametrize("args, needle", [
    (["--size", "7"], "--size: 7 is not an axis value"),
    (["--family", "gpt"], "unknown family 'gpt'"),
    (["--device", "tpu"], "TrainConfig.device"),
    (["--recipe", "ebt_s9"], "ebt_s9"),
])
def test_calibrate_bad_input_is_one_line_exit_2_and_writes_nothing(tmp_path, args, needle):
    spec, db = _spec(tmp_path), tmp_path / "c.db"
    r = CliRunner().invoke(app, ["calibrate", "--spec", str(spec), "--db", f"sqlite:///{db}", *args])
    assert r.exit_code == 2, r.output
    assert needle in _one_line(r)
    assert not db.exists()


def test_calibrate_needs_a_spec_and_cuda_must_exist(tmp_path):
    db = tmp_path / "c.db"
    r = CliRunner().invoke(app, ["calibrate", "--db", f"sqlite:///{db}"])
    assert r.exit_code == 2 and "give --axis AXIS" in _one_line(r)
    import torch

    if not torch.cuda.is_available():
        r = CliRunner().invoke(app, ["calibrate", "--spec", str(_spec(tmp_path)), "--device", "cuda", "--db",
                                     f"sqlite:///{db}"])
        assert r.exit_code == 2 and "CUDA is not available" in _one_line(r)
    assert not db.exists()


@pytest.mark.parametrize("dry_run", [True, False])
def test_more_than_one_gpu_per_trial_is_refused_in_one_line(tmp_path, dry_run):
    db = tmp_path / "s.db"
    r = CliRunner().invoke(app, ["sweep", "--axis", "params", "--scale", "paper", "--gpus-per-trial", "4",
                                 "--db", f"sqlite:///{db}", "--storage", str(tmp_path / "runs")]
                           + (["--dry-run"] if dry_run else []))
    assert r.exit_code == 2, r.output
    assert _one_line(r) == ("error: resources: gpus_per_trial 4 trains on 1 GPU but reserves 4; use --gpus-per-trial "
                            "1 (fractions allowed) and --workers-per-trial 4 for a run on 4 GPUs (one per "
                            "data-parallel worker)")
    assert not db.exists() and not (tmp_path / "runs").exists()
    p = _spec(tmp_path, resources_extra="gpus_per_trial = 2")
    r = CliRunner().invoke(app, ["sweep", "--spec", str(p), "--dry-run", "--no-db-check"])
    assert r.exit_code == 2 and "trains on 1 GPU but reserves 2" in _one_line(r)
    with pytest.raises(ConfigError, match="reserves 1.5"):
        Resources(gpus_per_trial=1.5)


def test_shape_key_and_trained_precision(tmp_path):
    runs = expand(load_spec(_spec(tmp_path)))
    keys = {(r.spec.family, r.label): shape_key(r.spec) for r in runs}
    assert keys[("transformer_pp", "2")] == "L2-D32-H2-F32-T16-V32-B2"
    assert keys[("ebt", "1")] == "L1-D32-H2-F32-T16-V32-B2-S2-K0-R0"
    assert shape_key(runs[0].spec, batch_size=1).endswith("-B1")
    micro = runs[0].spec.with_(train=dataclasses.replace(runs[0].spec.train, micro_batch_size=1))
    assert shape_key(micro).endswith("-B2-M1")  # micro-batches change the step: not the whole-batch calibration
    whole = runs[0].spec.with_(train=dataclasses.replace(runs[0].spec.train, micro_batch_size=2))
    assert shape_key(whole) == shape_key(runs[0].spec)
    assert [trained_precision(p, "cpu") for p in ("auto", "fp32", "tf32", "bf16")] == ["fp32", "fp32", "fp32", "bf16"]
    assert [trained_precision(p, "cuda") for p in ("auto", "fp32", "tf32", "bf16")] == ["bf16", "fp32", "tf32", "bf16"]


def _cal(runs, family, device="NVIDIA H200", kind="cuda", flops_per_s=1e13, precision="tf32", threads=0):
    r = next(x for x in runs if x.spec.family == family and x.label == "1")
    return CalibrationRecord(device_kind=kind, device_name=device, family=family, shape_key=shape_key(r.spec),
                             precision=precision, recipe=r.spec.recipe, threads=threads, batch_size=2,
                             flops_per_step=flops_per_s, seconds_per_step=1.0, steps=3, warmup=2,
                             measured_at=datetime(2026, 12, 2, 1, 0))


def test_gpu_plan_picks_the_device_and_multiplies_share_workers_and_efficiency(tmp_path):
    sw = load_spec(_spec(tmp_path, train_extra='precision = "tf32"', cost_extra="scaling_efficiency = 0.9"))
    runs = expand(sw)
    h200, a100 = _cal(runs, "ebt"), _cal(runs, "ebt", device="NVIDIA A100", flops_per_s=5e12)
    res = Resources(gpus_per_trial=0.5, total_gpus=1, total_cpus=8)

    one = device_calibrations([h200], "gpu")  # the only GPU model in the database
    assert one.device_name == "NVIDIA H200"
    plan = plan_cost(sw, runs, res, calibrations=one)
    ebt1 = [rc for rc in plan.runs if rc.run.spec.family == "ebt" and rc.run.label == "1"]
    assert {rc.throughput_source for rc in ebt1} == {"calibrated NVIDIA H200 2026-12-02"}
    for rc in ebt1:
        assert rc.flops_per_s == pytest.approx(1e13 * 0.5 * 1 * 0.9)
        assert rc.duration_s == pytest.approx(rc.flops["exact"] / (1e13 * 0.45))
        assert rc.device_hours == pytest.approx(rc.duration_s * 0.5 / 3600)
    others = [rc for rc in plan.runs if rc not in ebt1]
    assert {rc.throughput_source for rc in others} == {"default"}  # no [cost] gpu_flops_per_s in this spec
    assert all(rc.flops_per_s == pytest.approx(6e13 * 0.5 * 0.9) for rc in others)

    two = [h200, a100]
    assert device_calibrations(two, "gpu").device_name is None
    assert "pass --device-name" in device_calibrations(two, "gpu").note
    a = plan_cost(sw, runs, res, calibrations=device_calibrations(two, "gpu", device_name="NVIDIA A100"))
    assert {rc.throughput_source for rc in a.runs if rc.run.spec.family == "ebt" and rc.run.label == "1"} == {
        "calibrated NVIDIA A100 2026-12-02"}
    assert "none of NVIDIA B200" in device_calibrations(two, "gpu", device_name="NVIDIA B200").note
    # --throughput wins over calibrations, and the plan says so
    cli = plan_cost(sw, runs, res, flops_per_s=1e12, calibrations=one)
    assert {rc.throughput_source for rc in cli.runs} == {"command line"}
    assert "not used" in cli.calibrations_note
    # a bf16 calibration does not stand for a tf32 run
    bf16 = device_calibrations([dataclasses.replace(h200, precision="bf16")], "gpu")
    assert {rc.throughput_source for rc in plan_cost(sw, runs, res, calibrations=bf16).runs} == {"default"}


def test_cpu_plan_uses_this_cpus_calibration_for_the_whole_trial(tmp_path):
    sw = load_spec(_spec(tmp_path))
    runs = expand(sw)
    mine = _cal(runs, "transformer_pp", device=cpu_model_name(), kind="cpu", flops_per_s=3e9, precision="fp32",
                threads=2)
    other = dataclasses.replace(mine, device_name="Some Other CPU", seconds_per_step=0.1)
    plan = plan_cost(sw, runs, Resources(cpus_per_trial=2, total_cpus=4),
                     calibrations=device_calibrations([mine, other], "cpu"))
    t1 = [rc for rc in plan.runs if rc.run.spec.family == "transformer_pp" and rc.run.label == "1"]
    assert t1 and all(rc.flops_per_s == pytest.approx(3e9) for rc in t1)  # measured at the trial's 2 threads
    assert all(rc.device_hours == pytest.approx(rc.duration_s * 2 / 3600) for rc in t1)
    rest = [rc for rc in plan.runs if rc not in t1]
    assert all(rc.flops_per_s == pytest.approx(2e10) for rc in rest)  # 1e10 per core x 2 cores
    assert {rc.throughput_source for rc in rest} == {"spec [cost]"}


def test_trial_throughput_and_scaling_efficiency_validation(tmp_path):
    assert trial_flops_per_s(1e12, share=0.5, workers=4, scaling_efficiency=0.8) == pytest.approx(1.6e12)
    assert Resources(gpus_per_trial=1, total_gpus=8, total_cpus=16, workers_per_trial=2).slots() == 4
    bad = _spec(tmp_path, cost_extra="scaling_efficiency = 1.5")
    r = CliRunner().invoke(app, ["sweep", "--spec", str(bad), "--dry-run", "--no-db-check"])
    assert r.exit_code == 2 and "cost.scaling_efficiency" in _one_line(r)


def test_time_training_steps_restores_threads(tmp_path):
    import torch

    from ebt_scaling.train.calibrate import time_training_steps

    run = expand(load_spec(_spec(tmp_path)))[0]
    before = torch.get_num_threads()
    spec = run.spec.with_(train=dataclasses.replace(run.spec.train, device="cpu", threads=1))
    assert time_training_steps(spec, steps=1, warmup=0) > 0
    assert torch.get_num_threads() == before
    with pytest.raises(ConfigError, match="steps must be >= 1"):
        time_training_steps(spec, steps=0)
    ebt = next(r for r in expand(load_spec(_spec(tmp_path))) if r.spec.family == "ebt")
    micro = ebt.spec.with_(train=dataclasses.replace(ebt.spec.train, device="cpu", threads=1, micro_batch_size=1))
    assert time_training_steps(micro, steps=1, warmup=1) > 0  # the trainer's accumulated step, keyed draws


def test_a_configuration_that_does_not_fit_is_one_line_and_keeps_the_earlier_ones(tmp_path, monkeypatch):
    import torch

    from ebt_scaling.db import Store
    from ebt_scaling.train import calibrate as cal_mod

    calls = []

    def fake(spec, steps, warmup):
        calls.append(spec.family)
        if len(calls) > 1:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB\nmore text")
        return 0.5

    monkeypatch.setattr(cal_mod, "time_training_steps", fake)
    db = f"sqlite:///{tmp_path / 'c.db'}"
    r = CliRunner().invoke(app, ["calibrate", "--spec", str(_spec(tmp_path)), "--size", "1", "--device", "cpu",
                                 "--db", db])
    assert r.exit_code == 1, r.output
    line = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]
    assert len(line) == 1 and "ebt 1" in line[0] and "does not fit" in line[0] and "1 configuration(s)" in line[0]
    with Store(db) as s:
        assert [(c.family, c.seconds_per_step) for c in s.list_calibrations()] == [("transformer_pp", 0.5)]


@pytest.mark.gpu
def test_calibrate_on_cuda_stores_the_gpu_name_and_tf32(tmp_path):
    import torch

    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    db = f"sqlite:///{tmp_path / 'c.db'}"
    spec = _spec(tmp_path, train_extra='precision = "tf32"')
    r = CliRunner().invoke(app, ["calibrate", "--spec", str(spec), "--size", "1", "--steps", "3", "--device", "cuda",
                                 "--db", db, "--json"])
    assert r.exit_code == 0, r.output
    stored = json.loads(r.stdout)
    assert {(c["device_kind"], c["device_name"], c["precision"], c["threads"]) for c in stored} == {
        ("cuda", torch.cuda.get_device_name(), "tf32", 0)}
    plan = json.loads(CliRunner().invoke(app, ["sweep", "--spec", str(spec), "--dry-run", "--json", "--db", db,
                                               "--gpus-per-trial", "1", "--total-gpus", "1"]).stdout)
    assert {x["throughput_source"].rsplit(" ", 1)[0] for x in plan["runs"] if x["value"] == "1"} == {
        f"calibrated {torch.cuda.get_device_name()}"}
