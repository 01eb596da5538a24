"""Concurrent writers: several processes open a brand-new database at the same moment (first-time init
race), race to create the same sweep and plan the same runs, then each writes its own metric series in
many small transactions. Nothing may be lost or duplicated, and no process may see an error (on SQLite in
particular never "database is locked")."""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

import pytest
from db_backends import pg_db_url_fixture  # noqa: F401  (``pg_db_url``: a fresh PostgreSQL database)

from ebt_scaling.db.store import Store

# A light worker (imports only the Store, not pytest): signals "ready", waits for "go" on stdin so every
# process opens the brand-new database at the same moment, then writes.
WORKER = r"""
import sys
from ebt_scaling.db.store import Store
from ebt_scaling.records import MetricPoint, PlannedRun
url, idx, n_procs, n_points, batch = sys.argv[1], *map(int, sys.argv[2:])
print("ready", flush=True)
sys.stdin.readline()
with Store(url) as store:
    store.create_sweep("conc", "data", {"procs": n_procs})
    runs = store.plan_runs("conc", [PlannedRun(family="ebt", axis="data", x=float(i + 1), seed=0,
                                               config_hash=f"conc-{i}") for i in range(n_procs)])
    run = runs[idx]
    store.mark_running(run.id, host=f"proc{idx}")
    for start in range(0, n_points, batch):
        store.log_metrics(run.id, [MetricPoint("train_loss", s, 10.0 / (s + 1) + idx)
                                   for s in range(start, start + batch)])
        store.heartbeat_many([run.id])
        store.list_runs(sweep="conc", status="running")  # readers interleaved with writers
    store.finish_run(run.id, "completed", result={"final_val_loss": float(idx)})
print("done", flush=True)
"""


def _run_writers(url: str, n_procs: int, n_points: int, batch: int) -> None:
    root = pathlib.Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(root) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    procs = [subprocess.Popen([sys.executable, "-c", WORKER, url, str(i), str(n_procs), str(n_points), str(batch)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env=env) for i in range(n_procs)]
    try:
        for p in procs:
            assert p.stdout.readline().strip() == "ready", p.stderr.read()
        for p in procs:  # go, all at once
            p.stdin.write("go\n")
            p.stdin.flush()
        results = [p.communicate(timeout=300) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    for i, (p, (out, err)) in enumerate(zip(procs, results, strict=True)):
        assert "locked" not in err.lower() and "error" not in err.lower(), f"process {i}: {err}"
        assert p.returncode == 0 and out.strip() == "done", f"process {i} exit {p.returncode}: {err}"

    with Store(url) as store:
        runs = store.list_runs(sweep="conc")
        assert len(runs) == n_procs and len(store.list_sweeps()) == 1
        assert all(r.status == "completed" and r.attempts == 1 for r in runs)
        assert store.count_metrics() == n_procs * n_points
        for i, r in enumerate(runs):
            pts = store.get_metrics(r.id, "train_loss")
            assert [p.step for p in pts] == list(range(n_points))
            assert pts[-1].value == pytest.approx(10.0 / n_points + i)


def test_concurrent_sqlite_writers_never_see_locks(tmp_path):
    _run_writers(f"sqlite:///{tmp_path / 'conc.db'}", n_procs=4, n_points=1_500, batch=50)


@pytest.mark.postgres
def test_eight_processes_write_5000_points_each_to_postgresql(pg_db_url):
    _run_writers(pg_db_url, n_procs=8, n_points=5_000, batch=500)
