"""Guard-rails: conditions under which a fitted rate, or an EBT-vs-T++ comparison built on it, should not be
read as a scaling result. Each fires with a plain-language message.

A guard is a ``Guard`` (``fit/results.py``: code, family, scope, message). ``scope`` says which view it makes
unreadable: ``rate`` (the M1 slope, hence the rate gain and its faster/slower verdict), ``exponent`` (the M2 law, hence
the exponent gain) or ``both``. The two views cannot both be clean on one data set as a rule: a lack-of-fit
test that finds curvature is exactly what identifies alpha, and data a straight line fits leave alpha at or
near its bound 0. So a comparison is marked ``unreliable`` (no faster/slower verdict, the verdict says why)
when a ``rate`` or ``both`` guard fires, and ``exponent_unreliable`` when an ``exponent`` or ``both`` one does.
Codes:

* ``not_falling``    the family's loss does not clearly fall with x (slope interval reaches >= 0);
* ``near_baseline``  text: a level's mean loss within ``NEAR_BASELINE_NATS`` of the unigram (or uniform ln V) loss;
                     video: a level's mean SmoothL1 not clearly below the copy-last-frame loss (above
                     ``NEAR_COPY_FRACTION`` of it; the mean-embedding loss when no copy loss is stored);
* ``at_bound``       the saturating law's alpha or E at a bound, or alpha at a bound in many bootstrap refits;
* ``lack_of_fit``    a straight line in ln x is rejected (F-test against a quadratic, p < 0.05);
* ``single_seed``    a level with one seed (seed noise not measured there);
* ``few_levels``     fewer than 4 levels;
* ``non_monotone``   level means go down and up by more than seed noise;
* ``wide_interval``  the 95% interval of a slope or exponent is wider than the estimate;
* ``lr_at_edge``     on a ``[tune]`` axis, a level's chosen LR is the smallest or largest of its grid (names the LR
                     to add, one grid step further).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from ebt_scaling.fit.design import FamilyData
from ebt_scaling.fit.results import EXPLAIN, LABELS, FamilyFit, Guard, TuneLevel, baseline_of

__all__ = ["EXPLAIN", "LABELS", "SCOPES", "baseline_of", "family_guards", "lr_edge_guards", "unreliable_verdict"]

NEAR_BASELINE_NATS = 0.5  # issue 16: every run should end below the unigram loss by at least this much
# video: a level whose mean SmoothL1 is above 90% of the copy-last-frame loss has learned little beyond "the next
# frame looks like this one" (SmoothL1 is a scale of its own: a relative margin, not nats)
NEAR_COPY_FRACTION = 0.9
LACK_OF_FIT_P = 0.05
MIN_LEVELS = 4
ALPHA_BOUND_TOL = 0.01  # alpha within this of 0 or 2 is at its bound
E_BOUND = 1e-3  # E (nats) below this is the E >= 0 edge (pure power law); video: E below this fraction of the
# smallest level mean SmoothL1 (the loss has no natural unit there)
ALPHA_BOUND_FRAC = 0.10  # share of bootstrap refits with alpha at a bound that fires the guard
NOISE_Z = 2.0  # a change between level means counts when it exceeds this many standard errors


SCOPES = {"not_falling": "both", "near_baseline": "both", "at_bound": "exponent", "lack_of_fit": "rate",
          "single_seed": "both", "few_levels": "both", "non_monotone": "both", "lr_at_edge": "both"}


def _g(code: str, family: str | None, message: str, scope: str | None = None) -> Guard:
    return Guard(code, family, scope or SCOPES[code], message)


def _level_means(fd: FamilyData) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    cells = fd.cells()
    return (np.array([fd.x[c[0]] for c in cells]), np.array([fd.y[c].mean() for c in cells]),
            np.array([c.size for c in cells]))


def _noise_sd(fd: FamilyData, resid: np.ndarray | None) -> float | None:
    """Seed-noise sd: pooled within-level sd when seeds are replicated, else the M1 residual sd."""
    ss, df = 0.0, 0
    for c in fd.cells():
        if c.size > 1:
            v = fd.y[c]
            ss += float(((v - v.mean()) ** 2).sum())
            df += c.size - 1
    if df:
        return math.sqrt(ss / df)
    if resid is not None and resid.size > 2:
        return math.sqrt(float((resid**2).sum()) / (resid.size - 2))
    return None


def family_guards(fd: FamilyData, entry: FamilyFit, baselines: dict[str, float | None] | None,
                  resid: np.ndarray | None) -> list[Guard]:
    """Every guard that fires for one family, given its fitted entry (slope, slope_ci, lack_of_fit_p, law)."""
    name = fd.family
    who = LABELS.get(name, name)
    out: list[Guard] = []
    xs, means, counts = _level_means(fd)
    n_lv = xs.size
    slope, ci = entry.slope, entry.slope_ci or (None, None)
    per = "log-log" if fd.measure.log_loss else "per ln x"
    if slope is not None and (slope >= 0 or (ci[1] is not None and ci[1] >= 0)):
        out.append(_g("not_falling", name, f"{who}: the loss does not clearly fall with x (slope {slope:+.4f} {per}, "
                      f"95% interval up to {ci[1]:+.4f}); a rate gain against a flat or rising loss means "
                      "nothing, so there is no faster/slower verdict" if ci[1] is not None else
                      f"{who}: the loss does not fall with x (slope {slope:+.4f} {per}); no faster/slower verdict"))
    video = fd.measure.log_loss
    base = baseline_of(baselines)
    if base is not None and video:
        b, kind = base
        loss_means = np.array([fd.loss[c].mean() for c in fd.cells()])
        near = loss_means >= NEAR_COPY_FRACTION * b
        if near.any():
            what = "repeating the last frame" if kind.startswith("copy") else "predicting the mean embedding"
            out.append(_g("near_baseline", name,
                          f"{who}: mean SmoothL1 not clearly below the {kind} baseline ({b:.4g}; above "
                          f"{NEAR_COPY_FRACTION:.0%} of it) at {int(near.sum())} of {n_lv} levels: the model has "
                          f"learned little beyond {what}, so its slope does not measure scaling - train longer or "
                          "tune the preset"))
    elif base is not None:
        b, kind = base
        near = means >= b - NEAR_BASELINE_NATS
        if near.any():
            what = "token frequencies" if kind == "unigram" else "a uniform guess over the vocabulary"
            out.append(_g("near_baseline", name,
                          f"{who}: mean loss within {NEAR_BASELINE_NATS} nats of the {kind} baseline ({b:.3f} nats, "
                          f"perplexity {math.exp(min(b, 700)):.0f}) at {int(near.sum())} of {n_lv} levels: the model "
                          f"has learned little beyond {what}, so its slope does not measure scaling - train longer "
                          "or tune the preset"))
    law = entry.law
    if law:
        a, E = law.alpha, law.E
        parts = []
        if a is not None and (a <= ALPHA_BOUND_TOL or a >= 2.0 - ALPHA_BOUND_TOL):
            parts.append(f"exponent alpha = {a:.3f} sits at its bound (0 or 2)")
        e_bound = E_BOUND * float(fd.loss.min()) if video else E_BOUND
        if E is not None and E <= e_bound:
            parts.append(f"floor E = {E:.2g} sits at its bound 0")
        frac = law.alpha_at_bound_frac
        if frac is not None and frac >= ALPHA_BOUND_FRAC:
            parts.append(f"alpha ends at a bound in {frac:.0%} of bootstrap refits")
        if parts:
            out.append(_g("at_bound", name, f"{who}: saturating law " + "; ".join(parts)
                          + ": these data do not pin the law down, so its exponent is not a measurement"))
    lof = entry.lack_of_fit_p
    if lof is not None and lof < LACK_OF_FIT_P:
        out.append(_g("lack_of_fit", name, f"{who}: a straight line in ln x does not fit (lack-of-fit p = {lof:.3g} < "
                      f"{LACK_OF_FIT_P}); the slope depends on which x range was run"))
    single = int((counts == 1).sum())
    if single:
        out.append(_g("single_seed", name, f"{who}: one seed at {single} of {n_lv} levels: seed noise is inferred from "
                      "the fit, not measured - run at least 2 seeds per level"))
    if n_lv < MIN_LEVELS:
        out.append(_g("few_levels", name, f"{who}: {n_lv} levels; fewer than {MIN_LEVELS} cannot show curvature or fit "
                      "the saturating law - add levels"))
    sd = _noise_sd(fd, resid)
    if sd is not None and n_lv >= 3:
        d = np.diff(means)
        se = sd * np.sqrt(1.0 / counts[1:] + 1.0 / counts[:-1])
        if (d > NOISE_Z * se).any() and (d < -NOISE_Z * se).any():
            if fd.measure.log_loss:  # y = ln SmoothL1: its level means are geometric means of the SmoothL1
                trail = ", ".join(f"{math.exp(m):.4g}" for m in means) + " SmoothL1, geometric"
            else:
                trail = ", ".join(f"{m:.3f}" for m in means) + " nats"
            out.append(_g("non_monotone", name, f"{who}: the loss falls and rises across levels by more than seed "
                          f"noise (level means {trail}): the trend is not one scaling law"))
    if slope is not None and ci[0] is not None and ci[1] is not None and ci[1] - ci[0] > abs(slope):
        out.append(_g("wide_interval", name, f"{who}: 95% interval of the slope wider than the slope itself "
                      f"({slope:+.4f} [{ci[0]:+.4f}, {ci[1]:+.4f}]): the rate is mostly noise", "rate"))
    if law and law.alpha is not None:
        aci = law.alpha_ci or (None, None)
        if aci[0] is not None and aci[1] is not None and aci[1] - aci[0] > abs(law.alpha):
            out.append(_g("wide_interval", name, f"{who}: 95% interval of the exponent wider than the exponent "
                          f"itself ({law.alpha:.3f} [{aci[0]:.3f}, {aci[1]:.3f}]): alpha is mostly noise",
                          "exponent"))
    return out


def lr_edge_guards(name: str, levels: Sequence[TuneLevel]) -> list[Guard]:
    """``lr_at_edge`` for one family of a ``[tune]`` axis: the levels whose chosen LR is the smallest or largest of
    the grid, each with the LR to add (one step of the grid's own spacing further)."""
    who = LABELS.get(name, name)
    edges = [lv for lv in levels if lv.at_edge is not None and lv.chosen_lr is not None]
    if not edges:
        return []

    def add(lv: TuneLevel) -> str:
        if lv.add_lr_scale is not None:
            return f"add lr_scale {lv.add_lr_scale:.3g} (LR {lv.add_lr:.3g})"
        return f"add lr {lv.add_lr:.3g}" if lv.add_lr is not None else "widen the grid"

    where = "; ".join(f"x = {lv.x:g}: {lv.chosen_lr:.3g} is the {lv.at_edge}, {add(lv)}" for lv in edges)
    return [_g("lr_at_edge", name,
               f"{who}: the chosen LR sits at its grid's edge at {len(edges)} of {len(levels)} levels ({where}): "
               "the best LR may lie outside the grid, so the LR envelope (the fitted losses) may be too high there - "
               f"add the named LR(s) to [tune] lr (or [tune.{name}]) and rerun the sweep: only the new points train")]


def unreliable_verdict(guards: Sequence[Guard], view: str = "rate") -> str | None:
    """Why ``view`` of a comparison is not called (instead of faster/slower), or None when no guard blocks it."""
    guards = [g for g in guards if g.blocks(view)]
    if not guards:
        return None
    falling = [g for g in guards if g.code == "not_falling"]
    if falling:
        fams = " and ".join(LABELS.get(g.family or "", g.family or "comparison") for g in falling)
        return f"no verdict: {fams} loss does not fall with x"
    codes = sorted({g.code.replace("_", " ") for g in guards})
    return "unreliable: " + ", ".join(codes)
