"""``ebt-scale fit``: scaling fits with bootstrap intervals and the EBT-vs-Transformer++ comparison."""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer

from ebt_scaling.cli.common import DbOption, handle_errors, resolve_db

SweepOption = Annotated[str | None, typer.Option("--sweep", help="Sweep name (default: every sweep).")]
AxisOption = Annotated[str | None, typer.Option("--axis", help="Only this axis (data, batch, depth, ...).")]
ResamplesOption = Annotated[int, typer.Option("--resamples", help="Bootstrap resamples (>= 100).")]
SeedOption = Annotated[int, typer.Option("--seed", help="Seed of the bootstrap and permutation draws.")]
EModeOption = Annotated[str, typer.Option("--e-mode", help="Floor E of the saturating law: auto, shared or free.")]
FamilyOption = Annotated[str | None, typer.Option(
    "--family-of-tests", help="Axes Holm-corrected together, comma-separated (AXIS or SWEEP/AXIS); "
    "default: all axes of each sweep.")]
HoldoutOption = Annotated[bool, typer.Option(
    "--holdout-largest", help="Also show the extrapolation check: the line (and, with 5 or more levels, the "
    "saturating law) fitted without the largest level, its prediction error there with an interval.")]


def register(app: typer.Typer) -> None:
    @app.command("fit")
    @handle_errors
    def fit_cmd(sweep: SweepOption = None, axis: AxisOption = None,
                as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
                db: DbOption = None, resamples: ResamplesOption = 2000, seed: SeedOption = 0,
                e_mode: EModeOption = "auto", family_of_tests: FamilyOption = None,
                holdout_largest: HoldoutOption = False) -> None:
        """Fit scaling rates and laws per axis and compare EBT with Transformer++.

        Per family: the paper's rate (OLS slope of log10 ppl on log10 x) and a law E + A x^-alpha.

        Per axis: rate gain with a bootstrap interval and a Holm-adjusted p-value for equal slopes, withheld
        (with the reason) when a guard-rail fires.

        Fits are stored linked to their runs and reused while the runs are unchanged."""
        from ebt_scaling.db import Store
        from ebt_scaling.fit import FitSettings
        from ebt_scaling.fit.service import fit_store

        settings = FitSettings(resamples=resamples, seed=seed, e_mode=e_mode, holdout_law=holdout_largest)
        store = Store(resolve_db(db), create=False)
        try:
            result = fit_store(store, sweep=sweep, axis=axis, settings=settings, family_of_tests=family_of_tests)
        finally:
            store.close()
        data = result.to_json(holdout=holdout_largest)
        if as_json:
            typer.echo(json.dumps(data, indent=2, allow_nan=False))
            return
        print_table(data)


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{v:+.2%}"


def _ci(ci: list[Any] | None, pct: bool = False, digits: int = 3) -> str:
    if not ci or ci[0] is None or ci[1] is None:
        return ""
    if pct:
        return f"[{ci[0]:+.1%}, {ci[1]:+.1%}]"
    return f"[{ci[0]:.{digits}f}, {ci[1]:.{digits}f}]"


def _num(v: float | None, digits: int = 3) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


def _p(v: float | None) -> str:
    if v is None:
        return "-"
    return f"{v:.1e}" if v < 1e-3 else f"{v:.3f}"


def _warnings(a: dict[str, Any]) -> str:
    """Count of guard-rails and which view they withhold (the rate verdict, or only the exponent)."""
    if not a["guards"]:
        return "-"
    view = "verdict withheld" if a.get("unreliable") else "exponent only"
    return f"{len(a['guards'])}: {view}"


def print_table(data: dict[str, Any]) -> None:
    import os
    import sys

    from rich.console import Console

    # A terminal (or $COLUMNS) sets the width; piped output gets a wide table.
    console = Console(width=None if sys.stdout.isatty() or os.environ.get("COLUMNS") else 180)
    for m in data.get("messages", []):
        console.print(f"[yellow]{m}[/yellow]")
    if not data["axes"]:
        return
    title = f"Scaling fits - sweep {data['sweep'] or ', '.join(data['sweeps']) or '-'}"
    if console.width < WIDE_TABLE_COLUMNS:
        _print_narrow(console, data, title)
    else:
        _print_wide(console, data, title)
    _print_notes(console, data)


WIDE_TABLE_COLUMNS = 120  # below this, the table keeps 4 columns and the rest goes on lines under it


def _print_narrow(console: Any, data: dict[str, Any], title: str) -> None:
    """The fit table for an 80-column terminal: the verdict per axis in a 4-column table, then the slopes and
    exponents of each axis on lines of their own."""
    from rich.table import Table

    t = Table(title=title)
    t.add_column("axis", no_wrap=True)
    t.add_column("rate gain [95% CI]", no_wrap=True)
    t.add_column("p (Holm)", no_wrap=True)
    t.add_column("verdict", overflow="fold", min_width=16)
    for a in data["axes"]:
        v = a.get("verdict") or "-"
        if a.get("unreliable"):
            v = "withheld: see the warnings below"
        t.add_row(_axis_name(a, data), f"{_pct(a['rate_gain'])} {_ci(a['rate_gain_ci'], pct=True)}",
                  f"{_p(a['p_value'])} ({_p(a.get('p_value_holm'))})", v)
    console.print(t)
    for a in data["axes"]:
        fams = a["families"]
        console.print(f"  {a['axis']}: {a['n_runs']} runs ({a['n_excluded']} excluded), "
                      f"{'reused' if a['reused'] else 'new'} fit; guard-rails {_warnings(a)}", highlight=False)
        for f, lab in (("transformer_pp", "T++"), ("ebt", "EBT")):
            console.print(f"  {a['axis']}: {lab} slope {_slope(fams, f, ' ')}, alpha {_alpha(fams, f, ' ')}",
                          highlight=False)


def _axis_name(a: dict[str, Any], data: dict[str, Any]) -> str:
    return a["axis"] if len(data["sweeps"]) <= 1 else f"{a['sweep']}/{a['axis']}"


def _slope(fams: dict[str, Any], f: str, sep: str = "\n") -> str:
    e = fams.get(f)
    if not e or e.get("slope") is None:
        return "-"
    return f"{e['slope']:.4f}{sep}{_ci(e['slope_ci'], digits=4)}"


def _alpha(fams: dict[str, Any], f: str, sep: str = "\n") -> str:
    e = fams.get(f)
    if not e or not e.get("law"):
        return "-"
    law = e["law"]
    return f"{law['alpha']:.3f}{sep}{_ci(law['alpha_ci'])}"


def _print_wide(console: Any, data: dict[str, Any], title: str) -> None:
    from rich.table import Table

    t = Table(title=title)
    for col in ("axis", "runs (excl.)", "slope T++ [95% CI]", "slope EBT [95% CI]", "rate gain [95% CI]",
                "p (Holm)", "verdict", "alpha T++", "alpha EBT", "warnings", "stored"):
        t.add_column(col, overflow="fold")
    for a in data["axes"]:
        fams = a["families"]
        t.add_row(_axis_name(a, data), f"{a['n_runs']} ({a['n_excluded']})", _slope(fams, "transformer_pp"),
                  _slope(fams, "ebt"), f"{_pct(a['rate_gain'])}\n{_ci(a['rate_gain_ci'], pct=True)}",
                  f"{_p(a['p_value'])} ({_p(a.get('p_value_holm'))})", a.get("verdict") or "-",
                  _alpha(fams, "transformer_pp"), _alpha(fams, "ebt"), _warnings(a),
                  "reused" if a["reused"] else "new")
    console.print(t)


def _print_notes(console: Any, data: dict[str, Any]) -> None:
    from ebt_scaling.fit.axis import holdout_lines

    for a in data["axes"]:
        notes = list(a["messages"])
        if a["excluded"]:
            notes.append("excluded: " + ", ".join(f"{n} {r}" for r, n in a["excluded"].items()))
        kinds = sorted({e["bootstrap"] for e in a["families"].values()})
        if kinds:
            notes.append("intervals: " + "; ".join(kinds))
        cross = a.get("crossover")
        if cross and cross.get("message") and a["axis"] == "flops":
            notes.append("crossover: " + cross["message"])
        comp = a.get("comparison") or {}
        if comp.get("holm_note"):
            notes.append("Holm: " + comp["holm_note"])
        for fam, h in (a.get("holdout") or {}).items():
            notes += holdout_lines(fam, h)
        for n in notes:
            console.print(f"  {a['axis']}: {n}", highlight=False)
        for g in a["guards"]:
            console.print(f"  {a['axis']}: [red]warning[/red]: {g['message']}", highlight=False)
    console.print("slope = OLS slope of log10(perplexity) on log10(x) (paper's rate, not an exponent); "
                  "alpha = exponent of L = E + A x^-alpha; p: equal-slope test, Holm-adjusted over the sweep's "
                  "axes (or --family-of-tests).")
