"""Metric series: batched upserts on (run, name, step) and the reads the fit, report and status need."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy import and_, delete, func, select
from sqlalchemy.engine import Connection

from ebt_scaling.db.codec import METRICS, chunks, decode_value
from ebt_scaling.db.unit import UnitOfWork
from ebt_scaling.errors import StoreError
from ebt_scaling.records import MetricPoint, value_kind


class Metrics(UnitOfWork):
    def log_metrics(self, run_id: int, points: Sequence[MetricPoint]) -> int:
        """Store metric points of one run in one batch; re-logging a (name, step) replaces its value."""
        return self.log_metrics_many({run_id: points})

    def log_metrics_many(self, points_by_run: Mapping[int, Sequence[MetricPoint]]) -> int:
        """Store the points of several runs in one transaction; returns the number of points given.

        Fast path, no per-row ORM or Core processing: on SQLite one ``executemany`` of plain tuples, on
        PostgreSQL one ``INSERT ... SELECT FROM unnest(arrays)``. Both upsert on (run_id, name, step): a point
        given twice ends with the later value, and re-sending a batch is idempotent."""
        rows: list[tuple[int, str, int, float | None, str]] = []
        append = rows.append
        for run_id, points in points_by_run.items():
            rid = int(run_id)
            for p in points:
                v = float(p.value)
                if v - v == 0.0:  # finite (nan - nan and inf - inf are nan)
                    append((rid, p.name, int(p.step), v, "finite"))
                else:
                    append((rid, p.name, int(p.step), None, value_kind(v)))
        if not rows:
            return 0
        upsert = "ON CONFLICT (run_id, name, step) DO UPDATE SET value = excluded.value, kind = excluded.kind"
        if self.dialect == "postgresql":
            # One statement per batch: five arrays unnested server-side (a row-per-statement executemany
            # is ~10x slower). One statement may not update a row twice: keep the last point per key.
            last = {(r[0], r[1], r[2]): r for r in rows}
            cols = list(zip(*last.values(), strict=True))
            sql = (f"INSERT INTO {METRICS.name} (run_id, name, step, value, kind) SELECT * FROM "
                   "unnest(%s::integer[], %s::varchar[], %s::bigint[], %s::double precision[], %s::varchar[]) "
                   + upsert)
            params: Any = tuple(list(c) for c in cols)
        else:
            sql = f"INSERT INTO {METRICS.name} (run_id, name, step, value, kind) VALUES (?, ?, ?, ?, ?) " + upsert
            params = rows

        def unit(conn: Connection) -> int:
            conn.exec_driver_sql(sql, params)
            return len(rows)

        return self._unit(unit, what=f"logging metrics of run(s) {sorted(points_by_run)[:5]}")

    def truncate_metrics(self, run_id: int, after_step: int) -> int:
        """Delete the points of ``run_id`` with step > ``after_step`` (a run restarting from a checkpoint
        at that step, or from scratch with -1); returns how many were deleted."""

        def unit(conn: Connection) -> int:
            res = conn.execute(delete(METRICS).where(and_(METRICS.c.run_id == run_id, METRICS.c.step > after_step)))
            return int(res.rowcount)

        return self._unit(unit, what=f"truncating metrics of run {run_id}")

    def delete_metrics(self, run_id: int, prefix: str) -> int:
        """Delete every series of ``run_id`` whose name starts with ``prefix`` (non-empty), e.g. ``think/``
        before ``ebt-scale think`` writes a new grid; returns how many points were deleted."""
        if not prefix:
            raise StoreError("delete_metrics: empty prefix; give the series prefix to delete, e.g. 'think/'")

        def unit(conn: Connection) -> int:
            names = [n for n in conn.execute(select(METRICS.c.name).distinct().where(METRICS.c.run_id == run_id))
                     .scalars() if n.startswith(prefix)]
            if not names:
                return 0
            res = conn.execute(delete(METRICS).where(and_(METRICS.c.run_id == run_id, METRICS.c.name.in_(names))))
            return int(res.rowcount)

        return self._unit(unit, what=f"deleting {prefix}* metrics of run {run_id}")

    def get_metrics(self, run_id: int, name: str | None = None) -> list[MetricPoint]:
        """Points of one run ordered by (name, step); ``name`` selects one series."""

        def unit(conn: Connection) -> list[MetricPoint]:
            q = select(METRICS.c.name, METRICS.c.step, METRICS.c.value, METRICS.c.kind).where(
                METRICS.c.run_id == run_id)
            if name is not None:
                q = q.where(METRICS.c.name == name)
            return [MetricPoint(n, int(s), decode_value(v, k))
                    for n, s, v, k in conn.execute(q.order_by(METRICS.c.name, METRICS.c.step))]

        return self._unit(unit, write=False)

    def metric_series(self, run_ids: Sequence[int], names: Sequence[str]) -> dict[int, dict[str, list[MetricPoint]]]:
        """The ``names`` series of many runs in a few queries: run id -> name -> points by step (runs without
        any of these series are absent)."""

        def unit(conn: Connection) -> dict[int, dict[str, list[MetricPoint]]]:
            out: dict[int, dict[str, list[MetricPoint]]] = {}
            for chunk in chunks(list(run_ids)):
                q = (select(METRICS.c.run_id, METRICS.c.name, METRICS.c.step, METRICS.c.value, METRICS.c.kind)
                     .where(METRICS.c.run_id.in_(chunk), METRICS.c.name.in_(list(names)))
                     .order_by(METRICS.c.run_id, METRICS.c.name, METRICS.c.step))
                for rid, n, st, v, k in conn.execute(q):
                    out.setdefault(int(rid), {}).setdefault(n, []).append(MetricPoint(n, int(st), decode_value(v, k)))
            return out

        return self._unit(unit, write=False)

    def final_metrics(self, run_ids: Sequence[int], name: str) -> dict[int, MetricPoint]:
        """The point with the highest step of series ``name`` for each run that has one."""

        def unit(conn: Connection) -> dict[int, MetricPoint]:
            out: dict[int, MetricPoint] = {}
            for chunk in chunks(list(run_ids)):
                last = (select(METRICS.c.run_id, func.max(METRICS.c.step).label("step"))
                        .where(and_(METRICS.c.run_id.in_(chunk), METRICS.c.name == name))
                        .group_by(METRICS.c.run_id).subquery())
                q = select(METRICS.c.run_id, METRICS.c.step, METRICS.c.value, METRICS.c.kind).join(
                    last, and_(METRICS.c.run_id == last.c.run_id, METRICS.c.step == last.c.step)).where(
                    METRICS.c.name == name)
                for rid, step, v, k in conn.execute(q):
                    out[int(rid)] = MetricPoint(name, int(step), decode_value(v, k))
            return out

        return self._unit(unit, write=False)

    def count_metrics(self, run_id: int | None = None) -> int:
        def unit(conn: Connection) -> int:
            q = select(func.count()).select_from(METRICS)
            if run_id is not None:
                q = q.where(METRICS.c.run_id == run_id)
            return int(conn.execute(q).scalar_one())

        return self._unit(unit, write=False)
