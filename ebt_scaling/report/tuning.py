"""The tuning page's figures and words, drawn on a given Axes (``report/pdf.py`` creates the figures).

Per family of a ``[tune]`` axis: loss against LR (log x), one curve per level, the mean over seeds of the
selection loss (solid, it picks the LR) and of the evaluation loss (dotted, the fitted one), each seed as a faint
dot; the chosen point circled; a chosen point at the grid's edge marked with an arrow towards the LR to add.
Also the plain-words headline of an axis for the summary page. Reads ``fit.results`` only.
"""

from __future__ import annotations

import math

import numpy as np
from matplotlib.axes import Axes
from matplotlib.ticker import FuncFormatter, NullFormatter

from ebt_scaling.fit.results import LABELS, AxisFit, TuneLevel, seeds_advice

LEVEL_CMAP = "viridis"


def _color(k: int, n: int) -> tuple[float, ...]:
    import matplotlib

    return tuple(matplotlib.colormaps[LEVEL_CMAP](0.1 + 0.75 * k / max(n - 1, 1)))


def draw_tuning(ax: Axes, levels: tuple[TuneLevel, ...], family: str, x_label: str = "x",
                y_label: str = "loss (nats)") -> None:
    """Loss against LR for one family: a curve per level, the chosen points circled, edges marked."""
    n = len(levels)
    for k, lv in enumerate(levels):
        col = _color(k, n)
        pts = [p for p in lv.points if p.lr is not None]
        lrs = np.array([p.lr for p in pts], dtype=float)
        sel = np.array([np.nan if p.select_mean is None else p.select_mean for p in pts], dtype=float)
        ev = np.array([np.nan if p.eval_mean is None else p.eval_mean for p in pts], dtype=float)
        ax.plot(lrs, sel, "-o", color=col, ms=3.5, lw=1.4, label=f"{x_label} {lv.x:g}")
        ax.plot(lrs, ev, ":", color=col, lw=1.0)
        for p in pts:
            ys = [v for v in p.select if v is not None]
            ax.plot([p.lr] * len(ys), ys, ".", color=col, alpha=0.35, ms=3)
            if p.select_mean is None:  # every run of this point failed or diverged
                ax.annotate("failed", (p.lr, np.nanmax(sel) if np.isfinite(sel).any() else 0), fontsize=6,
                            color=col, ha="center", va="bottom")
        c = lv.chosen_point
        if c is not None and c.select_mean is not None:
            ax.plot([c.lr], [c.select_mean], "o", ms=10, mfc="none", mec=col, mew=1.6)
            if lv.at_edge is not None:
                ax.annotate("edge" + (f": add {lv.add_lr:.3g}" if lv.add_lr is not None else ""),
                            (c.lr, c.select_mean), xytext=(-38 if lv.at_edge == "smallest" else 8, 10),
                            textcoords="offset points", fontsize=6.5, color="#a00000",
                            arrowprops={"arrowstyle": "->", "color": "#a00000", "lw": 0.8})
    ax.set_xscale("log")
    grid = sorted({p.lr for lv in levels for p in lv.points if p.lr is not None})
    ax.set_xticks(grid)  # ticks at the grid's LRs, nothing between them
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _pos: f"{v:g}"))
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("peak learning rate (log scale)")
    ax.set_ylabel(y_label)
    ax.set_title(LABELS.get(family, family), fontsize=10)
    ax.grid(alpha=0.3, which="both")
    ax.margins(x=0.15)
    # outside the data: to the right of the panel
    ax.legend(title="level", fontsize=6.5, title_fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0),
              frameon=False)


def tuning_text(fit: AxisFit) -> list[str]:
    """Per family and level: the grid's mean selection / evaluation losses, the chosen LR, edges and seeds."""
    out = []
    for fam, levels in fit.tuning.items():
        who = LABELS.get(fam, fam)
        for lv in levels:
            grid = ", ".join(f"{p.lr:.3g}: {_n(p.select_mean)}/{_n(p.eval_mean)}" for p in lv.points
                             if p.lr is not None)
            chosen = f"{lv.chosen_lr:.3g}" if lv.chosen_lr is not None else "none (no eligible run)"
            note = []
            if lv.at_edge:
                note.append(f"at the grid's {lv.at_edge} LR: add {lv.add_lr:.3g}" if lv.add_lr is not None
                            else f"at the grid's {lv.at_edge} LR")
            if lv.seeds_disagree:
                note.append("seeds disagree (" + ", ".join(f"seed {s}: {lr:.3g}" for s, lr in lv.best_by_seed
                                                            if lr is not None) + ")")
            out.append(f"{who} x = {lv.x:g}: chosen LR {chosen}" + (f" ({'; '.join(note)})" if note else "")
                       + f"  |  LR: selection/evaluation loss {grid}")
    return out


def _n(v: float | None) -> str:
    return "-" if v is None else f"{v:.3f}"


def headline(fit: AxisFit, name: str) -> list[str]:
    """What one axis shows, in plain words with its interval, for the top of the summary page: the loss of each
    family at the smallest and largest level (mean over seeds of the fitted runs), its slope per doubling of x
    with the 95% interval, and the rate gain with its interval."""
    out = []
    tuned = " (each family at its tuned LR per level)" if fit.tuning else ""
    parts = []
    for fam in ("ebt", "transformer_pp"):
        e, p = fit.families.get(fam), fit.plot.get(fam)
        if e is None or p is None or not p.x:
            continue
        xs = np.asarray(p.x, dtype=float)
        ys = np.asarray(p.y, dtype=float)
        lo, hi = xs.min(), xs.max()
        y0, y1 = ys[xs == lo].mean(), ys[xs == hi].mean()
        seeds = f"{e.seeds_per_level[0]}" + (f"-{e.seeds_per_level[1]}" if e.seeds_per_level[1] !=
                                              e.seeds_per_level[0] else "")
        if fit.measure.log_loss:  # video: the paper's measure, the log-log slope of the validation SmoothL1
            text = (f"the {LABELS.get(fam, fam)}'s validation SmoothL1 goes from {y0:.4g} to {y1:.4g} from x = {lo:g} "
                    f"to {hi:g}")
            if e.slope is not None and e.slope_ci and None not in e.slope_ci:
                lo_s, hi_s = e.slope_ci
                text += (f", log-log slope of SmoothL1 {e.slope:+.3f}, 95% interval [{lo_s:+.3f}, {hi_s:+.3f}] "
                         f"(x{2 ** e.slope:.3f} per doubling of x; {seeds} seed{'s' if seeds != '1' else ''} per "
                         "level)")
            parts.append(text)
            continue
        text = f"the {LABELS.get(fam, fam)}'s loss goes from {y0:.3f} to {y1:.3f} nats from x = {lo:g} to {hi:g}"
        if e.slope is not None and e.slope_ci and None not in e.slope_ci:
            d = math.log(2)
            lo_s, hi_s = e.slope_ci
            trend = ("falls" if hi_s < 0 else "rises" if lo_s > 0 else
                     "shows no clear trend (the interval includes 0)")
            text += (f": it {trend}, {e.slope * d:+.3f} nats per doubling of x, 95% interval [{lo_s * d:+.3f}, "
                     f"{hi_s * d:+.3f}] ({seeds} seeds per level)")
        parts.append(text)
    if parts:
        out.append(f"{name}{tuned}: " + "; ".join(parts) + ".")
    c = fit.comparison
    if c is not None and c.rate_gain is not None and c.rate_gain_ci and None not in c.rate_gain_ci:
        lo, hi = c.rate_gain_ci
        slopes = [f.slope for f in fit.families.values()]
        if any(b is None or b >= 0 for b in slopes):
            out.append(f"{name}: rate gain |b_EBT|/|b_T++| - 1 = {c.rate_gain * 100:+.1f}%, 95% interval "
                       f"[{lo * 100:+.1f}%, {hi * 100:+.1f}%], but a family's loss does not fall with x, so it "
                       "measures no scaling.")
        elif lo > 0 or hi < 0:
            word = "faster" if lo > 0 else "more slowly"
            out.append(f"{name}: the EBT's loss falls {word} with x than the Transformer++'s: rate gain "
                       f"{c.rate_gain * 100:+.1f}%, 95% interval [{lo * 100:+.1f}%, {hi * 100:+.1f}%]"
                       + (" (not a verdict: see the guard-rails below)" if c.unreliable else "") + ".")
        else:
            out.append(f"{name}: the two rates are not told apart: rate gain {c.rate_gain * 100:+.1f}%, 95% interval "
                       f"[{lo * 100:+.1f}%, {hi * 100:+.1f}%] includes 0.")
    if (advice := seeds_advice(fit)) is not None:
        out.append(f"{name}: {advice}.")
    return out
