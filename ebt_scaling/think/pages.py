"""Report pages of System-2 thinking, drawn from the stored ``think/*`` series (matplotlib, no torch).

``think_pages(store, sweep)`` reads the series and returns page builders for ``build_report(...,
extra_pages=...)`` (an empty list when nothing was measured, so reports without thinking are unchanged):

1. perplexity vs forward passes per prediction (in distribution and OOD): EBT lines per best-of-N sample
   count, Transformer++ as flat lines;
2. thinking gain vs OOD magnitude (the paper's Fig. 7 view) with the numbers in a table;
3. a token-energy heat map (predicted tokens x inner steps) for one validation sentence.

Video runs (``think/loss/...`` series, issue 31.5) get the same pages with SmoothL1 in place of perplexity (the
copy-last-frame baseline as a grey line) and a frame-energy heat map of one validation clip.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, LogLocator, MaxNLocator, NullFormatter, ScalarFormatter

from ebt_scaling.think import metrics as tm

if TYPE_CHECKING:
    from ebt_scaling.db.store import Store

COLORS = {"transformer_pp": "#1f77b4", "ebt": "#d62728"}
SAMPLE_STYLES = ["-", "--", ":", "-."]


@dataclass
class ThinkRun:
    run_id: int
    family: str
    label: str
    curves: dict[str, dict[int, list[tuple[int, float]]]]  # split -> samples -> [(passes, ppl)]
    summary: dict[str, float] = field(default_factory=dict)
    energy_steps: list[float] = field(default_factory=list)
    token_energy: list[list[float]] = field(default_factory=list)  # [k][position]
    token_target: list[int] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)
    axis: str = ""
    level: float | None = None  # the run's value on its sweep axis: its colour and its name in legends
    measure: str = "ppl"  # "smooth_l1" for a video run (its curves hold SmoothL1)


@dataclass
class ThinkData:
    sweep: str | None
    runs: list[ThinkRun]

    @property
    def video(self) -> bool:
        """Whether the curves hold SmoothL1 (video runs) rather than perplexity."""
        return any(r.measure != "ppl" for r in self.runs)

    @property
    def measure(self) -> str:
        return "SmoothL1" if self.video else "perplexity"

    @property
    def short(self) -> str:
        return "SmoothL1" if self.video else "ppl"


def load_think_data(store: Store, sweep: str | None = None) -> ThinkData | None:
    """The thinking series of every run of ``sweep`` (or all sweeps) that has them; None if none has."""
    runs = store.list_runs(sweep=sweep)
    out: list[ThinkRun] = []
    for run in runs:
        pts = [p for p in store.get_metrics(run.id) if p.name.startswith(tm.PREFIX)]
        if not pts:
            continue
        recipe = (run.config or {}).get("recipe")
        level = getattr(run, "x", None)
        axis = getattr(run, "axis", None) or ""
        at = f" {axis}={level:g}" if level is not None else ""
        seed = getattr(run, "seed", None)
        label = (f"{'EBT' if run.family == 'ebt' else 'T++'}{' ' + recipe if recipe else ''}{at}"
                 + (f" seed {seed}" if seed is not None else "") + f" (run {run.id})")
        tr = ThinkRun(run.id, run.family, label, {}, config=run.config or {}, axis=axis,
                      level=None if level is None else float(level))
        tok: dict[int, dict[int, float]] = {}
        for p in pts:
            parsed = tm.parse_curve_name(p.name)
            if parsed:
                tr.measure, split, n = parsed
                tr.curves.setdefault(split, {}).setdefault(n, []).append((p.step, p.value))
            elif p.name == tm.energy_name("val"):
                tr.energy_steps.append(p.value)
            elif p.name.startswith(("think/token_energy/k=", "think/frame_energy/k=")):
                tok.setdefault(int(p.name.rsplit("=", 1)[1]), {})[p.step] = p.value
            elif p.name == tm.TOKEN_TARGET:
                tr.token_target.append(int(p.value))
            elif p.name.startswith("think/summary/"):
                tr.summary[p.name[len("think/summary/"):]] = p.value
        tr.token_energy = [[row[i] for i in sorted(row)] for _, row in sorted(tok.items())]
        for by_n in tr.curves.values():
            for n in by_n:
                by_n[n].sort()
        out.append(tr)
    return ThinkData(sweep, out) if out else None


def think_pages(store: Store, sweep: str | None = None) -> list[Callable[[Any, Callable[[], Figure]], None]]:
    data = load_think_data(store, sweep)
    if data is None:
        return []
    return [lambda _r, new_page: passes_page(data, new_page),
            lambda _r, new_page: gain_page(data, new_page),
            lambda _r, new_page: energy_page(data, new_page)]


def _level_colors(data: ThinkData) -> dict[float | None, Any]:
    """One colour per axis level (viridis, small to large), shared by both families."""
    import matplotlib

    levels = sorted({r.level for r in data.runs if r.level is not None})
    cmap = matplotlib.colormaps["viridis"]
    out: dict[float | None, Any] = {x: cmap(0.9 * i / max(1, len(levels) - 1)) for i, x in enumerate(levels)}
    out[None] = "0.3"
    return out


def _level_name(data: ThinkData, level: float | None) -> str:
    axes = {r.axis for r in data.runs if r.axis}
    if level is None:
        return "level unknown"
    return f"{axes.pop()}={level:g}" if len(axes) == 1 else f"level {level:g}"


def _splits(data: ThinkData) -> list[str]:
    splits = sorted({s for r in data.runs for s in r.curves}, key=lambda s: (s != "val", s))
    return splits


def passes_page(data: ThinkData, new_page: Callable[[], Figure]) -> None:
    fig = new_page()
    fig.suptitle(f"System-2 thinking: {data.measure} vs forward passes per prediction", fontsize=14, weight="bold")
    fig.text(0.5, 0.905, "passes = inner steps x best-of-N samples (the scoring evaluation is not counted). "
             "Solid: one sample, more steps (thinking longer);\ndashed/dotted: best-of-N by minimum energy "
             "(self-verification), points at 1, 2, 3, ... steps x N. Transformer++: one pass whatever the budget "
             "(flat).", ha="center", va="top", fontsize=8)
    splits = _splits(data)
    axes = fig.subplots(1, max(1, len(splits)))
    axes = np.atleast_1d(axes)
    from matplotlib.lines import Line2D

    shade = _level_colors(data)
    ns: set[int] = set()
    for ax, split in zip(axes, splits, strict=False):
        for r in data.runs:
            by_n = r.curves.get(split, {})
            col = shade.get(r.level, "0.3")
            for j, n in enumerate(sorted(by_n)):
                xs, ys = tm.curve(by_n[n])
                if r.family == "ebt":
                    ns.add(j)
                    ax.plot(xs, ys, SAMPLE_STYLES[j % len(SAMPLE_STYLES)], marker="s", ms=3.5, color=col, alpha=0.9)
                else:
                    ax.plot(xs, ys, "-", color=col, lw=2.4, alpha=0.45)
        ax.set_xscale("log")
        ax.set_yscale("log")
        lo, hi = ax.get_ylim()  # less than a decade drawn: 1-2-5 leaves one or two labels, so denser steps
        subs = (1.0, 2.0, 5.0) if hi / max(lo, 1e-300) >= 10 else (1.0, 1.5, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0)
        ax.yaxis.set_major_locator(LogLocator(base=10, subs=subs, numticks=12))
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _p: f"{v:g}"))
        ax.yaxis.set_minor_formatter(NullFormatter())  # one label size, no overlapping minor labels
        ax.set_xlabel("forward passes per prediction")
        ax.set_ylabel("validation SmoothL1" if data.video else "perplexity")
        copy = sorted({r.summary[f"copy_loss/split={split}"] for r in data.runs
                       if f"copy_loss/split={split}" in r.summary})
        if copy:  # video: the copy-last-frame baseline on the same windows
            ax.axhline(copy[0], color="0.5", ls=(0, (4, 2)), lw=1)
        lo, hi = ax.get_ylim()
        if data.video and hi / max(lo, 1e-300) < 10:  # SmoothL1 within a decade: plain linear ticks read better
            ax.set_yscale("linear")
            ax.yaxis.set_major_locator(MaxNLocator(8))
            ax.yaxis.set_major_formatter(ScalarFormatter())
        ax.set_title("in distribution (validation)" if split == "val" else f"out of distribution ({split[4:]})")
        ax.grid(True, which="both", alpha=0.3)
    # one legend below the panels: colour = level, line style = family / best-of-N sample count
    handles = [Line2D([], [], color=shade[lv], lw=2, label=_level_name(data, lv))
               for lv in sorted(k for k in shade if k is not None)]
    if any(r.level is None for r in data.runs):
        handles.append(Line2D([], [], color="0.3", lw=2, label="level unknown"))
    all_n = sorted({n for r in data.runs if r.family == "ebt" for by_n in r.curves.values() for n in by_n})
    handles += [Line2D([], [], color="k", ls=SAMPLE_STYLES[j % len(SAMPLE_STYLES)], marker="s", ms=3.5,
                       label=f"EBT, best of N={n}") for j, n in enumerate(all_n)]
    if any(r.family != "ebt" for r in data.runs):
        handles.append(Line2D([], [], color="k", lw=2.4, alpha=0.45, label="Transformer++ (flat)"))
    if any(k.startswith("copy_loss/") for r in data.runs for k in r.summary):
        handles.append(Line2D([], [], color="0.5", ls=(0, (4, 2)), lw=1, label="copy last frame"))
    fig.subplots_adjust(top=0.82, bottom=0.3, left=0.07, right=0.98, wspace=0.2)
    if handles:
        fig.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, 0.2), ncol=min(6, len(handles)),
                   fontsize=7, frameon=False)


def gain_page(data: ThinkData, new_page: Callable[[], Figure]) -> None:
    fig = new_page()
    fig.suptitle("Thinking gain vs out-of-distribution magnitude", fontsize=14, weight="bold")
    q = data.short
    fig.text(0.5, 0.905, f"gain = ({q} at the trained step count, 1 sample - best {q} with at least as many passes) "
             f"/ that {q}.\nOOD magnitude = OOD {q} / validation {q} at the baseline setting (validation = 1).",
             ha="center", va="top", fontsize=8)
    ax = fig.add_axes((0.07, 0.38, 0.5, 0.46))
    rows = []
    shade = _level_colors(data)
    shown: set[float | None] = set()
    for r in data.runs:
        if r.family != "ebt":
            continue
        mag = r.summary.get("ood_magnitude", math.nan)
        pts = [(1.0, r.summary.get("gain_max/split=val", math.nan), "val")]
        for split in r.curves:
            if split != "val":
                pts.append((mag, r.summary.get(f"gain_max/split={split}", math.nan), split))
        xs = [p[0] for p in pts]
        ys = [p[1] * 100 for p in pts]
        col = shade.get(r.level, "0.3")
        ax.plot(xs, ys, "-", color=col, lw=1.2, label=None if r.level in shown else _level_name(data, r.level))
        shown.add(r.level)
        for x, y, s in zip(xs, ys, [p[2] for p in pts], strict=True):  # the split by marker, not a text label
            ax.plot([x], [y], "s" if s == "val" else "^", color=col, ms=5)
        for split in ["val", *[s for s in r.curves if s != "val"]]:
            rows.append([r.label, split, f"{1.0 if split == 'val' else mag:.3f}",
                         *(f"{r.summary.get(f'{g}/split={split}', math.nan) * 100:+.2f}%"
                           for g in ("gain_longer", "gain_verify", "gain_max"))])
    ax.axhline(0, color="grey", lw=0.8)
    ax.set_xlabel(f"OOD magnitude ({q} / in-distribution {q})")
    ax.set_ylabel(f"thinking gain (% {data.measure} improvement)")
    ax.grid(True, alpha=0.3)
    if rows:
        from matplotlib.lines import Line2D

        h, _ = ax.get_legend_handles_labels()
        h += [Line2D([], [], ls="", marker="s", color="k", ms=5, label="validation (magnitude 1)"),
              Line2D([], [], ls="", marker="^", color="k", ms=5, label="OOD split")]
        ax.legend(handles=h, fontsize=7, loc="lower left", bbox_to_anchor=(1.02, 0.0), borderaxespad=0.0,
                  frameon=False)
    tax = fig.add_axes((0.07, 0.07, 0.86, 0.23))
    tax.axis("off")
    header = ["run", "split", "OOD magnitude", "thinking longer", "best-of-N", "max gain"]
    if rows:
        t = tax.table(cellText=rows[:12], colLabels=header, loc="upper left", cellLoc="left",
                      colWidths=[0.34, 0.12, 0.12, 0.14, 0.14, 0.14])
        t.auto_set_font_size(False)
        t.set_fontsize(7)
        t.scale(1.0, 0.85)
    else:
        tax.text(0, 0.8, "no EBT run has thinking results", fontsize=9)
    fig.text(0.60, 0.8, "The paper reports no System-2 results for video: the gains here are\n"
             "this project's measurement on the run's own validation windows (SmoothL1)." if data.video else
             "Paper (v1 Fig. 7, xxs S2 EBT, 1M steps): the max-thinking gain rises from about 11.8%\n"
             "at shift 1.0 to about 23% at shift 4.4. Tiny CPU runs are far from that regime:\n"
             "the paper reports that thinking ability emerges only with enough training data.",
             fontsize=7.5, va="top")


def _token_labels(r: ThinkRun) -> list[str]:
    """Decoded predicted tokens when the run's tokenizer is available locally, else the ids."""
    ids = r.token_target
    try:
        from ebt_scaling.config import DataConfig
        from ebt_scaling.data import load_corpus

        corpus = load_corpus(DataConfig.from_dict(r.config["data"]), 1, progress=lambda m: None)
        return [repr(corpus.decode([i]))[1:-1][:12] for i in ids]
    except Exception:  # best effort: a missing cache must not break the report
        return [str(i) for i in ids]


def energy_page(data: ThinkData, new_page: Callable[[], Figure]) -> None:
    ebts = [r for r in data.runs if r.family == "ebt" and r.token_energy]
    if not ebts:
        return
    r = ebts[0]
    fig = new_page()
    unit, where = ("frame", "clip") if r.measure != "ppl" else ("token", "sentence")
    fig.suptitle(f"Per-{unit} energy across inner steps - {r.label}", fontsize=14, weight="bold")
    fig.text(0.5, 0.905, f"{unit.capitalize()} energy heat map: one validation {where} (batch 0, row 0), energy of the "
             f"candidate for each predicted {unit} after k inner steps (k = 0: the initial noise).\nLower = more "
             f"confident; {unit}s that stay high are the uncertain ones (paper Fig. 8).", ha="center", va="top",
             fontsize=8)
    mat = np.asarray(r.token_energy, dtype=float).T  # (positions, steps)
    ax = fig.add_axes((0.3, 0.13, 0.35, 0.73))  # the x label clears the footer
    im = ax.imshow(mat, aspect="auto", cmap="viridis", interpolation="nearest")
    ax.set_xticks(range(mat.shape[1]))
    ax.set_xlabel("inner steps k")
    labels = _token_labels(r) if unit == "token" else [f"frame {i + 1}" for i in range(mat.shape[0])]
    ax.set_yticks(range(mat.shape[0]))
    ax.set_yticklabels(labels[:mat.shape[0]], fontsize=7, family="monospace")
    ax.set_ylabel(f"predicted {unit}")
    fig.colorbar(im, ax=ax, fraction=0.05, label="energy")
    ax2 = fig.add_axes((0.76, 0.45, 0.21, 0.38))
    shade = _level_colors(data)
    for run in ebts:
        ax2.plot(range(len(run.energy_steps)), run.energy_steps, "-s", ms=3, color=shade.get(run.level, "0.3"),
                 label=run.label)
    ax2.set_xlabel("inner steps k")
    ax2.set_ylabel("mean energy (validation)")
    ax2.set_title("mean energy vs steps", fontsize=9)
    ax2.grid(True, alpha=0.3)
    ax2.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.2), frameon=False)
