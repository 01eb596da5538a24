"""Compute-optimal (IsoFLOP) fits: Chinchilla approaches 2 and 3, and the compute multiplier between two families.

Input: one row per run, ``IsoRow(family, seed, params N, tokens D, flops C, loss)``; each row's training FLOPs per
token is F = C / D (the family's own count, ``models/flops.py``). Output: frozen dataclasses with ``to_json()``.

Approach 2 (per family and budget; Hoffmann et al. 2022)
    Rows are grouped into budgets (rows within ``budget_tol`` of each other, or of a given budget list, are one
    budget). Per (family, budget) a least-squares quadratic of loss in ln N over every seed; its vertex gives
    N*, L*, and D* = C / F(N*), where F(N) is interpolated log-linearly between the family's own sizes. Across
    budgets: the allocation exponents (slopes of ln N* and ln D* on ln C) and the vertex frontier
    L*(C) = E + A C^-gamma. Intervals: bootstrap; a budget whose sizes all have >= 2 seeds resamples seeds
    within each size (residuals about the size mean inflated by sqrt(n / (n - 1)), so two seeds do not halve
    the variance), otherwise parametric (fitted quadratic + normal noise with the family's pooled residual sd).
    Each resample is refitted to its own vertex (closed form).
Approach 3 (per family; Hoffmann et al. 2022, Besiroglu et al. 2024, Czech et al. 2026)
    ln L = logsumexp(e, a - alpha u, b - beta v), u = ln(N / N_s), v = ln(D / D_s) (rescaled so a, b are O(1)),
    minimising sum Huber_delta(ln y - ln L) / delta^2 with delta = 1e-3 (the 1/delta^2 scale keeps L-BFGS-B from
    stopping at its first iterate, the failure Besiroglu et al. found in the published fit). Starts: variable
    projection (for fixed alpha, beta the model is linear in E, A, B; relative residuals make each grid point a
    3 x 3 weighted least-squares problem) plus a Chinchilla-style grid, refined by Levenberg-Marquardt on the
    exact Huber objective (vectorised), then L-BFGS-B with an analytic gradient and gtol 1e-12 from the best
    five. Bootstrap: rows resampled within each (family, budget) as multiplicity weights, every resample
    refitted from its own variable-projection starts and the full-data optimum. Frontier N*(C): minimise
    L(N, C / F(N)) over ln N (dense grid, then a parabolic step; Brent for the point estimate).
Comparison (two families a / b, default EBT / Transformer++)
    Compute multiplier m(L) = C_a(L) / C_b(L) at the loss family b reaches at each budget: from the approach-2
    vertex frontiers where the loss lies inside both families' measured vertex range, from the approach-3
    frontiers elsewhere (marked ``extrapolated``). The frontier exponent difference (effective
    gamma = -d ln(L* - E) / d ln C over the measured budgets, from approach 3) with a verdict only when its 95%
    interval excludes 0. The crossover budget where m = 1 (the two approach-3 frontiers meet), searched from
    1/1000 of the smallest to 10^6 times the largest budget, else "never in range".

Everything is numpy/scipy; no torch, ray or database import.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import optimize

from ebt_scaling.errors import FitError

LABELS = {"transformer_pp": "Transformer++", "ebt": "EBT"}
PAIR_DEFAULT = ("ebt", "transformer_pp")
MIN_SIZES = 5
OFF_BUDGET = 0.02
DISAGREE = 2.0
NARROW = 0.5  # a bootstrap interval narrower than this share of the re-simulated one fires ``narrow_interval``
Z95 = (2.5, 97.5)

# parameter bounds of approach 3: theta = [e, a, b, alpha, beta]
LO = np.array([-20.0, -40.0, -40.0, 1e-4, 1e-4])
HI = np.array([6.0, 60.0, 60.0, 3.0, 3.0])


# ---------------------------------------------------------------------------------------------------------
# Input
# ---------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class IsoRow:
    """One training run: its family, seed, non-embedding parameters N, training tokens D, training FLOPs C and
    final validation loss (nats)."""

    family: str
    seed: int
    params: float
    tokens: float
    flops: float
    loss: float


def rows_from_arrays(family: Sequence[str], seed: Sequence[int], params: Sequence[float],
                     tokens: Sequence[float], flops: Sequence[float], loss: Sequence[float]) -> list[IsoRow]:
    cols: list[list[Any]] = [list(family), list(seed), list(params), list(tokens), list(flops), list(loss)]
    if len({len(c) for c in cols}) != 1:
        raise FitError("isoflop rows: family, seed, params, tokens, flops and loss must have the same length; "
                       f"got {[len(c) for c in cols]}")
    return [IsoRow(str(f), int(s), float(n), float(d), float(c), float(y))
            for f, s, n, d, c, y in zip(*cols, strict=True)]


def _coerce(rows: Iterable[IsoRow | Mapping[str, Any]]) -> list[IsoRow]:
    out = []
    for i, r in enumerate(rows):
        if isinstance(r, IsoRow):
            out.append(r)
            continue
        try:
            loss = r["loss"] if "loss" in r else r["val_loss"]
            out.append(IsoRow(str(r["family"]), int(r.get("seed", 0)), float(r["params"]), float(r["tokens"]),
                              float(r["flops"]), float(loss)))
        except (KeyError, TypeError, ValueError) as exc:
            raise FitError(f"isoflop row {i}: {exc!r}; give family, seed, params, tokens, flops and loss") from None
    return out


@dataclass(frozen=True)
class Table:
    """Validated columns of one family's rows, with their budget index."""

    family: str
    seed: np.ndarray
    lnN: np.ndarray
    lnD: np.ndarray
    lnC: np.ndarray
    y: np.ndarray
    budget: np.ndarray  # index into budgets
    budgets: np.ndarray  # nominal budgets (all families), FLOPs

    @property
    def n(self) -> int:
        return int(self.y.size)


def _check_rows(rows: list[IsoRow]) -> None:
    if not rows:
        raise FitError("isoflop fit: no rows; import or run an isoflop sweep first")
    for i, r in enumerate(rows):
        for name in ("params", "tokens", "flops", "loss"):
            v = getattr(r, name)
            if not math.isfinite(v):
                raise FitError(f"isoflop row {i} ({r.family}, seed {r.seed}): {name} is {v}; drop the run or "
                               "rerun it (a diverged run has no final loss)")
            if v <= 0:
                raise FitError(f"isoflop row {i} ({r.family}, seed {r.seed}): {name} must be > 0, got {v}")


def group_budgets(flops: np.ndarray, tol: float = 0.05, budgets: Sequence[float] | None = None
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Budget index of each row and the nominal budgets. Given ``budgets``: the nearest one in log (a row more
    than ``tol`` away is an error). Otherwise rows sorted by C start a new budget when C exceeds the first C of
    the current one by more than ``tol``; the nominal budget is the group's median C."""
    lnC = np.log(flops)
    if budgets is not None:
        nb = np.sort(np.asarray(budgets, dtype=float))
        if not (nb > 0).all():
            raise FitError("isoflop budgets must be > 0")
        d = np.abs(lnC[:, None] - np.log(nb)[None, :])
        idx = d.argmin(axis=1)
        far = d[np.arange(lnC.size), idx] > math.log1p(tol)
        if far.any():
            i = int(np.flatnonzero(far)[0])
            raise FitError(f"isoflop row {i}: flops {flops[i]:.4g} is more than {tol:.0%} from every budget "
                           f"({', '.join(f'{b:.3g}' for b in nb)}); add its budget or drop the row")
        return idx, nb
    order = np.argsort(lnC)
    idx = np.empty(lnC.size, dtype=int)
    groups: list[list[int]] = []
    start = -np.inf
    for i in order:
        if lnC[i] - start > math.log1p(tol):
            groups.append([])
            start = lnC[i]
        groups[-1].append(int(i))
        idx[i] = len(groups) - 1
    nominal = np.array([float(np.median(flops[g])) for g in groups])
    return idx, nominal


def make_tables(rows: Iterable[IsoRow | Mapping[str, Any]], budget_tol: float = 0.05,
                budgets: Sequence[float] | None = None) -> dict[str, Table]:
    rs = _coerce(rows)
    _check_rows(rs)
    C = np.array([r.flops for r in rs])
    bidx, nominal = group_budgets(C, budget_tol, budgets)
    out: dict[str, Table] = {}
    for fam in dict.fromkeys(r.family for r in rs):
        ix = np.array([i for i, r in enumerate(rs) if r.family == fam])
        out[fam] = Table(fam, np.array([rs[i].seed for i in ix]), np.log([rs[i].params for i in ix]),
                         np.log([rs[i].tokens for i in ix]), np.log(C[ix]), np.array([rs[i].loss for i in ix]),
                         bidx[ix], nominal)
    return out


# ---------------------------------------------------------------------------------------------------------
# F(N): the family's FLOPs per token, interpolated log-linearly between its sizes
# ---------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PerToken:
    """ln F as a piecewise-linear function of ln N through the family's sizes, extended linearly past the ends
    (with one size, F proportional to N)."""

    lnN: np.ndarray
    lnF: np.ndarray

    @classmethod
    def from_table(cls, t: Table) -> PerToken:
        lnF = t.lnC - t.lnD
        xs = np.unique(np.round(t.lnN, 12))
        ys = np.array([lnF[np.abs(t.lnN - x) < 1e-9].mean() for x in xs])
        return cls(xs, ys)

    @classmethod
    def from_points(cls, N: Sequence[float], F: Sequence[float]) -> PerToken:
        lnN, lnF = np.log(np.asarray(N, float)), np.log(np.asarray(F, float))
        o = np.argsort(lnN)
        return cls(lnN[o], lnF[o])

    def __call__(self, lnN: np.ndarray | float) -> np.ndarray:
        x = np.asarray(lnN, dtype=float)
        if self.lnN.size == 1:
            return self.lnF[0] + (x - self.lnN[0])
        out = np.interp(x, self.lnN, self.lnF)
        s0 = (self.lnF[1] - self.lnF[0]) / (self.lnN[1] - self.lnN[0])
        s1 = (self.lnF[-1] - self.lnF[-2]) / (self.lnN[-1] - self.lnN[-2])
        out = np.where(x < self.lnN[0], self.lnF[0] + s0 * (x - self.lnN[0]), out)
        return np.where(x > self.lnN[-1], self.lnF[-1] + s1 * (x - self.lnN[-1]), out)


# ---------------------------------------------------------------------------------------------------------
# Small helpers
# ---------------------------------------------------------------------------------------------------------


def _ci(draws: np.ndarray, axis: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Percentile 95% interval over finite draws (NaN where fewer than 20 finite draws)."""
    d = np.asarray(draws, dtype=float)
    with np.errstate(all="ignore"):
        lo = np.nanpercentile(np.where(np.isfinite(d), d, np.nan), Z95[0], axis=axis) if d.size else np.nan
        hi = np.nanpercentile(np.where(np.isfinite(d), d, np.nan), Z95[1], axis=axis) if d.size else np.nan
    few = np.isfinite(d).sum(axis=axis) < 20
    return np.where(few, np.nan, lo), np.where(few, np.nan, hi)


def _ci1(draws: np.ndarray) -> tuple[float, float]:
    d = np.asarray(draws, dtype=float).reshape(-1)
    if np.isfinite(d).sum() < 20:
        return float("nan"), float("nan")
    lo, hi = _ci(d)
    return float(lo), float(hi)


def _jf(v: Any) -> Any:
    """JSON-safe: floats stay floats, NaN/inf become None; tuples become lists; dataclasses recurse."""
    if isinstance(v, (float, np.floating)):
        return float(v) if math.isfinite(float(v)) else None
    if isinstance(v, (np.integer,)):
        return int(v)
    if isinstance(v, (bool, np.bool_)):
        return bool(v)
    if isinstance(v, np.ndarray):
        return [_jf(x) for x in v.tolist()]
    if isinstance(v, (list, tuple)):
        return [_jf(x) for x in v]
    if isinstance(v, dict):
        return {str(k): _jf(x) for k, x in v.items()}
    if hasattr(v, "to_json"):
        return v.to_json()
    return v


def _guard(code: str, family: str | None, message: str, budget: float | None = None) -> dict[str, Any]:
    return {"code": code, "family": family, "budget": budget, "message": message}


def _who(f: str) -> str:
    return LABELS.get(f, f)


# ---------------------------------------------------------------------------------------------------------
# Approach 2
# ---------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BudgetFit:
    family: str
    budget: float  # nominal C
    n_sizes: int
    n_rows: int
    coef: tuple[float, float, float]  # loss = c0 + c1 x + c2 x^2, x = ln N - centre
    centre: float  # mean of the window's distinct ln N
    window: tuple[float, float]  # smallest and largest N
    n_star: float
    n_star_ci: tuple[float, float]
    l_star: float
    l_star_ci: tuple[float, float]
    d_star: float
    d_star_ci: tuple[float, float]
    no_vertex_frac: float  # share of resamples with c2 <= 0

    def to_json(self) -> dict[str, Any]:
        return _jf(self.__dict__)


@dataclass(frozen=True)
class Approach2:
    family: str
    budgets: tuple[BudgetFit, ...]
    a_N: float  # slope of ln N* on ln C
    a_N_ci: tuple[float, float]
    a_D: float
    a_D_ci: tuple[float, float]
    frontier: dict[str, float]  # E, A (C in FLOPs), gamma, C_ref
    frontier_ci: dict[str, tuple[float, float]]
    resample_kind: str  # "seeds" | "parametric" | "mixed"
    draws: dict[str, np.ndarray] = field(repr=False, compare=False, default_factory=dict)

    def loss_at(self, C: np.ndarray | float) -> np.ndarray:
        f = self.frontier
        return f["E"] + f["A_ref"] * (np.asarray(C, float) / f["C_ref"]) ** -f["gamma"]

    def to_json(self) -> dict[str, Any]:
        d = {k: v for k, v in self.__dict__.items() if k != "draws"}
        return _jf(d)


def _frontier_fit(lnC: np.ndarray, L: np.ndarray, gammas: np.ndarray | None = None,
                  refine: bool = True) -> np.ndarray:
    """E + A' (C / C_ref)^-gamma by least squares on L for every row of L (B, K): (B, 3) = [E, A', gamma].
    Variable projection over a gamma grid with E >= 0 and A' > 0; a parabolic step between grid points."""
    L = np.atleast_2d(L)
    B, K = L.shape
    out = np.full((B, 3), np.nan)
    if K < 3:
        return out
    g = np.arange(0.005, 2.0, 0.005) if gammas is None else gammas
    lc = lnC - lnC.mean()
    T = np.exp(-np.outer(g, lc))  # (G, K)
    ok = np.isfinite(L).all(axis=1)
    Lo = np.where(ok[:, None], L, 0.0)
    St, Stt = T.sum(1), (T * T).sum(1)
    Sy, Sty = Lo.sum(1), Lo @ T.T  # (B,), (B, G)
    det = K * Stt - St * St
    with np.errstate(all="ignore"):
        A = (K * Sty - St * Sy[:, None]) / det
        E = (Sy[:, None] - A * St) / K
        neg = E < 0
        A = np.where(neg, Sty / Stt, A)
        E = np.where(neg, 0.0, E)
        pred = E[:, :, None] + A[:, :, None] * T[None, :, :]
        rss = ((Lo[:, None, :] - pred) ** 2).sum(-1)
        rss = np.where(A > 0, rss, np.inf)
    j = np.argmin(rss, axis=1)
    rows = np.arange(B)
    gam = g[j].astype(float)
    if refine:
        inner = (j > 0) & (j < g.size - 1)
        jj = np.clip(j, 1, g.size - 2)
        r0, r1, r2 = rss[rows, jj - 1], rss[rows, jj], rss[rows, jj + 1]
        with np.errstate(all="ignore"):
            den = r0 - 2 * r1 + r2
            step = np.where(inner & np.isfinite(den) & (den > 0), 0.5 * (r0 - r2) / den, 0.0)
        gam = g[jj] + np.clip(step, -1, 1) * (g[1] - g[0])
        gam = np.where(inner, gam, g[j])
    Tg = np.exp(-gam[:, None] * lc[None, :])
    with np.errstate(all="ignore"):
        St, Stt = Tg.sum(1), (Tg * Tg).sum(1)
        Sty = (Lo * Tg).sum(1)
        A = (K * Sty - St * Sy) / (K * Stt - St * St)
        E = (Sy - A * St) / K
        neg = E < 0
        A = np.where(neg, Sty / Stt, A)
        E = np.where(neg, 0.0, E)
    good = ok & np.isfinite(rss[rows, j]) & (A > 0)
    out[good] = np.column_stack([E, A, gam])[good]
    return out


def _budget_design(t: Table, k: int) -> tuple[np.ndarray, np.ndarray, float]:
    ix = np.flatnonzero(t.budget == k)
    sizes = np.unique(np.round(t.lnN[ix], 9))
    return ix, sizes, float(sizes.mean())


def approach2(tables: Mapping[str, Table], F: Mapping[str, PerToken] | None = None, resamples: int = 2000,
              seed: int = 0, min_sizes: int = MIN_SIZES) -> tuple[dict[str, Approach2], list[dict[str, Any]]]:
    """Approach 2 for every family in ``tables``: (fits by family, guards)."""
    rng = np.random.default_rng(seed)
    fits: dict[str, Approach2] = {}
    guards: list[dict[str, Any]] = []
    B = max(int(resamples), 0)
    for fam, t in tables.items():
        Fi = (F or {}).get(fam) or PerToken.from_table(t)
        who = _who(fam)
        # pass 1: point fits, residual variance pooled over budgets
        per: list[dict[str, Any]] = []
        rss_tot, df_tot = 0.0, 0
        for k in np.unique(t.budget):
            ix, sizes, xc = _budget_design(t, int(k))
            C = float(t.budgets[k])
            if sizes.size < 3:
                guards.append(_guard("few_sizes", fam, f"{who}: budget {C:.3g} FLOPs has {sizes.size} size(s) "
                                     f"({ix.size} run(s)); a parabola needs at least 3 and a reliable vertex "
                                     f"{min_sizes}: this budget is left out of approach 2", C))
                continue
            if sizes.size < min_sizes:
                guards.append(_guard("few_sizes", fam, f"{who}: budget {C:.3g} FLOPs has {sizes.size} sizes; "
                                     f"fewer than {min_sizes} leave the vertex poorly determined - add sizes", C))
            x = t.lnN[ix] - xc
            X = np.column_stack([np.ones(ix.size), x, x * x])
            P = np.linalg.pinv(X)
            coef = P @ t.y[ix]
            res = t.y[ix] - X @ coef
            rss_tot += float(res @ res)
            df_tot += ix.size - 3
            cells = [ix[np.abs(t.lnN[ix] - s) < 1e-8] for s in sizes]
            per.append({"k": int(k), "C": C, "ix": ix, "x": x, "X": X, "P": P, "coef": coef, "sizes": sizes,
                        "xc": xc, "cells": cells})
        sd = math.sqrt(rss_tot / df_tot) if df_tot > 0 else 0.0
        kinds = set()
        bfits: list[BudgetFit] = []
        vert_lnN, vert_L = [], []
        dr_lnN, dr_L = [], []
        for p in per:
            ix, X, P, coef, cells = p["ix"], p["X"], p["P"], p["coef"], p["cells"]
            seeded = all(c.size >= 2 for c in cells)
            if B:
                if seeded:
                    kinds.add("seeds")
                    Y = np.empty((B, ix.size))
                    pos = {int(i): j for j, i in enumerate(ix)}
                    for c in cells:
                        yc = t.y[c]
                        m = yc.mean()
                        adj = m + math.sqrt(c.size / (c.size - 1)) * (yc - m)
                        pick = rng.integers(0, c.size, size=(B, c.size))
                        cols = [pos[int(i)] for i in c]
                        Y[:, cols] = adj[pick]
                else:
                    kinds.add("parametric")
                    Y = (X @ coef)[None, :] + rng.normal(0.0, sd, size=(B, ix.size))
                cb = Y @ P.T  # (B, 3)
            else:
                cb = np.zeros((0, 3))
            xs, ls = _vertex(coef[None, :])
            xb, lb = _vertex(cb)
            lnNs = xs[0] + p["xc"]
            lnNb = xb + p["xc"]
            C = p["C"]
            lnC = math.log(C)
            n_star = math.exp(lnNs) if np.isfinite(lnNs) else float("nan")
            d_star = math.exp(lnC - float(Fi(lnNs))) if np.isfinite(lnNs) else float("nan")
            with np.errstate(all="ignore"):
                dstar_b = np.exp(lnC - Fi(np.where(np.isfinite(lnNb), lnNb, 0.0)))
            dstar_b = np.where(np.isfinite(lnNb), dstar_b, np.nan)
            c3 = (float(coef[0]), float(coef[1]), float(coef[2]))
            bf = BudgetFit(fam, C, int(p["sizes"].size), int(ix.size), c3, p["xc"],
                           (float(np.exp(p["sizes"][0])), float(np.exp(p["sizes"][-1]))), n_star,
                           _ci1(np.exp(lnNb)), float(ls[0]), _ci1(lb), d_star, _ci1(dstar_b),
                           float(np.mean(~np.isfinite(xb))) if B else float("nan"))
            bfits.append(bf)
            vert_lnN.append(lnNs)
            vert_L.append(float(ls[0]))
            dr_lnN.append(lnNb)
            dr_L.append(lb)
            guards.extend(_profile_guards(t, p, bf, sd))
        bfits_t = tuple(bfits)
        lnCk = np.log([b.budget for b in bfits])
        vN = np.array(vert_lnN)
        vL = np.array(vert_L)
        dN = np.column_stack(dr_lnN) if dr_lnN and B else np.zeros((B, len(bfits)))
        dL = np.column_stack(dr_L) if dr_L and B else np.zeros((B, len(bfits)))
        dD = lnCk[None, :] - Fi(np.where(np.isfinite(dN), dN, 0.0)) if bfits else dN
        dD = np.where(np.isfinite(dN), dD, np.nan)
        aN, aD = _slopes(lnCk, vN[None, :])[0], _slopes(lnCk, (lnCk - Fi(vN))[None, :])[0]
        aNb, aDb = _slopes(lnCk, dN), _slopes(lnCk, dD)
        fr = _frontier_fit(lnCk, vL[None, :])[0] if bfits else np.full(3, np.nan)
        frb = _frontier_fit(lnCk, dL, gammas=np.arange(0.01, 2.0, 0.01)) if (bfits and B) else np.full((0, 3), np.nan)
        Cref = float(np.exp(lnCk.mean())) if bfits else float("nan")
        frontier = {"E": float(fr[0]), "A_ref": float(fr[1]), "gamma": float(fr[2]), "C_ref": Cref,
                    "A": float(fr[1] * Cref ** fr[2]) if np.isfinite(fr).all() else float("nan")}
        frontier_ci = {"E": _ci1(frb[:, 0]), "gamma": _ci1(frb[:, 2])}
        if len(bfits) == 3:
            # Three vertices, three parameters (E, A, gamma): the curve passes through every point, so a resample
            # moves it anywhere the E >= 0 bound allows and the percentile interval need not even hold the estimate.
            guards.append(_guard("frontier_exact", fam, f"{who}: the approach-2 frontier E + A C^-gamma has as many "
                                 "parameters as budgets (3): it is fitted exactly and its interval is not a confidence "
                                 "statement (gamma " + f"{fr[2]:.3g}, bootstrap [{frontier_ci['gamma'][0]:.3g}, "
                                 f"{frontier_ci['gamma'][1]:.3g}]); add budgets, or read approach 3's exponent"))
        kind = "mixed" if len(kinds) > 1 else (kinds.pop() if kinds else "none")
        fits[fam] = Approach2(fam, bfits_t, float(aN), _ci1(aNb), float(aD), _ci1(aDb), frontier, frontier_ci,
                              kind, {"lnC": lnCk, "lnN": dN, "lnL": np.log(np.clip(dL, 1e-300, None)),
                                     "L": dL, "frontier": frb})
    return fits, guards


def _vertex(coef: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    c0, c1, c2 = coef[:, 0], coef[:, 1], coef[:, 2]
    with np.errstate(all="ignore"):
        x = np.where(c2 > 0, -c1 / (2 * c2), np.nan)
        L = c0 + c1 * x + c2 * x * x
    return x, L


def _slopes(x: np.ndarray, Y: np.ndarray) -> np.ndarray:
    """OLS slope of every row of Y on x (NaN where a row has a NaN or x has < 2 points)."""
    Y = np.atleast_2d(Y)
    if x.size < 2:
        return np.full(Y.shape[0], np.nan)
    xc = x - x.mean()
    return (Y - Y.mean(axis=1, keepdims=True)) @ xc / (xc @ xc)


def _profile_guards(t: Table, p: dict[str, Any], bf: BudgetFit, sd: float) -> list[dict[str, Any]]:
    out = []
    fam, C = t.family, bf.budget
    who = _who(fam)
    sizes = p["sizes"]
    means = np.array([t.y[c].mean() for c in p["cells"]])
    j = int(np.argmin(means))
    lo, hi = sizes[0], sizes[-1]
    lnNs = math.log(bf.n_star) if np.isfinite(bf.n_star) else float("nan")
    c2 = bf.coef[2]
    X = p["X"]
    se_c2 = sd * math.sqrt(float(np.linalg.pinv(X.T @ X)[2, 2])) if sd > 0 else 0.0
    if not c2 > 2 * se_c2 or not np.isfinite(lnNs):
        out.append(_guard("flat_profile", fam, f"{who}: at budget {C:.3g} FLOPs the loss profile in ln N is flat or "
                          f"curves the wrong way (curvature {c2:.3g}, standard error {se_c2:.2g}): the vertex is not "
                          "determined - widen the window or add seeds", C))
    if j in (0, sizes.size - 1) or (np.isfinite(lnNs) and not lo < lnNs < hi):
        side = "smallest" if (j == 0 or (np.isfinite(lnNs) and lnNs <= lo)) else "largest"
        out.append(_guard("edge_minimum", fam, f"{who}: at budget {C:.3g} FLOPs the minimum sits at the window's "
                          f"{side} size ({math.exp(sizes[j]):.3g} params): the optimum may lie outside the window - "
                          "extend the window (--extend-edges) on that side", C))
    elif np.isfinite(lnNs):
        half = 0.5 * (hi - lo)
        off = (lnNs - 0.5 * (hi + lo)) / half if half > 0 else 0.0
        rise_lo = float(np.polyval(bf.coef[::-1], lo - p["xc"]) - bf.l_star)
        rise_hi = float(np.polyval(bf.coef[::-1], hi - p["xc"]) - bf.l_star)
        # measured asymmetry: the observed rises at the two ends of the window against the parabola's
        obs_lo, obs_hi = means[0] - means[j], means[-1] - means[j]
        ratio = (max(obs_lo, obs_hi) / max(min(obs_lo, obs_hi), 1e-12)) if min(obs_lo, obs_hi) > 0 else np.inf
        if abs(off) > 0.5 or (ratio > 4.0 and max(obs_lo, obs_hi) > 4 * sd):
            out.append(_guard("asymmetric_profile", fam, f"{who}: at budget {C:.3g} FLOPs the profile is off-centre "
                              f"or asymmetric (vertex at {off:+.2f} of the half-window; rises at the ends "
                              f"{obs_lo:.3f} / {obs_hi:.3f} nats, parabola {rise_lo:.3f} / {rise_hi:.3f}): a "
                              "parabola's vertex is biased here (Czech et al. 2026) - recentre the window", C))
    lnC_rows = t.lnC[p["ix"]]
    off_b = np.abs(np.expm1(lnC_rows - math.log(C)))
    if (off_b > OFF_BUDGET).any():
        out.append(_guard("off_budget", fam, f"{who}: {int((off_b > OFF_BUDGET).sum())} run(s) at budget {C:.3g} "
                          f"FLOPs realised up to {off_b.max():.1%} off the budget (limit {OFF_BUDGET:.0%}): their "
                          "losses are not on one IsoFLOP slice - fix the step counts", C))
    return out


# ---------------------------------------------------------------------------------------------------------
# Approach 3
# ---------------------------------------------------------------------------------------------------------


def huber(r: np.ndarray, delta: float) -> np.ndarray:
    a = np.abs(r)
    return np.where(a <= delta, 0.5 * r * r, delta * (a - 0.5 * delta)) / delta**2


def model_log(theta: np.ndarray, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """ln L for parameter rows theta (B, 5) at points (u, v) of shape (n,) or (B, n): (B, n)."""
    e, a, b, al, be = (theta[:, i:i + 1] for i in range(5))
    return np.logaddexp(np.logaddexp(e, a - al * u), b - be * v)


def _resid_jac(theta: np.ndarray, logy: np.ndarray, u: np.ndarray, v: np.ndarray
               ) -> tuple[np.ndarray, np.ndarray]:
    e, a, b, al, be = (theta[:, i:i + 1] for i in range(5))
    t1, t2 = a - al * u, b - be * v
    m = np.logaddexp(np.logaddexp(e, t1), t2)
    s0, s1, s2 = np.exp(e - m), np.exp(t1 - m), np.exp(t2 - m)
    J = np.stack([-s0, -s1, -s2, u * s1, v * s2], axis=-1)  # dr/dtheta, r = logy - m
    return logy - m, J


def _objective(r: np.ndarray, w: np.ndarray, delta: float) -> np.ndarray:
    return (w * huber(r, delta)).sum(axis=-1)


def lm_refine(theta0: np.ndarray, logy: np.ndarray, w: np.ndarray, u: np.ndarray, v: np.ndarray, delta: float,
              max_iter: int = 100, tol: float = 1e-10) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Levenberg-Marquardt / IRLS on sum w_i Huber(r_i) / delta^2 for B parameter rows at once.

    theta0 (B, 5); logy, w (B, n) (w: bootstrap multiplicities). Returns theta, objective, converged."""
    theta = np.clip(theta0.astype(float), LO, HI)
    r, J = _resid_jac(theta, logy, u, v)
    F = _objective(r, w, delta)
    lam = np.full(theta.shape[0], 1e-3)
    eye = np.eye(5)
    active = np.ones(theta.shape[0], dtype=bool)
    for _ in range(max_iter):
        if not active.any():
            break
        ix = np.flatnonzero(active)
        ra, Ja, wa = r[ix], J[ix], w[ix]
        absr = np.abs(ra)
        ww = wa * np.where(absr <= delta, 1.0, delta / np.maximum(absr, 1e-300))
        JW = Ja * ww[:, :, None]
        H = JW.transpose(0, 2, 1) @ Ja
        g = np.einsum("bnp,bn->bp", JW, ra)
        diag = np.einsum("bpp->bp", H)
        A = H + lam[ix, None, None] * (diag[:, :, None] * eye + 1e-12 * eye)
        th = theta[ix]
        held = ((th <= LO) & (g > 0)) | ((th >= HI) & (g < 0))
        if held.any():
            A = np.where(held[:, :, None] | held[:, None, :], 0.0, A) + held[:, :, None] * eye
            g = np.where(held, 0.0, g)
        try:
            step = -np.linalg.solve(A, g[:, :, None])[:, :, 0]
        except np.linalg.LinAlgError:
            step = np.stack([-np.linalg.lstsq(A[i], g[i], rcond=None)[0] for i in range(ix.size)])
        new = np.clip(th + step, LO, HI)
        r_new, J_new = _resid_jac(new, logy[ix], u, v)
        F_new = _objective(r_new, wa, delta)
        ok = F_new < F[ix]
        acc = ix[ok]
        moved = np.abs(new[ok] - theta[acc]).max(axis=1) if acc.size else np.zeros(0)
        rel = (F[acc] - F_new[ok]) / np.maximum(F[acc], 1e-300)
        theta[acc], r[acc], J[acc], F[acc] = new[ok], r_new[ok], J_new[ok], F_new[ok]
        lam[acc] = np.maximum(lam[acc] / 3.0, 1e-12)
        rej = ix[~ok]
        lam[rej] *= 4.0
        done = np.zeros(theta.shape[0], dtype=bool)
        done[acc[(moved < tol) | (rel < 1e-14)]] = True
        done[rej[lam[rej] > 1e12]] = True
        active &= ~done
    return theta, F, ~active


def vp_starts(u: np.ndarray, v: np.ndarray, Y: np.ndarray, W: np.ndarray, alphas: np.ndarray,
              betas: np.ndarray, top: int = 3) -> np.ndarray:
    """Variable projection: for every (alpha, beta) on the grid, weighted least squares of y on
    [1, e^(-alpha u), e^(-beta v)] with weights W / y^2 (relative residuals ~ log residuals). Y, W (B, n).
    Returns the ``top`` best valid (E >= 0 clipped, A, B > 0) starts per row as theta (B, top, 5)."""
    Bn = Y.shape[0]
    X = np.exp(-np.outer(alphas, u))  # (nA, n)
    Z = np.exp(-np.outer(betas, v))  # (nB, n)
    w = W / (Y * Y)
    wy = w * Y
    s1, sy, syy = w.sum(1), wy.sum(1), (wy * Y).sum(1)
    sx, sxx, sxy = w @ X.T, w @ (X * X).T, wy @ X.T  # (B, nA)
    sz, szz, szy = w @ Z.T, w @ (Z * Z).T, wy @ Z.T  # (B, nB)
    sxz = np.einsum("bn,an,cn->bac", w, X, Z)  # (B, nA, nB)
    nA, nB = alphas.size, betas.size
    M = np.empty((Bn, nA, nB, 3, 3))
    M[..., 0, 0] = s1[:, None, None]
    M[..., 0, 1] = M[..., 1, 0] = sx[:, :, None]
    M[..., 0, 2] = M[..., 2, 0] = sz[:, None, :]
    M[..., 1, 1] = sxx[:, :, None]
    M[..., 2, 2] = szz[:, None, :]
    M[..., 1, 2] = M[..., 2, 1] = sxz
    rhs = np.empty((Bn, nA, nB, 3))
    rhs[..., 0] = sy[:, None, None]
    rhs[..., 1] = sxy[:, :, None]
    rhs[..., 2] = szy[:, None, :]
    M = M + 1e-12 * np.eye(3) * np.maximum(np.abs(M).max(axis=(-1, -2), keepdims=True), 1e-300)
    with np.errstate(all="ignore"):
        sol = np.linalg.solve(M, rhs[..., None])[..., 0]
        rss = syy[:, None, None] - (sol * rhs).sum(-1)
    E, A, Bc = sol[..., 0], sol[..., 1], sol[..., 2]
    bad = ~((A > 0) & (Bc > 0) & np.isfinite(rss))
    rss = np.where(bad, np.inf, rss) + np.where(E < 0, np.abs(E) * 1e-6 * s1[:, None, None], 0.0)
    flat = rss.reshape(Bn, -1)
    top = min(top, flat.shape[1])
    order = np.argsort(flat, axis=1)[:, :top]
    ia, ib = np.unravel_index(order, (nA, nB))
    rows = np.arange(Bn)[:, None]
    ymin = np.nanmin(Y, axis=1)[:, None]
    Ef = E.reshape(Bn, -1)[rows, order]
    th = np.empty((Bn, top, 5))
    th[..., 0] = np.log(np.clip(Ef, 0.05 * ymin, None))
    th[..., 1] = np.log(np.clip(A.reshape(Bn, -1)[rows, order], 1e-12, None))
    th[..., 2] = np.log(np.clip(Bc.reshape(Bn, -1)[rows, order], 1e-12, None))
    th[..., 3] = alphas[ia]
    th[..., 4] = betas[ib]
    invalid = ~np.isfinite(flat[rows, order])
    th[invalid] = np.array([math.log(0.5) + 0.0, 0.0, 0.0, 0.5, 0.5])
    return th


def chinchilla_starts() -> np.ndarray:
    """A Chinchilla-style grid of starts in the rescaled units (alpha, beta 0.1..1.5; e -1..1; a, b -1..3)."""
    g = [(e, a, b, al, be) for al in (0.1, 0.5, 1.0, 1.5) for be in (0.1, 0.5, 1.0, 1.5)
         for e in (-1.0, 0.0, 1.0) for a in (-1.0, 1.0, 3.0) for b in (-1.0, 1.0, 3.0)]
    return np.array(g, dtype=float)


def polish(theta0: np.ndarray, logy: np.ndarray, u: np.ndarray, v: np.ndarray, delta: float,
           w: np.ndarray | None = None) -> tuple[float, np.ndarray, bool]:
    """L-BFGS-B with the analytic gradient and tight tolerances: (objective, theta, stationary), where stationary
    means a projected gradient below 1e-3 times max(1, objective)."""
    ww = np.ones_like(logy) if w is None else w

    def fun(th: np.ndarray) -> tuple[float, np.ndarray]:
        r, J = _resid_jac(th[None, :], logy[None, :], u, v)
        psi = np.clip(r[0], -delta, delta) * ww / delta**2
        return float(_objective(r, ww[None, :], delta)[0]), J[0].T @ psi

    res = optimize.minimize(fun, theta0, jac=True, method="L-BFGS-B", bounds=list(zip(LO, HI, strict=True)),
                            options={"gtol": 1e-12, "ftol": 1e-15, "maxiter": 20000, "maxfun": 40000})
    g = fun(res.x)[1]
    g = np.where(((res.x <= LO) & (g > 0)) | ((res.x >= HI) & (g < 0)), 0.0, g)
    # stationary: projected gradient small against the objective's own scale (units of delta^2; a sum over rows)
    return float(res.fun), res.x, bool(np.abs(g).max() < 1e-3 * max(1.0, float(res.fun)))


@dataclass(frozen=True)
class Law:
    """L(N, D) = E + A N^-alpha + B D^-beta in the original units (N parameters, D tokens)."""

    E: float
    A: float
    B: float
    alpha: float
    beta: float

    def loss(self, N: np.ndarray | float, D: np.ndarray | float) -> np.ndarray:
        lnN, lnD = np.log(N), np.log(D)
        return np.exp(np.logaddexp(np.logaddexp(math.log(self.E) if self.E > 0 else -np.inf,
                                                math.log(self.A) - self.alpha * lnN),
                                   math.log(self.B) - self.beta * lnD))

    def to_json(self) -> dict[str, Any]:
        return _jf(self.__dict__)


def _theta_to_law(theta: np.ndarray, lnNs: float, lnDs: float) -> np.ndarray:
    """Rescaled theta (B, 5) -> [E, A, B, alpha, beta] in original units (A, B may overflow to inf)."""
    with np.errstate(over="ignore"):
        return np.column_stack([np.exp(theta[:, 0]), np.exp(theta[:, 1] + theta[:, 3] * lnNs),
                                np.exp(theta[:, 2] + theta[:, 4] * lnDs), theta[:, 3], theta[:, 4]])


def frontier(theta: np.ndarray, lnC: np.ndarray, Fi: PerToken, lnNs: float, lnDs: float,
             grid: tuple[float, float], step: float = 0.02) -> tuple[np.ndarray, np.ndarray]:
    """Compute-optimal ln N* and ln L* for every parameter row (B, 5) at every ln C (K,): (B, K) each.
    Coarse ln N grid over ``grid`` (step 0.2), then a fine grid (``step``) of +-0.3 around the coarse minimum and
    a parabolic step; NaN where the minimum is at the coarse grid's edge."""
    coarse = 0.2
    g = np.arange(grid[0], grid[1] + coarse, coarse)
    Bn, K = theta.shape[0], lnC.size
    e, a, b, al, be = (theta[:, i][:, None, None] for i in range(5))

    def logL(x: np.ndarray) -> np.ndarray:  # x (B or 1, K or 1, G) ln N
        return np.logaddexp(np.logaddexp(e, a - al * (x - lnNs)), b - be * (lnC[None, :, None] - Fi(x) - lnDs))

    m = logL(g[None, None, :])  # (B, K, G)
    j = np.argmin(m, axis=2)
    edge = (j == 0) | (j == g.size - 1)
    off = np.arange(-0.3, 0.3 + step / 2, step)
    x = g[j][:, :, None] + off[None, None, :]
    mf = logL(x)
    jf = np.clip(np.argmin(mf, axis=2), 1, off.size - 2)
    bi, ki = np.meshgrid(np.arange(Bn), np.arange(K), indexing="ij")
    m0, m1, m2 = mf[bi, ki, jf - 1], mf[bi, ki, jf], mf[bi, ki, jf + 1]
    den = m0 - 2 * m1 + m2
    with np.errstate(all="ignore"):
        s = np.where(den > 0, 0.5 * (m0 - m2) / den, 0.0)
    s = np.clip(s, -1, 1)
    lnN = x[bi, ki, jf] + s * step
    lnL = m1 - 0.25 * (m0 - m2) * s
    return np.where(edge, np.nan, lnN), np.where(edge, np.nan, lnL)


def frontier_point(theta: np.ndarray, lnC: float, Fi: PerToken, lnNs: float, lnDs: float,
                   grid: tuple[float, float]) -> tuple[float, float]:
    """ln N*, ln L* for one parameter vector at one budget, to ~1e-9 in ln N (Brent after a grid)."""
    n0, _ = frontier(theta[None, :], np.array([lnC]), Fi, lnNs, lnDs, grid)
    x0 = float(n0[0, 0])
    if not np.isfinite(x0):
        return float("nan"), float("nan")

    def f(x: float) -> float:
        return float(model_log(theta[None, :], np.array([x - lnNs]),
                               np.array([lnC - float(Fi(x)) - lnDs]))[0, 0])

    r = optimize.minimize_scalar(f, bounds=(x0 - 0.05, x0 + 0.05), method="bounded",
                                 options={"xatol": 1e-10, "maxiter": 500})
    return float(r.x), float(r.fun)


@dataclass(frozen=True)
class Approach3:
    family: str
    law: Law
    law_ci: dict[str, tuple[float, float]]
    objective: float
    n_rows: int
    n_starts: int
    n_at_best: int
    converged: bool
    gamma: float  # effective frontier exponent over the measured budgets
    gamma_ci: tuple[float, float]
    budgets: tuple[float, ...]
    n_star: tuple[float, ...]
    n_star_ci: tuple[tuple[float, float], ...]
    l_star: tuple[float, ...]
    l_star_ci: tuple[tuple[float, float], ...]
    d_star: tuple[float, ...]
    resid_sd: float  # sd of the log-loss residuals
    boot_unconverged: int
    scales: tuple[float, float]  # N_s, D_s
    theta: np.ndarray = field(repr=False, compare=False, default_factory=lambda: np.zeros(5))
    draws: dict[str, np.ndarray] = field(repr=False, compare=False, default_factory=dict)
    per_token: PerToken | None = field(repr=False, compare=False, default=None)
    grid: tuple[float, float] = (0.0, 0.0)

    def frontier(self, C: Sequence[float] | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """N*(C) and L*(C) of the point estimate (requires the family's F(N))."""
        if self.per_token is None:
            raise FitError("approach 3: no per-token FLOPs F(N) for this family; pass F to fit it")
        lnNs, lnDs = map(math.log, self.scales)
        out = [frontier_point(self.theta, math.log(c), self.per_token, lnNs, lnDs, self.grid)
               for c in np.atleast_1d(C)]
        return np.exp([o[0] for o in out]), np.exp([o[1] for o in out])

    def to_json(self) -> dict[str, Any]:
        d = {k: v for k, v in self.__dict__.items() if k not in ("theta", "draws", "per_token")}
        return _jf(d)


def _strata_weights(strata: np.ndarray, B: int, rng: np.random.Generator) -> np.ndarray:
    """Bootstrap multiplicities (B, n): rows resampled with replacement within each stratum."""
    n = strata.size
    W = np.zeros((B, n))
    rows = np.arange(B)[:, None]
    for s in np.unique(strata):
        ix = np.flatnonzero(strata == s)
        pick = ix[rng.integers(0, ix.size, size=(B, ix.size))]
        np.add.at(W, (np.repeat(rows, ix.size, axis=1), pick), 1.0)
    return W


def _refit_many(theta_full: np.ndarray, u: np.ndarray, v: np.ndarray, Y: np.ndarray, W: np.ndarray,
                delta: float) -> tuple[np.ndarray, np.ndarray]:
    """Refit B data sets (Y, W: (B, n)) each to its own optimum: starts = full-data optimum + the best three
    variable-projection grid points of that data set; LM to convergence; unconverged ones polished.
    Returns theta (B, 5) and the unconverged mask."""
    Bn = Y.shape[0]
    grid = np.arange(0.1, 1.55, 0.1)
    vp = vp_starts(u, v, Y, W, grid, grid, top=3)
    starts = np.concatenate([np.broadcast_to(theta_full, (Bn, 1, 5)), vp], axis=1)
    S = starts.shape[1]
    logy = np.log(np.clip(Y, 1e-300, None))
    th, F, conv = lm_refine(starts.reshape(Bn * S, 5), np.repeat(logy, S, axis=0), np.repeat(W, S, axis=0),
                            u, v, delta, max_iter=100)
    th, F, conv = th.reshape(Bn, S, 5), F.reshape(Bn, S), conv.reshape(Bn, S)
    best = np.argmin(F, axis=1)
    rows = np.arange(Bn)
    theta, Fb, cb = th[rows, best], F[rows, best], conv[rows, best]
    ix = np.flatnonzero(~cb)
    if ix.size:
        theta[ix], Fb[ix], cb[ix] = lm_refine(theta[ix], logy[ix], W[ix], u, v, delta, max_iter=1000)
    for i in np.flatnonzero(~cb)[:50]:  # a few stubborn ones: L-BFGS-B
        Fp, thp, cb[i] = polish(theta[i], logy[i], u, v, delta, W[i])
        if Fp <= Fb[i]:
            theta[i] = thp
    return theta, ~cb


def fit_law(lnN: np.ndarray, lnD: np.ndarray, y: np.ndarray, delta: float = 1e-3
            ) -> tuple[np.ndarray, float, float, float, int, int, bool]:
    """Point estimate of approach 3: (theta, objective, ln N_s, ln D_s, n_starts, n_at_best, converged)."""
    lnNs, lnDs = float(lnN.mean()), float(lnD.mean())
    u, v = lnN - lnNs, lnD - lnDs
    logy = np.log(y)
    grid = np.arange(0.05, 2.0, 0.05)
    vp = vp_starts(u, v, y[None, :], np.ones((1, y.size)), grid, grid, top=10)[0]
    S = np.concatenate([vp, chinchilla_starts()], axis=0)
    W1 = np.ones((S.shape[0], y.size))
    th, F, _ = lm_refine(S, np.broadcast_to(logy, (S.shape[0], y.size)).copy(), W1, u, v, delta, max_iter=300)
    order = np.argsort(F)
    pol = sorted((polish(th[i], logy, u, v, delta) for i in order[:5]), key=lambda p: p[0])
    Fb, tb, ok = pol[0]
    tolF = 1e-6 * max(1.0, abs(Fb)) + 1e-4 * max(1.0, abs(Fb))
    n_at = int(np.sum((F - Fb <= tolF) & (np.abs(th[:, 3:] - tb[3:]).max(axis=1) < 1e-2)))
    return tb, Fb, lnNs, lnDs, int(S.shape[0]), max(n_at, 1), ok


def approach3(tables: Mapping[str, Table], F: Mapping[str, PerToken] | None = None, resamples: int = 2000,
              seed: int = 0, delta: float = 1e-3, simulations: int = 40
              ) -> tuple[dict[str, Approach3], list[dict[str, Any]]]:
    rng = np.random.default_rng(seed + 1)
    fits: dict[str, Approach3] = {}
    guards: list[dict[str, Any]] = []
    for fam, t in tables.items():
        who = _who(fam)
        if t.n < 6 or np.unique(np.round(t.lnN, 9)).size < 2 or np.unique(np.round(t.lnD, 9)).size < 2:
            raise FitError(f"approach 3 ({who}): {t.n} runs, {np.unique(np.round(t.lnN, 9)).size} sizes; the joint "
                           "law needs at least 6 runs over 2+ sizes and 2+ token counts - add runs")
        Fi = (F or {}).get(fam) or PerToken.from_table(t)
        th, obj, lnNs, lnDs, n_st, n_at, ok = fit_law(t.lnN, t.lnD, t.y, delta)
        u, v = t.lnN - lnNs, t.lnD - lnDs
        resid = np.log(t.y) - model_log(th[None, :], u, v)[0]
        rsd = float(np.sqrt(np.mean(resid**2)))
        law_v = _theta_to_law(th[None, :], lnNs, lnDs)[0]
        law = Law(*map(float, law_v))
        ks = np.unique(t.budget)
        lnCk = np.log(t.budgets[ks])
        grid = (float(t.lnN.min()) - 8.0, float(t.lnN.max()) + 8.0)
        pts = [frontier_point(th, float(c), Fi, lnNs, lnDs, grid) for c in lnCk]
        nN = np.array([p[0] for p in pts])
        nL = np.array([p[1] for p in pts])
        gam = _gamma_eff(th[None, :], lnCk, Fi, lnNs, lnDs, grid, law_v[None, 0])[0]
        B = max(int(resamples), 0)
        unconv = 0
        draws: dict[str, np.ndarray] = {}
        if B:
            W = _strata_weights(t.budget, B, rng)
            thb, unc = _refit_many(th, u, v, np.broadcast_to(t.y, (B, t.n)).copy(), W, delta)
            unconv = int(unc.sum())
            lawb = _theta_to_law(thb, lnNs, lnDs)
            fN, fL = frontier(thb, lnCk, Fi, lnNs, lnDs, grid)
            gamb = _gamma_eff(thb, lnCk, Fi, lnNs, lnDs, grid, lawb[:, 0])
            draws = {"theta": thb, "law": lawb, "lnN": fN, "lnL": fL, "gamma": gamb}
            law_ci = {k: _ci1(lawb[:, i]) for i, k in enumerate(("E", "A", "B", "alpha", "beta"))}
            nci = tuple(_ci1(np.exp(fN[:, i])) for i in range(lnCk.size))
            lci = tuple(_ci1(np.exp(fL[:, i])) for i in range(lnCk.size))
            gci = _ci1(gamb)
        else:
            law_ci = {k: (float("nan"), float("nan")) for k in ("E", "A", "B", "alpha", "beta")}
            nci = lci = tuple((float("nan"), float("nan")) for _ in lnCk)
            gci = (float("nan"), float("nan"))
        a3 = Approach3(fam, law, law_ci, obj, t.n, n_st, n_at, ok, float(gam), gci, tuple(map(float, t.budgets[ks])),
                       tuple(map(float, np.exp(nN))), nci, tuple(map(float, np.exp(nL))), lci,
                       tuple(float(np.exp(c - Fi(n))) for c, n in zip(lnCk, nN, strict=True)), rsd, unconv,
                       (math.exp(lnNs), math.exp(lnDs)), th, draws, Fi, grid)
        fits[fam] = a3
        if not ok:
            guards.append(_guard("not_converged", fam, f"{who}: the approach-3 optimiser did not reach a stationary "
                                 "point; its law is not a measurement - check the data for outliers"))
        if unconv > 0.01 * max(B, 1):
            guards.append(_guard("not_converged", fam, f"{who}: {unconv} of {B} bootstrap refits did not converge"))
        if B and simulations and rsd > 0:
            guards.extend(_simulation_guard(a3, t, Fi, lnNs, lnDs, grid, rsd, simulations, delta, rng))
    return fits, guards


def _gamma_eff(theta: np.ndarray, lnCk: np.ndarray, Fi: PerToken, lnNs: float, lnDs: float,
               grid: tuple[float, float], E: np.ndarray) -> np.ndarray:
    """-d ln(L* - E) / d ln C, the OLS slope over 9 budgets spanning the measured range (B,)."""
    lc = np.linspace(lnCk.min(), lnCk.max(), 9) if lnCk.size > 1 else lnCk + np.linspace(-1, 1, 9)
    _, fL = frontier(theta, lc, Fi, lnNs, lnDs, grid)
    with np.errstate(all="ignore"):
        red = np.log(np.exp(fL) - E[:, None])
    return -_slopes(lc, red)


def _simulation_guard(a3: Approach3, t: Table, Fi: PerToken, lnNs: float, lnDs: float, grid: tuple[float, float],
                      rsd: float, R: int, delta: float, rng: np.random.Generator) -> list[dict[str, Any]]:
    """Besiroglu et al.'s lesson: compare the bootstrap intervals with the spread of refits to data simulated
    from the fitted law on the same design (log-normal noise with the residual sd)."""
    u, v = t.lnN - lnNs, t.lnD - lnDs
    mu = model_log(a3.theta[None, :], u, v)[0]
    Y = np.exp(mu[None, :] + rng.normal(0.0, rsd, size=(R, t.n)))
    ths, _ = _refit_many(a3.theta, u, v, Y, np.ones((R, t.n)), delta)
    laws = _theta_to_law(ths, lnNs, lnDs)
    lnCk = np.log(np.array(a3.budgets))
    mid = np.array([lnCk[lnCk.size // 2]])
    sN, _ = frontier(ths, mid, Fi, lnNs, lnDs, grid)
    out = []
    checks = {"alpha": (laws[:, 3], a3.law_ci["alpha"]), "beta": (laws[:, 4], a3.law_ci["beta"]),
              "N* at the middle budget (ln)": (sN[:, 0], tuple(np.log(a3.n_star_ci[lnCk.size // 2])))}
    for name, (sim, ci) in checks.items():
        lo, hi = _ci1(np.repeat(sim, 1))
        sim_w = (hi - lo) if np.isfinite(hi - lo) else 3.92 * float(np.nanstd(sim))
        boot_w = ci[1] - ci[0]
        if np.isfinite(sim_w) and np.isfinite(boot_w) and sim_w > 0 and boot_w < NARROW * sim_w:
            out.append(_guard("narrow_interval", t.family, f"{_who(t.family)}: the bootstrap 95% interval of {name} "
                              f"({boot_w:.3g} wide) is narrower than {NARROW:.0%} of the spread of refits to data "
                              f"re-simulated from the fitted law on the same design ({sim_w:.3g}): the interval "
                              "understates the uncertainty (Besiroglu et al. 2024) - read the wider one"))
    return out


# ---------------------------------------------------------------------------------------------------------
# Comparison
# ---------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MultiplierPoint:
    budget_b: float  # the denominator family's budget whose vertex loss defines the target
    loss: float
    m: float
    m_ci: tuple[float, float]
    source: str  # "approach2" (inside both measured ranges) or "approach3"
    extrapolated: bool

    def to_json(self) -> dict[str, Any]:
        return _jf(self.__dict__)


@dataclass(frozen=True)
class Comparison:
    pair: tuple[str, str]
    points: tuple[MultiplierPoint, ...]
    gamma_diff: float  # gamma_a - gamma_b (approach 3, effective over the measured budgets)
    gamma_diff_ci: tuple[float, float]
    gamma_diff_a2: float
    gamma_diff_a2_ci: tuple[float, float]
    verdict: str
    crossover: float | None  # FLOPs where m = 1, None when never in range
    crossover_ci: tuple[float | None, float | None]
    crossover_in_range: bool
    crossover_note: str
    flops_ratio: float  # F_a / F_b at the geometric-mean size of the two families' windows

    def to_json(self) -> dict[str, Any]:
        return _jf(self.__dict__)


def _cost_at_loss_a2(fr: np.ndarray, Cref: float, L: np.ndarray) -> np.ndarray:
    """ln C at loss L on vertex frontiers fr (B, 3) = [E, A', gamma]: ln C_ref + ln(A' / (L - E)) / gamma."""
    with np.errstate(all="ignore"):
        return math.log(Cref) + np.log(fr[:, 1:2] / (L - fr[:, 0:1])) / fr[:, 2:3]


def _frontier_curve(a3: Approach3, lnCg: np.ndarray, theta: np.ndarray) -> np.ndarray:
    assert a3.per_token is not None
    lnNs, lnDs = map(math.log, a3.scales)
    _, fL = frontier(theta, lnCg, a3.per_token, lnNs, lnDs, a3.grid, step=0.04)
    return fL  # (B, G) ln L*


def _cost_at_loss_curve(lnCg: np.ndarray, lnL: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Invert decreasing ln L*(ln C) rows (B, G) at ln targets (T,): ln C (B, T); NaN outside the curve."""
    out = np.full((lnL.shape[0], target.size), np.nan)
    for b in range(lnL.shape[0]):
        y = lnL[b]
        ok = np.isfinite(y)
        if ok.sum() < 2:
            continue
        yy, xx = y[ok][::-1], lnCg[ok][::-1]
        if not (np.diff(yy) > 0).all():
            yy = np.maximum.accumulate(yy)
        inside = (target >= yy[0]) & (target <= yy[-1])
        if yy.size < 3:
            out[b, inside] = np.interp(target[inside], yy, xx)
            continue
        # quadratic (3-point Lagrange) inverse interpolation: linear would be off by ~h^2 on a curved frontier
        tt = target[inside]
        i = np.clip(np.searchsorted(yy, tt), 1, yy.size - 2)
        y0, y1, y2 = yy[i - 1], yy[i], yy[i + 1]
        x0, x1, x2 = xx[i - 1], xx[i], xx[i + 1]
        with np.errstate(all="ignore"):
            q = (x0 * (tt - y1) * (tt - y2) / ((y0 - y1) * (y0 - y2))
                 + x1 * (tt - y0) * (tt - y2) / ((y1 - y0) * (y1 - y2))
                 + x2 * (tt - y0) * (tt - y1) / ((y2 - y0) * (y2 - y1)))
        lin = np.interp(tt, yy, xx)
        out[b, inside] = np.where(np.isfinite(q) & (np.abs(q - lin) < 0.5), q, lin)
    return out


def compare(a2: Mapping[str, Approach2], a3: Mapping[str, Approach3], pair: tuple[str, str],
            extra_decades: float = 2.0) -> tuple[Comparison, list[dict[str, Any]]]:
    fa, fb = pair
    guards: list[dict[str, Any]] = []
    A2a, A2b, A3a, A3b = a2[fa], a2[fb], a3[fa], a3[fb]
    Lva = np.array([b.l_star for b in A2a.budgets])
    Lvb = np.array([b.l_star for b in A2b.budgets])
    lo_a, hi_a = np.nanmin(Lva), np.nanmax(Lva)
    # targets: the loss b reaches at each of its budgets (vertex), then approach-3 losses at budgets beyond
    lnCb = np.log([b.budget for b in A2b.budgets])
    lnCext = np.concatenate([lnCb, lnCb.max() + np.log(10.0) * np.arange(1, int(extra_decades) + 1)])
    Lb_ext = np.exp(_frontier_curve(A3b, lnCext[len(lnCb):], A3b.theta[None, :])[0])
    targets = np.concatenate([Lvb, Lb_ext])
    lnCg = np.linspace(lnCext.min() - math.log(1e3), lnCext.max() + math.log(1e6), 100)
    curve_a = _frontier_curve(A3a, lnCg, A3a.theta[None, :])
    curve_b = _frontier_curve(A3b, lnCg, A3b.theta[None, :])
    cda = A3a.draws.get("theta")
    cdb = A3b.draws.get("theta")
    curve_ab = _frontier_curve(A3a, lnCg, cda) if cda is not None and len(cda) else None
    curve_bb = _frontier_curve(A3b, lnCg, cdb) if cdb is not None and len(cdb) else None
    fr_a = np.array([[A2a.frontier["E"], A2a.frontier["A_ref"], A2a.frontier["gamma"]]])
    fr_b = np.array([[A2b.frontier["E"], A2b.frontier["A_ref"], A2b.frontier["gamma"]]])
    pts = []
    for i, L in enumerate(targets):
        inside = i < len(Lvb) and lo_a <= L <= hi_a and np.isfinite(L) and np.isfinite(fr_a).all() \
            and np.isfinite(fr_b).all()
        if inside:
            lnCa = _cost_at_loss_a2(fr_a, A2a.frontier["C_ref"], np.array([L]))[0, 0]
            lnCb_ = _cost_at_loss_a2(fr_b, A2b.frontier["C_ref"], np.array([L]))[0, 0]
            m = math.exp(lnCa - lnCb_)
            da, db = A2a.draws.get("frontier"), A2b.draws.get("frontier")
            if da is not None and db is not None and len(da) and len(db):
                Bm = min(len(da), len(db))
                # each resample's target is that resample's own vertex loss of b at this budget
                Lbs = A2b.draws["L"][:Bm, i:i + 1]
                md = np.exp(_cost_at_loss_a2(da[:Bm], A2a.frontier["C_ref"], Lbs)[:, 0]
                            - _cost_at_loss_a2(db[:Bm], A2b.frontier["C_ref"], Lbs)[:, 0])
                ci = _ci1(md)
            else:
                ci = (float("nan"), float("nan"))
            pts.append(MultiplierPoint(float(math.exp(lnCext[i])), float(L), float(m), ci, "approach2", False))
        else:
            lt = np.array([math.log(L)])
            m = float(np.exp(_cost_at_loss_curve(lnCg, curve_a, lt) - _cost_at_loss_curve(lnCg, curve_b, lt))[0, 0])
            ci = (float("nan"), float("nan"))
            if curve_ab is not None and curve_bb is not None:
                Bm = min(len(curve_ab), len(curve_bb))
                md = np.exp(_cost_at_loss_curve(lnCg, curve_ab[:Bm], lt) - _cost_at_loss_curve(lnCg, curve_bb[:Bm], lt))
                ci = _ci1(md[:, 0])
            pts.append(MultiplierPoint(float(math.exp(lnCext[i])), float(L), m, ci, "approach3", True))
    # exponent difference
    gd = A3a.gamma - A3b.gamma
    ga, gb = A3a.draws.get("gamma"), A3b.draws.get("gamma")
    gd_ci = _ci1(ga[: min(len(ga), len(gb))] - gb[: min(len(ga), len(gb))]) if ga is not None and gb is not None \
        else (float("nan"), float("nan"))
    g2 = A2a.frontier["gamma"] - A2b.frontier["gamma"]
    d2a, d2b = A2a.draws.get("frontier"), A2b.draws.get("frontier")
    g2_ci = _ci1(d2a[: min(len(d2a), len(d2b)), 2] - d2b[: min(len(d2a), len(d2b)), 2]) \
        if d2a is not None and d2b is not None and len(d2a) and len(d2b) else (float("nan"), float("nan"))
    wa, wb = _who(fa), _who(fb)
    if np.isfinite(gd_ci[0]) and gd_ci[0] > 0:
        verdict = f"{wa} faster per unit of compute (frontier exponent {gd:+.3f} [{gd_ci[0]:+.3f}, {gd_ci[1]:+.3f}])"
    elif np.isfinite(gd_ci[1]) and gd_ci[1] < 0:
        verdict = f"{wb} faster per unit of compute (frontier exponent {gd:+.3f} [{gd_ci[0]:+.3f}, {gd_ci[1]:+.3f}])"
    else:
        verdict = ("no verdict: the 95% interval of the frontier exponent difference includes 0"
                   if np.isfinite(gd_ci[0]) else "no verdict: no interval for the frontier exponent difference")
    # crossover: where the approach-3 frontiers meet
    meas = (lnCb.min(), lnCb.max())
    cross = _crossing(lnCg, curve_a[0], curve_b[0])
    cb_draws = np.array([_crossing(lnCg, curve_ab[b], curve_bb[b]) for b in range(min(len(curve_ab), len(curve_bb)))]) \
        if curve_ab is not None and curve_bb is not None else np.zeros(0)
    if cb_draws.size:
        never = ~np.isfinite(cb_draws)
        lo = float(np.exp(np.percentile(cb_draws[~never], 2.5))) if (~never).mean() >= 0.975 else None
        hi = float(np.exp(np.percentile(np.where(never, np.inf, cb_draws), 97.5))) if never.mean() <= 0.025 else None
        if never.mean() > 0.025 and (~never).sum() >= 20:
            lo = float(np.exp(np.nanpercentile(np.where(never, np.nan, cb_draws), 2.5)))
        c_ci: tuple[float | None, float | None] = (lo, hi)
    else:
        c_ci = (None, None)
    span = f"{math.exp(lnCg[0]):.2g} to {math.exp(lnCg[-1]):.2g} FLOPs"
    if np.isfinite(cross):
        inr = bool(meas[0] <= cross <= meas[1])
        note = (f"the frontiers cross at {math.exp(cross):.3g} FLOPs"
                + ("" if inr else " (extrapolated beyond the measured budgets)"))
        crossover: float | None = float(math.exp(cross))
    else:
        inr, crossover = False, None
        note = f"never in range: the frontiers do not cross between {span}"
    # per-token FLOPs ratio at the geometric mean size of both windows
    lnNm = 0.5 * (math.log(A3a.scales[0]) + math.log(A3b.scales[0]))
    ratio = float(np.exp(A3a.per_token(lnNm) - A3b.per_token(lnNm))) if A3a.per_token and A3b.per_token \
        else float("nan")
    return Comparison(pair, tuple(pts), float(gd), gd_ci, float(g2), g2_ci, verdict, crossover, c_ci, inr, note,
                      ratio), guards


def _disagree_guards(a2: Mapping[str, Approach2], a3: Mapping[str, Approach3]) -> list[dict[str, Any]]:
    """Approach 2 and approach 3 more than DISAGREE-fold apart on N* at a budget."""
    guards = []
    for fam, A2f in a2.items():
        A3f = a3.get(fam)
        if A3f is None:
            continue
        for bf in A2f.budgets:
            if bf.budget in A3f.budgets:
                n3 = A3f.n_star[A3f.budgets.index(bf.budget)]
                r = bf.n_star / n3 if np.isfinite(bf.n_star) and np.isfinite(n3) else float("nan")
                if np.isfinite(r) and (r > DISAGREE or r < 1 / DISAGREE):
                    guards.append(_guard("approaches_disagree", fam, f"{_who(fam)}: at budget {bf.budget:.3g} "
                                         f"FLOPs approach 2 puts N* at {bf.n_star:.3g} and approach 3 at {n3:.3g} "
                                         f"({r:.2f}x): the law or the parabola does not describe these runs - "
                                         "recentre the window or check the law's residuals", bf.budget))
    return guards


def _crossing(lnCg: np.ndarray, la: np.ndarray, lb: np.ndarray) -> float:
    """First ln C where frontier a drops to frontier b's loss (sign change of ln L*_a - ln L*_b); NaN if never."""
    d = la - lb
    ok = np.isfinite(d)
    if ok.sum() < 2:
        return float("nan")
    x, d = lnCg[ok], d[ok]
    s = np.sign(d)
    ch = np.flatnonzero(s[:-1] * s[1:] < 0)
    if not ch.size:
        return float("nan")
    i = int(ch[0])
    return float(x[i] - d[i] * (x[i + 1] - x[i]) / (d[i + 1] - d[i]))


# ---------------------------------------------------------------------------------------------------------
# Entry point
# ---------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class IsoflopSettings:
    resamples: int = 2000  # approach-2 bootstrap
    resamples_law: int = 2000  # approach-3 bootstrap
    budget_tol: float = 0.05
    budgets: tuple[float, ...] | None = None
    delta: float = 1e-3
    seed: int = 0
    simulations: int = 40  # parametric re-simulations for the narrow-interval guard (0: off)
    min_sizes: int = MIN_SIZES
    pair: tuple[str, str] | None = None

    def to_json(self) -> dict[str, Any]:
        return _jf(self.__dict__)


@dataclass(frozen=True)
class IsoflopFit:
    families: tuple[str, ...]
    approach2: dict[str, Approach2]
    approach3: dict[str, Approach3]
    comparison: Comparison | None
    guards: tuple[dict[str, Any], ...]
    settings: IsoflopSettings

    def to_json(self) -> dict[str, Any]:
        return {"kind": "isoflop", "families": list(self.families),
                "approach2": {k: v.to_json() for k, v in self.approach2.items()},
                "approach3": {k: v.to_json() for k, v in self.approach3.items()},
                "comparison": self.comparison.to_json() if self.comparison else None,
                "guards": _jf(list(self.guards)), "settings": self.settings.to_json()}


def fit_isoflop(rows: Iterable[IsoRow | Mapping[str, Any]], settings: IsoflopSettings | None = None,
                per_token: Mapping[str, PerToken] | None = None) -> IsoflopFit:
    """Approaches 2 and 3 for every family in ``rows`` and, with two families, their comparison.

    ``per_token``: optional F(N) per family (a ``PerToken``); by default each family's rows give it (F = C / D)."""
    s = settings or IsoflopSettings()
    tables = make_tables(rows, s.budget_tol, s.budgets)
    Fmap = dict(per_token or {})
    for k, v in Fmap.items():
        if not isinstance(v, PerToken):
            raise FitError(f"isoflop per_token[{k!r}]: expected a PerToken, got {type(v).__name__}; build it with "
                           "PerToken.from_points(N, F)")
        if k not in tables:
            raise FitError(f"isoflop per_token: no rows for family {k!r} (families: {', '.join(tables)})")
    a2, g2 = approach2(tables, Fmap, s.resamples, s.seed, s.min_sizes)
    a3, g3 = approach3(tables, Fmap, s.resamples_law, s.seed, s.delta, s.simulations)
    guards = g2 + g3 + _disagree_guards(a2, a3)
    comp = None
    fams = tuple(tables)
    if len(fams) == 2:
        pair = s.pair or (PAIR_DEFAULT if set(PAIR_DEFAULT) == set(fams) else fams)
        if set(pair) != set(fams):
            raise FitError(f"isoflop comparison: pair {pair} does not match the families {fams}")
        for f in pair:
            if len(a2[f].budgets) < 3:
                raise FitError(f"isoflop comparison: {_who(f)} has {len(a2[f].budgets)} budget(s) with a parabola; "
                               "the compute multiplier needs at least 3 budgets per family - add budgets")
        comp, gc = compare(a2, a3, pair)
        guards += gc
    elif len(fams) > 2:
        raise FitError(f"isoflop fit: {len(fams)} families {fams}; fit two at a time")
    return IsoflopFit(fams, a2, a3, comp, tuple(guards), s)
