"""Compute-optimal fits of stored runs (issue 29): the ``isoflop`` runs of each sweep, trained or imported, as
``IsoRow``s for ``fit/isoflop.py``, fitted, stored linked to their runs and reused while they are unchanged.

Per run (every fit-eligible run whose axis is ``isoflop``):

* N: every parameter but the input embedding table (``sweeps/isoflop.counted_params``: the blocks plus the output
  head, as Porian et al. 2024 count it; an imported row's ``params`` column as given);
* D: the run's training tokens; C: the family's own exact training FLOPs per token x D for a trained run (the
  budget convention of the spec when it is ``paper``), an imported row's ``flops`` column;
* loss: the final validation loss (nats).

Budgets: a trained sweep's planned budgets (``config["isoflop"]["budget"]``) are the nominal ones; imported rows
are grouped within ``budget_tol`` (5%). A trained sweep also gets the paper convention's multiplier as a
sensitivity check (``sensitivity``: the same runs with C = paper F x D, fewer resamples).

The store is duck-typed (``list_runs``, ``get_sweep``, ``find_fit``, ``save_fit``); no database import here.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field, replace
from typing import Any

from ebt_scaling.errors import DuplicateError, FitError
from ebt_scaling.fit.design import exclusion_reason
from ebt_scaling.fit.isoflop import IsoflopSettings, IsoRow, fit_isoflop
from ebt_scaling.records import FitRecord

AXIS = "isoflop"
PAIR = "ebt_vs_transformer_pp"
METHOD = "isoflop_fit"
SENSITIVITY_RESAMPLES = 200


@dataclass
class IsoflopResult:
    sweep: str
    result: dict[str, Any]  # IsoflopFit.to_json() plus rows, run_ids, excluded, sensitivity
    reused: bool = False
    messages: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"sweep": self.sweep, "reused": self.reused, "messages": self.messages, **self.result}


def counted_params(params: dict[str, Any]) -> float | None:
    if "counted" in params:
        return float(params["counted"])
    if "total" in params:
        return float(params["total"]) - float(params.get("embedding", 0))
    return None


def run_rows(runs: list[Any]) -> tuple[list[IsoRow], list[int], dict[str, int], list[float], list[IsoRow]]:
    """(rows, their run ids, excluded reasons with counts, planned budgets, rows under the paper convention)."""
    rows: list[IsoRow] = []
    paper: list[IsoRow] = []
    ids: list[int] = []
    excluded: dict[str, int] = {}
    budgets: set[float] = set()
    for r in runs:
        if r.axis != AXIS:
            continue
        why = exclusion_reason(r)
        n = counted_params(r.params or {})
        tokens = r.tokens
        if why is None and (n is None or not tokens):
            why = "no parameter count or tokens"
        if why is not None:
            excluded[why] = excluded.get(why, 0) + 1
            continue
        fpt = r.flops_per_token or {}
        planned = (r.config or {}).get("isoflop") or {}
        if r.source != "imported" and "exact" in fpt:
            c = float(fpt["exact"]) * float(tokens)
            if "paper" in fpt:
                paper.append(IsoRow(r.family, int(r.seed), float(n), float(tokens), float(fpt["paper"]) * tokens,
                                    float(r.final_val_loss)))
            if planned.get("budget") and planned.get("convention", "exact") == "exact":
                budgets.add(float(planned["budget"]))
        else:
            c = float(r.x)
        rows.append(IsoRow(r.family, int(r.seed), float(n), float(tokens), c, float(r.final_val_loss)))
        ids.append(int(r.id))
    return rows, ids, excluded, sorted(budgets), paper


def _fingerprint(rows: list[IsoRow], settings: IsoflopSettings) -> str:
    body = json.dumps({"rows": sorted([r.family, r.seed, r.params, r.tokens, r.flops, r.loss] for r in rows),
                       "settings": settings.to_json(), "v": 1}, sort_keys=True)
    return hashlib.sha256(body.encode()).hexdigest()


def fit_sweep(store: Any, sweep: str, runs: list[Any], settings: IsoflopSettings, save: bool = True
              ) -> IsoflopResult:
    rows, ids, excluded, budgets, paper = run_rows(runs)
    messages = [f"{n} run(s) left out: {why}" for why, n in sorted(excluded.items())]
    if not rows:
        raise FitError(f"sweep {sweep}: no fit-eligible isoflop runs ({', '.join(messages) or 'none stored'}); "
                       "run the sweep or import rows with axis = isoflop")
    s = settings
    if budgets and len(paper) == len(rows) and s.budgets is None:
        s = replace(s, budgets=tuple(budgets))
    fp = _fingerprint(rows, s)
    found = store.find_fit(sweep, AXIS, PAIR, METHOD, fp)
    if found is not None:
        return IsoflopResult(sweep, found.params, reused=True, messages=messages)
    fit = fit_isoflop(rows, s)
    out = fit.to_json()
    out["rows"] = [[r.family, r.seed, r.params, r.tokens, r.flops, r.loss] for r in rows]
    out["run_ids"] = ids
    out["excluded"] = excluded
    out["params_counted"] = "all parameters but the input embedding (blocks + output head; Porian et al. 2024)"
    out["flops_convention"] = "exact (models/flops.py), imported rows: their flops column"
    if len(paper) == len(rows) and fit.comparison is not None:
        try:
            sens = fit_isoflop(paper, replace(s, budgets=None, resamples=SENSITIVITY_RESAMPLES,
                                              resamples_law=SENSITIVITY_RESAMPLES, simulations=0))
            out["sensitivity"] = {"convention": "paper",
                                  "comparison": sens.comparison.to_json() if sens.comparison else None}
        except FitError as exc:
            out["sensitivity"] = {"convention": "paper", "error": str(exc)}
    out = json.loads(json.dumps(out, allow_nan=False, default=_plain))
    if save:
        try:
            store.save_fit(FitRecord(None, sweep, AXIS, PAIR, METHOD, out, tuple(sorted(ids)), fp))
        except DuplicateError:
            pass
    return IsoflopResult(sweep, out, messages=messages)


def _plain(v: Any) -> Any:
    if hasattr(v, "item"):
        return v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return None
    raise TypeError(f"not JSON: {type(v).__name__}")


def fit_isoflop_store(store: Any, sweep: str | None = None, settings: IsoflopSettings | None = None,
                      save: bool = True) -> list[IsoflopResult]:
    """One result per sweep with isoflop runs (optionally one sweep)."""
    if sweep is not None:
        store.get_sweep(sweep)
    runs = [r for r in store.list_runs(sweep=sweep) if r.axis == AXIS]
    by_sweep: dict[str, list[Any]] = {}
    for r in runs:
        by_sweep.setdefault(r.sweep, []).append(r)
    return [fit_sweep(store, sw, rs, settings or IsoflopSettings(), save) for sw, rs in sorted(by_sweep.items())]


def _fmt_ci(ci: Any, fmt: str = "{:.3g}") -> str:
    if not ci or ci[0] is None or ci[1] is None:
        return "[-]"
    return "[" + fmt.format(ci[0]) + ", " + fmt.format(ci[1]) + "]"


def _g(v: Any, fmt: str = "{:.3g}") -> str:
    return "-" if v is None else fmt.format(v)


LABEL = {"transformer_pp": "T++", "ebt": "EBT"}


def summary_lines(res: IsoflopResult) -> list[str]:
    """The fit's table as plain lines: approach 2 and 3 per family, the multiplier, exponent difference and
    crossover, then the guard-rails."""
    d = res.result
    lines = [f"IsoFLOP fit - sweep {res.sweep} ({'reused' if res.reused else 'new'}; {len(d.get('rows', []))} runs; "
             f"N = {d.get('params_counted', 'params')})"]
    lines.append(f"  {'family':<6} {'approach':<9} {'a_N = dlnN*/dlnC':<26} {'a_D':<24} {'frontier gamma':<24} "
                 "law E, alpha, beta")
    for fam in d.get("families", []):
        a2 = d["approach2"].get(fam) or {}
        a3 = d["approach3"].get(fam) or {}
        fr, frc = a2.get("frontier") or {}, a2.get("frontier_ci") or {}
        f3 = "{:.3f}"
        lines.append(f"  {LABEL.get(fam, fam):<6} {'2':<9} {_g(a2.get('a_N'), f3)} {_fmt_ci(a2.get('a_N_ci'), f3):<20}"
                     f" {_g(a2.get('a_D'), '{:.3f}')} {_fmt_ci(a2.get('a_D_ci'), '{:.3f}'):<18} "
                     f"{_g(fr.get('gamma'), '{:.3f}')} {_fmt_ci(frc.get('gamma'), '{:.3f}'):<18}")
        law, lci = a3.get("law") or {}, a3.get("law_ci") or {}
        lines.append(f"  {'':<6} {'3':<9} {'':<26} {'':<24} {_g(a3.get('gamma'), '{:.3f}')} "
                     f"{_fmt_ci(a3.get('gamma_ci'), '{:.3f}'):<18} E {_g(law.get('E'))} {_fmt_ci(lci.get('E'))}, "
                     f"alpha {_g(law.get('alpha'))} {_fmt_ci(lci.get('alpha'))}, beta {_g(law.get('beta'))} "
                     f"{_fmt_ci(lci.get('beta'))}")
        for b in a2.get("budgets", []):
            lines.append(f"  {'':<6} C={b['budget']:.3g}: N* {_g(b['n_star'])} {_fmt_ci(b['n_star_ci'])}, "
                         f"L* {_g(b['l_star'], '{:.4f}')} {_fmt_ci(b['l_star_ci'], '{:.4f}')} ({b['n_sizes']} sizes)")
    c = d.get("comparison")
    if c:
        a, b = c["pair"]
        lines.append(f"  compute multiplier m = C_{LABEL.get(a, a)} / C_{LABEL.get(b, b)} at equal loss "
                     f"(per-token FLOPs ratio {_g(c.get('flops_ratio'), '{:.2f}')}):")
        for p in c["points"]:
            lines.append(f"    at {LABEL.get(b, b)}'s C={p['budget_b']:.3g} (loss {_g(p['loss'], '{:.4f}')}): m "
                         f"{_g(p['m'], '{:.2f}')} {_fmt_ci(p['m_ci'], '{:.2f}')} ({p['source']}"
                         f"{', extrapolated' if p['extrapolated'] else ''})")
        lines.append(f"  frontier exponent difference gamma_{LABEL.get(a, a)} - gamma_{LABEL.get(b, b)}: "
                     f"{_g(c.get('gamma_diff'), '{:+.3f}')} {_fmt_ci(c.get('gamma_diff_ci'), '{:+.3f}')} "
                     f"(approach 2: {_g(c.get('gamma_diff_a2'), '{:+.3f}')} "
                     f"{_fmt_ci(c.get('gamma_diff_a2_ci'), '{:+.3f}')}); verdict: {c.get('verdict')}")
        xo = c.get("crossover")
        where = f"{xo:.3g} FLOPs {_fmt_ci(c.get('crossover_ci'))}" if xo else "never in range"
        lines.append(f"  crossover (m = 1): {where}"
                     f"{'; ' + c['crossover_note'] if c.get('crossover_note') else ''}")
        sens = d.get("sensitivity") or {}
        if sens.get("error"):
            lines.append(f"  sensitivity (paper FLOPs convention): not computed: {sens['error']}")
        if sens.get("comparison"):
            pts = sens["comparison"]["points"]
            lines.append("  sensitivity (paper FLOPs convention): m " + ", ".join(
                f"{_g(p['m'], '{:.2f}')} {_fmt_ci(p['m_ci'], '{:.2f}')}" for p in pts))
    for m in res.messages:
        lines.append(f"  note: {m}")
    for g in d.get("guards", []):
        lines.append(f"  warning [{g['code']}]: {g['message']}")
    return lines


def edge_extensions(res: IsoflopResult) -> list[str]:
    """``--extend-edges``: per (family, budget) whose minimum lands at a window edge, the side to extend."""
    out = []
    for g in res.result.get("guards", []):
        if g.get("code") == "edge_minimum" or "edge" in str(g.get("code", "")):
            out.append(f"extend: {g.get('family')} at budget {_g(g.get('budget'))}: {g['message']}")
    return out


def isoflop_fits(store: Any, sweep: str | None, axis: str | None, resamples: int, seed: int
                 ) -> list[IsoflopResult]:
    """What ``ebt-scale fit`` adds for isoflop sweeps (none when ``--axis`` names another axis)."""
    if axis not in (None, AXIS):
        return []
    out = fit_isoflop_store(store, sweep, IsoflopSettings(resamples=resamples, resamples_law=resamples, seed=seed))
    if axis == AXIS and not out:
        raise FitError(f"--axis isoflop: no isoflop runs{f' in sweep {sweep!r}' if sweep else ''}; run an isoflop "
                       "sweep (experiments/tiny/isoflop.toml) or import rows with axis = isoflop")
    return out
