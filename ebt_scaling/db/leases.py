"""Who may drive what: the sweep lease (one driver per sweep), run claims (one trainer per run across
sweeps) and cancel requests (``ebt-scale cancel``)."""

from __future__ import annotations

import contextlib
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.engine import Connection

from ebt_scaling.db.claims import RunClaims
from ebt_scaling.db.codec import CANCELS, SWEEPS
from ebt_scaling.db.engine import parse_url, sqlite_path
from ebt_scaling.db.unit import UnitOfWork


class Leases(UnitOfWork):
    def request_cancel(self, sweep: str) -> None:
        """Ask the live driver of ``sweep`` to stop (``ebt-scale cancel``); NotFound for an unknown sweep."""

        def unit(conn: Connection) -> None:
            sid = self._sweep_id(conn, sweep)
            conn.execute(delete(CANCELS).where(CANCELS.c.sweep_id == sid))
            conn.execute(CANCELS.insert().values(sweep_id=sid, requested_at=self._now(conn)))

        self._unit(unit, what=f"requesting the cancellation of sweep {sweep!r}")

    def cancel_requested(self, sweep: str) -> bool:
        """Whether a cancellation of ``sweep`` is pending (polled by its driver)."""
        q = select(CANCELS.c.sweep_id).join(SWEEPS, SWEEPS.c.id == CANCELS.c.sweep_id).where(SWEEPS.c.name == sweep)
        return self._unit(lambda conn: conn.execute(q).first() is not None, write=False)

    def clear_cancel(self, sweep: str) -> None:
        """Forget a pending cancellation (a new driver of the sweep starts)."""
        sub = select(SWEEPS.c.id).where(SWEEPS.c.name == sweep).scalar_subquery()
        self._unit(lambda conn: conn.execute(delete(CANCELS).where(CANCELS.c.sweep_id == sub)),
                   what=f"clearing the cancellation of sweep {sweep!r}")

    def lease_holder(self, sweep: str) -> dict[str, Any] | None:
        """The live driver holding ``sweep``'s lease ({host, pid, since}; {} when not recorded), or None."""
        from ebt_scaling.db.lease import postgres_holder, sqlite_holder

        if self.dialect == "postgresql":
            return postgres_holder(self._engine, sweep)
        path = sqlite_path(parse_url(self._raw_url))
        return None if path is None else sqlite_holder(path, sweep)

    def lease(self, sweep: str) -> contextlib.AbstractContextManager[None]:
        """Hold the sweep's driver lease (``db/lease.py``) while the ``with`` block runs; ``LeaseHeld`` (one
        line: who holds it, since when) if another live driver has it."""
        from ebt_scaling.db.lease import postgres_lease, sqlite_lease

        if self.dialect == "postgresql":
            return postgres_lease(self._engine, sweep)
        path = sqlite_path(parse_url(self._raw_url))
        return contextlib.nullcontext() if path is None else sqlite_lease(path, sweep)

    def run_claims(self) -> RunClaims:
        """This driver's claims on the runs it trains (``db/claims.py``); use it as a context manager, which
        frees every claim still held on exit."""
        if self.dialect == "postgresql":
            return RunClaims(self._engine, None)
        return RunClaims(None, sqlite_path(parse_url(self._raw_url)))
