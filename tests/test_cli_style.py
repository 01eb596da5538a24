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
