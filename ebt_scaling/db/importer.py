"""Read and validate a CSV of results to import (``ebt-scale import FILE.csv --sweep NAME``).

Required columns: ``family, axis, x, seed, val_loss`` (validation loss in nats per token). Optional
columns with a meaning: ``train_loss``, ``val_ppl`` (default ``exp(val_loss)``), ``tokens``. Any other
column is an extra numeric metric stored as a summary value of the run (empty cells are skipped).

Every row is validated before anything is written (one streaming pass); the first problem raises
``ImportValidationError`` with one line naming the file, the line and the fix. The rows are then read again
in chunks and written in one transaction: all or nothing, in bounded memory whatever the file's size.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from ebt_scaling.config import AXES, FAMILIES
from ebt_scaling.db.store import ImportRow
from ebt_scaling.errors import ImportValidationError

REQUIRED = ("family", "axis", "x", "seed", "val_loss")
KNOWN_OPTIONAL = ("train_loss", "val_ppl", "tokens")


def _number(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


CHUNK_ROWS = 10_000


def _rows(path: str | Path) -> Iterator[ImportRow]:
    """Every data row of ``path``, validated, streamed from the file (``ImportValidationError`` naming the
    first bad row). Memory: one row at a time plus an 8-byte key per row for the duplicate check."""
    p = Path(path)
    name = p.name
    if not p.is_file():
        raise ImportValidationError(f"{p}: no such file; pass the path of a CSV file")
    try:
        f = open(p, encoding="utf-8-sig", newline="")  # noqa: SIM115 - closed below
    except OSError as exc:
        raise ImportValidationError(f"{p}: cannot read the file ({exc}); save it as UTF-8 CSV") from None
    with f:
        try:
            yield from _validated(csv.reader(f), name)
        except UnicodeDecodeError as exc:
            raise ImportValidationError(f"{p}: cannot read the file ({exc}); save it as UTF-8 CSV") from None


def _validated(reader: Iterator[list[str]], name: str) -> Iterator[ImportRow]:
    try:
        header = next(reader)
    except StopIteration:
        raise ImportValidationError(f"{name}: the file is empty; the first line must name the columns "
                                    f"{', '.join(REQUIRED)}") from None
    cols = [c.strip() for c in header]
    missing = [c for c in REQUIRED if c not in cols]
    if missing:
        raise ImportValidationError(f"{name} line 1: missing column {missing[0]!r}; the header needs "
                                    f"{', '.join(REQUIRED)}")
    dupes = sorted({c for c in cols if cols.count(c) > 1})
    if dupes:
        raise ImportValidationError(f"{name} line 1: column {dupes[0]!r} appears twice; keep one")
    if any(not c for c in cols):
        raise ImportValidationError(f"{name} line 1: a column has no name; name every column or delete it")
    extras = [c for c in cols if c not in REQUIRED and c not in KNOWN_OPTIONAL]
    seen: dict[int, int] = {}  # hash of (family, axis, x, seed) -> first line
    n = 0
    for lineno, values in enumerate(reader, start=2):
        if not values or all(not v.strip() for v in values):
            continue
        where = f"{name} line {lineno}"
        if len(values) != len(cols):
            raise ImportValidationError(f"{where}: {len(values)} fields but the header has {len(cols)}; "
                                        "fix the row's commas")
        d = {c: v.strip() for c, v in zip(cols, values, strict=True)}
        fam = d["family"]
        if fam not in FAMILIES:
            raise ImportValidationError(f"{where}: unknown family {fam!r}; use one of {', '.join(FAMILIES)}")
        axis = d["axis"]
        if axis not in AXES:
            raise ImportValidationError(f"{where}: unknown axis {axis!r}; use one of {', '.join(AXES)}")
        x = _number(d["x"])
        if x is None or not math.isfinite(x) or x <= 0:
            raise ImportValidationError(f"{where}: x must be a positive number, got {d['x']!r}")
        seed_f = _number(d["seed"])
        if seed_f is None or not math.isfinite(seed_f) or seed_f != int(seed_f):
            raise ImportValidationError(f"{where}: seed must be an integer, got {d['seed']!r}")
        loss = _number(d["val_loss"])
        if loss is None or not math.isfinite(loss) or loss < 0:
            raise ImportValidationError(f"{where}: val_loss must be a finite non-negative number (nats per token), "
                                        f"got {d['val_loss']!r}")
        opt: dict[str, float | None] = {}
        for c in KNOWN_OPTIONAL:
            raw = d.get(c, "")
            if raw == "":
                opt[c] = None
                continue
            v = _number(raw)
            if v is None or not math.isfinite(v) or v < 0:
                raise ImportValidationError(f"{where}: {c} must be a finite non-negative number, got {raw!r}")
            opt[c] = v
        if opt["tokens"] is not None and opt["tokens"] != int(opt["tokens"]):
            raise ImportValidationError(f"{where}: tokens must be an integer, got {d['tokens']!r}")
        extra: list[tuple[str, float]] = []
        for c in extras:
            raw = d[c]
            if raw == "":
                continue
            v = _number(raw)
            if v is None:
                raise ImportValidationError(f"{where}: column {c!r} must be numeric, got {raw!r}; "
                                            "leave the cell empty if there is no value")
            extra.append((c, v))
        key = hash((fam, axis, x, int(seed_f)))
        if key in seen:
            raise ImportValidationError(f"{where}: duplicates line {seen[key]} (same family, axis, x and seed); "
                                        "keep one of them")
        seen[key] = lineno
        n += 1
        yield ImportRow(line=lineno, family=fam, axis=axis, x=x, seed=int(seed_f), val_loss=loss,
                        train_loss=opt["train_loss"], val_ppl=opt["val_ppl"],
                        tokens=int(opt["tokens"]) if opt["tokens"] is not None else None, extra=tuple(extra))
    if not n:
        raise ImportValidationError(f"{name}: no data rows after the header; add one row per run")


@dataclass(frozen=True)
class ImportFile:
    """A CSV validated in full by one streaming pass (``scan_import_csv``); ``chunks()`` reads it again in
    chunks of ``CHUNK_ROWS`` rows for ``Store.import_rows``, so a file of any size imports in bounded memory."""

    path: Path
    rows: int
    axes: tuple[str, ...]

    def chunks(self) -> Iterator[list[ImportRow]]:
        chunk: list[ImportRow] = []
        for r in _rows(self.path):
            chunk.append(r)
            if len(chunk) == CHUNK_ROWS:
                yield chunk
                chunk = []
        if chunk:
            yield chunk


def scan_import_csv(path: str | Path) -> ImportFile:
    """Validate every row of ``path`` (streaming) before anything is written."""
    n, axes = 0, set()
    for r in _rows(path):
        n += 1
        axes.add(r.axis)
    return ImportFile(Path(path), n, tuple(sorted(axes)))


def read_import_csv(path: str | Path) -> list[ImportRow]:
    """All rows of ``path``, validated (or ``ImportValidationError`` naming the first bad row)."""
    return list(_rows(path))
