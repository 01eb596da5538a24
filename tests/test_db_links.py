"""Sweep membership as links (revision 0005) and run claims (db/claims.py), on SQLite and PostgreSQL.

The upgrade test builds a database as the previous release left it: at revision 0004, a params sweep of
trained runs and a flops sweep holding ``imported`` copies of them (summary ``source_run`` = the trained
run's id, exactly as ``sched/service.py``'s ``import_shared_points`` wrote them), a fit linked to the copies,
and an imported CSV sweep. ``ebt-scale db upgrade`` must keep every point and fit the same numbers."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import pathlib
import signal
import subprocess
import sys
import textwrap
import time
from datetime import datetime
from types import SimpleNamespace

import pytest
import sqlalchemy as sa
from db_backends import db_url_fixture  # noqa: F401  (the parametrised ``db_url`` fixture)
from typer.testing import CliRunner

from ebt_scaling.db import migrate, schema
from ebt_scaling.db.codec import FIT_RUNS, FITS, METRICS, RUNS, SUMMARY, SWEEPS, from_json, imported_config_hash
from ebt_scaling.db.engine import make_engine
from ebt_scaling.db.store import Store
from ebt_scaling.records import PlannedRun

ROOT = pathlib.Path(__file__).resolve().parents[1]
FAMILIES = ("transformer_pp", "ebt")
LEVELS = (1e5, 3e5, 1e6, 3e6)
TOKENS = 20_000


def _loss(fam: str, x: float, seed: int) -> float:
    return (2.0 if fam == "ebt" else 2.1) + 40.0 * x ** (-0.3 if fam == "ebt" else -0.28) + 0.01 * seed


def _build_0004(url: str) -> None:
    """The previous release's database (revision 0004), written row by row the way its Store wrote them."""
    migrate.upgrade(url, "0004")
    now = datetime(2026, 12, 1, 12, 0, 0)
    engine = make_engine(url)
    with engine.begin() as conn:
        sid = {}
        for name, axis in (("p", "params"), ("f", "flops"), ("csv", "depth")):
            sid[name] = conn.execute(SWEEPS.insert().values(name=name, axis=axis, spec={}, created_at=now)
                                     .returning(SWEEPS.c.id)).scalar_one()
        trained = []
        for fam in FAMILIES:
            for x in LEVELS:
                for seed in (0, 1):
                    v = _loss(fam, x, seed)
                    rid = conn.execute(RUNS.insert().values(
                        sweep_id=sid["p"], family=fam, axis="params", x=x, seed=seed,
                        config_hash=f"h-{fam}-{x:g}-{seed}", config={"model": {"vocab_size": 256}}, source="trained",
                        status="completed", attempts=1, fit_eligible=True, final_val_loss=v, final_val_ppl=math.exp(v),
                        tokens=TOKENS, created_at=now, finished_at=now).returning(RUNS.c.id)).scalar_one()
                    conn.execute(METRICS.insert(), [dict(run_id=rid, name="val_loss", step=s, value=v + 1.0 / s,
                                                         kind="finite") for s in (10, 20)])
                    trained.append((rid, fam, x, seed, v))
        copies = []
        for rid, fam, x, seed, v in trained:  # import_shared_points: one copy per trained run, x = FLOPs
            fx = 6.0 * x * TOKENS
            cid = conn.execute(RUNS.insert().values(
                sweep_id=sid["f"], family=fam, axis="flops", x=fx, seed=seed,
                config_hash=imported_config_hash("f", fam, "flops", fx, seed),
                config={"imported": True, "source_file": "runs shared with other sweeps, planned by f", "line": rid},
                source="imported", status="completed", attempts=0, fit_eligible=True, final_val_loss=v,
                final_val_ppl=math.exp(v), tokens=TOKENS, created_at=now, finished_at=now)
                .returning(RUNS.c.id)).scalar_one()
            conn.execute(SUMMARY.insert().values(run_id=cid, name="source_run", value=float(rid), kind="finite"))
            copies.append(cid)
        fid = conn.execute(FITS.insert().values(sweep_id=sid["f"], axis="flops", family="ebt", method="ols_log_ppl",
                                                params={"slope": -0.1}, fingerprint="fp", created_at=now)
                           .returning(FITS.c.id)).scalar_one()
        conn.execute(FIT_RUNS.insert(), [dict(fit_id=fid, run_id=c) for c in copies])
        for i, x in enumerate((2.0, 4.0, 8.0)):  # an imported CSV: runs of their own
            cid = conn.execute(RUNS.insert().values(
                sweep_id=sid["csv"], family="ebt", axis="depth", x=x, seed=0,
                config_hash=imported_config_hash("csv", "ebt", "depth", x, 0), config={"imported": True, "line": i},
                source="imported", status="completed", attempts=0, fit_eligible=True, final_val_loss=3.0 - i / 10,
                created_at=now, finished_at=now).returning(RUNS.c.id)).scalar_one()
            conn.execute(SUMMARY.insert().values(run_id=cid, name="wall_time_s", value=1.0, kind="finite"))
    engine.dispose()


def _points_0004(url: str) -> dict[str, list[SimpleNamespace]]:
    """Every sweep's points as the previous release listed them (runs by ``sweep_id``)."""
    engine = make_engine(url)
    out: dict[str, list[SimpleNamespace]] = {}
    with engine.connect() as conn:
        extra: dict[int, dict[str, float]] = {}
        for rid, name, value in conn.execute(sa.select(SUMMARY.c.run_id, SUMMARY.c.name, SUMMARY.c.value)):
            extra.setdefault(rid, {})[name] = value
        q = sa.select(RUNS, SWEEPS.c.name.label("sweep_name")).join(SWEEPS, SWEEPS.c.id == RUNS.c.sweep_id)
        for r in conn.execute(q.order_by(RUNS.c.id)):
            out.setdefault(r.sweep_name, []).append(SimpleNamespace(
                id=r.id, sweep=r.sweep_name, family=r.family, axis=r.axis, x=r.x, seed=r.seed, status=r.status,
                final_val_loss=r.final_val_loss, fit_eligible=r.fit_eligible, config_hash=r.config_hash,
                config=from_json(r.config), source=r.source, extra_metrics=extra.get(r.id, {})))
    engine.dispose()
    return out


def _point_key(r) -> tuple:
    return (r.family, r.axis, float(r.x), int(r.seed), r.final_val_loss, bool(r.fit_eligible))


def _fit_json(runs) -> list[str]:
    """The fits of every (sweep, axis), as JSON without run identities (ids, fingerprints)."""
    from ebt_scaling.fit.axis import FitSettings, fit_axes
    from ebt_scaling.fit.design import group_runs

    def scrub(o):
        if isinstance(o, dict):
            return {k: scrub(v) for k, v in o.items() if k not in ("run_id", "run_ids", "fingerprint", "reused")}
        if isinstance(o, (list, tuple)):
            return [scrub(v) for v in o]
        return o

    groups = group_runs(runs)
    fits = fit_axes([groups[k] for k in sorted(groups)], FitSettings(resamples=200, permutations=199))
    return [json.dumps(scrub(dataclasses.asdict(f)), sort_keys=True, default=repr) for f in fits]


def _drop(blob: str, key: str) -> str:
    def walk(o):
        if isinstance(o, dict):
            return {k: walk(v) for k, v in o.items() if k != key}
        if isinstance(o, list):
            return [walk(v) for v in o]
        return o

    return json.dumps(walk(json.loads(blob)), sort_keys=True)


def test_upgrade_turns_imported_copies_into_links_and_keeps_every_point_and_fit(db_url):
    _build_0004(db_url)
    before = _points_0004(db_url)
    fits_before = _fit_json([r for rs in before.values() for r in rs])
    from ebt_scaling.cli.main import app

    r = CliRunner().invoke(app, ["db", "upgrade", "--db", db_url])
    assert r.exit_code == 0, r.output
    assert migrate.current(db_url) == schema.SCHEMA_REVISION
    with Store(db_url) as s:
        after = {name: s.list_runs(sweep=name) for name in ("p", "f", "csv")}
        for name in ("p", "f", "csv"):  # every point of every sweep is kept, at its sweep's axis and x
            assert sorted(map(_point_key, after[name])) == sorted(map(_point_key, before[name])), name
        p_ids = [r.id for r in after["p"]]
        assert sorted(r.id for r in after["f"]) == p_ids  # the flops sweep links the trained runs
        assert {r.source for r in after["f"]} == {"trained"}
        assert all("source_run" not in r.extra_metrics for rs in after.values() for r in rs)
        assert [r.id for r in after["csv"]] == [r.id for r in before["csv"]]  # imported CSV rows stay
        assert {r.source for r in after["csv"]} == {"imported"}
        assert s.list_fits(sweep="f")[0].run_ids == tuple(p_ids)  # the fit now names the trained runs
        assert s.get_metrics(p_ids[0], "val_loss")[0].step == 10
        assert len({r.id for r in s.list_runs()}) == len(p_ids) + 3  # the copies are gone
        fits_after = _fit_json([r for rs in after.values() for r in rs])
        # The same numbers; only the flops axis's "uniform" baseline (ln vocab_size) is now known: the copies
        # had no model config, the linked trained runs have.
        assert [_drop(f, "uniform") for f in fits_after] == [_drop(f, "uniform") for f in fits_before]
        assert fits_after[0] == fits_before[0] and fits_after[2] == fits_before[2]  # depth (csv), params: equal
        assert json.loads(fits_after[1])["baselines"]["ebt"]["uniform"] == pytest.approx(math.log(256))
        assert json.loads(fits_before[1])["baselines"]["ebt"]["uniform"] is None
    assert migrate.upgrade(db_url) == (schema.SCHEMA_REVISION, schema.SCHEMA_REVISION)  # idempotent


def test_a_copy_whose_source_is_gone_stays_a_run_of_its_own(db_url):
    migrate.upgrade(db_url, "0004")
    engine = make_engine(db_url)
    now = datetime(2026, 12, 1)
    with engine.begin() as conn:
        sid = conn.execute(SWEEPS.insert().values(name="f", axis="flops", spec={}, created_at=now)
                           .returning(SWEEPS.c.id)).scalar_one()
        cid = conn.execute(RUNS.insert().values(
            sweep_id=sid, family="ebt", axis="flops", x=1e12, seed=0, config_hash="c", config={}, source="imported",
            status="completed", attempts=0, fit_eligible=True, final_val_loss=3.0, created_at=now)
            .returning(RUNS.c.id)).scalar_one()
        conn.execute(SUMMARY.insert().values(run_id=cid, name="source_run", value=9999.0, kind="finite"))
    engine.dispose()
    migrate.upgrade(db_url)
    with Store(db_url) as s:
        (r,) = s.list_runs(sweep="f")
        assert (r.id, r.source, r.final_val_loss, r.extra_metrics["source_run"]) == (cid, "imported", 3.0, 9999.0)


def test_a_run_planned_by_two_sweeps_is_one_row_listed_by_both(db_url):
    with Store(db_url) as s:
        s.create_sweep("a", "params")
        s.create_sweep("b", "flops")
        a = s.plan_runs("a", [PlannedRun("ebt", "params", 1e5, 0, "h1"), PlannedRun("ebt", "params", 3e5, 0, "h2")])
        b = s.plan_runs("b", [PlannedRun("ebt", "flops", 1e12, 0, "h2"), PlannedRun("ebt", "flops", 9e12, 0, "h3")])
        assert b[0].id == a[1].id and (b[0].sweep, b[0].axis, b[0].x) == ("b", "flops", 1e12)
        s.finish_run(a[1].id, "completed", result={"final_val_loss": 2.5})  # retried/finished once, seen by both
        assert [(r.id, r.final_val_loss) for r in s.list_runs(sweep="b")] == [(a[1].id, 2.5), (b[1].id, None)]
        assert [r.id for r in s.list_runs(sweep="a", axis="params")] == [a[0].id, a[1].id]
        assert s.list_runs(sweep="a", axis="flops") == []
        assert [(r.sweep, r.id) for r in s.list_runs(status="completed")] == [("a", a[1].id), ("b", a[1].id)]
        assert s.get_run(a[1].id).sweep == "a"  # without a sweep: as its owner planned it
        df = s.metrics_dataframe(sweep="b")
        assert df.empty
        s.log_metrics(a[1].id, [])
        frame = s.runs_dataframe(sweep="b")
        assert list(frame["run_id"]) == [a[1].id, b[1].id] and list(frame["axis"]) == ["flops", "flops"]
        s.mark_running(a[1].id)
        assert s.reset_interrupted("b", []) == 0  # a run another driver holds is not reset
        assert s.reset_interrupted("b") == 1 and s.get_run(a[1].id).status == "planned"


# ---------------------------------------------------------------- run claims


def test_a_claimed_run_is_refused_to_a_second_driver_until_released(db_url):
    with Store(db_url) as a, Store(db_url) as b:
        a.create_sweep("s", "depth")
        (run,) = a.plan_runs("s", [PlannedRun("ebt", "depth", 2.0, 0, "h")])
        with a.run_claims() as ca, b.run_claims() as cb:
            assert ca.take(run.id) is None and ca.take(run.id) is None  # taken; taking again is a no-op
            held = cb.take(run.id)
            assert held is not None and held["pid"] in (os.getpid(), str(os.getpid())) and "host" in held
            assert cb.holder(run.id) == held and ca.holder(run.id) is None
            ca.release(run.id)
            assert cb.holder(run.id) is None and cb.take(run.id) is None
            assert ca.take(run.id) is not None
        with a.run_claims() as ca:  # closing freed every claim
            assert ca.take(run.id) is None


def test_a_killed_driver_frees_its_run_claims_at_once(db_url):
    with Store(db_url) as st:
        st.create_sweep("s", "depth")
        (run,) = st.plan_runs("s", [PlannedRun("ebt", "depth", 2.0, 0, "h")])
    code = textwrap.dedent(f"""
        import time
        from ebt_scaling.db.store import Store
        claims = Store({db_url!r}).run_claims()
        assert claims.take({run.id}) is None
        print("held", flush=True)
        time.sleep(300)
    """)
    p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        assert p.stdout.readline().strip() == "held"
        with Store(db_url) as st, st.run_claims() as mine:
            assert str(mine.holder(run.id)["pid"]) == str(p.pid)
            os.kill(p.pid, signal.SIGKILL)
            p.wait(30)
            for _ in range(100):  # PostgreSQL ends the dead session within moments
                if mine.holder(run.id) is None:
                    break
                time.sleep(0.1)
            assert mine.take(run.id) is None
    finally:
        if p.poll() is None:
            p.kill()
            p.wait(30)
