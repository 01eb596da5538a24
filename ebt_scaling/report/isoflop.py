"""Report pages of a compute-optimal (isoflop) fit (issue 29), drawn from the stored fit JSON
(``fit/isoflop_store.py``: ``IsoflopFit.to_json()`` plus its rows), so a reused fit draws the same pages.

Pages per sweep: the IsoFLOP profiles per family (loss against N, one colour per budget, the approach-2 parabolas
and their vertex intervals); the frontiers L*(C) and N*(C) of both families (approach-2 vertices with intervals,
approach-3 frontier with its band, the runs as faint points); the compute multiplier against C with its band and
the reference lines m = 1 and the per-token FLOPs ratio; diagnostics (approach-3 residuals against ln N and ln D,
the law's parameters with intervals, the agreement of the two approaches on N*).

``isoflop_pages(results)`` gives page builders for ``report.pdf.build_report(extra_pages=...)``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure

LABELS = {"transformer_pp": "Transformer++", "ebt": "EBT"}
COLOURS = {"transformer_pp": "tab:blue", "ebt": "tab:red"}


def _fam_rows(d: dict[str, Any], fam: str) -> np.ndarray:
    rows = [r for r in d.get("rows", []) if r[0] == fam]
    return np.array([[r[2], r[3], r[4], r[5]] for r in rows], dtype=float).reshape(-1, 4)  # N, D, C, loss


def _budget_colours(budgets: Sequence[float]) -> dict[float, Any]:
    import matplotlib

    cmap = matplotlib.colormaps["viridis"]
    n = max(len(budgets) - 1, 1)
    return {b: cmap(0.9 * i / n) for i, b in enumerate(sorted(budgets))}


def _ci_ok(ci: Any) -> bool:
    return bool(ci) and ci[0] is not None and ci[1] is not None


def profiles(ax: Axes, d: dict[str, Any], fam: str) -> None:
    """Loss against N at each budget (points), its parabola in ln N and the vertex with its 95% intervals."""
    a2 = (d.get("approach2") or {}).get(fam) or {}
    bfs = a2.get("budgets", [])
    rows = _fam_rows(d, fam)
    budgets = [b["budget"] for b in bfs]
    colours = _budget_colours(budgets)
    for b in bfs:
        col = colours[b["budget"]]
        if rows.size:
            near = np.abs(np.log(rows[:, 2] / b["budget"])) < 0.05
            ax.scatter(rows[near, 0], rows[near, 3], s=14, color=col, alpha=0.8)
        lo, hi = b["window"]
        x = np.linspace(math.log(lo) - 0.2, math.log(hi) + 0.2, 100) - b["centre"]
        c0, c1, c2 = b["coef"]
        ax.plot(np.exp(x + b["centre"]), c0 + c1 * x + c2 * x * x, color=col, lw=1.2,
                label=f"C = {b['budget']:.2g}")
        if b.get("n_star") is not None and b.get("l_star") is not None:
            xerr = ([[b["n_star"] - b["n_star_ci"][0]], [b["n_star_ci"][1] - b["n_star"]]]
                    if _ci_ok(b.get("n_star_ci")) else None)
            yerr = ([[b["l_star"] - b["l_star_ci"][0]], [b["l_star_ci"][1] - b["l_star"]]]
                    if _ci_ok(b.get("l_star_ci")) else None)
            ax.errorbar([b["n_star"]], [b["l_star"]], xerr=xerr, yerr=yerr, fmt="D", color=col, ms=5, capsize=2,
                        mec="black", mew=0.5)
    ax.set_xscale("log")
    ax.set_xlabel("parameters N (all but the input embedding)")
    ax.set_ylabel("final validation loss (nats)")
    ax.set_title(f"{LABELS.get(fam, fam)}: IsoFLOP profiles (approach 2)")
    ax.grid(alpha=0.3, which="both")
    if bfs:
        ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.1), ncol=2, frameon=False)  # below the data


def frontiers(ax_l: Axes, ax_n: Axes, d: dict[str, Any]) -> None:
    """L*(C) and N*(C) of both families: approach-2 vertices with intervals, approach 3 with its band."""
    for fam in d.get("families", []):
        col = COLOURS.get(fam, "gray")
        lab = LABELS.get(fam, fam)
        rows = _fam_rows(d, fam)
        if rows.size:
            ax_l.scatter(rows[:, 2], rows[:, 3], s=8, color=col, alpha=0.15)
        a2 = (d.get("approach2") or {}).get(fam) or {}
        bfs = [b for b in a2.get("budgets", []) if b.get("n_star") is not None and b.get("l_star") is not None]
        if bfs:
            C = np.array([b["budget"] for b in bfs])
            L = np.array([b["l_star"] for b in bfs])
            N = np.array([b["n_star"] for b in bfs])
            lerr = np.array([[b["l_star"] - (b["l_star_ci"][0] if _ci_ok(b["l_star_ci"]) else b["l_star"]),
                              (b["l_star_ci"][1] if _ci_ok(b["l_star_ci"]) else b["l_star"]) - b["l_star"]]
                             for b in bfs]).T
            nerr = np.array([[b["n_star"] - (b["n_star_ci"][0] if _ci_ok(b["n_star_ci"]) else b["n_star"]),
                              (b["n_star_ci"][1] if _ci_ok(b["n_star_ci"]) else b["n_star"]) - b["n_star"]]
                             for b in bfs]).T
            ax_l.errorbar(C, L, yerr=np.clip(lerr, 0, None), fmt="o", color=col, capsize=2, ms=4,
                          label=f"{lab} approach 2 vertices")
            ax_n.errorbar(C, N, yerr=np.clip(nerr, 0, None), fmt="o", color=col, capsize=2, ms=4,
                          label=f"{lab} approach 2")
            fr = a2.get("frontier") or {}
            if fr.get("gamma") is not None and fr.get("C_ref"):
                cg = np.geomspace(C.min() / 1.5, C.max() * 1.5, 50)
                ax_l.plot(cg, fr["E"] + fr["A_ref"] * (cg / fr["C_ref"]) ** -fr["gamma"], color=col, lw=1, ls=":",
                          label=f"{lab} E + A C^-gamma (gamma {fr['gamma']:.3f})")
        a3 = (d.get("approach3") or {}).get(fam) or {}
        if a3.get("budgets"):
            C3 = np.array(a3["budgets"], dtype=float)
            for key, ax, unit in (("l_star", ax_l, "L*"), ("n_star", ax_n, "N*")):
                v = np.array([np.nan if x is None else x for x in a3.get(key, [])], dtype=float)
                if v.size != C3.size:
                    continue
                ax.plot(C3, v, color=col, lw=1.5, label=f"{lab} approach 3 {unit}")
                ci = a3.get(f"{key}_ci") or []
                if len(ci) == C3.size and all(_ci_ok(c) for c in ci):
                    ax.fill_between(C3, [c[0] for c in ci], [c[1] for c in ci], color=col, alpha=0.2, lw=0)
    from matplotlib.ticker import NullFormatter

    for ax in (ax_l, ax_n):
        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(NullFormatter())  # a budget range under a decade: minor labels overlap
        ax.set_xlabel("training FLOPs C")
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.1), ncol=2, frameon=False)  # below the data
    ax_n.set_yscale("log")
    ax_l.set_ylabel("loss (nats): runs (faint), compute-optimal L*(C)")
    ax_n.set_ylabel("compute-optimal N*(C)")
    ax_l.set_title("Loss frontiers (bands: 95% bootstrap)")
    ax_n.set_title("Compute-optimal size")


def multiplier(ax: Axes, d: dict[str, Any]) -> None:
    """m(C) = C_a / C_b at equal loss with its band, m = 1 and the per-token FLOPs ratio."""
    c = d.get("comparison")
    if not c:
        ax.text(0.5, 0.5, "no comparison: the fit needs two families with 3+ budgets each", ha="center",
                transform=ax.transAxes)
        ax.set_axis_off()
        return
    a, b = c["pair"]
    pts = [p for p in c["points"] if p.get("m") is not None]
    C = np.array([p["budget_b"] for p in pts], dtype=float)
    m = np.array([p["m"] for p in pts], dtype=float)
    lo = np.array([p["m_ci"][0] if _ci_ok(p["m_ci"]) else np.nan for p in pts], dtype=float)
    hi = np.array([p["m_ci"][1] if _ci_ok(p["m_ci"]) else np.nan for p in pts], dtype=float)
    ax.fill_between(C, lo, hi, color="tab:purple", alpha=0.2, lw=0, label="95% interval")
    ax.plot(C, m, color="tab:purple", lw=1)
    inside = np.array([not p["extrapolated"] for p in pts], dtype=bool)
    ax.scatter(C[inside], m[inside], color="tab:purple", marker="o", zorder=3, label="inside the measured range")
    ax.scatter(C[~inside], m[~inside], facecolor="white", edgecolor="tab:purple", marker="o", zorder=3,
               label="extrapolated (approach 3)")
    ax.axhline(1.0, color="black", lw=1, ls="--", label="m = 1 (equal compute)")
    if c.get("flops_ratio"):
        ax.axhline(c["flops_ratio"], color="tab:gray", lw=1, ls=":",
                   label=f"per-token FLOPs ratio {c['flops_ratio']:.2f}")
    if c.get("crossover"):
        ax.axvline(c["crossover"], color="tab:green", lw=1, label=f"crossover {c['crossover']:.3g} FLOPs")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel(f"{LABELS.get(b, b)} training FLOPs C (the loss it reaches there is the target)")
    ax.set_ylabel(f"compute multiplier m = C_{LABELS.get(a, a)} / C_{LABELS.get(b, b)}")
    ax.set_title(f"Compute multiplier; {c.get('verdict', '')}", fontsize=9)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.1), ncol=2, frameon=False)  # below the data


def _law_loss(law: dict[str, float], N: np.ndarray, D: np.ndarray) -> np.ndarray:
    return law["E"] + law["A"] * N ** -law["alpha"] + law["B"] * D ** -law["beta"]


def residuals(ax_n: Axes, ax_d: Axes, d: dict[str, Any]) -> None:
    for fam in d.get("families", []):
        law = ((d.get("approach3") or {}).get(fam) or {}).get("law") or {}
        rows = _fam_rows(d, fam)
        if not rows.size or any(law.get(k) is None for k in ("E", "A", "B", "alpha", "beta")):
            continue
        r = np.log(rows[:, 3]) - np.log(_law_loss(law, rows[:, 0], rows[:, 1]))
        for ax, x in ((ax_n, np.log(rows[:, 0])), (ax_d, np.log(rows[:, 1]))):
            ax.scatter(x, r, s=10, color=COLOURS.get(fam, "gray"), alpha=0.7, label=LABELS.get(fam, fam))
    for ax, name in ((ax_n, "ln N"), (ax_d, "ln D")):
        ax.axhline(0, color="black", lw=0.8)
        ax.set_xlabel(name)
        ax.set_ylabel("ln loss - ln L(N, D) (approach 3)")
        ax.grid(alpha=0.3)
    if ax_d.get_legend_handles_labels()[0]:  # one legend, right of the panels, never over the residuals
        ax_d.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0, frameon=False)
    ax_n.set_title("Approach 3 residuals against ln N")
    ax_d.set_title("... and against ln D")


def _f(v: Any, fmt: str = "{:.4g}") -> str:
    return "-" if v is None else fmt.format(v)


def _iv(ci: Any) -> str:
    return f"[{_f(ci[0])}, {_f(ci[1])}]" if _ci_ok(ci) else "[-]"


def diagnostics_text(d: dict[str, Any]) -> list[str]:
    lines = []
    for fam in d.get("families", []):
        a3 = (d.get("approach3") or {}).get(fam) or {}
        law, ci = a3.get("law") or {}, a3.get("law_ci") or {}
        lines.append(f"{LABELS.get(fam, fam)}: L = E + A N^-alpha + B D^-beta ({a3.get('n_rows')} runs, "
                     f"converged {a3.get('converged')}, residual sd {_f(a3.get('resid_sd'), '{:.3g}')})")
        lines.append("   " + ";  ".join(f"{k} {_f(law.get(k))} {_iv(ci.get(k))}"
                                        for k in ("E", "A", "B", "alpha", "beta")))
        a2 = (d.get("approach2") or {}).get(fam) or {}
        pairs = []
        for b in a2.get("budgets", []):
            if b.get("n_star") is None:
                continue
            try:
                k = [round(math.log10(x), 3) for x in a3.get("budgets", [])].index(round(math.log10(b["budget"]), 3))
            except ValueError:
                continue
            n3 = a3["n_star"][k]
            if n3:
                pairs.append(f"C {b['budget']:.2g}: {b['n_star'] / n3:.2f}")
        if pairs:
            lines.append("   N* approach 2 / approach 3: " + ", ".join(pairs))
    c = d.get("comparison") or {}
    if c:
        sg = "{:+.3f}"
        lines.append(f"gamma difference (approach 3) {_f(c.get('gamma_diff'), sg)} {_iv(c.get('gamma_diff_ci'))};"
                     f" approach 2 {_f(c.get('gamma_diff_a2'), '{:+.3f}')} {_iv(c.get('gamma_diff_a2_ci'))}")
        lines.append(f"crossover: {c.get('crossover_note') or _f(c.get('crossover'))}")
    sens = (d.get("sensitivity") or {}).get("comparison")
    if sens:
        lines.append("paper FLOPs convention (sensitivity): m " + ", ".join(
            f"{_f(p['m'], '{:.2f}')} {_iv(p['m_ci'])}" for p in sens["points"][:4]))
    guards = d.get("guards", [])
    if guards:
        lines.append(f"guard-rails ({len(guards)}): " + ", ".join(sorted({g['code'] for g in guards})))
    return lines


def isoflop_pages(results: Sequence[Any]) -> list[Callable[[Any, Callable[[], Figure]], None]]:
    """Page builders for ``build_report(extra_pages=...)``: four pages per isoflop sweep."""
    builders = []
    for res in results:
        d = res.result
        sweep = res.sweep

        def build(_data: Any, new_page: Callable[[], Figure], d: dict[str, Any] = d, sweep: str = sweep) -> None:
            import textwrap

            fams = d.get("families", [])
            fig = new_page()
            fig.suptitle(f"IsoFLOP profiles - sweep {sweep}", fontsize=12)
            axs = fig.subplots(1, max(len(fams), 1), squeeze=False)[0]
            for ax, fam in zip(axs, fams, strict=False):
                profiles(ax, d, fam)
            fig.subplots_adjust(bottom=0.3)  # room for the legends below the plots
            fig = new_page()
            fig.suptitle(f"Compute-optimal frontiers - sweep {sweep}", fontsize=12)
            ax_l, ax_n = fig.subplots(1, 2)
            frontiers(ax_l, ax_n, d)
            fig.subplots_adjust(bottom=0.3)
            fig = new_page()
            fig.suptitle(f"Compute multiplier - sweep {sweep}", fontsize=12)
            multiplier(fig.subplots(1, 1), d)
            fig.subplots_adjust(bottom=0.3)
            fig = new_page()
            fig.suptitle(f"IsoFLOP diagnostics - sweep {sweep}", fontsize=12)
            gs = fig.add_gridspec(1, 2, left=0.07, right=0.85, top=0.9, bottom=0.5, wspace=0.28)
            residuals(fig.add_subplot(gs[0, 0]), fig.add_subplot(gs[0, 1]), d)  # the legend right of them
            text = [w for line in diagnostics_text(d) for w in (textwrap.wrap(line, 160, subsequent_indent="      ")
                                                                or [""])]
            fig.text(0.05, 0.42, "\n".join(text), fontsize=7.5, va="top", family="monospace")

        builders.append(build)
    return builders
