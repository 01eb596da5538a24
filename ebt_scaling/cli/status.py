"""``ebt-scale status`` (what a sweep's runs are doing, from any machine) and ``ebt-scale sweeps`` (the list)."""

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING, Annotated, Any

import typer

from ebt_scaling.cli.common import (
    DbOption,
    FormatOption,
    JsonAliasOption,
    OutputFormat,
    handle_errors,
    resolve_db,
    terminal_width,
    wants_json,
)

if TYPE_CHECKING:
    from ebt_scaling.db.store import Store


def _dur(s: float | None) -> str:
    if s is None:
        return "-"
    s = int(round(s))
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


def _iso(v: Any) -> str:
    """JSON for datetimes: ISO 8601 with T (the one timestamp format)."""
    return v.isoformat() if hasattr(v, "isoformat") else str(v)


def _num(v: float | None, fmt: str) -> str:
    return "-" if v is None else format(v, fmt)


def _sweep_names(store: Store, sweep: str | None) -> list[str]:
    if sweep is not None:
        store.get_sweep(sweep)  # NotFound names the closest sweeps
        return [sweep]
    return [s.name for s in store.list_sweeps()]


def _snapshot(store: Store, names: list[str]) -> list[dict[str, Any]]:
    from ebt_scaling.db.status import run_rows, sweep_summary

    out = []
    for name in names:
        rows = run_rows(store, name)
        out.append({"sweep": name, **sweep_summary(rows), "lease": store.lease_holder(name), "runs_detail": rows})
    return out


# status columns: (name, justify), and the order in which they are dropped when the terminal is too narrow
COLUMNS = (("run", "right"), ("family", "left"), ("x", "right"), ("seed", "right"), ("status", "left"),
           ("step", "right"), ("train", "right"), ("val", "right"), ("tok/s", "right"), ("elapsed", "right"),
           ("ETA", "right"), ("tries", "right"), ("host", "left"))
DROP_ORDER = ("host", "elapsed", "tok/s", "tries", "seed", "ETA", "train")


def _cells(r: dict[str, Any]) -> dict[str, str]:
    return {"run": str(r["id"]), "family": r["family"], "x": f"{r['x']:g}", "seed": str(r["seed"]),
            "status": r["status"], "step": f"{r['step']}/{r['steps'] or '?'}", "train": _num(r["train_loss"], ".3f"),
            "val": _num(r["val_loss"], ".3f"), "tok/s": _num(r["tokens_per_s"], ",.0f"),
            "elapsed": _dur(r["elapsed_s"]),
            "ETA": _dur(r["eta_s"]), "tries": str(r["attempts"]), "host": r["host"] or "-"}


def fit_columns(rows: list[dict[str, str]], width: int) -> list[str]:
    """The columns that fit in ``width`` characters (a rich table: 3 per column for borders and padding, + 1):
    whole cells, never cut; the least needed columns go first (``DROP_ORDER``)."""
    cols = [c for c, _ in COLUMNS]

    def need(cs: list[str]) -> int:
        return sum(max([len(c)] + [len(r[c]) for r in rows]) + 3 for c in cs) + 1

    for c in DROP_ORDER:
        if need(cols) <= width:
            break
        cols.remove(c)
    return cols


def _render(snap: list[dict[str, Any]], width: int = 200) -> Any:
    from rich.console import Group
    from rich.table import Table

    parts = []
    for s in snap:
        lease = s["lease"]
        driver = ("no live driver" if lease is None else
                  f"driver pid {lease.get('pid', '?')} on {lease.get('host', '?')} since {lease.get('since', '?')}")
        title = (f"{s['sweep']}: {s['done']}/{s['runs']} done, {s['running']} running, {s['failed']} failed; "
                 f"ETA {_dur(s['eta_s'])}; {driver}")
        rows = [_cells(r) for r in s["runs_detail"]]
        cols = fit_columns(rows, width)
        dropped = [c for c, _ in COLUMNS if c not in cols]
        if dropped:
            title += f" ({', '.join(dropped)}: a wider terminal or --format json)"
        t = Table(title=title, title_justify="left", expand=False)
        for col, just in COLUMNS:
            if col in cols:
                t.add_column(col, justify=just, no_wrap=True)  # type: ignore[arg-type]
        for r in rows:
            t.add_row(*(r[c] for c in cols))
        parts.append(t)
    return Group(*parts)


def register(app: typer.Typer) -> None:
    @app.command("status")
    @handle_errors
    def status(
        sweep: Annotated[str | None, typer.Option("--sweep", help="One sweep (default: every sweep).")] = None,
        fmt: FormatOption = OutputFormat.table,
        as_json: JsonAliasOption = False,
        watch: Annotated[bool, typer.Option("--watch", help="Refresh until nothing is left to run.")] = False,
        interval: Annotated[float, typer.Option("--interval", help="Seconds between refreshes.", min=0.2)] = 5.0,
        db: DbOption = None,
    ) -> None:
        """Per run: status, step, latest losses, tokens/s, elapsed, ETA, attempts, host; per sweep an ETA."""
        from rich.console import Console
        from rich.live import Live

        from ebt_scaling.db.store import Store

        with Store(resolve_db(db), create=False) as store:
            names = _sweep_names(store, sweep)
            if not names:
                typer.echo("no sweeps")
                return
            if wants_json(fmt, as_json):
                typer.echo(json.dumps(_snapshot(store, names), indent=1, default=_iso))
                return
            console = Console(width=terminal_width())
            if not watch:
                console.print(_render(_snapshot(store, names), console.width))
                return
            snap = _snapshot(store, names)
            with Live(_render(snap, console.width), console=console, refresh_per_second=1, transient=False) as live:
                while not all(s["finished"] for s in snap):
                    time.sleep(interval)
                    snap = _snapshot(store, names)
                    live.update(_render(snap, console.width))
            typer.echo("nothing left to run", err=True)

    @app.command("sweeps")
    @handle_errors
    def sweeps(
        fmt: FormatOption = OutputFormat.table,
        as_json: JsonAliasOption = False,
        db: DbOption = None,
    ) -> None:
        """List the sweeps: axis, runs by status, created, the live driver holding each (if any)."""
        from rich.console import Console
        from rich.table import Table

        from ebt_scaling.db.store import Store

        with Store(resolve_db(db), create=False) as store:
            out = []
            for s in store.list_sweeps():
                counts: dict[str, int] = {}
                for r in store.list_runs(sweep=s.name):
                    counts[r.status] = counts.get(r.status, 0) + 1
                out.append({"sweep": s.name, "axis": s.axis, "runs": counts,
                            "created": s.created_at.isoformat(timespec="seconds") if s.created_at else None,
                            "driver": store.lease_holder(s.name)})
        if wants_json(fmt, as_json):
            typer.echo(json.dumps(out, indent=1))
            return
        if not out:
            typer.echo("no sweeps")
            return
        t = Table()
        for col in ("sweep", "axis", "runs", "created", "driver"):
            t.add_column(col, no_wrap=col != "runs")
        for s in out:
            d = s["driver"]
            t.add_row(s["sweep"], s["axis"], ", ".join(f"{n} {st}" for st, n in sorted(s["runs"].items())) or "-",
                      s["created"] or "-", "-" if d is None else f"pid {d.get('pid', '?')} on {d.get('host', '?')}")
        Console(width=terminal_width()).print(t)
