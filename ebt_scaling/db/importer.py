"""Read and validate a CSV of results to import (``ebt-scale import FILE.csv --sweep NAME``).

Required columns: ``family, axis, x, seed, val_loss`` (validation loss in nats per token). Rows with
``axis = isoflop`` also need ``params`` (N, the parameters the compute-optimal fit counts), ``tokens`` (D) and
``flops`` (C, training FLOPs; ``x`` may be left out and is then C); they are stored in the run's parameter,
FLOPs and tokens tables, so ``fit`` reads imported and trained isoflop runs alike. Optional
columns with a meaning: ``train_loss``, ``val_ppl`` (default ``exp(val_loss)``), ``tokens``, and
``vocab_size`` (also stored as a metric) for the plausibility bound. Any other column is an extra numeric
metric stored as a summary value of the run (empty cells are skipped).

Bounds: losses are finite, non-negative and plausible for nats per token: at most ``ln(vocab_size) + 2``
(a uniform guess scores ``ln(vocab_size)``; the margin covers a badly initialised model), or 20 nats when
the row gives no vocabulary (``records.plausible_loss_bound``). A larger value is refused (it is most
often bits, a perplexity or a sum over tokens) unless ``--allow-outliers``; ``fit`` and ``report`` then
leave such a point out and say why. Integers (seed, tokens) fit SQLite's signed 64 bits; extra metrics
are finite.
"""

from __future__ import annotations

import csv
import math
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from ebt_scaling.config import AXES, FAMILIES
from ebt_scaling.db.store import ImportRow
from ebt_scaling.errors import ImportValidationError
from ebt_scaling.records import LOSS_MARGIN_NATS, MAX_LOSS_NATS, plausible_loss_bound

REQUIRED = ("family", "axis", "x", "seed", "val_loss")
KNOWN_OPTIONAL = ("train_loss", "val_ppl", "tokens")
ISOFLOP_COLUMNS = ("params", "flops")  # axis = isoflop rows (issue 29): with tokens, each run's N, C and D
VOCAB_COLUMN = "vocab_size"  # optional: the bound's vocabulary (kept as an extra metric too)
INT64 = (-(1 << 63), (1 << 63) - 1)  # SQLite INTEGER
FIELD_LIMIT = 64 << 20  # characters per CSV field (the csv module's default is 131072)
loss_bound = plausible_loss_bound


def _bound_text(vocab_size: float | None) -> str:
    if vocab_size is None:
        return (f"above {MAX_LOSS_NATS:g} nats per token, beyond any vocabulary (add a vocab_size column for "
                "a tighter bound)")
    return f"above ln(vocab_size {vocab_size:g}) + {LOSS_MARGIN_NATS:g} = {loss_bound(vocab_size):.2f} nats per token"


def _integer(text: str) -> int | None:
    """An integer cell (``12``, ``1e3``, ``12.0``), exactly; None when it is not one."""
    try:
        return int(text)
    except ValueError:
        pass
    v = _number(text)
    if v is None or not math.isfinite(v) or v != int(v):
        return None
    return int(v)


def _number(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


CHUNK_ROWS = 10_000


def _rows(path: str | Path, allow_outliers: bool = False) -> Iterator[ImportRow]:
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
    old_limit = csv.field_size_limit()
    csv.field_size_limit(max(old_limit, min(FIELD_LIMIT, sys.maxsize)))
    reader = csv.reader(f)
    try:
        with f:
            yield from _validated(reader, name, allow_outliers)
    except UnicodeDecodeError as exc:
        raise ImportValidationError(f"{p}: cannot read the file ({exc}); save it as UTF-8 CSV") from None
    except csv.Error as exc:
        raise ImportValidationError(f"{name} line {reader.line_num}: not valid CSV ({exc}); a field over "
                                    f"{FIELD_LIMIT >> 20} MiB or a stray quote - fix the row") from None
    finally:
        csv.field_size_limit(old_limit)


def _validated(reader: Iterator[list[str]], name: str, allow_outliers: bool = False) -> Iterator[ImportRow]:
    try:
        header = next(reader)
    except StopIteration:
        raise ImportValidationError(f"{name}: the file is empty; the first line must name the columns "
                                    f"{', '.join(REQUIRED)}") from None
    cols = [c.strip() for c in header]
    # isoflop rows: x is the flops column when x is left out
    missing = [c for c in REQUIRED if c not in cols and not (c == "x" and "flops" in cols)]
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
        iso: tuple[int, float] | None = None
        if axis == "isoflop":
            iso = _isoflop_cells(d, where)
            d = {**d, "x": d.get("x") or d["flops"]}
        x = _number(d["x"])
        if x is None or not math.isfinite(x) or x <= 0:
            raise ImportValidationError(f"{where}: x must be a positive number, got {d['x']!r}")
        if iso is not None and x != iso[1]:
            raise ImportValidationError(f"{where}: x {d['x'][:40]} differs from flops {d['flops'][:40]}; on the "
                                        "isoflop axis x is the training FLOPs: leave x out or equal to flops")
        seed = _integer(d["seed"])
        if seed is None:
            raise ImportValidationError(f"{where}: seed must be an integer, got {d['seed'][:40]!r}")
        if not INT64[0] <= seed <= INT64[1]:
            raise ImportValidationError(f"{where}: seed {d['seed'][:40]} is outside the 64-bit integer range the "
                                        "database holds; use a smaller seed")
        vocab: float | None = None
        if d.get(VOCAB_COLUMN, "") != "":
            vocab = _number(d[VOCAB_COLUMN])
            if vocab is None or not math.isfinite(vocab) or vocab < 2 or vocab != int(vocab):
                raise ImportValidationError(f"{where}: vocab_size must be an integer >= 2, got "
                                            f"{d[VOCAB_COLUMN][:40]!r}; leave the cell empty if unknown")
        bound = loss_bound(vocab)
        loss = _number(d["val_loss"])
        if loss is None or not math.isfinite(loss) or loss < 0:
            raise ImportValidationError(f"{where}: val_loss must be a finite non-negative number (nats per token), "
                                        f"got {d['val_loss'][:40]!r}")
        if loss > bound and not allow_outliers:
            raise ImportValidationError(f"{where}: val_loss {d['val_loss'][:40]} is implausible, "
                                        f"{_bound_text(vocab)}; give losses in nats per token (not bits, a "
                                        "perplexity or a sum), or pass --allow-outliers to import it anyway "
                                        "(fit and report then leave it out)")
        opt: dict[str, float | None] = {}
        for c in KNOWN_OPTIONAL:
            raw = d.get(c, "")
            if raw == "":
                opt[c] = None
                continue
            v = _number(raw)
            if v is None or not math.isfinite(v) or v < 0:
                raise ImportValidationError(f"{where}: {c} must be a finite non-negative number, got {raw[:40]!r}")
            opt[c] = v
        if not allow_outliers:
            for c, top in (("train_loss", bound), ("val_ppl", math.exp(bound))):
                if opt[c] is not None and opt[c] > top:
                    raise ImportValidationError(
                        f"{where}: {c} {d[c][:40]} is implausible, "
                        f"{_bound_text(vocab) if c == 'train_loss' else f'above exp({bound:.2f}) = {top:.4g}'}; "
                        "check the column's unit, or pass --allow-outliers to import it anyway")
        tokens: int | None = None
        if d.get("tokens", "") != "":
            tokens = _integer(d["tokens"])
            if tokens is None:
                raise ImportValidationError(f"{where}: tokens must be an integer, got {d['tokens'][:40]!r}")
            if tokens > INT64[1]:
                raise ImportValidationError(f"{where}: tokens {d['tokens'][:40]} is outside the 64-bit integer "
                                            "range the database holds; check the value")
        extra: list[tuple[str, float]] = []
        for c in extras:
            if iso is not None and c in ISOFLOP_COLUMNS:
                continue
            raw = d[c]
            if raw == "":
                continue
            v = _number(raw)
            if v is None or not math.isfinite(v):
                raise ImportValidationError(f"{where}: column {c[:40]!r} must be numeric (a finite number), got "
                                            f"{raw[:40]!r}; leave the cell empty if there is no value")
            extra.append((c, v))
        if iso is not None and tokens is None:
            raise ImportValidationError(f"{where}: tokens is empty; an isoflop row needs params, tokens and flops")
        key = hash((fam, axis, x, seed, iso))
        if key in seen:
            raise ImportValidationError(f"{where}: duplicates line {seen[key]} (same family, axis, x"
                                        f"{', params' if iso else ''} and seed); keep one of them")
        seen[key] = lineno
        n += 1
        yield ImportRow(line=lineno, family=fam, axis=axis, x=x, seed=seed, val_loss=loss,
                        train_loss=opt["train_loss"], val_ppl=opt["val_ppl"], tokens=tokens, extra=tuple(extra),
                        key=f"N{iso[0]}" if iso else None, params=iso[0] if iso else None,
                        flops=iso[1] if iso else None)
    if not n:
        raise ImportValidationError(f"{name}: no data rows after the header; add one row per run")


def _isoflop_cells(d: dict[str, str], where: str) -> tuple[int, float]:
    """An isoflop row's (params, flops): params a positive integer count, flops a positive finite number."""
    for c in ISOFLOP_COLUMNS + ("tokens",):
        if c not in d:
            raise ImportValidationError(f"{where}: axis isoflop needs the columns params, tokens and flops; add "
                                        f"the {c} column")
    n = _number(d["params"])
    if n is None or not math.isfinite(n) or n < 1 or n > INT64[1]:
        raise ImportValidationError(f"{where}: params must be a positive parameter count, got {d['params'][:40]!r}")
    c = _number(d["flops"])
    if c is None or not math.isfinite(c) or c <= 0:
        raise ImportValidationError(f"{where}: flops must be a positive number of training FLOPs, got "
                                    f"{d['flops'][:40]!r}")
    return round(n), c


@dataclass(frozen=True)
class ImportFile:
    """A CSV validated in full by one streaming pass (``scan_import_csv``); ``chunks()`` reads it again in
    chunks of ``CHUNK_ROWS`` rows for ``Store.import_rows``, so a file of any size imports in bounded memory."""

    path: Path
    rows: int
    axes: tuple[str, ...]
    allow_outliers: bool = False

    def chunks(self) -> Iterator[list[ImportRow]]:
        chunk: list[ImportRow] = []
        for r in _rows(self.path, self.allow_outliers):
            chunk.append(r)
            if len(chunk) == CHUNK_ROWS:
                yield chunk
                chunk = []
        if chunk:
            yield chunk


def scan_import_csv(path: str | Path, allow_outliers: bool = False) -> ImportFile:
    """Validate every row of ``path`` (streaming) before anything is written. ``allow_outliers``: accept finite
    losses above the plausibility bound (``loss_bound``)."""
    n, axes = 0, set()
    for r in _rows(path, allow_outliers):
        n += 1
        axes.add(r.axis)
    return ImportFile(Path(path), n, tuple(sorted(axes)), allow_outliers)


def read_import_csv(path: str | Path, allow_outliers: bool = False) -> list[ImportRow]:
    """All rows of ``path``, validated (or ``ImportValidationError`` naming the first bad row)."""
    return list(_rows(path, allow_outliers))
