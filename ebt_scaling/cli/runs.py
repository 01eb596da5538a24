"""``ebt-scale runs``: list runs as a table, CSV or JSON."""

from __future__ import annotations

from enum import Enum
from typing import Annotated

import typer

from ebt_scaling.cli.common import DbOption, fail, handle_errors, resolve_db

FORGETTABLE = ("failed", "diverged")


class RunsFormat(str, Enum):
    table = "table"
    csv = "csv"
    json = "json"


TABLE_COLUMNS = ("run_id", "sweep", "family", "axis", "x", "seed", "status", "source", "final_val_loss",
                 "attempts", "fit_eligible", "reason")


def register(app: typer.Typer) -> None:
    @app.command("runs")
    @handle_errors
    def runs(
        sweep: Annotated[str | None, typer.Option("--sweep", help="Only runs of this sweep.")] = None,
        axis: Annotated[str | None, typer.Option("--axis", help="Only runs on this axis.")] = None,
        status: Annotated[str | None, typer.Option("--status", help="Only runs with this status.")] = None,
        family: Annotated[str | None, typer.Option("--family", help="Only runs of this model family.")] = None,
        fmt: Annotated[RunsFormat, typer.Option("--format", help="Output format.")] = RunsFormat.table,
        forget: Annotated[str | None, typer.Option(
            "--forget", help="With --sweep: take the sweep's failed (or diverged, or failed,diverged) runs out of it "
            "for good, recorded in the sweep (--forgotten lists them; the runs stay for other sweeps).")] = None,
        why: Annotated[str | None, typer.Option("--why", help="With --forget: the reason to record.")] = None,
        forgotten: Annotated[bool, typer.Option("--forgotten", help="With --sweep: list the runs the sweep "
                                                "forgot, with who, when and why.")] = False,
        db: DbOption = None,
    ) -> None:
        """List the runs in the results database; --forget takes failed runs out of a sweep (recorded)."""
        from ebt_scaling.db.store import Store

        if (forget is not None or forgotten) and sweep is None:
            raise fail("--forget and --forgotten need --sweep NAME", 2)
        if forget is not None:
            states = [t.strip() for t in forget.split(",") if t.strip()]
            bad = [t for t in states if t not in FORGETTABLE]
            if not states or bad:
                raise fail(f"--forget {forget}: use failed, diverged or failed,diverged (only runs that did not "
                           "complete can be forgotten)", 2)
            assert sweep is not None
            with Store(resolve_db(db)) as store:
                store.get_sweep(sweep)  # NotFound naming the closest sweeps
                done = store.forget_runs(sweep, states, why or f"ebt-scale runs --forget {forget}")
            for rec in done:
                typer.echo(f"forgot run {rec['run_id']} ({rec['status']}: {(rec['reason'] or '-')[:120]})")
            typer.echo(f"sweep {sweep}: {len(done)} run(s) forgotten"
                       + (f" (recorded; `ebt-scale runs --sweep {sweep} --forgotten` lists them)" if done
                          else f": none {' or '.join(states)}"))
            return
        with Store(resolve_db(db), create=False) as store:
            if sweep is not None:
                store.get_sweep(sweep)  # an unknown sweep: NotFound naming the closest ones, exit 1
            if forgotten:
                assert sweep is not None
                recs = list(store.forgotten_runs(sweep).values())
                if fmt is RunsFormat.json:
                    import json

                    typer.echo(json.dumps(recs, indent=1))
                else:
                    for r in recs:
                        typer.echo(f"run {r['run_id']} {r['status']} forgotten {r['at']} by {r['by']} ({r['why']}): "
                                   f"{r['reason'] or '-'}")
                    typer.echo(f"{len(recs)} run(s) forgotten by sweep {sweep}")
                return
            records = store.list_runs(sweep=sweep, axis=axis, status=status, family=family)
        from ebt_scaling.db.store import run_row

        rows = [run_row(r) for r in records]
        if fmt is RunsFormat.json:
            import json

            typer.echo(json.dumps([_jsonable(r) for r in rows], indent=1, allow_nan=False))
        elif fmt is RunsFormat.csv:
            import csv
            import sys

            from ebt_scaling.names import csv_row

            cols = _all_columns(rows)
            w = csv.writer(sys.stdout, lineterminator="\n")
            w.writerow(csv_row(cols))  # headers (imported metric names) and cells (sweep names) alike
            for r in rows:
                w.writerow(csv_row(_cell(r.get(k)) for k in cols))
        else:
            _print_table(rows)


def _all_columns(rows: list[dict]) -> list[str]:
    from ebt_scaling.db.store import BASE_COLUMNS

    cols = list(BASE_COLUMNS)
    for r in rows:
        cols += [k for k in r if k not in cols]
    return cols


def _cell(v: object) -> object:
    if v is None:
        return ""
    if hasattr(v, "isoformat"):
        return v.isoformat()  # type: ignore[union-attr]
    return v


def _jsonable(row: dict) -> dict:
    import math

    out = {}
    for k, v in row.items():
        if isinstance(v, float) and not math.isfinite(v):
            v = None if math.isnan(v) else ("inf" if v > 0 else "-inf")
        elif hasattr(v, "isoformat"):
            v = v.isoformat()
        out[k] = v
    return out


def _print_table(rows: list[dict]) -> None:
    from rich.console import Console
    from rich.table import Table

    if not rows:
        typer.echo("no runs")
        return
    table = Table(show_lines=False)
    for c in TABLE_COLUMNS:
        table.add_column(c, justify="right" if c in ("run_id", "x", "seed", "final_val_loss", "attempts") else "left")
    for r in rows:
        cells = []
        for c in TABLE_COLUMNS:
            v = r.get(c)
            if v is None:
                cells.append("")
            elif c == "final_val_loss":
                cells.append(f"{v:.4f}")
            elif c == "x":
                cells.append(f"{v:g}")
            else:
                cells.append(str(v))
        table.add_row(*cells)
    Console(width=200).print(table)
    typer.echo(f"{len(rows)} run(s)")
