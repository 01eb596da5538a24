"""Issue 30 item 5, one CLI style: --scale names a shipped spec scale (--preset, a model size elsewhere, is a
deprecated alias that says so); think's device default is train's (auto)."""

from __future__ import annotations

from typer.testing import CliRunner

from ebt_scaling.cli.main import app


def test_scale_names_the_spec_and_preset_is_a_deprecated_alias():
    r = CliRunner().invoke(app, ["sweep", "--axis", "depth", "--scale", "tiny", "--dry-run", "--no-db-check"])
    assert r.exit_code == 0 and "deprecated" not in r.output, r.output
    r = CliRunner().invoke(app, ["sweep", "--axis", "depth", "--preset", "tiny", "--dry-run", "--no-db-check"])
    assert r.exit_code == 0, r.output
    assert "note: --preset tiny is deprecated here: use --scale tiny" in r.stderr
    r = CliRunner().invoke(app, ["sweep", "--axis", "depth", "--scale", "nano", "--dry-run", "--no-db-check"])
    assert r.exit_code != 0
    assert "--scale: unknown spec scale 'nano' (nano is a model size: --preset in ebt-scale train)" in r.output


def test_think_and_train_default_to_the_same_device():
    import typer

    group = typer.main.get_command(app)
    defaults = {name: next(p.default for p in group.commands[name].params if p.name == "device")
                for name in ("think", "train")}
    assert defaults == {"think": "auto", "train": "auto"}, defaults


def test_export_fits_as_columns_iso_times_and_unknown_sweeps(tmp_path):
    import io

    import pandas as pd

    from ebt_scaling.db.store import Store
    from ebt_scaling.records import FitRecord, PlannedRun

    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    with Store(url) as s:
        s.create_sweep("width-tiny", "width")
        run = s.plan_runs("width-tiny", [PlannedRun("ebt", "width", 64, 0, "h1")])[0]
        s.finish_run(run.id, "completed", result={"final_val_loss": 3.0})
        s.save_fit(FitRecord(None, "width-tiny", "width", "ebt", "ols_log_ppl",
                             {"slope": -0.1, "ci": [-0.2, 0.0], "curve": {"x": list(range(50))}, "n": 3},
                             (run.id,), "fp"))
    r = CliRunner().invoke(app, ["export", "--table", "fits", "--db", url])
    assert r.exit_code == 0, r.output
    df = pd.read_csv(io.StringIO(r.stdout))
    assert {"slope", "ci.0", "ci.1", "n"} <= set(df.columns) and not any(c.startswith("curve") for c in df.columns)
    assert df["slope"].tolist() == [-0.1] and df["ci.0"].tolist() == [-0.2]
    assert "T" in str(df["created_at"][0]) and " " not in str(df["created_at"][0])
    r = CliRunner().invoke(app, ["export", "--db", url])
    runs = pd.read_csv(io.StringIO(r.stdout))
    assert "T" in str(runs["created_at"][0]) and " " not in str(runs["created_at"][0])
    for cmd in (["export", "--sweep", "width-tiy"], ["runs", "--sweep", "width-tiy"]):
        r = CliRunner().invoke(app, [*cmd, "--db", url])
        assert r.exit_code == 1 and "did you mean 'width-tiny'" in r.output, (cmd, r.output)


def test_status_fits_80_columns_and_format_json_is_the_one_convention(tmp_path, monkeypatch):
    import json

    from ebt_scaling.db.store import Store
    from ebt_scaling.records import PlannedRun

    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    with Store(url) as s:
        s.create_sweep("width-tiny", "width")
        runs = s.plan_runs("width-tiny", [PlannedRun(f, "width", x, 0, f"h{f}{x}") for f in ("ebt", "transformer_pp")
                                          for x in (32, 64)])
        s.mark_running(runs[0].id)
        s.finish_run(runs[1].id, "completed", result={"final_val_loss": 3.0})
    monkeypatch.setenv("COLUMNS", "80")
    r = CliRunner().invoke(app, ["status", "--db", url])
    assert r.exit_code == 0, r.output
    assert max(len(ln) for ln in r.stdout.splitlines()) <= 80
    assert "…" not in r.stdout and "transformer_pp" in r.stdout and "a wider terminal or --format json" in r.stdout
    monkeypatch.setenv("COLUMNS", "200")
    r = CliRunner().invoke(app, ["status", "--db", url])
    assert "host" in r.stdout and "a wider terminal" not in r.stdout
    for cmd in (["status"], ["sweeps"]):
        a = CliRunner().invoke(app, [*cmd, "--format", "json", "--db", url])
        b = CliRunner().invoke(app, [*cmd, "--json", "--db", url])  # the alias
        assert a.exit_code == 0 and json.loads(a.stdout) == json.loads(b.stdout), (cmd, a.output)
    created = json.loads(CliRunner().invoke(app, ["sweeps", "--format", "json", "--db", url]).stdout)[0]["created"]
    assert "T" in created and " " not in created
    for cmd in ("think", "data", "runs", "export", "train"):
        args = [cmd, "prepare", "--help"] if cmd == "data" else [cmd, "--help"]
        assert "--format" in CliRunner().invoke(app, args, env={"COLUMNS": "200"}).output, cmd


def test_dry_run_plan_format_json_and_its_alias():
    import json

    base = ["sweep", "--axis", "depth", "--scale", "tiny", "--dry-run", "--no-db-check"]
    a = CliRunner().invoke(app, [*base, "--format", "json"])
    b = CliRunner().invoke(app, [*base, "--json"])
    assert a.exit_code == 0 and json.loads(a.stdout) == json.loads(b.stdout)
    assert "--format" in CliRunner().invoke(app, ["calibrate", "--help"], env={"COLUMNS": "200"}).output


def test_every_command_with_machine_output_takes_format_json_and_the_json_alias(tmp_path):
    """fit, like runs, status, sweeps, think, train, calibrate and sweep --dry-run: --format table|json, --json kept
    as its alias (the same bytes)."""
    import json

    import typer

    from ebt_scaling.db.store import Store
    from ebt_scaling.records import PlannedRun

    group = typer.main.get_command(app)
    for name in ("fit", "runs", "status", "sweeps", "think", "train", "calibrate", "sweep"):
        opts = {o for p in group.commands[name].params for o in p.opts}
        assert "--format" in opts, name
        assert name == "runs" or "--json" in opts, name  # runs never had --json
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    with Store(url) as s:
        s.create_sweep("width-tiny", "width")
        runs = s.plan_runs("width-tiny", [PlannedRun("ebt", "width", x, 0, f"h{x}") for x in (32, 64, 96)])
        for r, y in zip(runs, (3.0, 2.9, 2.8), strict=True):
            s.finish_run(r.id, "completed", result={"final_val_loss": y})
    fit = ["fit", "--sweep", "width-tiny", "--resamples", "100", "--db", url]
    CliRunner().invoke(app, fit)  # fits and stores: both runs below reuse the stored fit
    a = CliRunner().invoke(app, [*fit, "--format", "json"])
    b = CliRunner().invoke(app, [*fit, "--json"])
    assert a.exit_code == 0 and b.exit_code == 0, a.output + b.output
    assert a.stdout == b.stdout and json.loads(a.stdout)["axes"][0]["axis"] == "width"
    r = CliRunner().invoke(app, ["fit", "--sweep", "width-tiny", "--format", "csv", "--db", url])
    assert r.exit_code == 2 and "csv" in r.output
