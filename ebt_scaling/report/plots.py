"""Figures drawn on a given Axes (never creates figures; ``report/pdf.py`` does that).

Inputs are the typed results of ``ebt_scaling.fit.results`` (``AxisFit``: ``families``, ``comparison``,
``crossover``, ``plot``), read by attribute; a stored fit is rebuilt with ``AxisFit.from_json``, so a report can
be drawn without refitting.

What the y axis shows is the axis's ``Measure`` (``fit.measure``): text axes plot perplexity (exp of the loss in
nats) with the unigram baseline; video axes the validation SmoothL1 itself, on log-log axes, with the copy-last-frame
and mean-embedding baselines as dashed lines.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from matplotlib.axes import Axes
from matplotlib.ticker import FixedLocator, FuncFormatter, LogLocator, NullFormatter, NullLocator

from ebt_scaling.fit import crossover_words
from ebt_scaling.fit.results import (
    BASELINE_NAMES,
    LABELS,
    AxisFit,
    FamilyFit,
    FamilyPlot,
    Measure,
    baseline_of,
    holdout_lines,
)

COLORS = {"transformer_pp": "#1f77b4", "ebt": "#d62728"}
MARKERS = {"transformer_pp": "o", "ebt": "s"}
X_LABELS = {"data": "training tokens", "batch": "batch size (tokens)", "depth": "layers",
            "width": "embedding width", "params": "non-embedding parameters", "flops": "training FLOPs"}


def fmt_pct(v: float | None, digits: int = 2) -> str:
    """A share as a signed percentage; beyond +-10,000% in powers of ten, so that a wild interval bound still
    fits its table cell."""
    if v is None:
        return "-"
    return f"{v * 100:+.{digits}f}%" if abs(v) < 100 else f"{v * 100:+.1e}%"


def fmt_ci_pct(ci: Sequence[float | None] | None, digits: int = 1) -> str:
    if not ci or ci[0] is None or ci[1] is None:
        return "-"
    return f"[{fmt_pct(ci[0], digits)}, {fmt_pct(ci[1], digits)}]"


def fmt_p(p: float | None) -> str:
    if p is None:
        return "-"
    return f"{p:.1e}" if p < 1e-3 else f"{p:.3f}"


def _arr(v: Sequence[float | None]) -> np.ndarray:
    """Floats, with None (a NaN stored as JSON null) as NaN."""
    return np.asarray(v, dtype=float)


def _tick_text(v: float, _pos: Any = None) -> str:
    """A tick label as a plain number (40, 100, 0.5), large values as 2.5e6: never 4x10^1."""
    if v == 0 or not math.isfinite(v):
        return f"{v:g}"
    if 1e-3 <= abs(v) < 1e5:
        return f"{v:.4g}"
    m, e = f"{v:.2e}".split("e")
    return f"{float(m):g}e{int(e)}"


def _plain_y(ax: Axes) -> None:
    """Perplexities as plain numbers (40, 60) rather than 4x10^1 on a log axis: one locator (1, 2, 5 per decade,
    a handful in all) and one formatter, no minor labels, so two labels never overlap or differ in size."""
    fmt = FuncFormatter(_tick_text)
    lo, hi = ax.get_ylim()
    subs = (1.0, 2.0, 5.0) if hi / max(lo, 1e-300) < 1e3 else (1.0,)
    ax.yaxis.set_major_locator(LogLocator(base=10, subs=subs, numticks=8))
    ax.yaxis.set_major_formatter(fmt)
    ax.yaxis.set_minor_locator(LogLocator(base=10, subs=(1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0), numticks=12))
    ax.yaxis.set_minor_formatter(NullFormatter())
    if ax.get_xlim()[1] < 1e5:
        ax.xaxis.set_major_formatter(fmt)
        ax.xaxis.set_minor_formatter(NullFormatter())


def _level_x(ax: Axes, xs: Sequence[float]) -> None:
    """x margins so no point sits on the frame, and the levels themselves as the x ticks (when few and apart)."""
    vals = sorted({float(v) for v in xs if v is not None and math.isfinite(float(v)) and float(v) > 0})
    if not vals:
        return
    lo, hi = math.log10(vals[0]), math.log10(vals[-1])
    pad = max(0.06 * (hi - lo), 0.05)
    ax.set_xlim(10 ** (lo - pad), 10 ** (hi + pad))
    logs = [math.log10(v) for v in vals]
    if len(vals) <= 10 and all(b - a >= 0.06 * max(hi - lo, 1e-9) for a, b in zip(logs, logs[1:], strict=False)):
        ax.xaxis.set_major_locator(FixedLocator(vals))
        ax.xaxis.set_minor_locator(NullLocator())
    else:
        ax.xaxis.set_major_locator(LogLocator(base=10, numticks=8))
    ax.xaxis.set_major_formatter(FuncFormatter(_tick_text))
    ax.xaxis.set_minor_formatter(NullFormatter())


def _legend_outside(ax: Axes, fontsize: float = 6.5, **kw: Any) -> None:
    """The legend to the right of the axes, never over the data."""
    ax.legend(fontsize=fontsize, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0, frameon=False,
              **kw)


def _num_label(v: float | None, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def plotted(measure: Measure, loss: Sequence[float] | np.ndarray) -> np.ndarray:
    """The plotted quantity from the loss: perplexity exp(loss) for text, the SmoothL1 itself for video."""
    with np.errstate(over="ignore"):
        return np.asarray(loss, dtype=float) if measure.log_loss else np.exp(np.asarray(loss, dtype=float))


def draw_scaling(ax: Axes, fit: AxisFit) -> None:
    """Perplexity (text) or SmoothL1 (video) vs x (log-log): every seed as a point, M1 line with its bootstrap band,
    M2 curve, the baselines."""
    plot = fit.plot
    measure = fit.measure
    slope_name = "log-log slope" if measure.log_loss else "slope"
    any_data = False
    for fam in ("transformer_pp", "ebt"):
        p = plot.get(fam)
        if not p:
            continue
        any_data = True
        c = COLORS[fam]
        entry = fit.families.get(fam)
        ax.scatter(p.x, plotted(measure, p.y), s=22, marker=MARKERS[fam], color=c, alpha=0.75, zorder=3,
                   label=f"{LABELS[fam]} runs ({len(p.x)})", edgecolors="none")
        if p.m1 is not None:
            m = p.m1
            slope = entry.slope if entry else None
            ax.plot(m.x, 10 ** _arr(m.fit), color=c, lw=1.6, zorder=2,
                    label=f"{LABELS[fam]} rate line, {slope_name} {_num_label(slope, '.4f')}")
            ax.fill_between(m.x, 10 ** _arr(m.lo), 10 ** _arr(m.hi), color=c, alpha=0.18,
                            lw=0, zorder=1, label=f"{LABELS[fam]} rate line 95% band (bootstrap)")
        if p.m2 is not None:
            m = p.m2
            law = entry.law if entry else None
            ax.plot(m.x, 10 ** _arr(m.fit), color=c, lw=1.2, ls="--", zorder=2,
                    label=f"{LABELS[fam]} saturating law E + A x^-a, "
                          f"a = {_num_label(law.alpha if law else None, '.3f')}")
            ax.fill_between(m.x, 10 ** _arr(m.lo), 10 ** _arr(m.hi), color=c, alpha=0.10,
                            lw=0, hatch=None, zorder=1, label=f"{LABELS[fam]} saturating law 95% band (bootstrap)")
    # a loss above ~709 nats has no float perplexity: left off the limits
    pts = [float(v) for fam in ("transformer_pp", "ebt") if plot.get(fam) for v in plotted(measure, plot[fam].y)
           if math.isfinite(v) and v > 0]
    if pts:  # a wide bootstrap band must not squash the runs: y spans the runs (and a drawn baseline) with room
        ax.set_ylim(min(pts) / 2.0, max(pts) * 2.0)
    lines = _draw_video_baselines(ax, plot) if measure.log_loss else _draw_baseline(ax, plot)
    ax.set_xscale("log")
    ax.set_yscale("log")
    if pts and lines:
        ax.set_ylim(min(pts) / 2.0, max(max(pts) * 2.0, max(lines) * 1.3))
    _plain_y(ax)
    _level_x(ax, [v for fam in ("transformer_pp", "ebt") if plot.get(fam) for v in plot[fam].x])
    ax.set_xlabel(X_LABELS.get(fit.axis, fit.axis))
    ax.set_ylabel(measure.y_label)
    ax.grid(True, which="both", alpha=0.25, lw=0.5)
    if any_data:
        _legend_outside(ax)
    else:
        ax.text(0.5, 0.5, "no fit-eligible runs", ha="center", va="center", transform=ax.transAxes)


def _draw_baseline(ax: Axes, plot: dict[str, FamilyPlot]) -> list[float]:
    """The unigram baseline (else the uniform ln V) as a horizontal line: a model on it learned only token
    frequencies. One line when the families share it (the same validation set), else one per family. Returns the
    perplexities drawn."""
    drawn: list[float] = []
    seen: dict[float, list[str]] = {}
    kinds: dict[float, str] = {}
    for fam in ("transformer_pp", "ebt"):
        p = plot.get(fam)
        base = baseline_of(p.baseline if p else None)
        if base is not None:
            seen.setdefault(round(base[0], 6), []).append(fam)
            kinds[round(base[0], 6)] = base[1]
    top = ax.get_ylim()[1]  # the data's range so far: a baseline far above it would squash the runs
    for b, fams in seen.items():
        who = "" if len(seen) == 1 else f" ({', '.join(LABELS[f] for f in fams)})"
        ppl = math.exp(min(b, 700))
        label = f"{kinds[b]} baseline{who}: ppl {ppl:.0f} ({b:.3f} nats)"
        if ppl <= 3 * top:
            ax.axhline(ppl, color="0.3", ls="-.", lw=1.1, zorder=1, label=label)
            drawn.append(ppl)
        else:  # more than 3x the worst perplexity drawn: say so instead of stretching the axis
            ax.plot([], [], color="0.3", ls="-.", lw=1.1, label=f"{label}, above this plot")
    return drawn


VIDEO_BASELINE_STYLE = {"copy": {"color": "0.25", "ls": "--"}, "mean": {"color": "0.55", "ls": (0, (2, 2))}}


def _draw_video_baselines(ax: Axes, plot: dict[str, FamilyPlot]) -> list[float]:
    """The copy-last-frame and mean-embedding SmoothL1 as dashed horizontal lines, one legend entry each (one line
    per baseline when the families share it, the same validation set; else one per family). A baseline more than
    3x above the highest run is named in the legend as above the plot instead of stretching the axis. Returns the
    values drawn."""
    out: list[float] = []
    top = ax.get_ylim()[1]
    for key in ("copy", "mean"):
        vals: dict[float, list[str]] = {}
        for fam in ("transformer_pp", "ebt"):
            p = plot.get(fam)
            v = (p.baseline or {}).get(key) if p else None
            if v is not None:
                vals.setdefault(round(float(v), 9), []).append(fam)
        for v, fams in vals.items():
            who = "" if len(vals) == 1 else f" ({', '.join(LABELS[f] for f in fams)})"
            label = f"{BASELINE_NAMES[key]} baseline{who} {v:.4g}"
            style = VIDEO_BASELINE_STYLE[key]
            if v <= 3 * top:
                ax.axhline(v, lw=1.1, zorder=1, label=label, **style)
                out.append(v)
            else:  # named, not drawn: short enough for the legend column
                ax.plot([], [], lw=1.1, label=f"{label}, above the plot", **style)
    return out


def draw_residuals(ax: Axes, fit: AxisFit, which: str = "m1") -> None:
    """Residuals per run: M1 in log10(ppl) units, M2 as ln(y) - ln(fit)."""
    drawn = False
    for fam in ("transformer_pp", "ebt"):
        p = fit.plot.get(fam)
        resid = None if p is None else (p.resid_m1 if which == "m1" else p.resid_m2)
        if p is None or resid is None:
            continue
        r = _arr(resid) / (math.log(10) if which == "m1" else 1.0)
        ax.scatter(p.x, r, s=14, marker=MARKERS[fam], color=COLORS[fam], alpha=0.75, label=LABELS[fam],
                   edgecolors="none")
        drawn = True
    if not drawn:  # no dummy axes: one line that says why the panel is empty
        ax.axis("off")
        what = "rate line" if which == "m1" else "saturating law"
        ax.text(0.5, 0.5, f"{what} not fitted on this axis: the notes below say why", ha="center",
                va="center", transform=ax.transAxes, fontsize=8, color="0.3")
        return
    ax.axhline(0, color="k", lw=0.8)
    ax.set_xscale("log")
    _level_x(ax, [v for fam in ("transformer_pp", "ebt") if fit.plot.get(fam) for v in fit.plot[fam].x])
    ax.grid(True, alpha=0.25, lw=0.5)
    ax.set_xlabel(X_LABELS.get(fit.axis, fit.axis), fontsize=8)
    m1_unit = "log10 SmoothL1" if fit.measure.log_loss else "log10 ppl"
    ax.set_ylabel(f"residual, {m1_unit}" if which == "m1" else "residual, ln loss", fontsize=8)
    ax.set_title("rate-line residuals (curvature = lack of fit)" if which == "m1" else "saturating-law residuals",
                 fontsize=9)
    ax.tick_params(labelsize=7)


def draw_curves(ax: Axes, runs: Sequence[Any], curves: dict[int, dict[str, tuple[list[float], list[float]]]],
                levels: Sequence[float], unigram: float | None = None,
                video_baselines: dict[str, float | None] | None = None) -> None:
    """Loss (nats) against training tokens (log x) of ``runs``: the training loss as a thin line, the validation
    loss as dots on a thicker line, one colour per axis level (viridis, in the order of ``levels``). Video runs
    (``video_baselines`` given: ``copy``, ``mean``) plot the SmoothL1 on a log y axis with those baselines dashed."""
    import matplotlib

    cmap = matplotlib.colormaps["viridis"]
    shade = {x: cmap(0.9 * i / max(1, len(levels) - 1)) for i, x in enumerate(levels)}
    shown: set[float] = set()
    for r in sorted(runs, key=lambda r: (r.x, r.seed)):
        c = curves.get(r.id) or {}
        col = shade.get(r.x, "k")
        label = None if r.x in shown else f"{r.x:.4g}"
        shown.add(r.x)
        tx, ty = c.get("train_loss", ([], []))
        if tx:
            ax.plot(tx, ty, color=col, lw=0.6, alpha=0.55, label=label)
            label = None
        vx, vy = c.get("val_loss", ([], []))
        if vx:
            ax.plot(vx, vy, color=col, lw=1.4, marker="o", ms=3, label=label)
    if unigram:
        ax.axhline(unigram, color="0.5", ls="--", lw=0.8)
    for key, v in (video_baselines or {}).items():  # named in the page's caption, like the unigram line
        if v is not None:
            ax.axhline(v, lw=0.9, **VIDEO_BASELINE_STYLE[key])
    ax.set_xscale("log")
    ax.set_xlabel("training frames (predicted)" if video_baselines is not None else "training tokens")
    if video_baselines is not None:
        ax.set_yscale("log")
        _plain_y(ax)
        ax.set_ylabel("SmoothL1 (log scale)")
    else:
        ax.set_ylabel("loss (nats/token)")
    ax.grid(True, which="major", alpha=0.3)
    if shown:  # below the panel, never over the curves
        ax.legend(title="level", fontsize=7, title_fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.13),
                  ncol=min(len(shown), 6), frameon=False)


def axis_text(fit: AxisFit) -> str:
    """The numbers of one axis as a few lines of text."""
    lines = []
    video = fit.measure.log_loss
    if video:
        lines.append("Video: y = validation SmoothL1; rate-line slope = log-log slope of SmoothL1 on x (the paper's "
                     "measure); saturating law E + A x^-alpha in SmoothL1 units")
    for fam in ("transformer_pp", "ebt"):
        e = fit.families.get(fam)
        if not e:
            lines.append(f"{LABELS[fam]}: no fit-eligible runs")
            continue
        s = "-" if e.slope is None else f"{e.slope:.4f} [{_num(e.slope_ci[0], '.4f')}, {_num(e.slope_ci[1], '.4f')}]"
        law = e.law
        lw = "-" if not law else (f"E={_num(law.E, '.3f')} alpha={_num(law.alpha, '.3f')} "
                                  f"[{_num(law.alpha_ci[0], '.3f')}, {_num(law.alpha_ci[1], '.3f')}] ({law.e_mode} E)")
        lines.append(f"{LABELS[fam]}: n={e.n_runs} ({e.n_levels} levels), rate-line slope {s}; saturating law {lw}")
        lines.append(f"    intervals: {e.bootstrap}")
        lines.append("    diagnostics: " + diagnostics(e))
    c = fit.comparison
    if c:
        lines.append(f"Rate gain {fmt_pct(c.rate_gain)} {fmt_ci_pct(c.rate_gain_ci)}; p = {fmt_p(c.p_value)}"
                     f" (Holm {fmt_p(c.p_value_holm)}); verdict: {c.verdict or '-'}")
        if c.alpha_gain is not None:
            lines.append(f"Exponent gain alpha_EBT/alpha_T++ - 1 = {fmt_pct(c.alpha_gain)} "
                         f"{fmt_ci_pct(c.alpha_gain_ci)}")
        if c.holm_family:
            lines.append(f"Holm family ({c.holm_axes} tests): {', '.join(c.holm_family)}"
                         + (f"; {c.holm_note}" if c.holm_note else ""))
        if c.exponent_unreliable_note:
            lines.append(f"Exponent view: {c.exponent_unreliable_note}")
    if fit.crossover is not None and fit.crossover.message:
        lines.append(f"Crossover: {crossover_words(fit.crossover, fit.axis)}")
    cr = fit.crossover
    if video and cr is not None and cr.loss_ratio is not None and cr.gap_at_x is not None:
        lo, hi = cr.loss_ratio_ci
        span = "" if lo is None or hi is None else f" [{lo:.4f}, {hi:.4f}]"
        lines.append(f"SmoothL1 ratio EBT / T++ at x = {cr.gap_at_x:.4g} (rate lines): {cr.loss_ratio:.4f}{span}")
    for fam in ("transformer_pp", "ebt"):
        base = (fit.baselines.get(fam) or {}) if video else {}
        if base.get("copy") is not None or base.get("mean") is not None:
            lines.append(f"Baselines {LABELS[fam]}: copy last frame {_num(base.get('copy'), '.4g')}, mean embedding "
                         f"{_num(base.get('mean'), '.4g')} (SmoothL1)")
    for fam, h in fit.holdout.items():
        lines += holdout_lines(fam, h)
    for m in fit.messages:
        lines.append(f"Note: {m}")
    if fit.excluded:
        lines.append("Excluded runs: " + ", ".join(f"{n} {r}" for r, n in fit.excluded.items()))
    return "\n".join(lines)


def _num(v: float | None, fmt: str) -> str:
    return "-" if v is None else format(v, fmt)


def diagnostics(entry: FamilyFit) -> str:
    """The fit diagnostics of one family in one line (lack of fit; the law's bound share, E-alpha correlation,
    starts at the best optimum, bootstrap refits that did not converge). The share of refits a single warm start
    would have stopped short on (``boot_stopped_early_frac``) is left out: the multi-start refits reach their
    optimum anyway, so it says nothing about the result (it stays in ``fit --json``)."""
    law = entry.law
    parts = [f"lack-of-fit p {fmt_p(entry.lack_of_fit_p)}"]
    if law:
        parts += [f"alpha at bound in {_num(law.alpha_at_bound_frac, '.0%')} of refits",
                  f"corr(E, alpha) {_num(law.E_alpha_corr, '+.2f')}",
                  f"starts at best {law.n_starts_at_best}/{law.n_starts}",
                  f"bootstrap refits unconverged {_num(law.boot_unconverged_frac, '.0%')}"]
    return "; ".join(parts)


def guard_lines(fit: AxisFit) -> list[str]:
    """Every guard-rail message of one axis, as plain lines."""
    return [g.message for g in fit.guards]


def draw_crossover(ax: Axes, fit: AxisFit | None) -> None:
    """Both M1 lines on the compute axis, extended towards their crossover (when it is within 4 decades)."""
    if not fit or not fit.plot:
        ax.text(0.5, 0.5, "no FLOPs-axis runs in this report", ha="center", va="center", transform=ax.transAxes)
        ax.set_axis_off()
        return
    plot = fit.plot
    cross = fit.crossover
    allx = np.concatenate([_arr(plot[f].x) for f in plot])
    lo, hi = math.log10(allx.min()), math.log10(allx.max())
    lx = cross.log10_x if cross else None
    if lx is not None and math.isfinite(lx) and lo - 4 <= lx <= hi + 4:
        lo, hi = min(lo, lx - 0.3), max(hi, lx + 0.3)
    grid = np.logspace(lo, hi, 100)
    for fam in ("transformer_pp", "ebt"):
        p = plot.get(fam)
        if not p:
            continue
        ax.scatter(p.x, plotted(fit.measure, p.y), s=22, marker=MARKERS[fam], color=COLORS[fam], alpha=0.75,
                   edgecolors="none", label=f"{LABELS[fam]} runs", zorder=3)
        e = fit.families.get(fam)
        c0 = None if e is None else (e.intercept_log10_loss if fit.measure.log_loss else e.intercept_log10_ppl)
        if e is not None and e.slope is not None and c0 is not None:
            yl = c0 + e.slope * np.log10(grid)
            ax.plot(grid, 10**yl, color=COLORS[fam], lw=1.4, label=f"{LABELS[fam]} rate line (extrapolated)")
    if lx is not None and lo <= lx <= hi:
        ax.axvline(10**lx, color="k", ls=":", lw=1)
        ci = cross.log10_x_ci if cross else (None, None)
        if ci[0] is not None and ci[1] is not None:
            ax.axvspan(10 ** max(ci[0], lo), 10 ** min(ci[1], hi), color="0.5", alpha=0.15, lw=0,
                       label="crossover 95% interval")
    ax.axvspan(allx.min(), allx.max(), color="#2ca02c", alpha=0.05, lw=0, label="fitted range")
    ax.set_xscale("log")
    ax.set_yscale("log")
    _plain_y(ax)
    ax.set_xlabel(X_LABELS.get(fit.axis, fit.axis))
    ax.set_ylabel(fit.measure.y_label)
    ax.grid(True, which="both", alpha=0.25, lw=0.5)
    _legend_outside(ax, fontsize=7)


def draw_table(ax: Axes, header: Sequence[str], rows: Sequence[Sequence[str]], col_widths: Sequence[float],
               fontsize: float = 7.5, row_colors: Sequence[str] | None = None, fill: bool = False) -> None:
    """A plain table at the top of ``ax`` (no axes frame); ``fill`` stretches it over the whole Axes."""
    ax.set_axis_off()
    if not rows:
        ax.text(0.0, 1.0, "(none)", va="top", fontsize=fontsize, transform=ax.transAxes)
        return
    kw: dict[str, Any] = {"bbox": (0.0, 0.0, 1.0, 1.0)} if fill else {"loc": "upper left"}
    tab = ax.table(cellText=[list(r) for r in rows], colLabels=list(header), colWidths=list(col_widths),
                   cellLoc="left", colLoc="left", **kw)
    tab.auto_set_font_size(False)
    tab.set_fontsize(fontsize)
    if not fill:
        tab.scale(1.0, 1.25)
    for (r, _c), cell in tab.get_celld().items():
        cell.set_linewidth(0.3)
        if r == 0:
            cell.set_facecolor("#e8e8e8")
            cell.set_text_props(weight="bold")
        elif row_colors is not None:
            cell.set_facecolor(row_colors[r - 1])
