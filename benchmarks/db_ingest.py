"""Batched metric ingestion into the results database: rows/s through ``Store.log_metrics_many`` on SQLite
and PostgreSQL, with the raw driver (``sqlite3.executemany``) measured in the same run as the ceiling.

    python benchmarks/db_ingest.py                          # SQLite only
    python benchmarks/db_ingest.py --pg postgresql+psycopg://user:pw@127.0.0.1:5432/db
    EBT_SCALE_TEST_PG=... python benchmarks/db_ingest.py --rows 500000 --batch 10000 --out ingest.json

Each repeat writes ``--rows`` points of 8 runs x 5 metric names in ``--batch``-row calls into a fresh
sweep. The PostgreSQL database given is used as is (tables are created if missing; the benchmark writes
to its own sweeps and deletes them afterwards). Output: one JSON object on stdout (and in --out).
Goal from issue 3: >= 100,000 rows/s on SQLite.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ebt_scaling.db.store import Store  # noqa: E402
from ebt_scaling.records import MetricPoint, PlannedRun  # noqa: E402
from ebt_scaling.security import mask_url  # noqa: E402

NAMES = ("train_loss", "val_loss", "lr", "grad_norm", "tokens_per_s")


def make_batches(run_ids: list[int], rows: int, batch: int) -> list[dict[int, list[MetricPoint]]]:
    """``rows`` points spread over runs and metric names, grouped into driver batches of ``batch`` rows
    (what the Ray driver's on_result buffer hands to log_metrics_many)."""
    per_step = len(run_ids) * len(NAMES)
    steps = rows // per_step
    out: list[dict[int, list[MetricPoint]]] = []
    cur: dict[int, list[MetricPoint]] = {}
    n = 0
    for step in range(steps):
        for rid in run_ids:
            pts = cur.setdefault(rid, [])
            for k, name in enumerate(NAMES):
                pts.append(MetricPoint(name, step, 1.0 / (step + 1) + k))
            n += len(NAMES)
        if n >= batch:
            out.append(cur)
            cur, n = {}, 0
    if cur:
        out.append(cur)
    return out


def bench_store(url: str, rows: int, batch: int, repeats: int, sweep: str) -> dict:
    results = []
    with Store(url) as store:
        for rep in range(repeats):
            name = f"{sweep}-{rep}"
            store.create_sweep(name, "data")
            runs = store.plan_runs(name, [PlannedRun("ebt", "data", float(i + 1), 0, f"{name}-{i}") for i in range(8)])
            batches = make_batches([r.id for r in runs], rows, batch)
            total = sum(len(p) for b in batches for p in b.values())
            t0 = time.perf_counter()
            for b in batches:
                store.log_metrics_many(b)
            dt = time.perf_counter() - t0
            assert store.count_metrics(runs[0].id) * len(runs) == total
            # re-sending the same batches (a driver retry) is idempotent: an upsert, counted separately
            t1 = time.perf_counter()
            store.log_metrics_many(batches[0])
            dt_re = time.perf_counter() - t1
            results.append({"rows": total, "seconds": dt, "rows_per_s": total / dt,
                            "relog_rows_per_s": sum(len(p) for p in batches[0].values()) / dt_re})
            _drop_sweep(store, name)
    rps = [r["rows_per_s"] for r in results]
    return {"url": mask_url(url), "rows": results[0]["rows"], "batch_rows": batch, "repeats": repeats,
            "rows_per_s_median": statistics.median(rps), "rows_per_s_all": [round(x) for x in rps],
            "relog_rows_per_s_median": statistics.median(r["relog_rows_per_s"] for r in results)}


def _drop_sweep(store: Store, name: str) -> None:
    from sqlalchemy import delete

    from ebt_scaling.db.store import SWEEPS

    store._unit(lambda conn: conn.execute(delete(SWEEPS).where(SWEEPS.c.name == name)))  # cascades


def bench_raw_sqlite(url_path: str, rows: int, batch: int) -> dict:
    """The ceiling: plain ``sqlite3`` ``executemany`` into the Store's own ``ebt_metrics`` table (same DDL,
    same PRAGMAs, same batches, one transaction per batch), so the ratio is the Store's overhead."""
    Store(f"sqlite:///{url_path}").close()  # schema at head
    con = sqlite3.connect(url_path, isolation_level=None)
    for pragma in ("busy_timeout = 60000", "journal_mode = WAL", "foreign_keys = ON", "synchronous = NORMAL"):
        con.execute(f"PRAGMA {pragma}")
    con.execute("INSERT INTO ebt_sweeps (name, axis, spec, created_at) VALUES ('raw', 'data', '{}', '2026-01-01')")
    con.executemany("INSERT INTO ebt_runs (sweep_id, family, axis, x, seed, config_hash, config, source, status, "
                    "attempts, fit_eligible, created_at) VALUES (1, 'ebt', 'data', ?, 0, ?, '{}', 'trained', "
                    "'planned', 0, 0, '2026-01-01')", [(float(i), f"raw-{i}") for i in range(1, 9)])
    batches = make_batches(list(range(1, 9)), rows, batch)
    data = [[(rid, p.name, p.step, p.value, "finite") for rid, pts in b.items() for p in pts] for b in batches]
    sql = ("INSERT INTO ebt_metrics (run_id, name, step, value, kind) VALUES (?, ?, ?, ?, ?) ON CONFLICT "
           "(run_id, name, step) DO UPDATE SET value = excluded.value, kind = excluded.kind")
    total = sum(len(d) for d in data)
    t0 = time.perf_counter()
    for d in data:
        con.execute("BEGIN IMMEDIATE")
        con.executemany(sql, d)
        con.execute("COMMIT")
    dt = time.perf_counter() - t0
    con.close()
    return {"rows": total, "seconds": dt, "rows_per_s": total / dt}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=200_000, help="metric rows per repeat")
    ap.add_argument("--batch", type=int, default=10_000, help="rows per log_metrics_many call")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--pg", default=os.environ.get("EBT_SCALE_TEST_PG"),
                    help="PostgreSQL URL (default $EBT_SCALE_TEST_PG; skipped when absent)")
    ap.add_argument("--out", help="also write the JSON here")
    args = ap.parse_args()

    import sqlalchemy

    report: dict = {"benchmark": "db_ingest", "python": platform.python_version(),
                    "sqlalchemy": sqlalchemy.__version__, "sqlite": sqlite3.sqlite_version,
                    "cpu_count": os.cpu_count(), "machine": platform.machine()}
    with tempfile.TemporaryDirectory() as tmp:
        report["sqlite_store"] = bench_store(f"sqlite:///{tmp}/bench.db", args.rows, args.batch, args.repeats,
                                             "bench")
        report["sqlite_raw_executemany_same_table"] = bench_raw_sqlite(f"{tmp}/raw.db", args.rows, args.batch)
    report["sqlite_store_vs_raw"] = (report["sqlite_store"]["rows_per_s_median"]
                                     / report["sqlite_raw_executemany_same_table"]["rows_per_s"])
    report["sqlite_goal_rows_per_s"] = 100_000
    report["sqlite_goal_met"] = report["sqlite_store"]["rows_per_s_median"] >= 100_000
    if args.pg:
        report["postgresql_store"] = bench_store(args.pg, args.rows, args.batch, args.repeats,
                                                 f"bench-{os.getpid()}")
    else:
        report["postgresql_store"] = "skipped: pass --pg URL or set EBT_SCALE_TEST_PG"
    text = json.dumps(report, indent=1)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
