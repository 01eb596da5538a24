"""``ebt-scale fit``: scaling fits with bootstrap intervals and the EBT-vs-Transformer++ comparison."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Annotated, Any

import typer

from ebt_scaling.cli.common import (
    DbOption,
    FormatOption,
    JsonAliasOption,
    OutputFormat,
    handle_errors,
    resolve_db,
    wants_json,
)

if TYPE_CHECKING:
    from ebt_scaling.fit.results import AxisFit, FamilyFit
    from ebt_scaling.fit.service import SweepFits

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
ExtendOption = Annotated[bool, typer.Option(
    "--extend-edges", help="isoflop sweeps: list the (family, budget) whose minimum sits at a window edge and the "
    "side to extend (then `ebt-scale sweep --spec SPEC --extend-edges` plans the next shape out).")]


def register(app: typer.Typer) -> None:
    @app.command("fit")
    @handle_errors
    def fit_cmd(sweep: SweepOption = None, axis: AxisOption = None,
                fmt: FormatOption = OutputFormat.table, as_json: JsonAliasOption = False,
                db: DbOption = None, resamples: ResamplesOption = 2000, seed: SeedOption = 0,
                e_mode: EModeOption = "auto", family_of_tests: FamilyOption = None,
                holdout_largest: HoldoutOption = False, extend_edges: ExtendOption = False) -> None:
        """Fit scaling rates and laws per axis and compare EBT with Transformer++.

        Per family: the paper's rate (OLS slope of log10 ppl on log10 x) and a law E + A x^-alpha.

        Per axis: rate gain with a bootstrap interval and a Holm-adjusted p-value for equal slopes, withheld
        (with the reason) when a guard-rail fires.

        Fits are stored linked to their runs and reused while the runs are unchanged."""
        from ebt_scaling.db import Store
        from ebt_scaling.fit import FitSettings
        from ebt_scaling.fit.service import fit_store

        settings = FitSettings(resamples=resamples, seed=seed, e_mode=e_mode, holdout_law=holdout_largest)
        from ebt_scaling.fit.isoflop_store import isoflop_fits

        store = Store(resolve_db(db), create=False)
        try:
            # isoflop sweeps: compute-optimal fits (fit/isoflop_store.py); --axis isoflop: only those
            iso = isoflop_fits(store, sweep, axis, resamples, seed)
            result = (None if axis == "isoflop" and iso else
                      fit_store(store, sweep=sweep, axis=axis, settings=settings, family_of_tests=family_of_tests))
        finally:
            store.close()
        if wants_json(fmt, as_json):
            out: dict[str, Any] = result.to_json(holdout=holdout_largest) if result is not None else {"sweep": sweep}
            if iso:
                out["isoflop"] = [r.to_json() for r in iso]
            typer.echo(json.dumps(out, indent=2, allow_nan=False))
            return
        if result is not None and (result.fits or not iso):
            print_table(result, holdout=holdout_largest)
        from ebt_scaling.fit.isoflop_store import edge_extensions, summary_lines

        for r in iso:
            for line in summary_lines(r) + (edge_extensions(r) if extend_edges else []):
                typer.echo(line)


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{v:+.2%}"


def _ci(ci: tuple[float | None, float | None] | None, pct: bool = False, digits: int = 3) -> str:
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


def _warnings(a: AxisFit) -> str:
    """Count of guard-rails and which view they withhold (the rate verdict, or only the exponent)."""
    if not a.guards:
        return "-"
    view = "verdict withheld" if a.comparison is not None and a.comparison.unreliable else "exponent only"
    return f"{len(a.guards)}: {view}"


def _gain(a: AxisFit, sep: str = " ") -> str:
    c = a.comparison
    return "-" if c is None else f"{_pct(c.rate_gain)}{sep}{_ci(c.rate_gain_ci, pct=True)}"


def _holm(a: AxisFit) -> str:
    c = a.comparison
    return "- (-)" if c is None else f"{_p(c.p_value)} ({_p(c.p_value_holm)})"


def _verdict(a: AxisFit) -> str:
    c = a.comparison
    return c.verdict if c is not None and c.verdict else "not testable"


def print_table(result: SweepFits, holdout: bool = False) -> None:
    import os
    import sys

    from rich.console import Console

    # A terminal (or $COLUMNS) sets the width; piped output gets a wide table.
    console = Console(width=None if sys.stdout.isatty() or os.environ.get("COLUMNS") else 180)
    for m in result.messages:
        console.print(f"[yellow]{m}[/yellow]")
    print_forgotten(console, result.forgotten)
    if not result.fits:
        return
    title = f"Scaling fits - sweep {result.sweep or ', '.join(result.sweeps) or '-'}"
    if console.width < WIDE_TABLE_COLUMNS:
        _print_narrow(console, result, title)
    else:
        _print_wide(console, result, title)
    _print_notes(console, result, holdout)


def print_forgotten(console: Any, forgotten: list[dict[str, Any]]) -> None:
    """The runs the sweeps forgot (``ebt-scale runs --forget``): a count per sweep, then one line per run with its
    status and stored error, so a removal is never silent."""
    from rich.markup import escape

    per: dict[str, list[dict[str, Any]]] = {}
    for rec in forgotten:
        per.setdefault(str(rec.get("sweep")), []).append(rec)
    for sweep, recs in sorted(per.items()):
        console.print(f"[yellow]forgotten: {len(recs)} run(s) of sweep {escape(sweep)}, in no fit (`ebt-scale runs "
                      f"--sweep {escape(sweep)} --forgotten` lists them):[/yellow]", highlight=False)
        for r in recs:
            console.print(f"  run {r.get('run_id')} {r.get('status')} ({escape(str(r.get('why') or '-'))}): "
                          f"{escape(str(r.get('reason') or 'no reason stored'))}", highlight=False)


WIDE_TABLE_COLUMNS = 120  # below this, the table keeps 4 columns and the rest goes on lines under it


def _print_narrow(console: Any, result: SweepFits, title: str) -> None:
    """The fit table for an 80-column terminal: the verdict per axis in a 4-column table, then the slopes and
    exponents of each axis on lines of their own."""
    from rich.table import Table

    t = Table(title=title)
    t.add_column("axis", no_wrap=True)
    t.add_column("rate gain [95% CI]", no_wrap=True)
    t.add_column("p (Holm)", no_wrap=True)
    t.add_column("verdict", overflow="fold", min_width=16)
    for a in result.fits:
        v = _verdict(a)
        if a.comparison is not None and a.comparison.unreliable:
            v = "withheld: see the warnings below"
        t.add_row(_axis_name(a, result), _gain(a), _holm(a), v)
    console.print(t)
    for a in result.fits:
        console.print(f"  {a.axis}: {a.n_runs} runs ({sum(a.excluded.values())} excluded), "
                      f"{'reused' if a.reused else 'new'} fit; guard-rails {_warnings(a)}", highlight=False)
        for f, lab in (("transformer_pp", "T++"), ("ebt", "EBT")):
            e = a.families.get(f)
            console.print(f"  {a.axis}: {lab} slope {_slope(e, ' ')}, alpha {_alpha(e, ' ')}", highlight=False)


def _axis_name(a: AxisFit, result: SweepFits) -> str:
    return a.axis if len(result.sweeps) <= 1 else a.label


def _slope(e: FamilyFit | None, sep: str = "\n") -> str:
    if e is None or e.slope is None:
        return "-"
    return f"{e.slope:.4f}{sep}{_ci(e.slope_ci, digits=4)}"


def _alpha(e: FamilyFit | None, sep: str = "\n") -> str:
    if e is None or e.law is None or e.law.alpha is None:
        return "-"
    return f"{e.law.alpha:.3f}{sep}{_ci(e.law.alpha_ci)}"


def _print_wide(console: Any, result: SweepFits, title: str) -> None:
    from rich.table import Table

    t = Table(title=title)
    for col in ("axis", "runs (excl.)", "slope T++ [95% CI]", "slope EBT [95% CI]", "rate gain [95% CI]",
                "p (Holm)", "verdict", "alpha T++", "alpha EBT", "warnings", "stored"):
        t.add_column(col, overflow="fold")
    for a in result.fits:
        tp, eb = a.families.get("transformer_pp"), a.families.get("ebt")
        t.add_row(_axis_name(a, result), f"{a.n_runs} ({sum(a.excluded.values())})", _slope(tp), _slope(eb),
                  _gain(a, "\n"), _holm(a), _verdict(a), _alpha(tp), _alpha(eb), _warnings(a),
                  "reused" if a.reused else "new")
    console.print(t)


def _print_notes(console: Any, result: SweepFits, holdout: bool = False) -> None:
    from rich.markup import escape

    from ebt_scaling.fit.results import holdout_lines, seeds_advice
    from ebt_scaling.fit.words import crossover_words

    for a in result.fits:
        notes = list(a.messages)
        if a.measure.log_loss:  # video: what the slopes and the law are in, and the baselines
            base = next((b for b in a.baselines.values() if b), {})
            notes.insert(0, f"video: y = validation SmoothL1; slope = {a.measure.rate} (the paper's video measure); "
                         f"alpha and E in SmoothL1 units; baselines: copy last frame {_num(base.get('copy'), 4)}, "
                         f"mean embedding {_num(base.get('mean'), 4)}")
        if a.excluded:
            notes.append("excluded: " + ", ".join(f"{n} {r}" for r, n in a.excluded.items()))
        kinds = sorted({e.bootstrap for e in a.families.values()})
        if kinds:
            notes.append("intervals: " + "; ".join(kinds))
        if a.crossover is not None and a.crossover.message and a.axis == "flops":
            notes.append("crossover: " + crossover_words(a.crossover, a.axis))
        if a.comparison is not None and a.comparison.holm_note:
            notes.append("Holm: " + a.comparison.holm_note)
        if holdout:
            for fam, h in a.holdout.items():
                notes += holdout_lines(fam, h)
        for n in notes:  # escaped: messages name spec tables such as [tune], which rich would take for markup
            console.print(f"  {a.axis}: {escape(n)}", highlight=False)
        for g in a.guards:
            console.print(f"  {a.axis}: [red]warning[/red]: {escape(g.message)}", highlight=False)
        if (advice := seeds_advice(a)) is not None:
            console.print(f"  {a.axis}: {escape(advice)}", highlight=False)
    console.print("slope = OLS slope of log10(perplexity) on log10(x) (paper's rate, not an exponent)"
                  + ("; on video axes of log10(validation SmoothL1): the log-log slope of SmoothL1"
                     if any(a.measure.log_loss for a in result.fits) else "")
                  + "; alpha = exponent of L = E + A x^-alpha; p: equal-slope test, Holm-adjusted over the sweep's "
                  "axes (or --family-of-tests).")
