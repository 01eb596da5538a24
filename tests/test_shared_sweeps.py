"""Sweeps that share configurations (issue 26): a run is trained once and linked to every sweep that plans it.

Real local Ray, real training loop, real database. The first test starts Ray once (the second sweep finds
everything done and starts nothing); the second starts two drivers at the same moment (two local Ray
instances on one machine: about 2 x 10 s of Ray start-up of its ~40 s)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from test_sched import ROOT, cli, write_spec

from ebt_scaling.sched.runner import cleanup_leftover_ray


@pytest.fixture(autouse=True)
def _no_leftover_ray():
    yield
    cleanup_leftover_ray()


def _spec(tmp_path: Path, name: str, seeds: str) -> Path:
    p = write_spec(tmp_path, name, families='["transformer_pp"]', steps=20, values="[1, 2]")
    p.write_text(p.read_text().replace("seeds = [0]", f"seeds = {seeds}").replace("eval_interval = 20",
                                                                                  "eval_interval = 10"))
    return p


def _runs_json(url: str, sweep: str) -> list[dict]:
    r = cli("runs", "--sweep", sweep, "--db", url, "--format", "json")
    assert r.returncode == 0, r.stdout + r.stderr
    return json.loads(r.stdout)


def test_a_second_sweep_of_the_same_configurations_links_the_trained_runs(tmp_path):
    url = f"sqlite:///{tmp_path / 'shared.db'}"
    r = cli("sweep", "--spec", str(_spec(tmp_path, "first", "[0]")), "--db", url, "--progress", "plain")
    assert r.returncode == 0, r.stdout + r.stderr
    r = cli("sweep", "--spec", str(_spec(tmp_path, "second", "[0]")), "--db", url, "--progress", "plain")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "2 already completed" in r.stderr and "0 to run" in r.stderr and "Ray:" not in r.stderr
    first, second = _runs_json(url, "first"), _runs_json(url, "second")
    assert [x["run_id"] for x in second] == [x["run_id"] for x in first] and len(first) == 2
    assert {x["sweep"] for x in second} == {"second"} and {x["source"] for x in second} == {"trained"}
    assert [x["attempts"] for x in second] == [1, 1]
    every = _runs_json_all(url)
    assert len({x["run_id"] for x in every}) == 2 and {x["source"] for x in every} == {"trained"}  # no copies


def _runs_json_all(url: str) -> list[dict]:
    r = cli("runs", "--db", url, "--format", "json")
    assert r.returncode == 0, r.stdout + r.stderr
    return json.loads(r.stdout)


def _two_drivers_at_once(tmp_path: Path, url: str) -> None:
    specs = {"cb": _spec(tmp_path, "cb", "[0, 1]"), "ca": _spec(tmp_path, "ca", "[0]")}
    procs = {name: subprocess.Popen([sys.executable, "-m", "ebt_scaling", "sweep", "--spec", str(p), "--db", url,
                                     "--progress", "plain"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                    text=True, cwd=ROOT) for name, p in specs.items()}
    out = {name: p.communicate(timeout=300)[0] for name, p in procs.items()}
    for name, p in procs.items():
        assert p.returncode == 0, out[name]
    cb, ca = _runs_json(url, "cb"), _runs_json(url, "ca")
    assert len(cb) == 4 and len(ca) == 2
    shared = {x["run_id"] for x in ca}
    assert shared <= {x["run_id"] for x in cb}  # both sweeps list the shared runs: the same rows
    every = _runs_json_all(url)
    assert len({x["run_id"] for x in every}) == 4 and {x["source"] for x in every} == {"trained"}  # no copies
    assert {x["run_id"]: x["attempts"] for x in every} == {x["run_id"]: 1 for x in every}, out  # trained once
    assert all(x["status"] == "completed" for x in every)


def test_two_sweeps_sharing_runs_started_at_once_train_each_run_once(tmp_path):
    _two_drivers_at_once(tmp_path, f"sqlite:///{tmp_path / 'race.db'}")


@pytest.mark.slow  # the PostgreSQL claims themselves are tested without Ray in test_db_links.py
def test_two_sweeps_sharing_runs_started_at_once_train_each_run_once_on_postgresql(tmp_path):
    from db_backends import fresh_pg_database

    gen = fresh_pg_database()
    url = next(gen)
    try:
        _two_drivers_at_once(tmp_path, url)
    finally:
        gen.close()
