"""Table handles, value encoding and row -> record conversion shared by the ``Store`` modules.

Non-finite floats are stored explicitly (a ``kind`` column and a NULL value; ``{"$float": ...}`` inside JSON,
which PostgreSQL's json type would otherwise reject), and every row leaves the database as a frozen record
of ``ebt_scaling.records``, never as an ORM row.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, TypeVar, cast

from sqlalchemy import Table
from sqlalchemy.engine import Row

from ebt_scaling.db import schema
from ebt_scaling.records import CalibrationRecord, RunRecord, SweepRecord, value_kind

T = TypeVar("T")

SWEEPS = cast(Table, schema.Sweep.__table__)
RUNS = cast(Table, schema.Run.__table__)
MEMBERS = cast(Table, schema.SweepRun.__table__)
PARAMS = cast(Table, schema.RunParam.__table__)
FLOPS = cast(Table, schema.RunFlops.__table__)
SUMMARY = cast(Table, schema.RunSummary.__table__)
METRICS = cast(Table, schema.Metric.__table__)
FITS = cast(Table, schema.Fit.__table__)
FIT_RUNS = cast(Table, schema.FitRun.__table__)
CANCELS = cast(Table, schema.CancelRequest.__table__)
CALIBRATIONS = cast(Table, schema.Calibration.__table__)

CHUNK = 500  # ids per IN (...) list: below SQLite's variable limit


def chunks(seq: Sequence[T], n: int = CHUNK) -> Iterator[Sequence[T]]:
    for i in range(0, len(seq), n):
        yield seq[i:i + n]


def encode_value(v: float) -> tuple[float | None, str]:
    """(value, kind) as stored: non-finite values have a kind and a NULL value."""
    v = float(v)
    kind = value_kind(v)
    return (v if kind == "finite" else None), kind


def decode_value(value: float | None, kind: str) -> float:
    if kind == "finite":
        return float(value)  # type: ignore[arg-type]
    return {"nan": math.nan, "inf": math.inf, "-inf": -math.inf}[kind]


def finite_or_none(v: Any) -> float | None:
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


def dedup(rows: list[dict[str, Any]], key: tuple[str, ...]) -> list[dict[str, Any]]:
    out: dict[tuple[Any, ...], dict[str, Any]] = {}
    for r in rows:
        out[tuple(r[k] for k in key)] = r
    return list(out.values())


def sweep_record(row: Row[Any]) -> SweepRecord:
    return SweepRecord(id=row.id, name=row.name, axis=row.axis, spec=from_json(row.spec), created_at=row.created_at,
                       code_version=row.code_version)


def run_record(r: Row[Any], params: dict[str, int], flops: dict[str, float], extra: dict[str, float]) -> RunRecord:
    """A run as seen from one sweep: ``r`` carries the run's columns and the membership's sweep name, axis
    and x (``sweep_name``, ``link_axis``, ``link_x``)."""
    return RunRecord(
        id=r.id, sweep=r.sweep_name, family=r.family, axis=r.link_axis, x=float(r.link_x), seed=int(r.seed),
        config_hash=r.config_hash, status=r.status, config=from_json(r.config), reason=r.reason,
        attempts=int(r.attempts), final_val_loss=r.final_val_loss, final_train_loss=r.final_train_loss,
        final_val_ppl=r.final_val_ppl, params=params, flops_per_token=flops,
        tokens=int(r.tokens) if r.tokens is not None else None, fit_eligible=bool(r.fit_eligible), source=r.source,
        created_at=r.created_at, started_at=r.started_at, finished_at=r.finished_at, heartbeat_at=r.heartbeat_at,
        host=r.host, device=r.device, checkpoint_dir=r.checkpoint_dir, extra_metrics=extra)


def calibration_record(r: Row[Any]) -> CalibrationRecord:
    return CalibrationRecord(
        id=r.id, device_kind=r.device_kind, device_name=r.device_name, family=r.family, shape_key=r.shape_key,
        precision=r.precision, recipe=r.recipe or None, threads=int(r.threads), batch_size=int(r.batch_size),
        flops_per_step=float(r.flops_per_step), seconds_per_step=float(r.seconds_per_step), steps=int(r.steps),
        warmup=int(r.warmup), host=r.host, torch_version=r.torch_version, measured_at=r.measured_at)
