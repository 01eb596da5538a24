"""Imported results (CSV files, and the evaluations of long data-axis runs): completed, fit-eligible runs
with source ``imported``, each its own row, linked to the sweep it was imported into."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.engine import Connection

from ebt_scaling.db.codec import FLOPS, PARAMS, RUNS, SUMMARY, SWEEPS, chunks, encode_value, imported_config_hash
from ebt_scaling.db.sweeps import Sweeps
from ebt_scaling.errors import StoreError
from ebt_scaling.names import name_problem

#: Axis of a sweep whose imported rows span several axes.
MIXED_AXIS = "mixed"


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
    #: axis = isoflop rows: the counted parameters N and the training FLOPs C (the run's params/flops tables)
    params: int | None = None
    flops: float | None = None


@dataclass(frozen=True)
class ImportSummary:
    sweep: str
    created: int
    updated: int

    @property
    def total(self) -> int:
        return self.created + self.updated


class Imports(Sweeps):
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
        row_chunks: Callable[[], Iterable[Sequence[ImportRow]]]
        if hasattr(rows, "chunks"):
            src: Any = rows  # an ``importer.ImportFile``
            axes, row_chunks = list(src.axes), src.chunks
        else:
            listed = list(rows)
            axes = sorted({r.axis for r in listed})
            row_chunks = lambda: iter([listed])  # noqa: E731 - one chunk, re-iterable on a retry
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
            for chunk in row_chunks():
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
        self._link(conn, sweep_id, [(ids[h], r.axis, r.x) for h, r in by_hash.items()])
        summary_rows = []
        for h, r in by_hash.items():
            for name, v in r.extra:
                val, kind = encode_value(v)
                summary_rows.append(dict(run_id=ids[h], name=name, value=val, kind=kind))
        compute = [(ids[h], r) for h, r in by_hash.items() if r.params is not None and r.flops is not None]
        if compute:  # isoflop rows: N as the "counted" group, F = C / D under the convention "imported"
            for chunk in chunks([i for i, _ in compute]):
                conn.execute(delete(PARAMS).where(PARAMS.c.run_id.in_(chunk)))
                conn.execute(delete(FLOPS).where(FLOPS.c.run_id.in_(chunk)))
            conn.execute(PARAMS.insert(), [dict(run_id=i, name="counted", count=int(r.params)) for i, r in compute])
            conn.execute(FLOPS.insert(), [dict(run_id=i, convention="imported",
                                               flops_per_token=float(r.flops) / float(r.tokens or 1))
                                          for i, r in compute])
        for chunk in chunks(list(ids.values())):
            conn.execute(delete(SUMMARY).where(SUMMARY.c.run_id.in_(chunk)))
        if summary_rows:
            conn.execute(SUMMARY.insert(), summary_rows)
        return len(by_hash) - len(before), len(before)


def _safe_exp(v: float) -> float | None:
    try:
        out = math.exp(v)
    except OverflowError:
        return None
    return out if math.isfinite(out) else None
