"""Store operations only tests need (kept out of the product's ``Store``)."""

from __future__ import annotations

from sqlalchemy import and_, delete, select

from ebt_scaling.db.codec import FIT_RUNS, FITS, METRICS, RUNS
from ebt_scaling.db.store import Store
from ebt_scaling.errors import NotFound, StoreError
from ebt_scaling.records import RUN_STATUSES, RunRecord


def set_status(store: Store, run_id: int, status: str, reason: str | None = None) -> RunRecord:
    """Set any status (e.g. ``cancelled`` or back to ``planned``) without touching results."""
    if status not in RUN_STATUSES:
        raise StoreError(f"unknown run status {status!r}; use one of {', '.join(RUN_STATUSES)}")

    def unit(conn):
        values = {"status": status, "reason": reason}
        if status != "completed":
            values["fit_eligible"] = False
        store._update_run(conn, run_id, **values)
        return store._one(conn, run_id)

    return store._unit(unit)


def find_run_by_hash(store: Store, config_hash: str) -> RunRecord | None:
    """The run with this config hash (as its owner sweep sees it), or None."""
    ids = store._unit(lambda conn: store._ids_by_hash(conn, [config_hash]), write=False)
    return store.get_run(ids[config_hash]) if ids else None


def get_run_by_hash(store: Store, config_hash: str) -> RunRecord:
    rec = find_run_by_hash(store, config_hash)
    if rec is None:
        raise NotFound(f"no run with config hash {config_hash[:16]}...")
    return rec


def metric_names(store: Store, run_id: int | None = None, prefix: str | None = None) -> list[str]:
    """Distinct metric names (of one run, or all), optionally starting with ``prefix``."""
    q = select(METRICS.c.name).distinct()
    if run_id is not None:
        q = q.where(METRICS.c.run_id == run_id)
    names = sorted(store._unit(lambda conn: list(conn.execute(q).scalars()), write=False))
    return [n for n in names if prefix is None or n.startswith(prefix)]


def delete_fits(store: Store, sweep: str, axis: str | None = None) -> int:
    def unit(conn):
        cond = FITS.c.sweep_id == store._sweep_id(conn, sweep)
        if axis is not None:
            cond = and_(cond, FITS.c.axis == axis)
        conn.execute(delete(FIT_RUNS).where(FIT_RUNS.c.fit_id.in_(select(FITS.c.id).where(cond))))
        return int(conn.execute(delete(FITS).where(cond)).rowcount)

    return store._unit(unit)


def attempts(store: Store, run_id: int) -> int:
    return int(store._unit(lambda conn: conn.execute(select(RUNS.c.attempts).where(RUNS.c.id == run_id))
                           .scalar_one(), write=False))
