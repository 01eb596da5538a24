"""``Store``: the results database behind one small API that takes and returns frozen records.

Every public method is one unit of work (one transaction, retried as a whole on transient lock errors)
and returns records from ``ebt_scaling.records``, never ORM rows. SQLAlchemy errors leave as the
project's exceptions (``DuplicateError``, ``NotFound``, ``StoreError``) with credentials masked.

    with Store("sqlite:///ebt_scale.db") as store:
        store.create_sweep("depth-tiny", "depth", spec={...}, code_version="abc123")
        runs = store.plan_runs("depth-tiny", planned)          # idempotent on config_hash
        store.mark_running(runs[0].id, host="node1")
        store.log_metrics(runs[0].id, [MetricPoint("val_loss", 100, 3.2)])
        store.finish_run(runs[0].id, "completed", result={"final_val_loss": 3.2})
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, TypeVar, cast

from sqlalchemy import ColumnElement, Select, Table, and_, delete, func, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, Row
from sqlalchemy.exc import SQLAlchemyError

from ebt_scaling.db import schema
from ebt_scaling.db.engine import (
    SQLITE_BEGIN,
    WriterLock,
    make_engine,
    parse_url,
    sqlite_path,
    translate,
    with_retries,
)
from ebt_scaling.db.migrate import ensure_schema
from ebt_scaling.errors import DuplicateError, NotFound, StoreError
from ebt_scaling.names import name_problem
from ebt_scaling.records import (
    RUN_STATUSES,
    TERMINAL_STATUSES,
    CalibrationRecord,
    FitRecord,
    MetricPoint,
    PlannedRun,
    RunRecord,
    SweepRecord,
    value_kind,
)
from ebt_scaling.security import mask_url

T = TypeVar("T")

SWEEPS = cast(Table, schema.Sweep.__table__)
RUNS = cast(Table, schema.Run.__table__)
PARAMS = cast(Table, schema.RunParam.__table__)
FLOPS = cast(Table, schema.RunFlops.__table__)
SUMMARY = cast(Table, schema.RunSummary.__table__)
METRICS = cast(Table, schema.Metric.__table__)
FITS = cast(Table, schema.Fit.__table__)
FIT_RUNS = cast(Table, schema.FitRun.__table__)
CANCELS = cast(Table, schema.CancelRequest.__table__)
CALIBRATIONS = cast(Table, schema.Calibration.__table__)

#: Axis of a sweep whose imported rows span several axes.
MIXED_AXIS = "mixed"
_CHUNK = 500  # ids per IN (...) list: below SQLite's variable limit


# ------------------------------------------------------------------ value encoding


def encode_value(v: float) -> tuple[float | None, str]:
    """(value, kind) as stored: non-finite values have a kind and a NULL value."""
    v = float(v)
    kind = value_kind(v)
    return (v if kind == "finite" else None), kind


def decode_value(value: float | None, kind: str) -> float:
    if kind == "finite":
        return float(value)  # type: ignore[arg-type]
    return {"nan": math.nan, "inf": math.inf, "-inf": -math.inf}[kind]


def _finite_or_none(v: Any) -> float | None:
    if v is None:
        return None
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def to_json(obj: Any) -> Any:
    """JSON-safe copy: non-finite floats become ``{"$float": "nan"|"inf"|"-inf"}`` (PostgreSQL's json type
    rejects NaN/Infinity tokens); tuples become lists."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return {"$float": value_kind(obj)}
    if isinstance(obj, Mapping):
        return {str(k): to_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_json(v) for v in obj]
    return obj


def from_json(obj: Any) -> Any:
    if isinstance(obj, dict):
        if len(obj) == 1 and "$float" in obj:
            return decode_value(None, obj["$float"])
        return {k: from_json(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [from_json(v) for v in obj]
    return obj


def imported_config_hash(sweep: str, family: str, axis: str, x: float, seed: int, key: str | None = None) -> str:
    """Identity of an imported run: the same (sweep, family, axis, x, seed[, key]) is the same run. ``key``
    tells apart points that share the rest (e.g. two EBT recipes in one sweep)."""
    ident: dict[str, Any] = {"source": "imported", "sweep": sweep, "family": family, "axis": axis,
                             "x": repr(float(x)), "seed": int(seed)}
    if key is not None:
        ident["key"] = str(key)
    payload = json.dumps(ident, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(payload.encode()).hexdigest()


def _chunks(seq: Sequence[T], n: int = _CHUNK) -> Iterator[Sequence[T]]:
    for i in range(0, len(seq), n):
        yield seq[i:i + n]


@dataclass(frozen=True)
class ImportRow:
    """One validated row of an imported CSV (see ``ebt_scaling.db.importer``)."""

    line: int
    family: str
    axis: str
    x: float
    seed: int
    val_loss: float
    train_loss: float | None = None
    val_ppl: float | None = None
    tokens: int | None = None
    extra: tuple[tuple[str, float], ...] = ()
    #: Optional identity suffix for points that share (family, axis, x, seed) within one sweep.
    key: str | None = None


@dataclass(frozen=True)
class ImportSummary:
    sweep: str
    created: int
    updated: int

    @property
    def total(self) -> int:
        return self.created + self.updated


class Store:
    """The results database at ``url``: created at the current schema revision if empty, unless ``create``
    is False (read-only commands), where a missing SQLite file or an empty database is a StoreError and
    nothing is written."""

    def __init__(self, url: str, create: bool = True) -> None:
        self._raw_url = url
        self.url = mask_url(url)
        # Seconds a lost or refused connection is retried before an operation fails (0: fail at once). A sweep
        # driver sets it (``run_sweep``), so that a database restart does not abort days of training.
        self.reconnect_s = 0.0
        if not create:
            path = sqlite_path(parse_url(url))
            if path is not None and not path.is_file():
                raise StoreError(f"database {path} does not exist; check --db or EBT_SCALE_DB (only ebt-scale "
                                 "sweep, import and db upgrade create a database)")
        self._engine = make_engine(url)
        self.dialect = self._engine.dialect.name
        self._writer_lock = WriterLock(self._engine)
        try:
            ensure_schema(self._engine, url, create=create)
        except BaseException:
            self._engine.dispose()
            raise

    # -------------------------------------------------------------- plumbing

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

    def close(self) -> None:
        self._engine.dispose()
        self._writer_lock.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Store({self.url!r})"

    @contextmanager
    def _tx(self, write: bool) -> Iterator[Connection]:
        if write:
            with self._writer_lock.hold(), self._engine.connect() as c0:
                conn = c0.execution_options(**{SQLITE_BEGIN: "IMMEDIATE"})
                with conn.begin():
                    yield conn
        else:
            with self._engine.connect() as conn, conn.begin():
                yield conn

    def _unit(self, fn: Callable[[Connection], T], *, write: bool = True, what: str = "") -> T:
        def attempt() -> T:
            with self._tx(write) as conn:
                return fn(conn)

        try:
            return with_retries(attempt, reconnect_s=self.reconnect_s)
        except SQLAlchemyError as exc:
            raise translate(exc, self._raw_url, what) from None

    def _now(self, conn: Connection) -> datetime:
        """Current naive UTC time: the server's clock on PostgreSQL (shared by every host), else this host's
        (SQLite is single-host)."""
        if self.dialect == "postgresql":
            return conn.execute(select(func.timezone("UTC", func.now()))).scalar_one()  # type: ignore[no-any-return]
        return datetime.now(timezone.utc).replace(tzinfo=None)

    def _insert(self, table: Any) -> Any:
        return (postgresql.insert if self.dialect == "postgresql" else sqlite.insert)(table)

    # -------------------------------------------------------------- sweeps

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
        return _sweep(row)

    def get_sweep(self, name: str) -> SweepRecord:
        def unit(conn: Connection) -> SweepRecord:
            row = conn.execute(select(SWEEPS).where(SWEEPS.c.name == name)).one_or_none()
            if row is None:
                self._sweep_id(conn, name)  # raises NotFound naming the closest sweeps
            return _sweep(row)

        return self._unit(unit, write=False)

    def list_sweeps(self) -> list[SweepRecord]:
        return self._unit(lambda conn: [_sweep(r) for r in conn.execute(select(SWEEPS).order_by(SWEEPS.c.id))],
                          write=False)

    def _sweep_id(self, conn: Connection, name: str) -> int:
        sid = conn.execute(select(SWEEPS.c.id).where(SWEEPS.c.name == name)).scalar_one_or_none()
        if sid is None:
            import difflib

            names = list(conn.execute(select(SWEEPS.c.name)).scalars())
            close = difflib.get_close_matches(name, names, n=3, cutoff=0.5)
            hint = (f"did you mean {', '.join(repr(c) for c in close)}?" if close else
                    "`ebt-scale sweeps` lists them" if names else
                    "create it first (ebt-scale sweep or ebt-scale import)")
            raise NotFound(f"no sweep named {name!r}; {hint}")
        return int(sid)

    # -------------------------------------------------------------- runs

    def plan_runs(self, sweep: str, runs: Sequence[PlannedRun]) -> list[RunRecord]:
        """Insert planned runs, skipping any whose config_hash is already stored (INSERT ... ON CONFLICT DO
        NOTHING, atomic across processes); returns the stored records in input order."""
        runs = list(runs)

        def unit(conn: Connection) -> list[RunRecord]:
            sid = self._sweep_id(conn, sweep)
            if not runs:
                return []
            now = self._now(conn)
            rows = [dict(sweep_id=sid, family=r.family, axis=r.axis, x=float(r.x), seed=int(r.seed),
                         config_hash=r.config_hash, config=to_json(r.config), source="trained", status="planned",
                         attempts=0, fit_eligible=False, tokens=r.tokens, created_at=now) for r in runs]
            first: dict[str, dict[str, Any]] = {}
            for row in rows:  # input order, first occurrence of each hash
                first.setdefault(row["config_hash"], row)
            unique_rows = list(first.values())
            conn.execute(self._insert(RUNS).on_conflict_do_nothing(index_elements=["config_hash"]), unique_rows)
            hashes = [r["config_hash"] for r in unique_rows]
            ids = self._ids_by_hash(conn, hashes)
            new_params, new_flops = [], []
            for r in runs:
                rid = ids[r.config_hash]
                new_params += [dict(run_id=rid, name=k, count=int(v)) for k, v in r.params.items()]
                new_flops += [dict(run_id=rid, convention=k, flops_per_token=float(v))
                              for k, v in r.flops_per_token.items()]
            if new_params:
                conn.execute(self._insert(PARAMS).on_conflict_do_nothing(), _dedup(new_params, ("run_id", "name")))
            if new_flops:
                conn.execute(self._insert(FLOPS).on_conflict_do_nothing(),
                             _dedup(new_flops, ("run_id", "convention")))
            by_id = {rec.id: rec for rec in self._records(conn, RUNS.c.id.in_(list(ids.values())))}
            return [by_id[ids[r.config_hash]] for r in runs]

        return self._unit(unit, what=f"planning runs of sweep {sweep!r}")

    def _ids_by_hash(self, conn: Connection, hashes: Sequence[str]) -> dict[str, int]:
        out: dict[str, int] = {}
        for chunk in _chunks(list(hashes)):
            out.update({h: i for i, h in conn.execute(select(RUNS.c.id, RUNS.c.config_hash)
                                                      .where(RUNS.c.config_hash.in_(chunk)))})
        return out

    def _update_run(self, conn: Connection, run_id: int, **values: Any) -> None:
        res = conn.execute(update(RUNS).where(RUNS.c.id == run_id).values(**values))
        if res.rowcount == 0:
            raise NotFound(f"no run with id {run_id}; list runs with `ebt-scale runs`")

    def mark_running(self, run_id: int, host: str | None = None, device: str | None = None) -> RunRecord:
        """A run (re)starts: status running, attempts + 1, start time and heartbeat now."""

        def unit(conn: Connection) -> RunRecord:
            now = self._now(conn)
            values: dict[str, Any] = dict(status="running", attempts=RUNS.c.attempts + 1, started_at=now,
                                          heartbeat_at=now, finished_at=None, reason=None)
            if host is not None:
                values["host"] = host
            if device is not None:
                values["device"] = device
            self._update_run(conn, run_id, **values)
            return self._one(conn, run_id)

        return self._unit(unit, what=f"starting run {run_id}")

    def heartbeat(self, run_id: int) -> None:
        self._unit(lambda conn: self._update_run(conn, run_id, heartbeat_at=self._now(conn)),
                   what=f"heartbeat of run {run_id}")

    def heartbeat_many(self, run_ids: Sequence[int]) -> int:
        """Heartbeat several runs in one transaction (the driver's periodic tick); returns how many exist."""
        ids = sorted({int(r) for r in run_ids})
        if not ids:
            return 0

        def unit(conn: Connection) -> int:
            now = self._now(conn)
            return sum(int(conn.execute(update(RUNS).where(RUNS.c.id.in_(chunk)).values(heartbeat_at=now)).rowcount)
                       for chunk in _chunks(ids))

        return self._unit(unit, what="heartbeat")

    def finish_run(self, run_id: int, status: str, *, reason: str | None = None,
                   result: Mapping[str, Any] | None = None) -> RunRecord:
        """Record the end of a run. ``result`` may hold final_train_loss, final_val_loss, final_val_ppl,
        params, flops_per_token, tokens, checkpoint_dir, device (a ``RunResult`` as a dict works: its
        ``steps``, ``wall_time_s`` and numeric ``extra`` values go to the run's summary metrics).
        Non-finite final values are stored as NULL; ``fit_eligible`` = completed with a finite val loss."""
        if status not in TERMINAL_STATUSES:
            raise StoreError(f"finish_run: status {status!r} is not terminal; use one of "
                             f"{', '.join(TERMINAL_STATUSES)}")
        result = dict(result or {})

        def unit(conn: Connection) -> RunRecord:
            values: dict[str, Any] = dict(status=status, reason=reason, finished_at=self._now(conn))
            for key in ("final_train_loss", "final_val_loss", "final_val_ppl"):
                if key in result:
                    values[key] = _finite_or_none(result[key])
            for key in ("checkpoint_dir", "device"):
                if result.get(key) is not None:
                    values[key] = str(result[key])
            if result.get("tokens") is not None:
                values["tokens"] = int(result["tokens"])
            if "final_val_loss" in values:
                val = values["final_val_loss"]
            else:
                val = conn.execute(select(RUNS.c.final_val_loss).where(RUNS.c.id == run_id)).scalar_one_or_none()
            values["fit_eligible"] = status == "completed" and val is not None
            self._update_run(conn, run_id, **values)
            self._replace_map(conn, PARAMS, run_id, "name", "count",
                              {k: int(v) for k, v in (result.get("params") or {}).items()})
            self._replace_map(conn, FLOPS, run_id, "convention", "flops_per_token",
                              {k: float(v) for k, v in (result.get("flops_per_token") or {}).items()})
            summary: dict[str, float] = {}
            for key in ("steps", "wall_time_s"):
                if isinstance(result.get(key), (int, float)) and not isinstance(result.get(key), bool):
                    summary[key] = float(result[key])
            for source in (result.get("extra") or {}, result.get("summary") or {}):
                for k, v in source.items():
                    if isinstance(v, (int, float)) and not isinstance(v, bool):
                        summary[str(k)] = float(v)
            self._upsert_summary(conn, run_id, summary)
            return self._one(conn, run_id)

        return self._unit(unit, what=f"finishing run {run_id}")

    def _replace_map(self, conn: Connection, table: Any, run_id: int, key: str, col: str,
                     values: dict[str, Any]) -> None:
        if not values:
            return
        conn.execute(delete(table).where(and_(table.c.run_id == run_id, table.c[key].in_(list(values)))))
        conn.execute(table.insert(), [{"run_id": run_id, key: k, col: v} for k, v in values.items()])

    def _upsert_summary(self, conn: Connection, run_id: int, values: Mapping[str, float]) -> None:
        if not values:
            return
        rows = []
        for k, v in values.items():
            val, kind = encode_value(v)
            rows.append(dict(run_id=run_id, name=k, value=val, kind=kind))
        ins = self._insert(SUMMARY)
        conn.execute(ins.on_conflict_do_update(index_elements=["run_id", "name"],
                                               set_={"value": ins.excluded.value, "kind": ins.excluded.kind}), rows)

    def reset_interrupted(self, sweep: str) -> int:
        """Runs of ``sweep`` left ``running`` by a dead driver go back to ``planned``; returns how many."""

        def unit(conn: Connection) -> int:
            sid = self._sweep_id(conn, sweep)
            res = conn.execute(update(RUNS).where(and_(RUNS.c.sweep_id == sid, RUNS.c.status == "running"))
                               .values(status="planned", heartbeat_at=None))
            return int(res.rowcount)

        return self._unit(unit, what=f"resetting interrupted runs of {sweep!r}")

    def set_checkpoint(self, run_id: int, path: str | None) -> None:
        self._unit(lambda conn: self._update_run(conn, run_id, checkpoint_dir=path),
                   what=f"setting the checkpoint of run {run_id}")

    def set_status(self, run_id: int, status: str, reason: str | None = None) -> RunRecord:
        """Set any status (e.g. ``cancelled`` or back to ``planned``) without touching results."""
        if status not in RUN_STATUSES:
            raise StoreError(f"unknown run status {status!r}; use one of {', '.join(RUN_STATUSES)}")

        def unit(conn: Connection) -> RunRecord:
            values: dict[str, Any] = {"status": status, "reason": reason}
            if status != "completed":
                values["fit_eligible"] = False
            self._update_run(conn, run_id, **values)
            return self._one(conn, run_id)

        return self._unit(unit, what=f"setting the status of run {run_id}")

    def get_run(self, run_id: int) -> RunRecord:
        return self._unit(lambda conn: self._one(conn, run_id), write=False)

    def get_run_by_hash(self, config_hash: str) -> RunRecord:
        def unit(conn: Connection) -> RunRecord:
            recs = self._records(conn, RUNS.c.config_hash == config_hash)
            if not recs:
                raise NotFound(f"no run with config hash {config_hash[:16]}...")
            return recs[0]

        return self._unit(unit, write=False)

    def stored_hashes(self, hashes: Sequence[str]) -> set[str]:
        """Those of ``hashes`` that name a stored run."""
        return set(self._unit(lambda conn: self._ids_by_hash(conn, list(hashes)), write=False))

    def find_run_by_hash(self, config_hash: str) -> RunRecord | None:
        """Like ``get_run_by_hash`` but None when absent."""
        try:
            return self.get_run_by_hash(config_hash)
        except NotFound:
            return None

    def list_runs(self, sweep: str | None = None, axis: str | None = None,
                  status: str | Iterable[str] | None = None, family: str | None = None,
                  fit_eligible: bool | None = None) -> list[RunRecord]:
        """Runs matching every given filter, ordered by id."""
        conds: list[ColumnElement[bool]] = []
        if sweep is not None:
            conds.append(RUNS.c.sweep_id.in_(select(SWEEPS.c.id).where(SWEEPS.c.name == sweep)))
        if axis is not None:
            conds.append(RUNS.c.axis == axis)
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
        where = and_(*conds) if conds else None
        return self._unit(lambda conn: self._records(conn, where), write=False)

    def _one(self, conn: Connection, run_id: int) -> RunRecord:
        recs = self._records(conn, RUNS.c.id == run_id)
        if not recs:
            raise NotFound(f"no run with id {run_id}; list runs with `ebt-scale runs`")
        return recs[0]

    def _records(self, conn: Connection, where: ColumnElement[bool] | None) -> list[RunRecord]:
        q: Select[Any] = select(RUNS, SWEEPS.c.name.label("sweep_name")).join(SWEEPS, SWEEPS.c.id == RUNS.c.sweep_id)
        ids_q = select(RUNS.c.id)
        if where is not None:
            q = q.where(where)
            ids_q = ids_q.where(where)
        rows = conn.execute(q.order_by(RUNS.c.id)).all()
        if not rows:
            return []
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
        return [_run(r, params.get(r.id, {}), flops.get(r.id, {}), extra.get(r.id, {})) for r in rows]

    # -------------------------------------------------------------- metrics

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
            for chunk in _chunks(list(run_ids)):
                q = (select(METRICS.c.run_id, METRICS.c.name, METRICS.c.step, METRICS.c.value, METRICS.c.kind)
                     .where(METRICS.c.run_id.in_(chunk), METRICS.c.name.in_(list(names)))
                     .order_by(METRICS.c.run_id, METRICS.c.name, METRICS.c.step))
                for rid, n, st, v, k in conn.execute(q):
                    out.setdefault(int(rid), {}).setdefault(n, []).append(MetricPoint(n, int(st), decode_value(v, k)))
            return out

        return self._unit(unit, write=False)

    def metric_names(self, run_id: int | None = None, prefix: str | None = None) -> list[str]:
        """Distinct metric names (of one run, or all), optionally starting with ``prefix``
        (e.g. ``think_ppl/``)."""

        def unit(conn: Connection) -> list[str]:
            q = select(METRICS.c.name).distinct()
            if run_id is not None:
                q = q.where(METRICS.c.run_id == run_id)
            names = sorted(conn.execute(q).scalars())
            return [n for n in names if prefix is None or n.startswith(prefix)]

        return self._unit(unit, write=False)

    def final_metrics(self, run_ids: Sequence[int], name: str) -> dict[int, MetricPoint]:
        """The point with the highest step of series ``name`` for each run that has one."""

        def unit(conn: Connection) -> dict[int, MetricPoint]:
            out: dict[int, MetricPoint] = {}
            for chunk in _chunks(list(run_ids)):
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

    # -------------------------------------------------------------- import

    def import_rows(self, sweep: str, rows: Sequence[ImportRow] | Any, *,
                    source_name: str | None = None) -> ImportSummary:
        """Store validated CSV rows as completed, fit-eligible runs with source ``imported``, all in one
        transaction. ``rows``: a sequence, or a validated file (``importer.ImportFile``: ``axes`` and
        ``chunks()``) written chunk by chunk in bounded memory. Re-importing the same rows changes nothing;
        changed values of the same (family, axis, x, seed) replace the stored ones. The sweep is created if
        needed with the rows' axis (or ``mixed`` when they span several); an existing sweep must have a
        matching axis."""
        if (why := name_problem(sweep)) is not None:
            raise StoreError(f"--sweep {ascii(sweep)[:80]} {why}; pass a name such as --sweep depth-tiny")
        if hasattr(rows, "chunks"):
            axes, chunks = list(rows.axes), rows.chunks
        else:
            rows = list(rows)
            axes = sorted({r.axis for r in rows})
            chunks = lambda: iter([rows])  # noqa: E731 - one chunk, re-iterable on a retry
        if not axes:
            raise StoreError("nothing to import: the file has no data rows")
        sweep_axis = axes[0] if len(axes) == 1 else MIXED_AXIS

        def unit(conn: Connection) -> ImportSummary:
            existing = conn.execute(select(SWEEPS).where(SWEEPS.c.name == sweep)).one_or_none()
            if existing is not None and existing.axis != sweep_axis and existing.axis != MIXED_AXIS:
                raise StoreError(f"sweep {sweep!r} has axis {existing.axis!r} but the file has axis "
                                 f"{', '.join(axes)}; import into another --sweep")
            sw = self._create_sweep(conn, sweep, existing.axis if existing is not None else sweep_axis,
                                    {"imported_from": source_name} if source_name else {}, None)
            now = self._now(conn)
            created = updated = 0
            for chunk in chunks():
                c, u = self._import_chunk(conn, sw.id, sweep, chunk, source_name, now)
                created += c
                updated += u
            return ImportSummary(sweep=sweep, created=created, updated=updated)

        return self._unit(unit, what=f"importing into sweep {sweep!r}")

    def _import_chunk(self, conn: Connection, sweep_id: int, sweep: str, rows: Sequence[ImportRow],
                      source_name: str | None, now: datetime) -> tuple[int, int]:
        """Upsert one chunk of imported rows and their summary values; returns (created, updated)."""
        by_hash: dict[str, ImportRow] = {}
        for r in rows:
            by_hash[imported_config_hash(sweep, r.family, r.axis, r.x, r.seed, getattr(r, "key", None))] = r
        before = self._ids_by_hash(conn, list(by_hash))
        values = []
        for h, r in by_hash.items():
            ppl = r.val_ppl if r.val_ppl is not None else _safe_exp(r.val_loss)
            values.append(dict(sweep_id=sweep_id, family=r.family, axis=r.axis, x=r.x, seed=r.seed, config_hash=h,
                               config={"imported": True, "source_file": source_name, "line": r.line},
                               source="imported", status="completed", attempts=0, fit_eligible=True,
                               final_val_loss=r.val_loss, final_train_loss=r.train_loss, final_val_ppl=ppl,
                               tokens=r.tokens, created_at=now, finished_at=now))
        ins = self._insert(RUNS)
        conn.execute(ins.on_conflict_do_update(
            index_elements=["config_hash"],
            set_={c: ins.excluded[c] for c in ("final_val_loss", "final_train_loss", "final_val_ppl", "tokens",
                                               "status", "fit_eligible")}), values)
        ids = self._ids_by_hash(conn, list(by_hash))
        summary_rows = []
        for h, r in by_hash.items():
            for name, v in r.extra:
                val, kind = encode_value(v)
                summary_rows.append(dict(run_id=ids[h], name=name, value=val, kind=kind))
        for chunk in _chunks(list(ids.values())):
            conn.execute(delete(SUMMARY).where(SUMMARY.c.run_id.in_(chunk)))
        if summary_rows:
            conn.execute(SUMMARY.insert(), summary_rows)
        return len(by_hash) - len(before), len(before)

    # -------------------------------------------------------------- fits

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

    def delete_fits(self, sweep: str, axis: str | None = None) -> int:
        def unit(conn: Connection) -> int:
            sid = self._sweep_id(conn, sweep)
            cond = FITS.c.sweep_id == sid
            if axis is not None:
                cond = and_(cond, FITS.c.axis == axis)
            conn.execute(delete(FIT_RUNS).where(FIT_RUNS.c.fit_id.in_(select(FITS.c.id).where(cond))))
            return int(conn.execute(delete(FITS).where(cond)).rowcount)

        return self._unit(unit, what=f"deleting fits of {sweep!r}")

    def _fits(self, conn: Connection, where: ColumnElement[bool] | None) -> list[FitRecord]:
        q = select(FITS, SWEEPS.c.name.label("sweep_name")).join(SWEEPS, SWEEPS.c.id == FITS.c.sweep_id)
        if where is not None:
            q = q.where(where)
        rows = conn.execute(q.order_by(FITS.c.id)).all()
        if not rows:
            return []
        links: dict[int, list[int]] = {}
        for chunk in _chunks([r.id for r in rows]):
            for fid, rid in conn.execute(select(FIT_RUNS.c.fit_id, FIT_RUNS.c.run_id)
                                         .where(FIT_RUNS.c.fit_id.in_(chunk))):
                links.setdefault(fid, []).append(int(rid))
        return [FitRecord(id=r.id, sweep=r.sweep_name, axis=r.axis, family=r.family, method=r.method,
                          params=from_json(r.params), run_ids=tuple(sorted(links.get(r.id, []))),
                          fingerprint=r.fingerprint, created_at=r.created_at) for r in rows]

    # -------------------------------------------------------------- throughput calibrations

    def save_calibration(self, cal: CalibrationRecord) -> CalibrationRecord:
        """Store a measured throughput; it replaces an earlier one of the same (device name, family, shape key,
        precision, recipe, threads). Returns the stored record (with its id and measurement time)."""
        if cal.device_kind not in schema.DEVICE_KINDS:
            raise StoreError(f"calibration device_kind {cal.device_kind!r}: use one of "
                             f"{', '.join(schema.DEVICE_KINDS)}")
        if not (cal.seconds_per_step > 0 and cal.flops_per_step > 0 and math.isfinite(cal.flops_per_s)):
            raise StoreError(f"calibration of {cal.family} {cal.shape_key}: seconds and FLOPs per step must be > 0 "
                             f"and finite, got {cal.seconds_per_step!r} s and {cal.flops_per_step!r} FLOPs")
        key = dict(device_name=cal.device_name, family=cal.family, shape_key=cal.shape_key, precision=cal.precision,
                   recipe=cal.recipe or "", threads=int(cal.threads))

        def unit(conn: Connection) -> CalibrationRecord:
            values = dict(key, device_kind=cal.device_kind, batch_size=int(cal.batch_size),
                          flops_per_step=float(cal.flops_per_step), seconds_per_step=float(cal.seconds_per_step),
                          steps=int(cal.steps), warmup=int(cal.warmup), host=cal.host,
                          torch_version=cal.torch_version, measured_at=cal.measured_at or self._now(conn))
            where = and_(*(CALIBRATIONS.c[k] == v for k, v in key.items()))
            conn.execute(delete(CALIBRATIONS).where(where))
            conn.execute(CALIBRATIONS.insert().values(**values))
            return _calibration(conn.execute(select(CALIBRATIONS).where(where)).one())

        return self._unit(unit, what=f"saving a calibration of {cal.family} {cal.shape_key} on {cal.device_name}")

    def list_calibrations(self, device_kind: str | None = None,
                          device_name: str | None = None) -> list[CalibrationRecord]:
        """Stored calibrations, optionally of one device kind (``cpu``/``cuda``) or device name; ordered by
        device, family, shape key, precision."""
        conds = []
        if device_kind is not None:
            conds.append(CALIBRATIONS.c.device_kind == device_kind)
        if device_name is not None:
            conds.append(CALIBRATIONS.c.device_name == device_name)
        q = select(CALIBRATIONS).where(and_(*conds)) if conds else select(CALIBRATIONS)
        q = q.order_by(CALIBRATIONS.c.device_name, CALIBRATIONS.c.family, CALIBRATIONS.c.shape_key,
                       CALIBRATIONS.c.precision, CALIBRATIONS.c.recipe, CALIBRATIONS.c.threads)
        return self._unit(lambda conn: [_calibration(r) for r in conn.execute(q)], write=False)

    # -------------------------------------------------------------- dataframes

    def runs_dataframe(self, **filters: Any) -> Any:
        """The runs matching ``list_runs(**filters)`` as a pandas DataFrame, one row per run; parameter
        counts as ``params_<group>``, FLOPs as ``flops_<convention>``, summary metrics by name."""
        import pandas as pd

        runs = self.list_runs(**filters)
        return pd.DataFrame([run_row(r) for r in runs], columns=None if runs else list(BASE_COLUMNS))

    def metrics_dataframe(self, sweep: str | None = None, name: str | None = None,
                          run_ids: Sequence[int] | None = None) -> Any:
        """Metric points in long form: run_id, sweep, family, axis, x, seed, name, step, value."""
        import pandas as pd

        def unit(conn: Connection) -> list[tuple[Any, ...]]:
            q = (select(METRICS.c.run_id, SWEEPS.c.name, RUNS.c.family, RUNS.c.axis, RUNS.c.x, RUNS.c.seed,
                        METRICS.c.name, METRICS.c.step, METRICS.c.value, METRICS.c.kind)
                 .join(RUNS, RUNS.c.id == METRICS.c.run_id).join(SWEEPS, SWEEPS.c.id == RUNS.c.sweep_id))
            if sweep is not None:
                q = q.where(SWEEPS.c.name == sweep)
            if name is not None:
                q = q.where(METRICS.c.name == name)
            if run_ids is not None:
                q = q.where(METRICS.c.run_id.in_(list(run_ids)))
            return [tuple(r) for r in conn.execute(q.order_by(METRICS.c.run_id, METRICS.c.name, METRICS.c.step))]

        rows = self._unit(unit, write=False)
        return pd.DataFrame([(*r[:8], decode_value(r[8], r[9])) for r in rows],
                            columns=["run_id", "sweep", "family", "axis", "x", "seed", "name", "step", "value"])


BASE_COLUMNS = ("run_id", "sweep", "family", "axis", "x", "seed", "status", "source", "fit_eligible",
                "final_val_loss", "final_train_loss", "final_val_ppl", "tokens", "attempts", "reason", "host",
                "device", "checkpoint_dir", "config_hash", "created_at", "started_at", "finished_at",
                "heartbeat_at")


def run_row(r: RunRecord) -> dict[str, Any]:
    """A flat dict of one run (for tables, CSV, JSON and DataFrames)."""
    d: dict[str, Any] = {c: getattr(r, "id" if c == "run_id" else c) for c in BASE_COLUMNS}
    for k, n in sorted(r.params.items()):
        d[f"params_{k}"] = n
    for k, f in sorted(r.flops_per_token.items()):
        d[f"flops_{k}"] = f
    for k, v in sorted(r.extra_metrics.items()):
        d[k if k not in d else f"summary_{k}"] = v
    return d


def _safe_exp(v: float) -> float | None:
    try:
        out = math.exp(v)
    except OverflowError:
        return None
    return out if math.isfinite(out) else None


def _dedup(rows: list[dict[str, Any]], key: tuple[str, ...]) -> list[dict[str, Any]]:
    out: dict[tuple[Any, ...], dict[str, Any]] = {}
    for r in rows:
        out[tuple(r[k] for k in key)] = r
    return list(out.values())


def _sweep(row: Row[Any]) -> SweepRecord:
    return SweepRecord(id=row.id, name=row.name, axis=row.axis, spec=from_json(row.spec), created_at=row.created_at,
                       code_version=row.code_version)


def _run(r: Row[Any], params: dict[str, int], flops: dict[str, float], extra: dict[str, float]) -> RunRecord:
    return RunRecord(
        id=r.id, sweep=r.sweep_name, family=r.family, axis=r.axis, x=float(r.x), seed=int(r.seed),
        config_hash=r.config_hash, status=r.status, config=from_json(r.config), reason=r.reason,
        attempts=int(r.attempts), final_val_loss=r.final_val_loss, final_train_loss=r.final_train_loss,
        final_val_ppl=r.final_val_ppl, params=params, flops_per_token=flops,
        tokens=int(r.tokens) if r.tokens is not None else None, fit_eligible=bool(r.fit_eligible), source=r.source,
        created_at=r.created_at, started_at=r.started_at, finished_at=r.finished_at, heartbeat_at=r.heartbeat_at,
        host=r.host, device=r.device, checkpoint_dir=r.checkpoint_dir, extra_metrics=extra)


def _calibration(r: Row[Any]) -> CalibrationRecord:
    return CalibrationRecord(
        id=r.id, device_kind=r.device_kind, device_name=r.device_name, family=r.family, shape_key=r.shape_key,
        precision=r.precision, recipe=r.recipe or None, threads=int(r.threads), batch_size=int(r.batch_size),
        flops_per_step=float(r.flops_per_step), seconds_per_step=float(r.seconds_per_step), steps=int(r.steps),
        warmup=int(r.warmup), host=r.host, torch_version=r.torch_version, measured_at=r.measured_at)
