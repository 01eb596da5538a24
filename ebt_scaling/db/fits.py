"""Stored fits and the exact runs each used (``ebt_fit_runs``)."""

from __future__ import annotations

from sqlalchemy import ColumnElement, and_, delete, select
from sqlalchemy.engine import Connection

from ebt_scaling.db.codec import FIT_RUNS, FITS, SWEEPS, chunks, from_json, to_json
from ebt_scaling.db.unit import UnitOfWork
from ebt_scaling.records import FitRecord


class Fits(UnitOfWork):
    def save_fit(self, fit: FitRecord, *, replace: bool = False) -> FitRecord:
        """Store a fit and the exact runs it used. The same (sweep, axis, family, method, fingerprint) twice
        raises ``DuplicateError`` unless ``replace`` (then the old row and its links are replaced)."""

        def unit(conn: Connection) -> FitRecord:
            sid = self._sweep_id(conn, fit.sweep)
            key = and_(FITS.c.sweep_id == sid, FITS.c.axis == fit.axis, FITS.c.family == fit.family,
                       FITS.c.method == fit.method, FITS.c.fingerprint == fit.fingerprint)
            if replace:
                conn.execute(delete(FIT_RUNS).where(FIT_RUNS.c.fit_id.in_(select(FITS.c.id).where(key))))
                conn.execute(delete(FITS).where(key))
            fid = conn.execute(FITS.insert().values(sweep_id=sid, axis=fit.axis, family=fit.family,
                                                    method=fit.method, params=to_json(fit.params),
                                                    fingerprint=fit.fingerprint, created_at=self._now(conn))
                               .returning(FITS.c.id)).scalar_one()
            run_ids = sorted(set(int(r) for r in fit.run_ids))
            if run_ids:
                conn.execute(FIT_RUNS.insert(), [{"fit_id": fid, "run_id": r} for r in run_ids])
            return self._fits(conn, FITS.c.id == fid)[0]

        return self._unit(unit, what=f"saving a {fit.method} fit of {fit.sweep}/{fit.axis}/{fit.family}")

    def find_fit(self, sweep: str, axis: str, family: str, method: str, fingerprint: str) -> FitRecord | None:
        def unit(conn: Connection) -> FitRecord | None:
            found = self._fits(conn, and_(SWEEPS.c.name == sweep, FITS.c.axis == axis, FITS.c.family == family,
                                          FITS.c.method == method, FITS.c.fingerprint == fingerprint))
            return found[0] if found else None

        return self._unit(unit, write=False)

    def list_fits(self, sweep: str | None = None, axis: str | None = None) -> list[FitRecord]:
        conds = []
        if sweep is not None:
            conds.append(SWEEPS.c.name == sweep)
        if axis is not None:
            conds.append(FITS.c.axis == axis)
        return self._unit(lambda conn: self._fits(conn, and_(*conds) if conds else None), write=False)

    def _fits(self, conn: Connection, where: ColumnElement[bool] | None) -> list[FitRecord]:
        q = select(FITS, SWEEPS.c.name.label("sweep_name")).join(SWEEPS, SWEEPS.c.id == FITS.c.sweep_id)
        if where is not None:
            q = q.where(where)
        rows = conn.execute(q.order_by(FITS.c.id)).all()
        if not rows:
            return []
        links: dict[int, list[int]] = {}
        for chunk in chunks([r.id for r in rows]):
            for fid, rid in conn.execute(select(FIT_RUNS.c.fit_id, FIT_RUNS.c.run_id)
                                         .where(FIT_RUNS.c.fit_id.in_(chunk))):
                links.setdefault(fid, []).append(int(rid))
        return [FitRecord(id=r.id, sweep=r.sweep_name, axis=r.axis, family=r.family, method=r.method,
                          params=from_json(r.params), run_ids=tuple(sorted(links.get(r.id, []))),
                          fingerprint=r.fingerprint, created_at=r.created_at) for r in rows]
