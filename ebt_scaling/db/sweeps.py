"""Sweeps and their membership: a sweep links the runs that are its points (``ebt_sweep_runs``), at its own
axis and x. A run that another sweep already planned or trained is linked, never copied."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from sqlalchemy import select
from sqlalchemy.engine import Connection

from ebt_scaling.db.codec import MEMBERS, SWEEPS, sweep_record, to_json
from ebt_scaling.db.unit import UnitOfWork
from ebt_scaling.errors import DuplicateError, StoreError
from ebt_scaling.names import name_problem
from ebt_scaling.records import SweepRecord


class Sweeps(UnitOfWork):
    def create_sweep(self, name: str, axis: str, spec: dict[str, Any] | None = None,
                     code_version: str | None = None) -> SweepRecord:
        """Get or create the sweep ``name``; an existing sweep with another axis is an error."""
        if not isinstance(name, str) or not name.strip():
            raise StoreError("sweep name is empty; pass a name such as --sweep depth-tiny")
        if (why := name_problem(name)) is not None:
            raise StoreError(f"sweep name {ascii(name)[:80]} {why}; pass a name such as --sweep depth-tiny")

        def unit(conn: Connection) -> SweepRecord:
            return self._create_sweep(conn, name, axis, spec or {}, code_version)

        return self._unit(unit, what=f"creating sweep {name!r}")

    def _create_sweep(self, conn: Connection, name: str, axis: str, spec: dict[str, Any],
                      code_version: str | None) -> SweepRecord:
        conn.execute(self._insert(SWEEPS).values(name=name, axis=axis, spec=to_json(spec), code_version=code_version,
                                                 created_at=self._now(conn)).on_conflict_do_nothing(
            index_elements=["name"]))
        row = conn.execute(select(SWEEPS).where(SWEEPS.c.name == name)).one()
        if row.axis != axis:
            raise DuplicateError(f"sweep {name!r} already exists with axis {row.axis!r}, not {axis!r}; "
                                 "choose another sweep name")
        return sweep_record(row)

    def get_sweep(self, name: str) -> SweepRecord:
        def unit(conn: Connection) -> SweepRecord:
            row = conn.execute(select(SWEEPS).where(SWEEPS.c.name == name)).one_or_none()
            if row is None:
                self._sweep_id(conn, name)  # raises NotFound naming the closest sweeps
            assert row is not None
            return sweep_record(row)

        return self._unit(unit, write=False)

    def list_sweeps(self) -> list[SweepRecord]:
        return self._unit(lambda conn: [sweep_record(r) for r in conn.execute(select(SWEEPS).order_by(SWEEPS.c.id))],
                          write=False)

    def _link(self, conn: Connection, sweep_id: int, members: Iterable[tuple[int, str, float]]) -> None:
        """Make runs points of a sweep: (run id, axis, x) each; an existing link keeps its axis and x."""
        rows = {rid: dict(sweep_id=sweep_id, run_id=rid, axis=axis, x=float(x)) for rid, axis, x in members}
        if rows:
            conn.execute(self._insert(MEMBERS).on_conflict_do_nothing(index_elements=["sweep_id", "run_id"]),
                         list(rows.values()))
