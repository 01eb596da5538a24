"""``ebt-scale report``: a multi-page PDF of the fits (summary, one page per axis, FLOPs crossover, runs,
provenance). Fits are reused from the database when the runs are unchanged, computed and stored otherwise."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from ebt_scaling.cli.common import DbOption, handle_errors, resolve_db

if TYPE_CHECKING:  # the CLI's --help never imports SQLAlchemy (tests/test_architecture.py)
    from ebt_scaling.db import Store
    from ebt_scaling.fit.isoflop_store import IsoflopResult
    from ebt_scaling.records import RunRecord


def data_date(runs: list[RunRecord]) -> datetime | None:
    """The latest timestamp stored with the runs: a date that only changes when the data do."""
    stamps = [t for r in runs for t in (getattr(r, "finished_at", None), getattr(r, "created_at", None)) if t]
    return max(stamps) if stamps else None


def register(app: typer.Typer) -> None:
    @app.command("report")
    @handle_errors
    def report_cmd(
        sweep: Annotated[str | None, typer.Option("--sweep", help="Sweep name (default: every sweep).")] = None,
        out: Annotated[Path, typer.Option("--out", help="PDF file to write.")] = Path("report.pdf"),
        db: DbOption = None,
        resamples: Annotated[int, typer.Option("--resamples", help="Bootstrap resamples (>= 100).")] = 2000,
        seed: Annotated[int, typer.Option("--seed", help="Seed of the bootstrap draws.")] = 0,
    ) -> None:
        """Write the PDF report of the fits.

        Summary with gains, intervals and the paper's values; one page per axis; FLOPs crossover; runs.

        Provenance closes it. The same database gives a byte-identical PDF."""
        from ebt_scaling.db import Store
        from ebt_scaling.errors import ConfigError
        from ebt_scaling.fit import FitSettings
        from ebt_scaling.fit.service import fit_store
        from ebt_scaling.provenance import code_version
        from ebt_scaling.report.pdf import ReportData, build_report
        from ebt_scaling.security import mask_url

        if out.exists() and out.is_dir():
            raise ConfigError(f"--out {out}: is a directory; pass a file name such as {out / 'report.pdf'}")
        settings = FitSettings(resamples=resamples, seed=seed)
        url = resolve_db(db)
        store = Store(url, create=False)
        try:
            result = fit_store(store, sweep=sweep, settings=settings)
            curves = loss_curves(store, result.runs)
            from ebt_scaling.think.pages import think_pages

            extra_pages = think_pages(store, sweep)  # System-2 thinking pages (issue 6), when measured
            from ebt_scaling.fit.isoflop import IsoflopSettings
            from ebt_scaling.fit.isoflop_store import fit_isoflop_store
            from ebt_scaling.report.isoflop import isoflop_pages

            # isoflop sweeps (issue 29): profiles, frontiers, multiplier, diagnostics (the fit stored by `fit`)
            iso = fit_isoflop_store(store, sweep, IsoflopSettings(resamples=resamples, resamples_law=resamples,
                                                                  seed=seed))
            extra_pages = [*isoflop_pages(iso), *extra_pages]
        finally:
            store.close()
        names = list(dict.fromkeys([*result.sweeps, *(r.sweep for r in iso)]))  # axis sweeps, then isoflop ones
        label = sweep or (", ".join(names) if names else "(empty database)")
        provenance = {
            "code version": code_version(),
            "database": mask_url(url),
            "sweep(s)": label,
            "runs": f"{len(result.runs)} stored, "
                    f"{sum(f.n_runs for f in result.fits)} fit-eligible on the reported axes",
        }
        data = ReportData(title=f"EBT vs Transformer++ scaling - {label}", fits=list(result.fits),
                          runs=result.runs, provenance=provenance, date=data_date(result.runs),
                          messages=result.messages, curves=curves, forgotten=result.forgotten,
                          headlines=[line for r in iso for line in isoflop_headline(r)])
        n = build_report(data, out, extra_pages=extra_pages)
        typer.echo(f"wrote {out} ({n} pages)")


def isoflop_headline(res: IsoflopResult) -> list[str]:
    """What an isoflop sweep's compute-optimal fit shows, in words, for the top of the summary page."""
    c = (res.result or {}).get("comparison") or {}
    if not c:
        return [f"isoflop ({res.sweep}): no EBT vs Transformer++ comparison of the compute-optimal frontiers "
                "(a family is missing or did not fit); the IsoFLOP pages show what was fitted."]
    note = c.get("crossover_note")
    return [f"isoflop ({res.sweep}): compute-optimal frontiers: {c.get('verdict') or 'no verdict'}"
            + (f"; {note}" if note else "") + ". The IsoFLOP pages have the profiles, frontiers and multiplier."]


def loss_curves(store: Store, runs: list[RunRecord]) -> dict[int, dict[str, tuple[list[float], list[float]]]]:
    """Train and validation loss of every trained run against its training tokens (step x batch x context, from
    the run's stored config), for the report's loss-curve pages."""
    import math

    out: dict[int, dict[str, tuple[list[float], list[float]]]] = {}
    trained = {r.id: r for r in runs if getattr(r, "source", "trained") == "trained"}
    for rid, series in store.metric_series(list(trained), ["train_loss", "val_loss"]).items():
        cfg = trained[rid].config or {}
        try:
            per_step = int(cfg["train"]["batch_size"]) * int(cfg["model"]["sequence_len"])
        except (KeyError, TypeError, ValueError):
            continue
        out[rid] = {name: ([p.step * per_step for p in pts if p.step > 0 and math.isfinite(p.value)],
                           [p.value for p in pts if p.step > 0 and math.isfinite(p.value)])
                    for name, pts in series.items()}
    return out
