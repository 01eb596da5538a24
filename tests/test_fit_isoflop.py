"""Compute-optimal (IsoFLOP) fits: ``ebt_scaling.fit.isoflop`` against synthetic truth, an independent
re-implementation, Epoch AI's Chinchilla data, and its failure paths.

Synthetic truth: two families whose losses follow known laws L = E + A N^-alpha + B D^-beta, with the per-token
training FLOPs F of a ladder of tiny shapes taken from ``ebt_scaling.models.flops`` (exact convention; the EBT's
F is ~4-5x the Transformer++'s). Each budget runs the ladder's 7 sizes centred on the family's own true optimum
(D = C / F), 2 seeds, noise sd 0.01 nats (realistic for small LMs, ``scaling-fits.md`` section 5). The true
compute-optimal frontier uses the same F(N) convention as the module (log-linear between ladder sizes), computed
here by brute force on a dense grid.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import pathlib
import subprocess
import sys
from functools import cache

import numpy as np
import pytest
from scipy import optimize

from ebt_scaling.errors import FitError
from ebt_scaling.fit.isoflop import (
    IsoflopSettings,
    IsoRow,
    PerToken,
    _simulation_guard,
    approach3,
    fit_isoflop,
    make_tables,
    rows_from_arrays,
)

DATA = pathlib.Path(__file__).parent / "data" / "chinchilla" / "svg_extracted_data.csv"

# (n_layer, n_embd): sizes ~1.4x apart in non-embedding parameters
LADDER = [(1, 32), (1, 48), (2, 48), (2, 64), (2, 80), (2, 96), (3, 112), (3, 128), (4, 144), (4, 160), (4, 192),
          (5, 224), (6, 256), (6, 288), (7, 320), (8, 384), (8, 448), (10, 512), (12, 576), (12, 640), (14, 768)]
LAWS = {"transformer_pp": dict(E=1.8, A=60.0, B=300.0, alpha=0.34, beta=0.36),
        "ebt": dict(E=1.8, A=80.0, B=250.0, alpha=0.30, beta=0.40)}
BUDGETS = [1e14, 4e14, 1.6e15, 6.4e15]
NOISE = 0.01
NSTAR_TOL = 0.10  # stated tolerance: approach 3's N*(C) within 10% of the truth at every budget


@cache
def ladder(family: str) -> tuple[np.ndarray, np.ndarray]:
    """Non-embedding parameters N and exact training FLOPs per token F of the ladder (real flops.py numbers)."""
    from ebt_scaling.config import ModelConfig
    from ebt_scaling.models.flops import flops_per_token, param_counts

    N, F = [], []
    for n_layer, d in LADDER:
        cfg = ModelConfig(family=family, n_layer=n_layer, n_embd=d, n_head=d // 16, vocab_size=2048,
                          sequence_len=128)
        N.append(param_counts(cfg)["non_embedding"])
        F.append(flops_per_token(cfg, "exact"))
    return np.array(N, float), np.array(F, float)


def ladder_of(fam: str) -> tuple[np.ndarray, np.ndarray]:
    return ladder(fam if fam in ("transformer_pp", "ebt") else "transformer_pp")


def ln_f(N: np.ndarray, F: np.ndarray):
    """ln F(ln N): straight lines between ladder sizes, the end segments extended."""
    lx, ly = np.log(N), np.log(F)

    def f(x):
        x = np.asarray(x, float)
        out = np.interp(x, lx, ly)
        lo = ly[0] + (ly[1] - ly[0]) / (lx[1] - lx[0]) * (x - lx[0])
        hi = ly[-1] + (ly[-1] - ly[-2]) / (lx[-1] - lx[-2]) * (x - lx[-1])
        return np.where(x < lx[0], lo, np.where(x > lx[-1], hi, out))

    return f


def law(p: dict, N, D):
    return p["E"] + p["A"] * np.power(N, -p["alpha"]) + p["B"] * np.power(D, -p["beta"])


def true_optimum(p: dict, lnF, C: float) -> tuple[float, float]:
    """Brute force: dense ln N grid, then a bounded scalar search around the best point."""
    g = np.linspace(math.log(1e3), math.log(1e10), 70001)
    L = law(p, np.exp(g), C / np.exp(lnF(g)))
    j = int(L.argmin())
    r = optimize.minimize_scalar(lambda x: float(law(p, math.exp(x), C / math.exp(float(lnF(x))))),
                                 bounds=(g[j - 1], g[j + 1]), method="bounded", options={"xatol": 1e-12})
    return math.exp(r.x), float(r.fun)


def true_frontier(fam: str, laws: dict) -> tuple[np.ndarray, np.ndarray]:
    N, F = ladder_of(fam)
    lnF = ln_f(N, F)
    g = np.linspace(math.log(1e3), math.log(1e10), 14001)
    lnC = np.linspace(math.log(1e12), math.log(1e19), 400)
    lnL = [math.log(law(laws[fam], np.exp(g), math.exp(c) / np.exp(lnF(g))).min()) for c in lnC]
    return lnC, np.array(lnL)


def true_multiplier(laws: dict, fa: str, fb: str):
    ca, la = true_frontier(fa, laws)
    cb, lb = true_frontier(fb, laws)
    return lambda L: math.exp(np.interp(math.log(L), la[::-1], ca[::-1]) - np.interp(math.log(L), lb[::-1], cb[::-1]))


def design(budgets=BUDGETS, sizes=7, seeds=2, sd=NOISE, rng=None, laws=LAWS, families=("transformer_pp", "ebt"),
           centre_shift=0):
    rows = []
    for fam in families:
        N, F = ladder_of(fam)
        lnF = ln_f(N, F)
        for C in budgets:
            n_star, _ = true_optimum(laws[fam], lnF, C)
            j = int(np.argmin(np.abs(np.log(N) - math.log(n_star)))) + centre_shift
            j = min(max(j - sizes // 2, 0), len(N) - sizes)
            for k in range(j, j + sizes):
                D = C / F[k]
                for s in range(seeds):
                    y = law(laws[fam], N[k], D) + (rng.normal(0.0, sd) if rng is not None else 0.0)
                    rows.append(IsoRow(fam, s, float(N[k]), float(D), float(C), float(y)))
    return rows


QUICK = IsoflopSettings(resamples=0, resamples_law=0, simulations=0)


# ---------------------------------------------------------------------------------------------------------
# Synthetic truth
# ---------------------------------------------------------------------------------------------------------


def test_noise_free_recovers_laws_and_frontier():
    # the whole ladder's F(N) (the runs only cover the sizes near each optimum; the extrapolated multipliers need F
    # beyond them)
    fit = fit_isoflop(design(), QUICK, per_token={f: PerToken.from_points(*ladder(f)) for f in LAWS})
    for fam, p in LAWS.items():
        a3 = fit.approach3[fam]
        got = dataclasses.asdict(a3.law)
        for k, v in p.items():
            assert abs(got[k] / v - 1) < 1e-4, (fam, k, got[k], v)
        N, F = ladder(fam)
        for C, n_star in zip(a3.budgets, a3.n_star, strict=True):
            truth, _ = true_optimum(p, ln_f(N, F), C)
            assert abs(n_star / truth - 1) < 1e-3, (fam, C, n_star, truth)
        # approach 2's parabola is biased off a parabola-shaped truth (Czech et al. 2026), but not by much here
        for bf in fit.approach2[fam].budgets:
            truth, l_truth = true_optimum(p, ln_f(N, F), bf.budget)
            assert abs(bf.n_star / truth - 1) < 0.10
            assert abs(bf.l_star - l_truth) < 0.01
        assert 0.3 < fit.approach2[fam].a_N < 0.7
    comp = fit.comparison
    assert comp is not None and comp.pair == ("ebt", "transformer_pp")
    tm = true_multiplier(LAWS, "ebt", "transformer_pp")
    for pt in comp.points:
        # approach 3 is exact on noise-free data; approach 2's vertex frontier within 3%
        assert abs(pt.m / tm(pt.loss) - 1) < (3e-3 if pt.source == "approach3" else 0.03), pt
    assert any(not p.extrapolated for p in comp.points) and any(p.extrapolated for p in comp.points)
    assert comp.flops_ratio > 3  # the EBT's per-token FLOPs, from flops.py
    json.dumps(fit.to_json(), allow_nan=False)


def _coverage(n_sets: int, resamples: int):
    tm = true_multiplier(LAWS, "ebt", "transformer_pp")
    truth = {f: [true_optimum(LAWS[f], ln_f(*ladder(f)), C)[0] for C in BUDGETS] for f in LAWS}
    covered, n_ok = [], []
    for i in range(n_sets):
        rng = np.random.default_rng(1000 + i)
        fit = fit_isoflop(design(rng=rng), IsoflopSettings(resamples=resamples, resamples_law=0, simulations=0,
                                                           seed=i))
        pt = next(p for p in fit.comparison.points if p.source == "approach2")
        assert not pt.extrapolated
        covered.append(pt.m_ci[0] <= tm(pt.loss) <= pt.m_ci[1])
        n_ok.append(all(abs(np.array(fit.approach3[f].n_star) / truth[f] - 1).max() < NSTAR_TOL for f in LAWS))
    return float(np.mean(covered)), float(np.mean(n_ok))


def test_noisy_coverage_quick():
    cov, n_ok = _coverage(10, 200)
    assert n_ok >= 0.9, n_ok
    assert 0.8 <= cov <= 1.0, cov  # 10 fixed data sets: a looser band than the slow test's 91-98% over 200


@pytest.mark.slow
def test_noisy_coverage_200():
    cov, n_ok = _coverage(200, 2000)
    assert n_ok >= 0.9, n_ok
    assert 0.91 <= cov <= 0.98, cov


def test_one_law_for_both_families_multiplier_covers_one():
    """Both families follow one law with one F(N): m = 1 everywhere. A valid 95% interval misses 1 in ~5% of data
    sets, so five data sets are fitted and at most one may miss (and no exponent verdict may be called)."""
    laws = {"a": LAWS["transformer_pp"], "b": LAWS["transformer_pp"]}
    misses, verdicts = 0, 0
    for seed in range(5):
        fit = fit_isoflop(design(rng=np.random.default_rng(seed), laws=laws, families=("a", "b")),
                          IsoflopSettings(resamples=500, resamples_law=200, simulations=0, seed=seed))
        comp = fit.comparison
        assert comp.pair == ("a", "b")
        pt = next(p for p in comp.points if not p.extrapolated)
        misses += not (pt.m_ci[0] <= 1.0 <= pt.m_ci[1])
        verdicts += not comp.verdict.startswith("no verdict")
        assert 0.8 < pt.m < 1.25
    assert misses <= 1 and verdicts <= 1, (misses, verdicts)


def test_crossover_inside_the_measured_budgets():
    """Family a is worse at small budgets but has larger exponents: the true frontiers cross at ~1.5e15 FLOPs,
    inside the measured budgets (same F for both, so the crossing is where m = 1)."""
    laws = {"a": dict(E=1.8, A=175.0, B=750.0, alpha=0.40, beta=0.42), "b": LAWS["transformer_pp"]}
    ca, la = true_frontier("a", laws)
    cb, lb = true_frontier("b", laws)
    d = la - lb
    i = int(np.flatnonzero(np.sign(d[:-1]) != np.sign(d[1:]))[0])
    truth = ca[i] - d[i] * (ca[i + 1] - ca[i]) / (d[i + 1] - d[i])
    ladder_f = {f: PerToken.from_points(*ladder("transformer_pp")) for f in laws}
    fit = fit_isoflop(design(laws=laws, families=("a", "b")), QUICK, per_token=ladder_f)
    comp = fit.comparison
    assert comp.crossover is not None and comp.crossover_in_range, comp.crossover_note
    assert abs(math.log(comp.crossover) - truth) < 0.02, (comp.crossover, math.exp(truth))
    ms = [p.m for p in comp.points]
    assert ms[0] > 1 > ms[-1]  # a needs more compute at small budgets, less at large ones
    noisy = fit_isoflop(design(laws=laws, families=("a", "b"), rng=np.random.default_rng(11)),
                        IsoflopSettings(resamples=300, resamples_law=200, simulations=0), per_token=ladder_f)
    c = noisy.comparison
    assert c.crossover is not None and c.crossover_ci[0] is not None and c.crossover_ci[0] < c.crossover
    assert c.crossover_ci[1] is None or c.crossover < c.crossover_ci[1]
    assert c.verdict.startswith("a faster per unit of compute"), c.verdict
    json.dumps(noisy.to_json(), allow_nan=False)


# ---------------------------------------------------------------------------------------------------------
# An independent re-implementation: brute-force grid of starts + L-BFGS-B, dense N grid for the frontier
# ---------------------------------------------------------------------------------------------------------


def _reference_law(N, D, y, delta=1e-3):
    """Huber (delta 1e-3) on ln y - ln(E + A (N/1e6)^-alpha + B (D/1e9)^-beta), parameters (ln E, ln A, ln B,
    alpha, beta), from a grid of starts; returns (E, A, B, alpha, beta) in the original units."""
    x, z, ly = np.log(N / 1e6), np.log(D / 1e9), np.log(y)

    def f(p):
        e, a, b, al, be = p
        t0, t1, t2 = math.e ** e, np.exp(a - al * x), np.exp(b - be * z)
        pred = t0 + t1 + t2
        r = ly - np.log(pred)
        h = np.where(np.abs(r) <= delta, 0.5 * r * r, delta * (np.abs(r) - 0.5 * delta)).sum() / delta**2
        psi = -np.clip(r, -delta, delta) / delta**2 / pred
        g = np.array([psi @ np.full_like(x, t0), psi @ t1, psi @ t2, psi @ (-x * t1), psi @ (-z * t2)])
        return h, g

    best = None
    for e in (-1.0, 0.5):
        for a in (-1.0, 1.0):
            for b in (-1.0, 1.0):
                for al in (0.1, 0.5, 1.0):
                    for be in (0.1, 0.5, 1.0):
                        r = optimize.minimize(f, [e, a, b, al, be], jac=True, method="L-BFGS-B",
                                              bounds=[(-5, 3), (-20, 20), (-20, 20), (0, 2), (0, 2)],
                                              options={"gtol": 1e-12, "ftol": 1e-15, "maxiter": 5000})
                        if best is None or r.fun < best.fun:
                            best = r
    e, a, b, al, be = best.x
    return math.exp(e), math.exp(a) * 1e6**al, math.exp(b) * 1e9**be, al, be


def test_independent_reimplementation_agrees():
    rows = design(rng=np.random.default_rng(3))
    fit = fit_isoflop(rows, QUICK)
    for fam in LAWS:
        rs = [r for r in rows if r.family == fam]
        N, D, y = (np.array([getattr(r, k) for r in rs]) for k in ("params", "tokens", "loss"))
        ref = _reference_law(N, D, y)
        got = fit.approach3[fam].law
        for k, v in zip(("E", "A", "B", "alpha", "beta"), ref, strict=True):
            assert abs(getattr(got, k) / v - 1) < 1e-3, (fam, k, getattr(got, k), v)
        p = dict(zip(("E", "A", "B", "alpha", "beta"), ref, strict=True))
        Nl, Fl = ladder(fam)
        lnF = ln_f(Nl, Fl)
        g = np.arange(math.log(1e4), math.log(1e9), 1e-4)
        for C, n_star in zip(fit.approach3[fam].budgets, fit.approach3[fam].n_star, strict=True):
            ref_n = math.exp(g[np.argmin(law(p, np.exp(g), C / np.exp(lnF(g))))])
            assert abs(n_star / ref_n - 1) < 0.02, (fam, C, n_star, ref_n)


# ---------------------------------------------------------------------------------------------------------
# Epoch AI's Chinchilla data (Besiroglu et al. 2024)
# ---------------------------------------------------------------------------------------------------------

# Published approach-3 refit on these 240 points (Besiroglu et al. 2024, arXiv 2404.10102; the same figures
# are quoted in ../shared/reference/scaling-fits.md section 4).
EPOCH = {"E": 1.8172, "A": 482.01, "B": 2085.43, "alpha": 0.3478, "beta": 0.3658}


def test_chinchilla_reproduces_epoch_estimates():
    with DATA.open() as fh:
        raw = list(csv.DictReader(fh))
    assert len(raw) == 245
    N = np.array([float(r["Model Size"]) for r in raw])
    C = np.array([float(r["Training FLOP"]) for r in raw])
    L = np.array([float(r["loss"]) for r in raw])
    keep = np.argsort(L)[:-5]  # Epoch drop the 5 highest-loss points
    n = keep.size
    rows = rows_from_arrays(["chinchilla"] * n, [0] * n, N[keep], C[keep] / (6 * N[keep]), C[keep], L[keep])
    fits, _ = approach3(make_tables(rows, budget_tol=0.3), resamples=200, simulations=0)
    a3 = fits["chinchilla"]
    law = dataclasses.asdict(a3.law)
    tol = {"E": 0.005, "alpha": 0.01, "beta": 0.01, "A": 0.05, "B": 0.05}
    for k, v in EPOCH.items():
        assert abs(law[k] / v - 1) < tol[k], (k, law[k], v)
        lo, hi = a3.law_ci[k]
        assert lo <= v <= hi, (k, v, lo, hi)  # the published estimate lies inside our bootstrap interval
    assert a3.converged


# ---------------------------------------------------------------------------------------------------------
# Guards and failure paths
# ---------------------------------------------------------------------------------------------------------


def _codes(fit):
    return {g["code"] for g in fit.guards}


def test_non_finite_loss_is_a_clear_error():
    rows = design()
    rows[3] = dataclasses.replace(rows[3], loss=float("nan"))
    with pytest.raises(FitError, match=r"row 3 .*loss is nan; drop the run or rerun it"):
        fit_isoflop(rows, QUICK)
    with pytest.raises(FitError, match="same length"):
        rows_from_arrays(["a"], [0, 1], [1.0], [1.0], [1.0], [1.0])
    with pytest.raises(FitError, match="flops must be > 0"):
        fit_isoflop([{"family": "a", "seed": 0, "params": 1e6, "tokens": 1e9, "flops": 0.0, "loss": 3.0}], QUICK)
    with pytest.raises(FitError, match="no rows"):
        fit_isoflop([], QUICK)
    with pytest.raises(FitError, match="expected a PerToken"):
        fit_isoflop(design(families=("transformer_pp",)), QUICK, per_token={"transformer_pp": lambda n: 6 * n})
    with pytest.raises(FitError, match="fit two at a time"):
        fit_isoflop(design(families=("transformer_pp", "ebt", "c"), laws={**LAWS, "c": LAWS["ebt"]}), QUICK)


def test_too_few_sizes_and_single_point_budget():
    rows = design(families=("transformer_pp",), sizes=4)
    fit = fit_isoflop(rows, QUICK)
    few = [g for g in fit.guards if g["code"] == "few_sizes"]
    assert len(few) == len(BUDGETS) and "4 sizes" in few[0]["message"]
    # one point at an extra budget: left out of approach 2 with a guard, approach 3 still fits
    extra = IsoRow("transformer_pp", 0, 1e6, 1e15 / 2e7, 1e15 * 20, 2.5)
    fit = fit_isoflop(design(families=("transformer_pp",)) + [extra], QUICK)
    one = [g for g in fit.guards if g["code"] == "few_sizes" and "1 size(s)" in g["message"]]
    assert one and one[0]["budget"] == pytest.approx(2e16)
    assert len(fit.approach2["transformer_pp"].budgets) == len(BUDGETS)
    # the comparison needs 3 budgets with a parabola per family
    two = design(budgets=BUDGETS[:2])
    with pytest.raises(FitError, match="at least 3 budgets"):
        fit_isoflop(two, QUICK)


def test_edge_minimum_off_budget_and_asymmetry_guards():
    fit = fit_isoflop(design(families=("transformer_pp",), centre_shift=3), QUICK)
    assert "edge_minimum" in _codes(fit)
    assert all("extend the window" in g["message"] for g in fit.guards if g["code"] == "edge_minimum")
    rows = design(families=("transformer_pp",))
    rows[0] = dataclasses.replace(rows[0], flops=rows[0].flops * 1.03)
    fit = fit_isoflop(rows, QUICK)
    assert "off_budget" in _codes(fit)
    clean = fit_isoflop(design(families=("transformer_pp",)), QUICK)
    assert not {"edge_minimum", "off_budget", "few_sizes", "flat_profile"} & _codes(clean)
    shifted = fit_isoflop(design(families=("transformer_pp",), centre_shift=2), QUICK)
    assert {"asymmetric_profile", "edge_minimum"} & _codes(shifted)


def test_approaches_disagree_guard():
    """A tilt across one budget's window (loss rising with size, e.g. a learning rate too high for the larger
    models) drags that parabola's vertex down; the law, fitted to every run with a robust loss, barely moves."""
    rows = design(families=("transformer_pp",))
    centre = np.mean([math.log(r.params) for r in rows if r.flops == 4e14])
    rows = [dataclasses.replace(r, loss=r.loss + 0.1 * (math.log(r.params) - centre)) if r.flops == 4e14 else r
            for r in rows]
    fit = fit_isoflop(rows, QUICK)
    dis = [g for g in fit.guards if g["code"] == "approaches_disagree"]
    assert [g["budget"] for g in dis] == [4e14], fit.guards


def test_flat_profile_guard():
    rows = [dataclasses.replace(r, loss=3.0 + 0.001 * ((r.seed + int(r.params)) % 3)) for r in
            design(families=("transformer_pp",))]
    fit = fit_isoflop(rows, dataclasses.replace(QUICK, resamples=0))
    assert "flat_profile" in _codes(fit) or "edge_minimum" in _codes(fit)


def test_budget_grouping_with_given_budgets():
    rows = design(families=("transformer_pp",))
    tabs = make_tables(rows, budgets=BUDGETS)
    assert np.unique(tabs["transformer_pp"].budget).size == len(BUDGETS)
    with pytest.raises(FitError, match="more than 5% from every budget"):
        make_tables(rows, budgets=BUDGETS[:2])


def test_narrow_interval_guard_fires_on_an_overconfident_interval():
    rows = design(families=("transformer_pp",), rng=np.random.default_rng(5))
    tabs = make_tables(rows)
    fits, _ = approach3(tabs, resamples=100, simulations=0)
    a3 = fits["transformer_pp"]
    t = tabs["transformer_pp"]
    Fi = PerToken.from_table(t)
    lnNs, lnDs = map(math.log, a3.scales)
    rng = np.random.default_rng(0)
    honest = _simulation_guard(a3, t, Fi, lnNs, lnDs, a3.grid, a3.resid_sd, 30, 1e-3, rng)
    assert not honest, honest
    a = a3.law.alpha
    narrow = dataclasses.replace(a3, law_ci={**a3.law_ci, "alpha": (a - 1e-5, a + 1e-5)})
    fired = _simulation_guard(narrow, t, Fi, lnNs, lnDs, a3.grid, a3.resid_sd, 30, 1e-3, rng)
    assert [g["code"] for g in fired] == ["narrow_interval"] and "alpha" in fired[0]["message"]


def test_module_imports_no_torch():
    code = "import sys, ebt_scaling.fit.isoflop; assert 'torch' not in sys.modules and 'ray' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_a_frontier_through_three_budgets_is_flagged_exact():
    """E + A C^-gamma through 3 vertices has no residual degrees of freedom: the guard says its interval is not a
    confidence statement; with 4 budgets it is a fit and the guard stays quiet."""
    rng = np.random.default_rng(5)
    settings = IsoflopSettings(resamples=200, resamples_law=0, simulations=0)
    three = fit_isoflop(design(budgets=BUDGETS[:3], families=("transformer_pp",), rng=rng), settings)
    (g,) = [g for g in three.guards if g["code"] == "frontier_exact"]
    assert g["family"] == "transformer_pp" and "fitted exactly" in g["message"]
    four = fit_isoflop(design(families=("transformer_pp",), rng=rng), settings)
    assert "frontier_exact" not in _codes(four)
