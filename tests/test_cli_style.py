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
