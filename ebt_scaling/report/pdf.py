"""Assemble the multi-page PDF report. The only module of ``report`` that creates figures.

Pages (in order): summary, per axis its fit page, (when the runs have metric series) its loss curves and (on a
``[tune]`` axis) its LR tuning page,
the FLOPs crossover (when a FLOPs axis is reported), runs table (as many pages as needed), provenance, then
any extra page builders (``extra_pages=``, e.g. the System-2 thinking pages).

A page builder is ``builder(data: ReportData, new_page: Callable[[], Figure]) -> None``: it asks for as
many pages as it needs and draws on them (figures stay owned by this module).

Same database and code -> the same bytes: the PDF metadata carry a date derived from the data (the latest
run timestamp) or none, and nothing else varies between renders.
"""

from __future__ import annotations

import math
import textwrap
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
from matplotlib.backends.backend_pdf import PdfPages  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from ebt_scaling.config import FAMILY_TRAIN_KEYS  # noqa: E402
from ebt_scaling.fit import crossover_words, exclusion_reason, plain, run_modality  # noqa: E402
from ebt_scaling.fit.results import EXPLAIN, AxisFit, paper_gains  # noqa: E402
from ebt_scaling.report import plots, tuning  # noqa: E402

PAGE_SIZE = (11.69, 8.27)  # A4 landscape, inches
RUNS_PER_PAGE = 32
AXIS_ORDER = ("data", "batch", "depth", "width", "params", "flops")


@dataclass
class ReportData:
    """Everything a report shows. ``fits`` are the typed fit results (``AxisFit``, with ``plot`` data),
    ``runs`` are RunRecords (duck-typed), ``provenance`` holds strings (code version, masked DB URL, ...)."""

    title: str
    fits: list[AxisFit]
    runs: list[Any] = field(default_factory=list)
    provenance: dict[str, str] = field(default_factory=dict)
    date: datetime | None = None  # derived from the data; None -> no date in the metadata
    messages: list[str] = field(default_factory=list)
    # run id -> {"train_loss" | "val_loss": (tokens, losses)}: the loss curves (runs trained here; imported
    # results have none)
    curves: dict[int, dict[str, tuple[list[float], list[float]]]] = field(default_factory=dict)
    # runs a sweep forgot (``ebt-scale runs --forget``): dicts with sweep, run_id, status, reason, why, by, at
    forgotten: list[dict[str, Any]] = field(default_factory=list)
    # plain-words lines for the top of the summary from fits drawn on extra pages (isoflop sweeps)
    headlines: list[str] = field(default_factory=list)


PageBuilder = Callable[[ReportData, Callable[[], Figure]], None]


def build_report(data: ReportData, out: str | Path, extra_pages: Sequence[PageBuilder] = ()) -> int:
    """Write the PDF to ``out`` (via a temporary file, so a failure leaves nothing half-written).
    Returns the number of pages."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".part")
    builders: list[PageBuilder] = [summary_page, axis_pages, crossover_page, runs_pages, provenance_page,
                                   *extra_pages]
    meta: dict[str, Any] = {"Title": data.title, "Creator": "ebt-scale report", "Producer": "ebt-scale (matplotlib)",
                            "CreationDate": None, "ModDate": None}
    if data.date is not None:
        d = data.date if data.date.tzinfo else data.date.replace(tzinfo=timezone.utc)
        meta["CreationDate"] = d
        meta["ModDate"] = d
    n = 0
    try:
        with matplotlib.rc_context({"svg.hashsalt": "ebt-scale", "pdf.fonttype": 42, "font.size": 9}):
            with PdfPages(tmp, metadata=meta) as pdf:
                for b in builders:
                    figs: list[Figure] = []

                    def new_page(figs: list[Figure] = figs) -> Figure:
                        fig = Figure(figsize=PAGE_SIZE)
                        figs.append(fig)
                        return fig

                    b(data, new_page)
                    for fig in figs:
                        _footer(fig, data)
                        pdf.savefig(fig)
                        n += 1
        tmp.replace(out)
    finally:
        if tmp.exists():
            tmp.unlink()
    return n


def _footer(fig: Figure, data: ReportData) -> None:
    """On every page: which comparisons are unreliable, so no page can be read without the warning."""
    bad = [f for f in _sorted_fits(data) if f.guards]
    if not bad:
        return
    withheld = [_label(f, data) for f in bad if f.comparison is not None and f.comparison.unreliable]
    names = ", ".join(_label(f, data) for f in bad)
    text = (f"Warning: guard-rails fired on {len(bad)} of {len(data.fits)} axes ({names})"
            + (f"; no faster/slower verdict on {', '.join(withheld)}" if withheld else "")
            + ". The axis pages say why.")
    fig.text(0.5, 0.008, text, ha="center", va="bottom", fontsize=7.5, color="#a00000")


def _guard_summary(f: AxisFit, data: ReportData) -> str:
    """One line per axis: which guards fired for which family (codes; EXPLAIN says what they mean)."""
    per: dict[str, list[str]] = {}
    for g in f.guards:
        per.setdefault(plots.LABELS.get(g.family or "", g.family or "comparison"), []).append(
            g.code.replace("_", " "))
    body = "; ".join(f"{fam}: {', '.join(dict.fromkeys(c))}" for fam, c in per.items())
    return f"- {_label(f, data)}: {body}"


def _sorted_fits(data: ReportData) -> list[AxisFit]:
    def key(f: AxisFit) -> tuple[str, int, str]:
        return (f.sweep, AXIS_ORDER.index(f.axis) if f.axis in AXIS_ORDER else 99, f.axis)

    return sorted(data.fits, key=key)


def _label(f: AxisFit, data: ReportData) -> str:
    sweeps = {x.sweep for x in data.fits}
    return f.axis if len(sweeps) <= 1 else f.label


# -------------------------------------------------------------------------------------------- pages


FAMILY_NAMES = {"ebt": "EBT", "transformer_pp": "T++"}


def family_settings_notes(runs: Sequence[Any]) -> list[str]:
    """One line per axis whose families train with different optimizer settings (a spec's ``[train.<family>]``
    tables): a comparison of the two then includes that choice, and the reader should know it."""
    seen: dict[tuple[str, str], dict[str, dict[str, set[str]]]] = {}
    for r in runs:
        cfg = getattr(r, "config", None)
        tr = cfg.get("train") if isinstance(cfg, dict) else None
        if not isinstance(tr, dict):
            continue
        fam = seen.setdefault((str(r.sweep), str(r.axis)), {}).setdefault(str(r.family), {})
        for k in FAMILY_TRAIN_KEYS:
            if k in tr:
                fam.setdefault(k, set()).add(f"{tr[k]:g}" if isinstance(tr[k], (int, float)) else str(tr[k]))
    out = []
    for (sweep, axis), fams in sorted(seen.items()):
        if len(fams) < 2:
            continue
        diff = [k for k in FAMILY_TRAIN_KEYS if len({frozenset(v.get(k, ())) for v in fams.values()}) > 1]
        if diff:
            parts = "; ".join(f"{k} " + ", ".join(f"{FAMILY_NAMES.get(f, f)} {'/'.join(sorted(v.get(k, {'-'})))}"
                                                    for f, v in sorted(fams.items())) for k in diff)
            out.append(f"{axis} ({sweep}): the families train with different optimizer settings ({parts}); the "
                       "comparison includes that choice (each family at its own settings).")
    return out


def _rate_y(data: ReportData) -> str:
    """What the rate line regresses, for the modalities on the page (text: log10 perplexity; video: log10 SmoothL1)."""
    names = {"video": "log10(validation SmoothL1)"}
    ys = sorted({names.get(f.modality, "log10(perplexity)") for f in _sorted_fits(data)}) or ["log10(perplexity)"]
    return " (text) / ".join(ys) + (" (video)" if len(ys) > 1 else "")


def _summary_table(fig: Figure, data: ReportData, shift: float) -> float:
    """The per-axis rate table under the headlines (and the line saying how to read it); returns its height."""
    fig.text(0.04, 0.905 - shift, f"Rate = |slope of the rate line (paper's measure)|: OLS of {_rate_y(data)} on "
             "log10(x); rate gain = |rate EBT| / |rate T++| - 1. Verdict at 95% after Holm adjustment across axes.",
             fontsize=8.5, va="top")
    header = ["axis", "T++/EBT", "left out", "rate gain", "95% interval", "p", "p (Holm)",
              "paper v1", "paper ICLR", "verdict", "exponent gain (saturating law)"]
    rows, colors = [], []
    for f in _sorted_fits(data):
        c = f.comparison
        t, e = f.families.get("transformer_pp"), f.families.get("ebt")
        n_t, n_e = (t.n_runs if t else 0), (e.n_runs if e else 0)
        v1, iclr = (c.paper_v1, c.paper_iclr) if c else paper_gains(f.axis, f.modality)
        ag = "-" if c is None or c.alpha_gain is None else f"{plots.fmt_pct(c.alpha_gain, 1)} " \
                                                          f"{plots.fmt_ci_pct(c.alpha_gain_ci)}" \
                                                          + (" *" if c.exponent_unreliable else "")
        verdict = _verdict(f)
        unreliable = c is not None and c.unreliable
        if unreliable:  # the reason is listed under the table (the column is too narrow for it)
            verdict = "no verdict: not falling" if verdict.startswith("no verdict") else "withheld: unreliable"
        rows.append([_label(f, data), f"{n_t}/{n_e}", str(sum(f.excluded.values())),
                     plots.fmt_pct(c.rate_gain if c else None), plots.fmt_ci_pct(c.rate_gain_ci if c else None),
                     plots.fmt_p(c.p_value if c else None), plots.fmt_p(c.p_value_holm if c else None),
                     plots.fmt_pct(v1), plots.fmt_pct(iclr), verdict, ag])
        colors.append({"EBT faster": "#e6f4e6", "EBT slower": "#fbe6e6"}.get(
            verdict, "#fff1c9" if unreliable else "white"))
    table_h = min(0.6, 0.034 * (len(rows) + 1) + 0.01)
    table_h = min(table_h, 0.87 - shift - 0.3)
    ax = fig.add_axes((0.04, 0.87 - shift - table_h, 0.92, table_h))
    plots.draw_table(ax, header, rows, [0.05, 0.07, 0.06, 0.075, 0.125, 0.05, 0.06, 0.06, 0.075, 0.145, 0.23],
                     fontsize=8, row_colors=colors, fill=True)
    fit_cells(fig, ax)
    return table_h


def summary_page(data: ReportData, new_page: Callable[[], Figure]) -> None:
    """First what the data show, in words (per axis: which family scales faster, with the interval, or that the
    data cannot tell); then the table, how to read it, the guard-rails, and in the space left an overview plot
    per axis."""
    fig = new_page()
    fig.text(0.04, 0.95, data.title, fontsize=16, weight="bold", va="top")
    head = [w for f in _sorted_fits(data) for line in tuning.headline(f, _label(f, data))
            for w in (textwrap.wrap(line, 150, subsequent_indent="  ") or [""])]
    head += [w for line in data.headlines for w in textwrap.wrap(line, 150, subsequent_indent="  ")]
    if data.forgotten:
        head += textwrap.wrap(forgotten_summary(data.forgotten), 150, subsequent_indent="  ")
    if head:
        fig.text(0.04, 0.905, "\n".join(head), fontsize=9, va="top", linespacing=1.4)
    shift = len(head) * 9 * 1.4 / 72 / PAGE_SIZE[1] + (0.01 if head else 0.0)
    # no per-axis fits (an isoflop-only report): no empty rate table, the IsoFLOP pages hold the comparison
    table_h = _summary_table(fig, data, shift) if data.fits else -0.03
    notes = (["What these data support"] + [f"- {_supports(f, data)}" for f in _sorted_fits(data)] + [""] + [
        "How to read this page",
        *(["- Video axes: the rate is the log-log slope of SmoothL1 (OLS of log10(validation SmoothL1) on log10(x), "
           "the paper's video measure); the baselines are the SmoothL1 of copying the last frame and of predicting "
           "the mean embedding."] if any(f.measure.log_loss for f in data.fits) else []),
        "- 'paper v1' are the figure titles of arXiv v1 (one seed, no intervals); 'paper ICLR' the camera-ready "
        "caption (params and FLOPs). 'T++/EBT': the runs in each family's fit; 'left out': runs of the axis in no "
        "fit (the runs pages say why).",
        "- The rate line (the paper's measure; the fit's JSON calls it M1) is a straight line in log-log: its slope "
        "is not an exponent. For L = E + A x^-alpha it equals alpha (L - E), so a family that is uniformly further "
        "from the floor shows a higher rate. The exponent view is the saturating law E + A x^-alpha (M2 in the "
        "fit's JSON), last column.",
        "- Intervals: percentile bootstrap (seeds resampled within each level; parametric bootstrap with one seed "
        "per level). They cover seed noise only, not learning-rate tuning, schedules, checkpoint choice or the "
        "chosen x range.",
        "- p: test of equal slopes of the two rate lines (per-family seed variance, Welch df, when seeds are "
        "replicated); a permutation p-value is on each axis page.",
        "- Holm: p adjusted over the axes of the sweep (params and flops count once when they share runs), or "
        "--family-of-tests. * = exponent view unreliable (guard-rails below).",
    ]) if data.fits else [
        "How to read this page",
        "- No per-axis scaling fits here" + (" (the sweeps are IsoFLOP sweeps): the compute-optimal comparison, "
                                             "its frontiers, exponents and intervals are on the IsoFLOP pages."
                                             if data.headlines else ": no fit-eligible runs on a scaling axis.")]
    for m in data.messages + family_settings_notes(data.runs):
        notes.append(f"- {m}")
    for f in _sorted_fits(data):
        if f.comparison is not None and f.comparison.warning:
            notes.append(f"- {_label(f, data)}: {_plain_names(f.comparison.warning)}")
    # the text in the left column, the overview plots in the right one (full width when there is nothing to plot)
    plotted = [f for f in _sorted_fits(data) if f.plot]
    wrap = 118 if plotted else 175
    notes = [w for line in notes for w in (textwrap.wrap(line, wrap, subsequent_indent="  ") or [""])]
    flagged = [f for f in _sorted_fits(data) if f.guards]
    warn: list[str] = []
    if flagged:
        codes = sorted({g.code for f in flagged for g in f.guards})
        warn = ["Guard-rails (a verdict is withheld when one of these fires for the rate view; details on the axis "
                "pages)"] + [_guard_summary(f, data) for f in flagged] + [
                    f"  {c.replace('_', ' ')}: {EXPLAIN[c]}" for c in codes]
        warn = [w for line in warn for w in (textwrap.wrap(line, wrap, subsequent_indent="    ") or [""])]
    # both blocks between the table and the footer: the font shrinks (to 6.5 pt), then the notes are cut
    top, bottom = 0.87 - shift - table_h - 0.04, 0.05
    pt = 8.0
    while pt > 6.5 and (len(notes) + len(warn) + 1) * pt * 1.5 / 72 / PAGE_SIZE[1] > top - bottom:
        pt -= 0.5
    line_h = pt * 1.5 / 72 / PAGE_SIZE[1]
    room = int((top - bottom) / line_h) - len(warn) - 1
    if len(notes) > room:
        notes = notes[:max(room - 1, 0)] + ["... (see the axis pages and `ebt-scale fit`)"]
    fig.text(0.04, top, "\n".join(notes), fontsize=pt, va="top", linespacing=1.5)
    if warn:
        fig.text(0.04, top - line_h * (len(notes) + 1), "\n".join(warn), fontsize=pt, va="top", linespacing=1.5,
                 color="#a00000")
    _overview(fig, data, plotted, top, bottom)


OVERVIEW_X = (0.665, 0.96)  # the summary's right column


def _overview(fig: Figure, data: ReportData, fits: list[AxisFit], top: float, bottom: float) -> None:
    """The summary's right column, beside the notes: one small scaling plot per axis (the runs, the rate lines
    with their bands, the saturating law, the baseline), up to 6 in a grid of 1-2 columns; a caption is the
    legend."""
    if not fits:
        return
    shown = fits[:6]
    ncol = 1 if len(shown) <= 2 else 2
    nrow = math.ceil(len(shown) / ncol)
    caption = ("Overview (details on the axis pages): a point per run, circles Transformer++, squares EBT; solid: "
               "rate lines (paper's measure) with 95% bands; dashed: saturating law; dash-dot: unigram baseline"
               + ("; grey dashed (video): copy-last-frame and mean-embedding SmoothL1" if any(f.measure.log_loss
                                                                                        for f in fits) else "")
               + "."
               + ("" if len(shown) == len(fits) else f" First {len(shown)} of {len(fits)} axes."))
    x0, x1 = OVERVIEW_X
    lines = textwrap.wrap(caption, 62)
    fig.text(x0, top, "\n".join(lines), fontsize=7, va="top", color="0.25", linespacing=1.3)
    top -= len(lines) * 7 * 1.3 / 72 / PAGE_SIZE[1] + 0.02
    h = (top - bottom) / nrow
    w = (x1 - x0) / ncol
    for k, f in enumerate(shown):
        r, c = divmod(k, ncol)
        ax = fig.add_axes((x0 + c * w + 0.04, top - (r + 1) * h + 0.055, w - 0.05, h - 0.09))
        plots.draw_scaling(ax, f)
        if ax.get_legend() is not None:
            ax.get_legend().remove()
        ax.set_title(f"{_label(f, data)}: {_verdict_short(f)}", fontsize=7.5)
        ax.tick_params(labelsize=6.5)
        ax.xaxis.label.set_fontsize(7)
        ax.yaxis.label.set_fontsize(7)


def _verdict_short(f: AxisFit) -> str:
    c = f.comparison
    if c is None:
        return "no comparison"
    v = _verdict(f)
    if c.unreliable:
        return "no verdict (guard-rails)"
    return v


def _plain_names(text: str) -> str:
    """'M1'/'M2' in a fit message as the summary names them."""
    return (text.replace("M1 rate gain", "rate gain (rate lines)").replace("M2 exponent gain",
                                                                           "exponent gain (saturating law)")
            .replace("the M1 gap", "the gap in rate").replace("M1 mixes", "the rate mixes"))


def forgotten_summary(forgotten: Sequence[dict[str, Any]]) -> str:
    """One line: how many runs each sweep forgot (``ebt-scale runs --forget``), so no removal is silent."""
    per: dict[str, list[dict[str, Any]]] = {}
    for rec in forgotten:
        per.setdefault(str(rec.get("sweep", "-")), []).append(rec)
    parts = []
    for sweep, recs in sorted(per.items()):
        states = sorted({str(r.get("status")) for r in recs})
        parts.append(f"{len(recs)} {'/'.join(states)} run(s) of sweep {sweep}")
    return ("Forgotten: " + "; ".join(parts) + " were taken out with `ebt-scale runs --forget` and are in no fit; "
            "the runs pages list each with its reason.")


def _verdict(f: AxisFit) -> str:
    c = f.comparison
    return c.verdict if c is not None and c.verdict is not None else "not testable"


def _supports(f: AxisFit, data: ReportData) -> str:
    """What one axis's comparison supports, in words."""
    c = f.comparison
    name = _label(f, data)
    if c is None:
        why = "; ".join(f.messages[:1]) or "a family is missing"
        return f"{name}: no EBT vs Transformer++ comparison ({why})."
    gain = f"rate gain {plots.fmt_pct(c.rate_gain)} {plots.fmt_ci_pct(c.rate_gain_ci)}"
    verdict = _verdict(f)
    if c.unreliable:
        codes = sorted({g.code.replace("_", " ") for g in f.guards})
        return (f"{name}: no faster/slower claim can be defended ({gain}); guard-rails: {', '.join(codes)}. "
                "Fix those (more levels, seeds or steps) before reading a gain.")
    if f.measure.log_loss:  # video: the rate is the log-log slope of the validation SmoothL1
        gain = f"log-log slope of SmoothL1, {gain}"
    if verdict in ("EBT faster", "EBT slower"):
        word = "faster" if verdict == "EBT faster" else "more slowly"
        loss = "validation SmoothL1" if f.measure.log_loss else "loss"
        out = (f"{name}: the EBT's {loss} falls {word} along this axis than the Transformer++'s ({gain}, Holm p = "
               f"{plots.fmt_p(c.p_value_holm)}), within the range of x measured.")
    elif verdict.startswith("not distinguishable"):
        out = f"{name}: the two rates are not distinguishable at 95% ({gain}); more seeds or levels may separate them."
    else:
        out = f"{name}: {verdict} ({gain})."
    if c.exponent_unreliable:
        out += " The exponent view (saturating law) is not a measurement here."
    return out


TEXT_PT = 6.5  # the numbers and warnings under the axis plots
LINE_H = TEXT_PT * 1.3 / 72 / PAGE_SIZE[1]  # one text line, in figure height


def axis_pages(data: ReportData, new_page: Callable[[], Figure]) -> None:
    """Per axis: the scaling plot (seeds, M1 lines, M2 curves, bands, baseline), residuals, then the numbers
    and, in red, every guard-rail message, wrapped to the page and laid out from the top down."""
    for f in _sorted_fits(data):
        fig = new_page()
        gs = fig.add_gridspec(2, 2, height_ratios=[2.5, 1.0], left=0.07, right=0.97, top=0.92, bottom=0.45,
                              hspace=0.42, wspace=0.18)
        fig.suptitle(f"Axis: {_label(f, data)}" + (" - tuned: each point at its level's chosen LR (the LR envelope; "
                     "the tuning page shows the grid)" if f.tuning else ""), fontsize=13, weight="bold", x=0.07,
                     ha="left")
        pos = gs[0, :].get_position(fig)  # the scaling plot leaves the right quarter to its legend
        plots.draw_scaling(fig.add_axes((pos.x0, pos.y0, 0.74 - pos.x0, pos.height)), f)
        plots.draw_residuals(fig.add_subplot(gs[1, 0]), f, "m1")
        plots.draw_residuals(fig.add_subplot(gs[1, 1]), f, "m2")
        text = plots.axis_text(f)
        c = f.comparison
        if c is not None and c.p_value_permutation is not None:
            text += (f"\nFreedman-Lane permutation p = {plots.fmt_p(c.p_value_permutation)} "
                     f"({c.n_permutations} permutations); t-test variance: {c.p_value_method or '-'}")
        text = "\n".join(w for line in text.splitlines()  # nothing past the right edge
                         for w in (textwrap.wrap(line, 200, subsequent_indent="      ") or [""]))
        top = 0.375
        fig.text(0.04, top, text, va="top", fontsize=TEXT_PT, family="monospace", linespacing=1.3)
        groups = [textwrap.wrap(f"- {w}", 190, subsequent_indent="  ") for w in plots.guard_lines(f)]
        if groups:
            y = top - LINE_H * (text.count("\n") + 1.6)
            room = max(1, int((y - 0.035) / LINE_H) - 1)
            warn, rest = _whole_warnings(groups, room)
            if rest:
                warn.append(f"  ... {len(rest)} more lines: on the next page (Warnings, continued)")
            fig.text(0.04, y, "\n".join(["Warnings:"] + warn), va="top", fontsize=TEXT_PT, color="#a00000",
                     linespacing=1.3)
            _continued(f"Warnings, continued: {_label(f, data)}", rest, new_page, color="#a00000")
        _curves_page(f, data, new_page)
        _tuning_page(f, data, new_page)


def _tuning_page(f: AxisFit, data: ReportData, new_page: Callable[[], Figure]) -> None:
    """A ``[tune]`` axis's grid: loss against LR per family (one curve per level, the chosen points circled, the
    edge guard marked), then the numbers per level and, in red, the lr_at_edge guard. Skipped on untuned axes."""
    if not f.tuning:
        return
    fig = new_page()
    fig.suptitle(f"LR tuning: {_label(f, data)}", fontsize=13, weight="bold", x=0.07, ha="left")
    fams = [fam for fam in ("transformer_pp", "ebt") if fam in f.tuning]
    gs = fig.add_gridspec(1, len(fams), left=0.07, right=0.9, top=0.88, bottom=0.45, wspace=0.35)
    for k, fam in enumerate(fams):
        tuning.draw_tuning(fig.add_subplot(gs[0, k]), f.tuning[fam], fam, plots.X_LABELS.get(f.axis, "x"),
                           "SmoothL1" if f.measure.log_loss else "loss (nats)")
    text = ["Solid line and circles: mean over seeds of the selection-set loss (val_select_loss), which picks each "
            "level's LR; dotted: mean evaluation-set loss (val_loss),",
            "the loss that is fitted and reported (the two sets are disjoint, so the chosen point's loss carries no "
            "winner's curse); faint dots: single seeds; ring: the chosen LR."]
    text += tuning.tuning_text(f)
    text = [w for line in text for w in (textwrap.wrap(line, 200, subsequent_indent="      ") or [""])]
    warn = [w for g in f.guards if g.code == "lr_at_edge"
            for w in textwrap.wrap(f"- {g.message}", 190, subsequent_indent="  ")]
    room = int((0.36 - 0.035) / LINE_H) - (len(warn) + 2 if warn else 0)
    if len(text) > room:
        text = text[:room - 1] + ["... see `ebt-scale fit --json` (tuning)"]
    fig.text(0.04, 0.37, "\n".join(text), va="top", fontsize=TEXT_PT, family="monospace", linespacing=1.3)
    if warn:
        fig.text(0.04, 0.37 - LINE_H * (len(text) + 1), "\n".join(["Warnings:"] + warn), va="top", fontsize=TEXT_PT,
                 color="#a00000", linespacing=1.3)


def _curves_page(f: AxisFit, data: ReportData, new_page: Callable[[], Figure]) -> None:
    """Train and validation loss against tokens for every run of the axis, one panel per family, coloured by
    level. Skipped when none of the axis's runs has a stored series (imported results)."""
    by_id = {r.id: r for r in data.runs}
    runs = [by_id[i] for i in f.run_ids if i in by_id and data.curves.get(i)]
    if not runs:
        return
    fig = new_page()
    fig.suptitle(f"Loss curves: {_label(f, data)}", fontsize=13, weight="bold", x=0.07, ha="left")
    fams = [fam for fam in ("transformer_pp", "ebt") if any(r.family == fam for r in runs)]
    levels = sorted({r.x for r in runs})
    gs = fig.add_gridspec(1, len(fams), left=0.07, right=0.97, top=0.88, bottom=0.3, wspace=0.15)
    base = f.baselines
    video = f.measure.log_loss
    first = None
    for k, fam in enumerate(fams):
        ax = fig.add_subplot(gs[0, k], sharey=first)  # one loss scale for both families
        first = first or ax
        plots.draw_curves(ax, [r for r in runs if r.family == fam], data.curves, levels,
                          None if video else (base.get(fam) or {}).get("unigram"),
                          video_baselines=dict(base.get(fam) or {}) if video else None)
        ax.set_title(plots.LABELS.get(fam, fam), fontsize=10)
    what = ("Dashed grey: the SmoothL1 of copying the last frame (dark) and of predicting the mean embedding (light)."
            if video else "Dashed grey: the unigram baseline (loss of predicting token frequencies).")
    fig.text(0.07, 0.1, "Thin lines: training loss (logged every few steps); dots joined by a thicker line: "
             "validation loss on the sweep's fixed validation set.\nColour: the level of the axis (legend). "
             + what, fontsize=8, va="top")


def _whole_warnings(groups: list[list[str]], room: int) -> tuple[list[str], list[str]]:
    """The wrapped lines of the warnings that fit in ``room`` lines (keeping one for the "more lines" note when some
    do not), and the rest: a warning is never split between pages (at least the first is shown whole)."""
    n_lines = sum(len(g) for g in groups)
    if n_lines <= room:
        return [line for g in groups for line in g], []
    shown: list[str] = []
    k = 0
    while k < len(groups) and (not shown or len(shown) + len(groups[k]) <= room - 1):
        shown += groups[k]
        k += 1
    return shown, [line for g in groups[k:] for line in g]


def _continued(title: str, lines: Sequence[str], new_page: Callable[[], Figure], color: str = "k",
               size: float = TEXT_PT) -> None:
    """Lines that did not fit on a page, in full, on as many continuation pages as they need (an archival PDF
    holds every line)."""
    per_page = int((0.90 - 0.06) / (size * 1.3 / 72 / PAGE_SIZE[1])) - 1
    for k in range(0, len(lines), per_page):
        fig = new_page()
        fig.suptitle(title, fontsize=13, weight="bold", x=0.07, ha="left")
        chunk = list(lines[k:k + per_page])
        if k + per_page < len(lines):
            chunk.append(f"  ... {len(lines) - k - per_page} more lines: on the next page")
        fig.text(0.04, 0.90, "\n".join(chunk), va="top", fontsize=size, color=color, linespacing=1.3)


def crossover_page(data: ReportData, new_page: Callable[[], Figure]) -> None:
    """The FLOPs axis's crossover (skipped when the report has no FLOPs axis: every other axis page states its
    own crossover)."""
    flops = [f for f in _sorted_fits(data) if f.axis == "flops"]
    if not flops:
        return
    fig = new_page()
    fig.suptitle("FLOPs axis: where would the fitted lines cross?", fontsize=13, weight="bold", x=0.07, ha="left")
    ax = fig.add_axes((0.08, 0.30, 0.66, 0.60))  # the right quarter holds the legend
    plots.draw_crossover(ax, flops[0] if flops else None)
    lines = ["A constant FLOPs multiplier (EBT's ~6.67x per token in the paper's convention) shifts a line "
             "without changing its log-log slope,",
             "so the FLOPs slope says nothing about FLOP efficiency; the matched-compute view below does."]
    for f in flops:
        cr = f.crossover
        lines.append("")
        lines.append(f"{_label(f, data)}: "
                     + (crossover_words(cr, f.axis) if cr and cr.message else
                        "no crossover computed (a family is missing)"))
        if cr is not None and cr.loss_gap_nats is not None and cr.gap_at_x is not None:
            lo, hi = cr.loss_gap_ci
            span = "" if lo is None or hi is None else f" [{lo:+.4f}, {hi:+.4f}]"
            lines.append(f"Loss gap EBT - T++ at x = {plain(cr.gap_at_x)}: {cr.loss_gap_nats:+.4f} nats{span} "
                         "(on the rate lines)")
        if cr is not None and cr.loss_ratio is not None and cr.gap_at_x is not None:  # video
            lo, hi = cr.loss_ratio_ci
            span = "" if lo is None or hi is None else f" [{lo:.4f}, {hi:.4f}]"
            lines.append(f"SmoothL1 ratio EBT / T++ at x = {cr.gap_at_x:.3g}: {cr.loss_ratio:.4f}{span} (M1 lines)")
        if f.guards:
            lines.append("Guard-rails on this axis (the rate lines above inherit them): "
                         + _guard_summary(f, data)[2:])
    lines = [w for line in lines for w in (textwrap.wrap(line, 150, subsequent_indent="    ") or [""])]
    room = int((0.24 - 0.05) / (8 * 1.4 / 72 / PAGE_SIZE[1]))  # lines of 8 pt between the plot and the footer
    rest: list[str] = []
    if len(lines) > room:
        lines, rest = lines[:room - 1], lines[room - 1:]
        lines.append(f"... {len(rest)} more lines: on the next page (continued)")
    fig.text(0.08, 0.24, "\n".join(lines), fontsize=8, va="top", linespacing=1.4)
    _continued("FLOPs axis crossover, continued", rest, new_page)


def _short(v: float) -> str:
    """A count in 3 significant digits with k/M/G: 28.9k, 307k, 1.15M."""
    for div, unit in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(v) >= div:
            return f"{v / div:.3g}{unit}"
    return f"{v:.3g}"


def _config_summary(run: Any) -> str:
    """The run's shape in a few characters: blocks, width, non-embedding parameters, training tokens, the config
    hash's first 8 characters."""
    cfg = getattr(run, "config", None) or {}
    model = cfg.get("model") if isinstance(cfg, dict) else None
    parts = []
    if isinstance(model, dict):
        if "n_layer" in model and "n_embd" in model:
            parts.append(f"L{model['n_layer']} d{model['n_embd']}")
    params = getattr(run, "params", None) or {}
    if params:
        k = "non_embedding" if "non_embedding" in params else sorted(params)[0]
        parts.append(f"N={_short(float(params[k]))}")
    if getattr(run, "tokens", None):
        parts.append(f"D={_short(float(run.tokens))}")
    src = getattr(run, "source", None)
    if src and src != "trained":
        parts.append(src)
    h = getattr(run, "config_hash", "") or ""
    parts.append(h[:8])
    return " ".join(parts)


def fit_cells(fig: Figure, ax: Any) -> None:
    """Shorten (with an ellipsis) every cell text of the table on ``ax`` that is wider than its cell, measured with
    the renderer, so that no text runs past its column; the full text is elsewhere (the left-out runs pages)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    if not ax.tables:
        return
    if not isinstance(fig.canvas, FigureCanvasAgg):
        FigureCanvasAgg(fig)
    renderer = fig.canvas.get_renderer()
    for cell in ax.tables[0].get_celld().values():
        width = cell.get_window_extent(renderer).width
        cell.PAD = min(0.1, 0.05 * fig.dpi / max(width, 1.0))  # the same 0.05 inch left of the text in every column
        text = cell.get_text()
        full = text.get_text()
        room = width * (1 - cell.PAD) - 0.05 * fig.dpi  # text starts at PAD, left; as much room on the right
        if not full or text.get_window_extent(renderer).width <= room:
            continue
        lo, hi = 0, len(full)  # the longest prefix that fits with its ellipsis
        while lo < hi:
            mid = (lo + hi + 1) // 2
            text.set_text(full[:mid].rstrip() + "\u2026")
            if text.get_window_extent(renderer).width <= room:
                lo = mid
            else:
                hi = mid - 1
        text.set_text(full[:lo].rstrip() + "\u2026")


def _run_note(run: Any, fitted: set[int]) -> tuple[str | None, str]:
    """(why the run is not in a fit or None, the note to show): a failed run's note is its stored error."""
    why = exclusion_reason(run)
    if why is None and run.id not in fitted and _tune_lr(run) is not None:  # a [tune] grid point not chosen
        why = f"LR {_tune_lr(run):.3g} not chosen (tuning page)"
    if why is not None and why.startswith("status ") and getattr(run, "reason", None):
        return why, f"{run.status}: {run.reason}"
    return why, why or (getattr(run, "reason", None) or "")


def runs_pages(data: ReportData, new_page: Callable[[], Figure]) -> None:
    """Every run in a table (as many pages as needed; a cell too long for its column ends in an ellipsis), then
    the runs left out of the fits and those the sweep forgot, each with its full reason."""
    runs = sorted(data.runs, key=lambda r: (r.sweep, r.axis, r.family, r.x if r.x is not None else 0, r.seed, r.id))
    sweeps = sorted({str(r.sweep) for r in runs})
    one = len(sweeps) <= 1
    header = ["id", "sweep", "axis", "family", "x", "seed", "status", "final val loss", "ppl", "in fit",
              "reason / note", "config"]
    widths = [0.035, 0.10, 0.05, 0.05, 0.055, 0.035, 0.06, 0.075, 0.05, 0.04, 0.25, 0.20]
    if one:  # the sweep is in the title: its column goes to the reason and the config
        header.pop(1)
        widths = [0.035, 0.05, 0.05, 0.055, 0.035, 0.06, 0.075, 0.05, 0.04, 0.30, 0.25]
    pages = max(1, math.ceil(len(runs) / RUNS_PER_PAGE))
    fitted = {i for f in data.fits for i in f.run_ids}
    what = f"Runs of sweep {sweeps[0]}" if one and sweeps else "Runs"
    notes = {r.id: _run_note(r, fitted) for r in runs}
    left_out = [(r, note) for r in runs for why, note in [notes[r.id]]
                if why is not None and not why.startswith("LR ")]  # an unchosen [tune] point: the tuning page
    lines: list[str] = []
    if left_out:
        lines.append(f"Runs left out of the fits ({len(left_out)}), with the stored reason (the error of a failed "
                     "run):")
        for r, note in left_out:
            lines += textwrap.wrap(f"- run {r.id} ({'' if one else f'{r.sweep}, '}{r.axis} x = "
                                   f"{'-' if r.x is None else f'{r.x:g}'}, {FAMILY_NAMES.get(r.family, r.family)}, "
                                   f"seed {r.seed}): {note}", 175, subsequent_indent="    ")
    if data.forgotten:
        lines += ([""] if lines else []) + textwrap.wrap(forgotten_summary(data.forgotten), 175) + forgotten_lines(
            data.forgotten)
    for p in range(pages):
        chunk = runs[p * RUNS_PER_PAGE:(p + 1) * RUNS_PER_PAGE]
        fig = new_page()
        fig.suptitle(f"{what} ({len(runs)} in total) - page {p + 1} of {pages}", fontsize=12, weight="bold",
                     x=0.04, ha="left")
        rows = []
        for r in chunk:
            y = r.final_val_loss
            why, note = notes[r.id]
            ppl = ("-" if y is None or not math.isfinite(y) or y > 700 or run_modality(r) == "video"  # SmoothL1
                   else f"{math.exp(y):.2f}")
            row = [str(r.id), str(r.sweep), r.axis, FAMILY_NAMES.get(r.family, r.family),
                   f"{r.x:.4g}" if r.x is not None else "-", str(r.seed), r.status, "-" if y is None else f"{y:.4f}",
                   ppl, "no" if why else "yes", note, _config_summary(r)]
            rows.append(row[:1] + row[2:] if one else row)
        ax = fig.add_axes((0.04, 0.05, 0.92, 0.86))
        plots.draw_table(ax, header, rows, widths, fontsize=7, fill=False)
        fit_cells(fig, ax)
        if p == pages - 1 and lines:  # under the table when there is room, the rest on pages of their own
            lines = _text_below(fig, ax, lines, 7.5)
    if lines:
        _continued("Runs left out, and why (continued)", lines, new_page, size=7.5)


def _text_below(fig: Figure, ax: Any, lines: list[str], size: float) -> list[str]:
    """Draw as many of ``lines`` as fit between the table on ``ax`` and the footer; returns the rest."""
    renderer = fig.canvas.get_renderer()
    bottom = ax.tables[0].get_window_extent(renderer).y0 / fig.bbox.height if ax.tables else 0.9
    line_h = size * 1.3 / 72 / PAGE_SIZE[1]
    top = bottom - 0.03
    room = int((top - 0.05) / line_h)
    if room < 3:
        return lines
    shown, rest = (lines, []) if len(lines) <= room else (lines[:room - 1], lines[room - 1:])
    if rest:
        shown = [*shown, f"  ... {len(rest)} more lines: on the next page"]
    fig.text(0.04, top, "\n".join(shown), va="top", fontsize=size, linespacing=1.3)
    return rest


def forgotten_lines(forgotten: Sequence[dict[str, Any]]) -> list[str]:
    """One entry per forgotten run: id, status, when, by whom, why, and its stored error (wrapped)."""
    out = []
    for rec in sorted(forgotten, key=lambda r: (str(r.get("sweep")), int(r.get("run_id") or 0))):
        out += textwrap.wrap(f"- run {rec.get('run_id')} of sweep {rec.get('sweep')} ({rec.get('status')}), "
                             f"forgotten {rec.get('at')} by {rec.get('by')} ({rec.get('why')}): "
                             f"{rec.get('reason') or 'no reason stored'}", 175, subsequent_indent="    ")
    return out


def _tune_lr(run: Any) -> float | None:
    """The LR of a run's ``[tune]`` grid point (None outside any grid)."""
    cfg = getattr(run, "config", None)
    point = cfg.get("tune") if isinstance(cfg, dict) else None
    lr = point.get("lr") if isinstance(point, dict) else None
    return float(lr) if isinstance(lr, (int, float)) else None


def provenance_page(data: ReportData, new_page: Callable[[], Figure]) -> None:
    fig = new_page()
    fig.suptitle("Provenance", fontsize=13, weight="bold", x=0.04, ha="left")
    lines = [f"{k}: {v}" for k, v in data.provenance.items()]
    lines.append(f"report date (latest run timestamp in the database): "
                 f"{data.date.isoformat() if data.date else 'unknown'}")
    lines.append("")
    lines.append("Fits (fingerprint = sha256 of the exact runs' ids, x, seeds and losses plus the fit settings):")
    for f in _sorted_fits(data):
        st = f.settings
        lines.append(f"  {_label(f, data)}: {f.n_runs} runs, fingerprint {f.fingerprint[:16]}, "
                     f"{'reused from the database' if f.reused else 'fitted now'}; resamples "
                     f"{st.get('resamples')}, seed {st.get('seed')}, Huber delta {st.get('delta')}, E mode "
                     f"{st.get('e_mode')}, fit code v{st.get('fit_code_version')}")
    lines += [
        "",
        "Methods (docs/fits.md):",
        "  M1: OLS of log10(ppl) on log10(x) per family (= slope of loss in nats on ln x); gain |b_EBT|/|b_T++| - 1.",
        "  M2: L = E + A x^-alpha in nats; Huber(delta) on ln-residuals via logaddexp, x rescaled, alpha in (0, 2);",
        "      variable projection over an alpha grid, Levenberg-Marquardt, L-BFGS-B polish with gtol 1e-12.",
        "      Shared E for the pair unless both families span >= 1.5 decades with >= 6 levels.",
        "  Intervals: percentile bootstrap; stratified by level over seeds (deviations scaled by sqrt(k/(k-1)) and",
        "      by sqrt(df/chi2_df) per resample for the estimated seed noise),",
        "      parametric bootstrap with one seed per level (Gaussian noise, sigma^2 drawn from inverse chi-square),",
        "      Gaussian noise with the pooled seed sd (also drawn) for single-seed levels of mixed designs.",
        "  Equal-slope test: interaction t-test; Freedman-Lane permutation as a check; Holm across the axes shown.",
    ]
    if any(f.measure.log_loss for f in data.fits):
        lines += ["  Video axes: y = validation SmoothL1; M1 = OLS of log10(SmoothL1) on log10(x) (the paper's log-log",
                  "      slope); M2 in SmoothL1 units; baselines: copy the last frame, predict the mean embedding."]
    fig.text(0.04, 0.88, "\n".join(lines), fontsize=8.5, va="top", family="monospace", linespacing=1.5)
