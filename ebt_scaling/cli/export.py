"""``ebt-scale export``: runs (or metric points, or fits) as CSV or Parquet. Timestamps are ISO 8601 with ``T``;
a fit's parameters are columns (nested keys joined with ``.``; plotting arrays left out)."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from ebt_scaling.cli.common import DbOption, handle_errors, resolve_db


class ExportFormat(str, Enum):
    csv = "csv"
    parquet = "parquet"


class ExportTable(str, Enum):
    runs = "runs"
    metrics = "metrics"
    fits = "fits"


def register(app: typer.Typer) -> None:
    @app.command("export")
    @handle_errors
    def export(
        fmt: Annotated[ExportFormat, typer.Option("--format", help="File format.")] = ExportFormat.csv,
        out: Annotated[Path | None, typer.Option("--out", help="Output file (CSV: default stdout).")] = None,
        table: Annotated[ExportTable, typer.Option("--table", help="What to export: one row per run, per "
                                                                   "metric point, or per fit.")] = ExportTable.runs,
        sweep: Annotated[str | None, typer.Option("--sweep", help="Only this sweep.")] = None,
        axis: Annotated[str | None, typer.Option("--axis", help="Only this axis (runs and fits).")] = None,
        status: Annotated[str | None, typer.Option("--status", help="Only runs with this status.")] = None,
        db: DbOption = None,
    ) -> None:
        """Export the results database for pandas, spreadsheets or other tools."""
        import sys

        from ebt_scaling.db.store import Store
        from ebt_scaling.errors import ConfigError

        if fmt is ExportFormat.parquet and out is None:
            raise ConfigError("--format parquet writes a binary file: add --out FILE.parquet")
        if out is not None and not out.parent.is_dir():
            raise ConfigError(f"--out {out}: directory {out.parent} does not exist; create it first")
        with Store(resolve_db(db), create=False) as store:
            if sweep is not None:
                store.get_sweep(sweep)  # an unknown sweep: NotFound naming the closest ones, exit 1
            if table is ExportTable.runs:
                df = store.runs_dataframe(sweep=sweep, axis=axis, status=status)
            elif table is ExportTable.metrics:
                df = store.metrics_dataframe(sweep=sweep)
            else:
                df = _fits_frame(store.list_fits(sweep=sweep, axis=axis))
        if fmt is ExportFormat.parquet:
            try:
                df.to_parquet(out, index=False)
            except ImportError as exc:
                raise ConfigError(f"parquet export needs pyarrow ({exc}); pip install pyarrow") from None
        else:
            from ebt_scaling.names import csv_row, csv_safe

            df = _iso_times(df)  # one timestamp format across commands: ISO 8601 with T (as runs --format csv)
            df = df.map(csv_safe)  # text cells a spreadsheet would run as formulas get a leading apostrophe
            df.columns = csv_row(str(c) for c in df.columns)  # and so do headers (imported metric names)
            df.to_csv(sys.stdout if out is None else out, index=False)
        if out is not None:
            typer.echo(f"wrote {len(df)} row(s) to {out}", err=True)


def _iso_times(df: object) -> object:
    """Datetime columns as ISO 8601 text with ``T`` (``2026-12-06T22:09:41``), empty where missing."""
    import pandas as pd

    df = df.copy()  # type: ignore[attr-defined]
    for c in df.columns:
        if pd.api.types.is_datetime64_any_dtype(df[c]) or (df[c].dtype == object and df[c].map(
                lambda v: hasattr(v, "isoformat")).any()):
            df[c] = df[c].map(lambda v: "" if v is None or (not isinstance(v, str) and pd.isna(v)) else
                              (v.isoformat() if hasattr(v, "isoformat") else v))
    return df


#: lists longer than this in a fit's parameters are plotting arrays: left out of the columns (fit --json has them)
MAX_LIST_COLUMNS = 4


def flatten_params(params: object, prefix: str = "") -> dict[str, object]:
    """A fit's parameters as columns: nested keys joined with ``.``, short lists of numbers as ``key.0``,
    ``key.1`` ... (an interval); longer lists (curves for plotting) are left out."""
    out: dict[str, object] = {}
    if isinstance(params, dict):
        for k, v in params.items():
            out.update(flatten_params(v, f"{prefix}{k}."))
    elif isinstance(params, (list, tuple)):
        if len(params) <= MAX_LIST_COLUMNS and all(not isinstance(v, (dict, list, tuple)) for v in params):
            for i, v in enumerate(params):
                out[f"{prefix}{i}"] = v
    else:
        out[prefix.rstrip(".")] = params
    return out


def _fits_frame(fits: list) -> object:
    import pandas as pd

    from ebt_scaling.db.store import to_json

    base = ["fit_id", "sweep", "axis", "family", "method", "fingerprint", "created_at", "run_ids"]
    rows, extra = [], []
    for f in fits:
        flat = flatten_params(to_json(f.params))
        extra += [k for k in flat if k not in extra]
        rows.append({"fit_id": f.id, "sweep": f.sweep, "axis": f.axis, "family": f.family, "method": f.method,
                     "fingerprint": f.fingerprint, "created_at": f.created_at,
                     "run_ids": " ".join(str(r) for r in f.run_ids), **flat})
    return pd.DataFrame(rows, columns=base + [k for k in extra if k not in base])
