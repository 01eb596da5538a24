"""Reading runs: a run as seen from a sweep carries that sweep's name, axis and x (its membership link);
``get_run`` without a sweep shows the run as its owner sweep planned it."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from sqlalchemy import ColumnElement, Select, and_, select
from sqlalchemy.engine import Connection

from ebt_scaling.db.codec import FLOPS, MEMBERS, PARAMS, RUNS, SUMMARY, SWEEPS, decode_value, run_record
from ebt_scaling.db.unit import UnitOfWork
from ebt_scaling.errors import NotFound, StoreError
from ebt_scaling.records import RUN_STATUSES, RunRecord


def _through_links() -> Select[Any]:
    return (select(RUNS, SWEEPS.c.name.label("sweep_name"), MEMBERS.c.axis.label("link_axis"),
                   MEMBERS.c.x.label("link_x"))
            .select_from(MEMBERS.join(RUNS, RUNS.c.id == MEMBERS.c.run_id)
                         .join(SWEEPS, SWEEPS.c.id == MEMBERS.c.sweep_id))
            .order_by(RUNS.c.id, MEMBERS.c.sweep_id))


def _as_owned() -> Select[Any]:
    return (select(RUNS, SWEEPS.c.name.label("sweep_name"), RUNS.c.axis.label("link_axis"),
                   RUNS.c.x.label("link_x"))
            .join(SWEEPS, SWEEPS.c.id == RUNS.c.sweep_id).order_by(RUNS.c.id))


class RunReads(UnitOfWork):
    def get_run(self, run_id: int) -> RunRecord:
        """The run as its owner sweep (the sweep that planned or imported it first) sees it."""
        return self._unit(lambda conn: self._one(conn, run_id), write=False)

    def stored_hashes(self, hashes: Sequence[str]) -> set[str]:
        """Those of ``hashes`` that name a stored run."""
        return set(self._unit(lambda conn: self._ids_by_hash(conn, list(hashes)), write=False))

    def list_runs(self, sweep: str | None = None, axis: str | None = None,
                  status: str | Iterable[str] | None = None, family: str | None = None,
                  fit_eligible: bool | None = None) -> list[RunRecord]:
        """The points of ``sweep`` (every sweep's when None) matching every given filter, ordered by run id:
        one record per (sweep, run) link, with that sweep's axis and x. A run shared by two sweeps is listed
        once under each, with the same id."""
        conds: list[ColumnElement[bool]] = []
        if sweep is not None:
            conds.append(SWEEPS.c.name == sweep)
        if axis is not None:
            conds.append(MEMBERS.c.axis == axis)
        if status is not None:
            statuses = [status] if isinstance(status, str) else list(status)
            bad = [s for s in statuses if s not in RUN_STATUSES]
            if bad:
                raise StoreError(f"unknown run status {bad[0]!r}; use one of {', '.join(RUN_STATUSES)}")
            conds.append(RUNS.c.status.in_(statuses))
        if family is not None:
            conds.append(RUNS.c.family == family)
        if fit_eligible is not None:
            conds.append(RUNS.c.fit_eligible.is_(fit_eligible))
        q = _through_links()
        if conds:
            q = q.where(and_(*conds))
        return self._unit(lambda conn: self._records(conn, q), write=False)

    def _one(self, conn: Connection, run_id: int) -> RunRecord:
        recs = self._records(conn, _as_owned().where(RUNS.c.id == run_id))
        if not recs:
            raise NotFound(f"no run with id {run_id}; list runs with `ebt-scale runs`")
        return recs[0]

    def _in_sweep(self, conn: Connection, sweep_id: int, run_ids: Sequence[int]) -> list[RunRecord]:
        return self._records(conn, _through_links().where(MEMBERS.c.sweep_id == sweep_id,
                                                          MEMBERS.c.run_id.in_(list(run_ids))))

    def _records(self, conn: Connection, q: Select[Any]) -> list[RunRecord]:
        rows = conn.execute(q).all()
        if not rows:
            return []
        ids_q = q.with_only_columns(RUNS.c.id).order_by(None)
        params: dict[int, dict[str, int]] = {}
        for rid, name, count in conn.execute(select(PARAMS.c.run_id, PARAMS.c.name, PARAMS.c.count)
                                             .where(PARAMS.c.run_id.in_(ids_q))):
            params.setdefault(rid, {})[name] = int(count)
        flops: dict[int, dict[str, float]] = {}
        for rid, name, v in conn.execute(select(FLOPS.c.run_id, FLOPS.c.convention, FLOPS.c.flops_per_token)
                                         .where(FLOPS.c.run_id.in_(ids_q))):
            flops.setdefault(rid, {})[name] = float(v)
        extra: dict[int, dict[str, float]] = {}
        for rid, name, v, kind in conn.execute(select(SUMMARY.c.run_id, SUMMARY.c.name, SUMMARY.c.value,
                                                      SUMMARY.c.kind).where(SUMMARY.c.run_id.in_(ids_q))):
            extra.setdefault(rid, {})[name] = decode_value(v, kind)
        return [run_record(r, params.get(r.id, {}), flops.get(r.id, {}), extra.get(r.id, {})) for r in rows]
