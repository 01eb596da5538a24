"""Sweeps and their membership: a sweep links the runs that are its points (``ebt_sweep_runs``), at its own
axis and x. A run that another sweep already planned or trained is linked, never copied.

Forgetting (``ebt-scale runs --sweep S --forget failed``, issue 30): a failed or diverged run is taken out of a
sweep for good by removing its link (the run itself stays: other sweeps may link it) and recording it in the
sweep's ``spec`` JSON under ``forgotten`` (config hash -> run id, status, reason, why, who, when), so it is never
silent: ``runs --sweep S --forgotten`` lists them, and a rerun of the sweep leaves them out (``--retry-failed``
links and trains them again, and the record says so under ``restored``)."""

from __future__ import annotations

import getpass
import socket
from collections.abc import Iterable
from typing import Any

from sqlalchemy import delete, select, update
from sqlalchemy.engine import Connection

from ebt_scaling.db.codec import MEMBERS, RUNS, SWEEPS, from_json, sweep_record, to_json
from ebt_scaling.db.unit import UnitOfWork
from ebt_scaling.errors import DuplicateError, StoreError
from ebt_scaling.names import name_problem
from ebt_scaling.records import SweepRecord


def _user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no login name in some containers
        return "unknown"


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

    # ---- forgetting failed runs (issue 30) ----
    def forget_runs(self, sweep: str, statuses: Iterable[str] = ("failed", "diverged"),
                    why: str = "forgotten with ebt-scale runs --forget") -> list[dict[str, Any]]:
        """Unlink the runs of ``sweep`` whose status is in ``statuses`` and record each (see the module doc).
        Returns the records written (run id, config hash, status, reason, why, by, at)."""
        wanted = tuple(statuses)

        def unit(conn: Connection) -> list[dict[str, Any]]:
            sid = self._sweep_id(conn, sweep)
            rows = conn.execute(select(RUNS.c.id, RUNS.c.config_hash, RUNS.c.status, RUNS.c.reason)
                                .join(MEMBERS, MEMBERS.c.run_id == RUNS.c.id)
                                .where(MEMBERS.c.sweep_id == sid, RUNS.c.status.in_(wanted))
                                .order_by(RUNS.c.id)).all()
            if not rows:
                return []
            at = self._now(conn).isoformat(timespec="seconds")
            by = f"{_user()}@{socket.gethostname()}"
            spec = dict(from_json(conn.execute(select(SWEEPS.c.spec).where(SWEEPS.c.id == sid)).scalar_one()) or {})
            forgotten = dict(spec.get("forgotten") or {})
            out = []
            for r in rows:
                rec = {"run_id": int(r.id), "config_hash": r.config_hash, "status": r.status, "reason": r.reason,
                       "why": why, "by": by, "at": at}
                forgotten[r.config_hash] = rec
                out.append(rec)
                conn.execute(delete(MEMBERS).where(MEMBERS.c.sweep_id == sid, MEMBERS.c.run_id == int(r.id)))
            spec["forgotten"] = forgotten
            conn.execute(update(SWEEPS).where(SWEEPS.c.id == sid).values(spec=to_json(spec)))
            return out

        return self._unit(unit, what=f"forgetting runs of sweep {sweep!r}")

    def forgotten_runs(self, sweep: str) -> dict[str, dict[str, Any]]:
        """The runs ``sweep`` forgot, by config hash (empty when none)."""
        def unit(conn: Connection) -> dict[str, dict[str, Any]]:
            sid = self._sweep_id(conn, sweep)
            spec = from_json(conn.execute(select(SWEEPS.c.spec).where(SWEEPS.c.id == sid)).scalar_one()) or {}
            return dict(spec.get("forgotten") or {})

        return self._unit(unit, write=False)

    def restore_forgotten(self, sweep: str, hashes: Iterable[str]) -> None:
        """Move ``hashes`` from the sweep's ``forgotten`` to ``restored`` (a rerun with --retry-failed links and
        trains them again); the record of the forgetting stays."""
        hs = set(hashes)

        def unit(conn: Connection) -> None:
            sid = self._sweep_id(conn, sweep)
            spec = dict(from_json(conn.execute(select(SWEEPS.c.spec).where(SWEEPS.c.id == sid)).scalar_one()) or {})
            forgotten = dict(spec.get("forgotten") or {})
            restored = list(spec.get("restored") or [])
            at = self._now(conn).isoformat(timespec="seconds")
            for h in sorted(hs & set(forgotten)):
                restored.append({**forgotten.pop(h), "restored_at": at})
            spec.update(forgotten=forgotten, restored=restored)
            conn.execute(update(SWEEPS).where(SWEEPS.c.id == sid).values(spec=to_json(spec)))

        self._unit(unit, what=f"restoring runs of sweep {sweep!r}")
