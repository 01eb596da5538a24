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
from db_backends import db_url_fixture  # noqa: F401  (the parametrised ``db_url`` fixture)
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


def _runs_json(url: str, sweep: str | None) -> list[dict]:
    """`ebt-scale runs --format json` (of one sweep, or every run), in this process."""
    from typer.testing import CliRunner

    from ebt_scaling.cli.main import app

    r = CliRunner().invoke(app, ["runs", *(["--sweep", sweep] if sweep else []), "--db", url, "--format", "json"])
    assert r.exit_code == 0, r.output
    return json.loads(r.stdout)


@pytest.mark.slow  # ~18 s; the default suite's concurrent test below holds the same links (shared ids, no copies)
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
    every = _runs_json(url, None)
    assert len({x["run_id"] for x in every}) == 2 and {x["source"] for x in every} == {"trained"}  # no copies


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
    every = _runs_json(url, None)
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


def test_a_driver_waits_for_runs_another_live_driver_trains_and_counts_them_done(tmp_path, monkeypatch, db_url):
    """No Ray needed: another process holds the claims of both runs, finishes them and exits; this driver
    trains nothing, says what it waits for, and ends with both runs completed (attempts untouched). SQLite
    and PostgreSQL."""
    from ebt_scaling.db import Store
    from ebt_scaling.sched import service
    from ebt_scaling.sched.runner import RayOptions
    from ebt_scaling.sweeps import expand, load_spec

    monkeypatch.setattr(service, "WAIT_POLL_S", 0.2)
    url = db_url
    spec = load_spec(_spec(tmp_path, "mine", "[0]"))
    with Store(url) as st:
        st.create_sweep("theirs", spec.axis)
        ids = [r.id for r in st.plan_runs("theirs", [r.planned for r in expand(spec)])]
    other = subprocess.Popen([sys.executable, "-c", (
        "import sys, time\n"
        "from ebt_scaling.db.store import Store\n"
        f"st = Store({url!r}); claims = st.run_claims()\n"
        f"assert all(claims.take(i) is None for i in {ids!r})\n"
        f"[st.mark_running(i) for i in {ids!r}]\n"
        "print('claimed', flush=True); time.sleep(1.5)\n"
        f"[st.finish_run(i, 'completed', result={{'final_val_loss': 3.0}}) for i in {ids!r}]\n")],
        stdout=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        assert other.stdout.readline().strip() == "claimed"
        said: list[str] = []
        with Store(url) as st:
            out = service.run_sweep(spec, st, RayOptions(storage_path=str(tmp_path / "runs")), echo=said.append)
            assert out.ok and out.statuses == {"completed": 2} and out.launched == 0 and out.runner is None
            assert [r.id for r in st.list_runs(sweep="mine")] == ids
            assert [r.attempts for r in st.list_runs(sweep="mine")] == [1, 1]
        assert "2 being trained by another driver" in said[0]
        assert any(f"waiting for 2 run(s) trained by another driver: run {ids[0]} (pid {other.pid} on " in s
                   for s in said), said
    finally:
        other.wait(30)
    assert other.returncode == 0
