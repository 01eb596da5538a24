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


def conclusion(fit: AxisFit, name: str) -> str:
    """The first line of the summary for one axis: which family scales faster, with the rate gain's interval, or
    that the data cannot tell (and why), in words."""
    c = fit.comparison
    more = GROWTH.get(fit.axis, "larger x")
    loss = fit.measure.loss_name  # "loss" (text) or "validation SmoothL1" (video)
    if c is None:
        why = "; ".join(fit.messages[:1]) or "a family is missing"
        return f"{name}: no EBT vs Transformer++ comparison ({why})."
    flat = []
    for fam in ("ebt", "transformer_pp"):
        e = fit.families.get(fam)
        if e is None or e.slope is None:
            flat.append(f"the {LABELS.get(fam, fam)} has no rate line")
        elif e.slope_ci and None not in e.slope_ci and e.slope_ci[1] >= 0:
            how = "rises" if e.slope_ci[0] > 0 else "does not clearly fall"
            flat.append(f"the {LABELS.get(fam, fam)}'s {loss} {how} with {more}")
    gain = ("" if c.rate_gain is None or not c.rate_gain_ci or None in c.rate_gain_ci else
            f"rate gain {c.rate_gain * 100:+.1f}%, 95% interval [{c.rate_gain_ci[0] * 100:+.1f}%, "
            f"{c.rate_gain_ci[1] * 100:+.1f}%]")
    if flat:
        return (f"{name}: the data cannot tell which family scales faster: {' and '.join(flat)}, so there is no "
                "scaling rate to compare" + (f" ({gain})" if gain else "") + ".")
    if not gain:
        return f"{name}: the data cannot tell which family scales faster (no interval for the rate gain)."
    lo, hi = c.rate_gain_ci
    if lo > 0 or hi < 0:
        word = "faster" if lo > 0 else "more slowly"
        steep = "steeper" if lo > 0 else "shallower"
        out = (f"{name}: the EBT's {loss} falls {word} with {more} than the Transformer++'s: its rate line is "
               f"{abs(c.rate_gain) * 100:.0f}% {steep} ({gain})")
        if c.unreliable:
            codes = sorted({g.code.replace("_", " ") for g in fit.guards if g.blocks("rate")})
            out += "; not a verdict: guard-rails fire" + (f" ({', '.join(codes)})" if codes else "")
        return out + "."
    return (f"{name}: the data cannot tell which family scales faster: {gain}, an interval that includes no "
            "difference.")


# what growing x means on each axis, for sentences
GROWTH = {"data": "more training tokens", "batch": "larger batches", "depth": "more layers", "width": "width",
          "params": "more parameters", "flops": "more training compute"}


def headline(fit: AxisFit, name: str) -> list[str]:
    """What one axis shows, in plain words with its interval, for the top of the summary page: first the
    conclusion (``conclusion``), then the loss of each family at the smallest and largest level (mean over seeds
    of the fitted runs) with its change per doubling of x and the 95% interval, then the seeds advice."""
    out = [conclusion(fit, name)]
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
            text += (f", {e.slope * d:+.3f} nats per doubling of x, 95% interval [{lo_s * d:+.3f}, "
                     f"{hi_s * d:+.3f}] ({seeds} seed{'s' if seeds != '1' else ''} per level)")
        parts.append(text)
    if parts:
        out.append(f"{name}{tuned}: " + "; ".join(parts) + ".")
    if (advice := seeds_advice(fit)) is not None:
        out.append(f"{name}: {advice}.")
    return out
