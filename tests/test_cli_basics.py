"""What every command shares: --version, --help without type noise on flags, --verbose logging, the dry-run
header, the driver's progress line."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from typer.testing import CliRunner

from ebt_scaling import __version__
from ebt_scaling.cli.main import app

ROOT = Path(__file__).resolve().parents[1]


def test_version_option_and_command():
    r = CliRunner().invoke(app, ["--version"])
    assert r.exit_code == 0 and r.stdout.strip() == f"ebt-scale {__version__}"
    assert CliRunner().invoke(app, ["version"]).stdout.strip() == __version__


def test_help_shows_no_bool_metavar_on_flags():
    for cmd in (["--help"], ["train", "--help"], ["sweep", "--help"], ["fit", "--help"], ["data", "--help"]):
        r = CliRunner().invoke(app, cmd)
        assert r.exit_code == 0, r.output
        assert "<bool>" not in r.stdout, cmd
    train = CliRunner().invoke(app, ["train", "--help"]).stdout
    assert "--compile" in train and "--steps <int range>" in train  # valued options keep their type


def test_verbose_logs_details_on_stderr_and_default_does_not(tmp_path):
    # a sweep against an unreachable Ray address fails after the debug line and before anything is written
    base = [sys.executable, "-m", "ebt_scaling", "sweep", "--axis", "depth", "--db", f"sqlite:///{tmp_path}/x.db",
            "--address", "127.0.0.1:1"]
    quiet = subprocess.run(base, capture_output=True, text=True, timeout=120, cwd=ROOT)
    loud = subprocess.run(base[:3] + ["--verbose"] + base[3:], capture_output=True, text=True, timeout=120,
                          cwd=ROOT)
    assert quiet.returncode == loud.returncode != 0
    assert "spec " not in quiet.stderr
    assert "depth.toml: 16 run(s); database sqlite:///" in loud.stderr, loud.stderr
    assert not (tmp_path / "x.db").exists()


def test_dry_run_header_names_its_fields():
    r = CliRunner().invoke(app, ["sweep", "--axis", "depth", "--dry-run", "--no-db-check"])
    assert r.exit_code == 0, r.output
    head = r.stdout.splitlines()[:2]
    assert head[0].startswith("sweep: depth-tiny  axis: depth  spec: ")
    assert "seeds: [0, 1]" in head[1] and "families: ebt, transformer_pp" in head[1]


def test_driver_eta_comes_from_the_measured_rate_not_the_start_up(monkeypatch):
    """A sweep that spends 60 s starting Ray and preparing data, then does 1% of its compute per second: the
    ETA is the time the remaining compute takes at that rate (89 s at 11%), not elapsed x (1 - f) / f, which
    counted the start-up as work (11 minutes where 4 were left)."""
    import ebt_scaling.sched.progress as prog

    now = [1000.0]
    monkeypatch.setattr(prog.time, "monotonic", lambda: now[0])
    s = prog.ProgressState(total=4)
    now[0] += 60.0  # start-up: no progress
    s.observe(0.0)
    assert s.eta is None
    s.observe(0.01)  # the first step reported
    now[0] += 2.0
    s.observe(0.03)
    assert s.eta is None  # under ETA_MIN_S of measured progress
    now[0] += 8.0
    s.observe(0.11)
    assert abs(s.eta - 89.0) < 1e-6  # 0.89 left at 0.01 per second
    assert "ETA 1m29s" in s.line("x")


def test_unknown_or_missing_tracker_fails_in_one_line_before_anything_is_written(tmp_path, monkeypatch):
    import importlib.util

    db = tmp_path / "t.db"
    r = CliRunner().invoke(app, ["sweep", "--axis", "depth", "--tracker", "neptune", "--db", f"sqlite:///{db}"])
    assert r.exit_code == 2 and "unknown tracker 'neptune'" in r.stderr and r.stderr.count("\n") == 1
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    r = CliRunner().invoke(app, ["sweep", "--axis", "depth", "--tracker", "wandb", "--db", f"sqlite:///{db}"])
    assert r.exit_code == 2 and "pip install 'ebt-scaling[wandb]'" in r.stderr, r.output
    assert not db.exists()


def test_postgresql_without_its_driver_is_one_line_naming_the_extra(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "psycopg" else real(name, *a))
    r = CliRunner().invoke(app, ["runs", "--db", "postgresql://alice:secret@127.0.0.1:1/db"])
    assert r.exit_code != 0 and r.stderr.count("\n") == 1, r.output
    assert "pip install 'ebt-scaling[postgres]'" in r.stderr and "secret" not in r.stderr
