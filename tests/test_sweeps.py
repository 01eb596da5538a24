"""Sweep specs: the shipped files, axis semantics, validation messages, the dry-run plan (no Ray, no torch)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ebt_scaling.config import AXES, PRESETS
from ebt_scaling.errors import SpecError
from ebt_scaling.models.flops import flops_per_token, param_counts
from ebt_scaling.sweeps import expand, experiments_dir, load_spec, parse_spec, spec_path
from ebt_scaling.sweeps.plan import Resources, makespan, plan_cost

ROOT = Path(__file__).resolve().parents[1]


def _write(tmp_path: Path, text: str, name: str = "s.toml") -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


BASE = """
[sweep]
name = "t"
axis = "{axis}"
families = ["ebt", "transformer_pp"]
seeds = [0]

[model]
preset = "nano"
sequence_len = 32

[train]
steps = 40
batch_size = 4
warmup_steps = 2

[data]
source = "synthetic"
vocab_size = 64

[axis]
{axis_body}
"""


def spec_text(axis: str, body: str) -> str:
    return BASE.format(axis=axis, axis_body=body)


@pytest.mark.parametrize("preset", ["tiny", "paper"])
@pytest.mark.parametrize("axis", AXES)
def test_shipped_specs_load_and_expand(axis, preset):
    sw = load_spec(spec_path(axis, preset))
    assert sw.axis == axis
    assert set(sw.families) == {"ebt", "transformer_pp"}
    runs = expand(sw)
    evaluations = axis == "data" and sw.mode == "evaluations"  # one run per family and seed
    assert len({r.config_hash for r in runs}) == len(runs) >= (2 if evaluations else 6)
    if evaluations and preset == "paper":  # the paper's protocol (issue 18): 14 evaluations of a 1M-step cosine
        assert {(r.spec.train.steps, r.spec.train.eval_interval, r.spec.train.schedule_steps) for r in runs} == {
            (210_000, 15_000, 1_000_000)}
        assert len(runs[0].planned.config["eval_tokens"]) == 14
    xs = sorted({r.planned.x for r in runs})
    assert len(xs) >= 3 or (axis == "data" and sw.mode == "evaluations")
    for r in runs:
        extra = {k: r.planned.config[k] for k in ("eval_tokens", "tune", "isoflop") if k in r.planned.config}
        assert r.planned.config == {**r.spec.to_dict(), **extra}
        assert ("tune" in extra) == bool(sw.tune)  # a [tune] spec's runs record their grid point (issue 28)
        assert r.planned.config_hash == r.spec.config_hash
        if preset == "paper":
            assert r.spec.model.sequence_len == 256
        if r.planned.family == "ebt":
            assert r.spec.recipe == "ebt_s1" and r.spec.model.mcmc_num_steps == 2


def test_experiments_dir_is_the_checkout_one():
    assert experiments_dir() == ROOT / "experiments"


def test_depth_and_width_semantics(tmp_path):
    runs = expand(load_spec(_write(tmp_path, spec_text("depth", "values = [1, 2, 3]"))))
    assert [r.spec.model.n_layer for r in runs] == [1, 1, 2, 2, 3, 3]
    assert {r.spec.model.n_embd for r in runs} == {PRESETS["nano"].n_embd}
    assert [r.planned.x for r in runs] == [1, 1, 2, 2, 3, 3]
    runs = expand(load_spec(_write(tmp_path, spec_text("width", "values = [32, 64, 96]\nhead_size = 16"))))
    assert [(r.spec.model.n_embd, r.spec.model.n_head) for r in runs][::2] == [(32, 2), (64, 4), (96, 6)]
    assert {r.spec.model.head_dim for r in runs} == {16}
    assert {r.spec.model.n_layer for r in runs} == {PRESETS["nano"].n_layer}


def test_batch_axis_fixed_steps_and_fixed_tokens(tmp_path):
    runs = expand(load_spec(_write(tmp_path, spec_text("batch", "values = [2, 4, 8]"))))
    assert {r.spec.train.steps for r in runs} == {40}
    assert [r.planned.x for r in runs][::2] == [2 * 32, 4 * 32, 8 * 32]
    runs = expand(load_spec(_write(tmp_path, spec_text(
        "batch", 'values = [2, 4, 8]\nmode = "fixed_tokens"\ntotal_tokens = 10240'))))
    assert [r.spec.train.steps for r in runs][::2] == [160, 80, 40]
    assert {r.planned.tokens for r in runs} == {10240}


def test_data_axis_separate_and_evaluations(tmp_path):
    body = "values = [1280, 2560, 5120]"
    runs = expand(load_spec(_write(tmp_path, spec_text("data", body))))
    assert [r.spec.train.steps for r in runs][::2] == [10, 20, 40]  # schedule matched to each budget
    assert [r.planned.x for r in runs][::2] == [1280.0, 2560.0, 5120.0]
    runs = expand(load_spec(_write(tmp_path, spec_text("data", body + '\nmode = "evaluations"'))))
    assert len(runs) == 2  # one long run per family
    r = runs[0]
    assert r.spec.train.steps == 40 and r.spec.train.eval_interval == 10
    assert r.planned.config["eval_tokens"] == [1280, 2560, 5120]


def test_params_and_flops_share_runs(tmp_path):
    body = 'values = ["nano", "tiny", "4xs"]\nbatch_sizes = [4, 6, 8]'
    p = expand(load_spec(_write(tmp_path, spec_text("params", body), "p.toml")))
    f = expand(load_spec(_write(tmp_path, spec_text("flops", body + '\nconvention = "paper"'), "f.toml")))
    assert [r.config_hash for r in p] == [r.config_hash for r in f]
    for rp, rf in zip(p, f, strict=True):
        m = rp.spec.model
        pre = PRESETS[rp.label]
        assert (m.n_layer, m.n_embd, m.n_head) == (pre.n_layer, pre.n_embd, pre.n_head)
        assert rp.spec.train.lr == pre.peak_lr
        assert rp.planned.x == param_counts(m)["non_embedding"]
        assert rf.planned.x == pytest.approx(flops_per_token(m, "paper", mode="train") * rp.spec.tokens)
    assert [r.spec.train.batch_size for r in p][::2] == [4, 6, 8]


def test_transformer_pp_hash_ignores_recipe(tmp_path):
    s1 = load_spec(_write(tmp_path, spec_text("depth", "values = [1, 2]")))
    s2 = s1.select(recipe="ebt_s2")
    a, b = expand(s1), expand(s2)
    tpp = [(x.config_hash, y.config_hash) for x, y in zip(a, b, strict=True) if x.planned.family == "transformer_pp"]
    ebt = [(x.config_hash, y.config_hash) for x, y in zip(a, b, strict=True) if x.planned.family == "ebt"]
    assert all(x == y for x, y in tpp) and all(x != y for x, y in ebt)
    assert all(r.spec.model.truncate_steps for r in b if r.planned.family == "ebt")


def test_select_families_seeds_name(tmp_path):
    sw = load_spec(_write(tmp_path, spec_text("depth", "values = [1, 2]"))).select(
        families=["transformer_pp"], seeds=3, name="mine")
    runs = expand(sw)
    assert {r.planned.family for r in runs} == {"transformer_pp"}
    assert sorted({r.planned.seed for r in runs}) == [0, 1, 2]
    assert {r.spec.sweep for r in runs} == {"mine"}
    with pytest.raises(SpecError, match="--families: unknown family 'gpt'"):
        sw.select(families=["gpt"])


@pytest.mark.parametrize("body,extra,match", [
    ("values = [1, 2]", "[bogus]\nx = 1\n", r"bogus: unknown section; use only"),
    ("values = [1, 2]\nfoo = 3", "", r"axis\.foo: unknown key; valid keys are values"),
    ("values = []", "", r"axis\.values: missing or empty"),
    ("values = [1, 1]", "", r"axis\.values: duplicate values"),
    ("values = [0, 2]", "", r"axis\.values\[0\]: must be a positive integer, got 0; the depth axis takes positive "
                            r"integers"),
])
def test_bad_specs_name_file_key_and_fix(tmp_path, body, extra, match):
    p = _write(tmp_path, spec_text("depth", body) + extra)
    with pytest.raises(SpecError, match=match) as ei:
        load_spec(p)
    msg = str(ei.value)
    assert msg.startswith(str(p)) and "\n" not in msg and ";" in msg


def test_bad_values_inside_sections(tmp_path):
    text = spec_text("depth", "values = [1, 2]")
    cases = [
        (text.replace("steps = 40", "stepz = 40"),
         r"train\.stepz: unknown key \(did you mean 'steps'\?\); valid keys are"),
        (text.replace("steps = 40", "steps = -1"), r"train\.steps: must be a positive integer"),
        (text.replace('preset = "nano"', 'preset = "huge"'), r"model\.preset: unknown preset 'huge'"),
        (text.replace('axis = "depth"', 'axis = "height"'),
         r"sweep\.axis: unknown axis 'height'; use data, batch, depth, width, params, flops or isoflop"),
        (text.replace('families = ["ebt", "transformer_pp"]', 'families = ["gpt"]'), r"sweep\.families"),
        (text.replace("warmup_steps = 2", "warmup_steps = 50"), r"train\.warmup_steps: a run of 40 steps"),
        (text.replace("sequence_len = 32", "sequence_len = 32\nn_head = 3"), r"model\.n_embd: 32 is not divisible"),
        (text.replace('source = "synthetic"', 'source = "nowhere"'), r"data\.source: unknown source"),
        (text.replace("[sweep]", "[sweep\n"), r"invalid TOML"),
        (spec_text("width", "values = [32, 40]\nhead_size = 16"), r"axis\.values: width 40 is not a multiple"),
        (spec_text("params", 'values = ["nano", "xxl"]'), r"axis\.values: unknown preset 'xxl'"),
        (spec_text("flops", 'values = ["nano", "tiny"]\nconvention = "chinchilla"'), r"axis\.convention"),
        (spec_text("batch", 'values = [2]\nmode = "fixed_tokens"'), r"axis\.total_tokens: required"),
    ]
    for i, (t, match) in enumerate(cases):
        p = _write(tmp_path, t, f"c{i}.toml")
        with pytest.raises(SpecError, match=match) as ei:
            load_spec(p)
        assert str(ei.value).startswith(str(p)), ei.value
    with pytest.raises(SpecError, match="file not found"):
        load_spec(tmp_path / "missing.toml")


def test_a_family_can_have_its_own_optimizer_settings(tmp_path):
    own = "\n[train.ebt]\nlr = 0.02\nwarmup_steps = 4\n"
    text = spec_text("depth", "values = [1, 2]")
    shared, split = (expand(load_spec(_write(tmp_path, t, n))) for t, n in ((text, "a.toml"),
                                                                             (text + own, "b.toml")))
    for a, b in zip(shared, split, strict=True):
        if a.planned.family == "transformer_pp":  # untouched: same settings, same identity (nothing retrained)
            assert a.spec.train == b.spec.train and a.config_hash == b.config_hash
        else:  # the EBT's own LR and warm-up; the data it sees stay shared
            assert (b.spec.train.lr, b.spec.train.warmup_steps) == (0.02, 4) and a.config_hash != b.config_hash
            assert (b.spec.train.steps, b.spec.train.batch_size, b.spec.train.seed) == (40, 4, 0)
            assert b.planned.config["train"]["lr"] == 0.02
    cases = [
        (text + "\n[train.ebt]\nsteps = 80\n",
         r"train\.ebt\.steps: not a per-family setting; .* set steps in \[train\]"),
        (text + "\n[train.ebt]\nlr = \"fast\"\n",
         r"train\.ebt\.lr: must be a number, got 'fast' \(a string\); write it without quotes"),
        (text + "\n[train.ebt]\nlr = -1.0\n", r"train\.ebt\.lr: must be > 0"),
        (text + "\n[train.transformer_pp]\nwarmup_steps = 40\n", r"train\.transformer_pp\.warmup_steps: a run of 40 "
         r"steps is not longer than its warm-up \(40 steps\); lower train\.transformer_pp\.warmup_steps"),
        (text.replace("warmup_steps = 2", "warmup_steps = 2\nebt = 3"), r"train\.ebt: must be a table"),
        (spec_text("params", 'values = ["nano", "tiny"]') + own, r"train\.ebt\.lr: the params axis gives every level "
         r"its own peak LR"),
    ]
    for i, (t, match) in enumerate(cases):
        p = _write(tmp_path, t, f"f{i}.toml")
        with pytest.raises(SpecError, match=match) as ei:
            load_spec(p)
        assert str(ei.value).startswith(str(p)) and "\n" not in str(ei.value), ei.value


def test_parse_spec_requires_sections():
    with pytest.raises(SpecError, match=r"\[axis\]: section missing"):
        parse_spec({"sweep": {"axis": "depth"}}, source="x.toml")


def test_makespan_and_slots():
    assert makespan([4, 3, 3, 2, 2, 2], 2) == 8
    assert makespan([5], 4) == 5
    r = Resources(gpus_per_trial=0.5, cpus_per_trial=2, total_gpus=2, total_cpus=16)
    assert r.slots() == 4
    assert Resources(gpus_per_trial=1, cpus_per_trial=4, total_gpus=8, total_cpus=16).slots() == 4
    assert Resources(cpus_per_trial=1, total_cpus=8, max_concurrent=3).slots() == 3


def test_plan_cost_uses_exact_flops_and_throughput(tmp_path):
    sw = load_spec(_write(tmp_path, spec_text("depth", "values = [1, 2]")))
    runs = expand(sw)
    plan = plan_cost(sw, runs, Resources(cpus_per_trial=1, total_cpus=2), flops_per_s=1e9)
    for rc in plan.runs:
        exact = rc.run.planned.flops_per_token["exact"] * rc.run.spec.tokens
        assert rc.flops["exact"] == pytest.approx(exact)
        assert rc.duration_s == pytest.approx(exact / 1e9)
        assert rc.device_hours == pytest.approx(exact / 1e9 / 3600)
    assert plan.makespan_s == pytest.approx(makespan([rc.duration_s for rc in plan.runs], 2))


def test_cli_dry_run_matches_flops_module():
    from ebt_scaling.cli.main import app

    r = CliRunner().invoke(app, ["sweep", "--axis", "params", "--scale", "paper", "--dry-run", "--json",
                                 "--total-gpus", "8", "--total-cpus", "64"])
    assert r.exit_code == 0, r.output
    plan = json.loads(r.stdout)  # the database check's line goes to stderr
    sw = load_spec(spec_path("params", "paper"))
    runs = {x.config_hash: x for x in expand(sw)}
    assert len(plan["runs"]) == len(runs) == 10 * 3  # 5 sizes x 2 families x the lr_scale grid's 3 points
    for row in plan["runs"]:
        m = runs[row["config_hash"]].spec.model
        tokens = runs[row["config_hash"]].spec.tokens
        assert row["params"] == param_counts(m)
        assert row["tokens"] == tokens
        for conv in ("paper", "exact"):
            assert row["flops_per_token"][conv] == pytest.approx(flops_per_token(m, conv, mode="train"))
            assert row["flops"][conv] == pytest.approx(flops_per_token(m, conv, mode="train") * tokens)
        assert row["device_hours"] == pytest.approx(row["flops"]["exact"] / 6e13 / 3600)
    # paper ebt-paper.md section 14: T++ xxs = 6 x 6.18M x 32 x 256 x 105,000 ~ 3.19e16 FLOPs
    xxs = next(r for r in plan["runs"] if r["value"] == "xxs" and r["family"] == "transformer_pp")
    assert xxs["flops"]["paper"] == pytest.approx(3.19e16, rel=0.01)
    assert plan["resources"]["slots"] == 8
    assert plan["total"]["makespan_s"] == pytest.approx(makespan([r["duration_s"] for r in plan["runs"]], 8))


def test_cli_dry_run_text_and_errors(tmp_path):
    from ebt_scaling.cli.main import app

    r = CliRunner().invoke(app, ["sweep", "--axis", "depth", "--dry-run", "--families", "transformer_pp",
                                 "--seeds", "2"])
    assert r.exit_code == 0, r.output
    assert "estimated makespan" in r.output and "CPU-hours" in r.output and "FLOP/s per CPU" in r.output
    r = CliRunner().invoke(app, ["sweep", "--axis", "height", "--dry-run"])
    assert r.exit_code == 2 and "unknown axis 'height'" in r.output
    r = CliRunner().invoke(app, ["sweep", "--axis", "depth", "--families", "ebt,gpt", "--dry-run"])
    assert r.exit_code == 2 and "unknown family 'gpt'" in r.output
    bad = _write(tmp_path, spec_text("depth", "values = [1]\nbogus = 1"))
    r = CliRunner().invoke(app, ["sweep", "--spec", str(bad), "--dry-run"])
    assert r.exit_code == 2 and str(bad) in r.output and "axis.bogus" in r.output


def test_cuda_graph_in_a_spec_needs_gpus_and_not_s2(tmp_path):
    """``[train] cuda_graph = true``: refused in one line (exit 2) for S2 (at expansion) and when the trials get
    no GPU (before anything is scheduled); a GPU plan is fine."""
    from ebt_scaling.cli.main import app

    p = _write(tmp_path, spec_text("depth", "values = [1, 2]").replace("steps = 40", "steps = 40\ncuda_graph = true"))
    r = CliRunner().invoke(app, ["sweep", "--spec", str(p), "--recipe", "ebt_s2", "--dry-run"])
    assert r.exit_code == 2 and "train.cuda_graph" in r.output and "ebt_s1 recipe" in r.output, r.output
    r = CliRunner().invoke(app, ["sweep", "--spec", str(p), "--dry-run"])
    assert r.exit_code == 2 and "needs CUDA but the trials get no GPU" in r.output, r.output
    r = CliRunner().invoke(app, ["sweep", "--spec", str(p), "--dry-run", "--gpus-per-trial", "1", "--total-gpus", "2"])
    assert r.exit_code == 0 and "GPU-hours" in r.output, r.output
    assert {x.spec.train.cuda_graph for x in expand(load_spec(p))} == {True}


@pytest.mark.parametrize("extra,heavy", [([], ("torch", "ray")), (["--no-db-check"], ("torch", "ray", "sqlalchemy"))])
def test_dry_run_imports_neither_torch_nor_ray(tmp_path, extra, heavy):
    code = ("import sys\nfrom typer.testing import CliRunner\nfrom ebt_scaling.cli.main import app\n"
            f"r = CliRunner().invoke(app, ['sweep', '--axis', 'flops', '--scale', 'paper', '--dry-run', '--db', "
            f"'sqlite:///{tmp_path}/d.db', *{extra!r}])\n"
            "assert r.exit_code == 0, r.output\n"
            f"bad = [m for m in {heavy!r} if m in sys.modules]; assert not bad, bad\n"
            "print(r.output)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stdout + r.stderr
    assert ("database: not checked (--no-db-check)" if extra else "(will be created)") in r.stdout


def test_data_evaluations_become_points_of_the_sweep(tmp_path):
    """mode = "evaluations": the long run's validation losses at the smaller budgets are stored as points."""
    from ebt_scaling.db import Store
    from ebt_scaling.records import MetricPoint
    from ebt_scaling.sched.service import import_evaluation_points

    sw = load_spec(_write(tmp_path, spec_text("data", 'values = [1280, 2560, 5120]\nmode = "evaluations"')))
    runs = expand(sw)
    st = Store(f"sqlite:///{tmp_path / 'ev.db'}")
    st.create_sweep(sw.name, sw.axis, sw.to_dict())
    recs = st.plan_runs(sw.name, [r.planned for r in runs])
    for rec in recs:
        st.log_metrics(rec.id, [MetricPoint("val_loss", s, 5.0 - s / 100) for s in (10, 20, 30, 40)])
        st.finish_run(rec.id, "completed", result={"final_val_loss": 4.6})
    recs = [st.get_run(r.id) for r in recs]
    assert import_evaluation_points(st, sw.name, recs) == 4  # 2 families x budgets 1280, 2560
    assert import_evaluation_points(st, sw.name, recs) == 4  # idempotent
    pts = sorted((r.family, r.x, r.final_val_loss, r.source) for r in st.list_runs(sweep=sw.name))
    assert pts == [("ebt", 1280.0, 4.9, "imported"), ("ebt", 2560.0, 4.8, "imported"),
                   ("ebt", 5120.0, 4.6, "trained"),
                   ("transformer_pp", 1280.0, 4.9, "imported"), ("transformer_pp", 2560.0, 4.8, "imported"),
                   ("transformer_pp", 5120.0, 4.6, "trained")]


def test_flops_sweep_reuses_the_params_runs_as_its_points(tmp_path):
    """The flops runs are the params runs (same hashes): nothing is trained twice or copied; the flops sweep
    links the same rows, each at x = training FLOPs, with the trained run's loss."""
    from ebt_scaling.db import Store

    body = 'values = ["nano", "tiny", "4xs"]\nbatch_sizes = [4, 6, 8]'
    p = load_spec(_write(tmp_path, spec_text("params", body).replace('name = "t"', 'name = "p"'), "p.toml"))
    f = load_spec(_write(tmp_path, spec_text("flops", body).replace('name = "t"', 'name = "f"'), "f.toml"))
    st = Store(f"sqlite:///{tmp_path / 'shared.db'}")
    st.create_sweep("p", "params", p.to_dict())
    for rec in st.plan_runs("p", [r.planned for r in expand(p)]):
        st.finish_run(rec.id, "completed", result={"final_val_loss": 3.0 + rec.id / 10})
    st.create_sweep("f", "flops", f.to_dict())
    fr = expand(f)
    recs = st.plan_runs("f", [r.planned for r in fr])
    assert {r.sweep for r in recs} == {"f"} and {r.status for r in recs} == {"completed"}  # nothing to train
    assert len(st.list_runs()) == 12 and len({r.id for r in st.list_runs()}) == 6  # 6 rows, each in both sweeps
    pts = st.list_runs(sweep="f")
    assert len(pts) == 6 and {r.axis for r in pts} == {"flops"} and {r.source for r in pts} == {"trained"}
    assert {r.id for r in pts} == {r.id for r in st.list_runs(sweep="p")}
    want = {(r.planned.family, r.planned.x): 3.0 + rec.id / 10 for r, rec in zip(fr, recs, strict=True)}
    assert {(r.family, r.x): r.final_val_loss for r in pts} == pytest.approx(want)
    assert st.plan_runs("f", [r.planned for r in fr]) == recs  # idempotent


def test_sweep_name_taken_by_another_axis_is_one_line_error(tmp_path):
    from ebt_scaling.cli.main import app
    from ebt_scaling.db import Store

    url = f"sqlite:///{tmp_path / 'taken.db'}"
    Store(url).create_sweep("depth-tiny", "width", {})
    r = CliRunner().invoke(app, ["sweep", "--axis", "depth", "--db", url])
    assert r.exit_code != 0
    assert "already exists with axis 'width'" in r.output and "choose another sweep name" in r.output
    assert Store(url).list_runs() == []


def test_compile_in_a_spec_compiles_both_families(tmp_path):
    """``[train] compile = true`` in a two-family sweep: every run compiles, the plan says nothing about it,
    and the config hashes are those without it."""
    from ebt_scaling.cli.main import app

    text = spec_text("depth", "values = [1, 2]")
    p = _write(tmp_path, text.replace("steps = 40", "steps = 40\ncompile = true"))
    plain = {r.spec.config_hash for r in expand(load_spec(_write(tmp_path, text, "plain.toml")))}
    runs = expand(load_spec(p))
    assert {r.spec.family: r.spec.train.compile for r in runs} == {"transformer_pp": True, "ebt": True}
    assert {r.spec.config_hash for r in runs} == plain
    r = CliRunner().invoke(app, ["sweep", "--spec", str(p), "--dry-run"])
    assert r.exit_code == 0, r.output
    assert "train.compile" not in r.stderr, r.output


def test_dry_run_checks_the_database_and_writes_nothing(tmp_path):
    from ebt_scaling.cli.main import app

    db = tmp_path / "new.db"
    r = CliRunner().invoke(app, ["sweep", "--axis", "depth", "--dry-run", "--db", f"sqlite:///{db}"])
    assert r.exit_code == 0 and f"database: SQLite file {db} (will be created)" in r.output, r.output
    assert not db.exists()
    r = CliRunner().invoke(app, ["sweep", "--axis", "depth", "--dry-run", "--db", f"sqlite:///{tmp_path}/no/x.db"])
    assert r.exit_code == 1 and "directory" in r.output and "does not exist" in r.output
    import socket

    with socket.socket() as s:  # a free port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    r = CliRunner().invoke(app, ["sweep", "--axis", "depth", "--dry-run", "--db",
                                 f"postgresql://u:S3cretPw@127.0.0.1:{port}/x"])
    assert r.exit_code == 1 and "checking the database" in r.output and "S3cretPw" not in r.output, r.output


@pytest.mark.parametrize("preset", ["tiny", "paper"])
@pytest.mark.parametrize("axis", AXES)
def test_every_shipped_sweep_scores_its_runs_on_one_validation_set(axis, preset):
    runs = expand(load_spec(spec_path(axis, preset)))
    assert {r.spec.train.eval_tokens for r in runs} != {None}
    assert len({(r.spec.train.eval_tokens, r.spec.model.sequence_len) for r in runs}) == 1


def test_a_relative_store_or_text_path_is_stored_absolute_and_a_missing_one_is_refused(tmp_path, monkeypatch):
    """Ray trials run in other directories: `store:DIR` / `text:PATH` relative to where `ebt-scale sweep` runs
    become absolute in every run's config (and hash); a local sweep whose store or text is missing stops in one
    line before anything is written."""
    from ebt_scaling.cli.main import app

    monkeypatch.chdir(tmp_path)
    rel = spec_text("depth", "values = [1]").replace('source = "synthetic"', 'source = "store:data/st"\ntokenizer = '
                                                      '"byte"')
    absolute = rel.replace("store:data/st", f"store:{tmp_path / 'data' / 'st'}")
    a, b = (expand(load_spec(_write(tmp_path, t, n))) for t, n in ((rel, "rel.toml"), (absolute, "abs.toml")))
    assert {r.spec.data.source for r in a} == {f"store:{tmp_path / 'data' / 'st'}"}
    assert [r.config_hash for r in a] == [r.config_hash for r in b]
    text = rel.replace("store:data/st", "text:~/corpus.txt")
    (run,) = {r.spec.data.source for r in expand(load_spec(_write(tmp_path, text, "t.toml")))}
    assert run == f"text:{Path('~/corpus.txt').expanduser()}"
    as_written = absolute.replace(f"store:{tmp_path / 'data' / 'st'}", f"store:{tmp_path}//data/st/")
    (kept,) = {r.spec.data.source for r in expand(load_spec(_write(tmp_path, as_written, "w.toml")))}
    assert kept == f"store:{tmp_path}//data/st/"  # an absolute path stays as written: its runs keep their hashes

    for spec_file, problem in ((_write(tmp_path, rel, "rel.toml"), f"no token store at {tmp_path / 'data' / 'st'}"),
                               (_write(tmp_path, rel.replace("store:data/st", "text:books"), "txt.toml"),
                                f"{tmp_path / 'books'} does not exist")):
        r = CliRunner().invoke(app, ["sweep", "--spec", str(spec_file), "--db", f"sqlite:///{tmp_path / 'x.db'}"])
        assert r.exit_code == 2 and problem in r.output and r.output.count("\n") == 1, r.output
        assert not (tmp_path / "x.db").exists()


def test_a_string_where_a_number_belongs_says_so_in_one_line(tmp_path):
    cases = [
        (spec_text("width", 'values = [32, 64]\nhead_size = "32"'),
         "axis.head_size: must be an integer, got '32' (a string); write it without quotes"),
        (spec_text("depth", "values = [1, 2]").replace("steps = 40", 'steps = "40"'),
         "train.steps: must be an integer, got '40' (a string); write it without quotes"),
        (spec_text("depth", "values = [1, 2]").replace("[model]", "[model]\nstep_size = \"5\""),
         "model.step_size: must be a number, got '5' (a string); write it without quotes"),
        (spec_text("depth", "values = [1, 2]").replace("[resources]", "").replace("[axis]", "[resources]\n"
                                                                                     "max_retries = \"2\"\n\n[axis]"),
         "resources.max_retries: must be an integer, got '2' (a string); write it without quotes"),
        (spec_text("depth", "values = [1, 2]").replace("seeds = [0]", "seeds = [0, true]"),
         "sweep.seeds[1]: must be an integer, got True"),
        (spec_text("width", "values = [30, 60]\nhead_size = 15"), "axis.head_size: 15 is odd"),
        (spec_text("depth", "values = [1, 2]").replace('families = ["ebt", "transformer_pp"]', 'familys = ["ebt"]'),
         "sweep.familys: unknown key (did you mean 'families'?); valid keys are axis, name, families"),
        (spec_text("depth", "values = [1, 2]").replace("[data]", "[dta]"),
         "dta: unknown section (did you mean 'data'?); use only [sweep]"),
        (spec_text("flops", 'values = ["nano", "tiny"]\nconvention = "chinchilla"'),
         "axis.convention: unknown FLOPs convention 'chinchilla'; use paper or exact"),
        (spec_text("depth", "values = [1, 2]").replace('["ebt", "transformer_pp"]', '["transformer_pp"]')
         .replace("[model]", "[model]\nstep_size = \"5\""),
         "model.step_size: must be a number, got '5' (a string)"),
        (spec_text("depth", "values = [1, 2]") + "\n[train.ebt]\nlrr = 0.1\n",
         "train.ebt.lrr: unknown key (did you mean 'lr'?); valid keys are lr, warmup_steps, min_lr_div"),
        (spec_text("params", 'values = ["nano", "tiny"]\nlrs = [0.1]'),
         "axis.lrs: 1 values for 2 sizes; give one positive number per value (2)"),
    ]
    for i, (text, line) in enumerate(cases):
        p = _write(tmp_path, text, f"n{i}.toml")
        with pytest.raises(SpecError) as ei:
            load_spec(p)
        msg = str(ei.value)
        assert msg.startswith(f"{p}: {line}") and "\n" not in msg, msg


def test_sweeps_modules_import_each_other_at_the_top_only():
    """No import inside a function between sweeps modules (spec -> expand -> tables, no circle to hide)."""
    import ast

    for path in (ROOT / "ebt_scaling" / "sweeps").glob("*.py"):
        tree = ast.parse(path.read_text())
        for fn in (n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)):
            for node in ast.walk(fn):
                if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("ebt_scaling.sweeps"):
                    raise AssertionError(f"{path.name}: {fn.name} imports {node.module}")


def _prepare(tmp_path: Path, out: Path, text: str) -> None:
    from ebt_scaling.cli.main import app

    src = tmp_path / "corpus.jsonl"
    src.write_text("".join(json.dumps({"text": f"{text} {i} " * 20}) + "\n" for i in range(40)))
    r = CliRunner().invoke(app, ["data", "prepare", "--source", f"jsonl:{src}", "--tokenizer", "byte", "--out",
                                 str(out), "--workers", "1"])
    assert r.exit_code == 0, r.output


def test_a_store_run_is_named_by_the_store_content(tmp_path):
    """A `store:DIR` run's identity holds the store's fingerprint (its shards' checksums): another corpus prepared
    into the same folder plans new runs, a sweep says so in one line, and a trial planned on the old store refuses
    the new one in one line. Runs of other sources hash as before (no fingerprint)."""
    import shutil

    from ebt_scaling.config import store_fingerprint
    from ebt_scaling.data import open_data
    from ebt_scaling.errors import DataError
    from ebt_scaling.sweeps.expand import store_changes

    st = tmp_path / "st"
    _prepare(tmp_path, st, "alpha beta")
    text = spec_text("depth", "values = [1]").replace('source = "synthetic"', f'source = "store:{st}"\n'
                                                      'tokenizer = "byte"')
    first = expand(load_spec(_write(tmp_path, text)))
    manifest = json.loads((st / "manifest.json").read_text())
    assert {r.spec.data.store_fingerprint for r in first} == {store_fingerprint(manifest)}
    assert all(r.spec.identity()["data"]["store_fingerprint"] == store_fingerprint(manifest) for r in first)
    assert [r.config_hash for r in expand(load_spec(_write(tmp_path, text)))] == [r.config_hash for r in first]
    open_data(first[0].spec.data, 32)  # the store it was planned on: fine
    assert store_changes("t", first, lambda: [r.planned.config for r in first]) == []

    shutil.rmtree(st)
    _prepare(tmp_path, st, "gamma delta")  # another corpus, same folder
    second = expand(load_spec(_write(tmp_path, text)))
    assert not {r.config_hash for r in second} & {r.config_hash for r in first}
    (line,) = store_changes("t", second, lambda: [r.planned.config for r in first])
    old, new = first[0].spec.data.store_fingerprint, second[0].spec.data.store_fingerprint
    assert line.startswith(f"sweep t: store {st} is not the one its earlier runs were planned on (fingerprint "
                           f"{old[:12]} != {new[:12]}); planning new runs") and "\n" not in line
    # runs stored before fingerprints existed cannot be checked: planned again, said the same way
    unrecorded = [{**r.planned.config, "data": {**r.planned.config["data"], "store_fingerprint": None}}
                  for r in first]
    assert "fingerprint none recorded !=" in store_changes("t", second, lambda: unrecorded)[0]
    with pytest.raises(DataError) as ei:
        open_data(first[0].spec.data, 32)  # a trial planned on the old store
    assert str(ei.value) == (f"store {st} changed since the sweep was planned (fingerprint {old[:12]} != "
                             f"{new[:12]}); rerun the sweep to plan new runs")
    # no fingerprint for other sources, nor for a store this machine cannot read (hashed as before)
    assert {r.spec.data.store_fingerprint for r in expand(load_spec(_write(tmp_path, spec_text(
        "depth", "values = [1]"))))} == {None}
    gone = text.replace(f"store:{st}", f"store:{tmp_path / 'elsewhere'}")
    (r0, *_) = expand(load_spec(_write(tmp_path, gone)))
    assert r0.spec.data.store_fingerprint is None and "store_fingerprint" not in r0.spec.identity()["data"]
    with pytest.raises(SpecError, match=r"data\.store_fingerprint: unknown key"):
        load_spec(_write(tmp_path, text.replace("[data]", f"[data]\nstore_fingerprint = \"{'0' * 64}\"")))


@pytest.mark.slow  # two local Ray sweeps of one tiny run each (about a minute on 2 cores)
def test_a_sweep_on_a_re_prepared_store_trains_new_runs_and_says_so(tmp_path):
    """Acceptance of issue 26.6: another corpus prepared into the same store folder, then the same sweep again:
    one line says so, the runs are trained on the new store (new identities), the old ones are not reused."""
    import shutil

    from ebt_scaling.db import Store
    from ebt_scaling.sched.runner import cleanup_leftover_ray

    st, url = tmp_path / "st", f"sqlite:///{tmp_path / 'r.db'}"
    _prepare(tmp_path, st, "alpha beta")
    text = (spec_text("depth", "values = [1]").replace('families = ["ebt", "transformer_pp"]',
                                                       'families = ["transformer_pp"]')
            .replace("steps = 40", "steps = 6\nlog_interval = 2\neval_interval = 0\neval_tokens = 256")
            .replace('source = "synthetic"', f'source = "store:{st}"\ntokenizer = "byte"')
            .replace("[axis]", "[resources]\ncpus_per_trial = 1\nmax_retries = 0\n\n[axis]"))
    spec = _write(tmp_path, text)

    def sweep() -> subprocess.CompletedProcess:
        try:
            return subprocess.run([sys.executable, "-m", "ebt_scaling", "sweep", "--spec", str(spec), "--db", url,
                                   "--progress", "off"], capture_output=True, text=True, cwd=ROOT, timeout=600)
        finally:
            cleanup_leftover_ray()

    r = sweep()
    assert r.returncode == 0 and "not the one its earlier runs" not in r.stderr, r.stdout + r.stderr
    shutil.rmtree(st)
    _prepare(tmp_path, st, "gamma delta")
    r = sweep()
    assert r.returncode == 0, r.stdout + r.stderr
    (line,) = [x for x in r.stderr.splitlines() if "not the one its earlier runs were planned on" in x]
    assert line.startswith(f"sweep t: store {st} ") and "planning new runs" in line
    with Store(url, create=False) as db:
        runs = db.list_runs(sweep="t")
    assert len(runs) == 2 and {x.status for x in runs} == {"completed"}
    assert len({x.config["data"]["store_fingerprint"] for x in runs}) == 2
    assert [x.attempts for x in runs] == [1, 1]
