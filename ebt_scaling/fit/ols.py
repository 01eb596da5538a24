"""M1: the paper-compatible scaling rate, and the tests built on straight lines in (ln x, loss).

The paper's rate is the OLS slope of log10(perplexity) on log10(x). Because log10(ppl) = y / ln 10 and
log10(x) = u / ln 10 (y = loss in nats, u = ln x), that slope equals the slope of y on u exactly, so every
fit here is done on (u, y). The slope is a *logarithmic* rate, not a power-law exponent (see
``docs/fits.md``): it mixes the exponent with the reducible loss that remains.

Everything is closed form, so a bootstrap over B resamples is one matrix product.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import stats


@dataclass(frozen=True)
class Line:
    """OLS fit of y on u for one family."""

    slope: float
    intercept: float  # y at u = 0 (x = 1), nats
    slope_se: float  # classical standard error (homoscedastic)
    r2: float
    n: int
    n_levels: int
    resid: np.ndarray
    fitted: np.ndarray
    leverage: np.ndarray
    lack_of_fit_p: float | None  # F-test linear vs quadratic in u; None when < 4 levels


def fit_line(u: np.ndarray, y: np.ndarray) -> Line:
    n = u.size
    ub = u.mean()
    sxx = float(((u - ub) ** 2).sum())
    slope = float(((u - ub) * (y - y.mean())).sum() / sxx)
    intercept = float(y.mean() - slope * ub)
    fitted = intercept + slope * u
    resid = y - fitted
    rss = float((resid**2).sum())
    tss = float(((y - y.mean()) ** 2).sum())
    se = math.sqrt(rss / (n - 2) / sxx) if n > 2 else float("nan")
    leverage = 1.0 / n + (u - ub) ** 2 / sxx
    n_levels = int(np.unique(u).size)
    lof = None
    if n_levels >= 4 and n > 3:
        X2 = np.column_stack([np.ones(n), u - ub, (u - ub) ** 2])
        beta, *_ = np.linalg.lstsq(X2, y, rcond=None)
        rss2 = float(((y - X2 @ beta) ** 2).sum())
        if rss2 > 0:
            f = (rss - rss2) / (rss2 / (n - 3))
            lof = float(stats.f.sf(f, 1, n - 3))
        else:
            lof = 0.0 if rss > 0 else 1.0
    return Line(slope, intercept, se, 1.0 - rss / tss if tss > 0 else float("nan"), n, n_levels, resid, fitted,
                leverage, lof)


def bootstrap_lines(u: np.ndarray, Ystar: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Slopes and intercepts of B resampled data sets with a fixed design u: (B,), (B,)."""
    ub = u.mean()
    w = (u - ub) / ((u - ub) ** 2).sum()
    slopes = Ystar @ w
    intercepts = Ystar.mean(axis=1) - slopes * ub
    return slopes, intercepts


def rate_gain(slope_ebt: np.ndarray | float, slope_tpp: np.ndarray | float) -> np.ndarray:
    """Paper gain |b_EBT| / |b_T++| - 1 (positive: EBT's perplexity falls faster)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.abs(slope_ebt) / np.abs(slope_tpp) - 1.0


# ---------------------------------------------------------------------------------------------------------
# Equal-slope tests: interaction t-test and Freedman-Lane permutation
# ---------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SlopeTest:
    diff: float  # b_EBT - b_T++ (the interaction coefficient beta3)
    t: float
    df: float  # Welch-Satterthwaite df with pure error (not an integer in general), n - 4 with residual
    p_value: float  # two-sided t-test of beta3 = 0
    variance: str  # "pure error, per family (Welch df)" or "residual"
    p_value_permutation: float  # Freedman-Lane, studentized statistic
    n_permutations: int


def _pure_error(u: np.ndarray, y: np.ndarray) -> tuple[float, int]:
    """Within-level (same x) sum of squares of one family and its degrees of freedom."""
    ss, df = 0.0, 0
    keys = np.round(u, 12)
    for k in np.unique(keys):
        v = y[keys == k]
        if v.size > 1:
            ss += float(((v - v.mean()) ** 2).sum())
            df += v.size - 1
    return ss, df


def welch_slope_diff(u_e: np.ndarray, y_e: np.ndarray, u_t: np.ndarray,
                     y_t: np.ndarray) -> tuple[float, float] | None:
    """Variance of b_EBT - b_T++ from each family's own seed variance, and its Welch-Satterthwaite df.

    b3 = b_EBT - b_T++ is a difference of two independent OLS slopes, Var = s_E^2/Sxx_E + s_T^2/Sxx_T with s_f^2
    the within-level (pure error) variance of family f, so the two families' seed noise may differ. None when a
    family has no replicated level (no pure-error estimate)."""
    parts = []
    for u, y in ((u_e, y_e), (u_t, y_t)):
        ss, df = _pure_error(u, y)
        if df < 1 or ss <= 0:
            return None
        parts.append((ss / df / float(((u - u.mean()) ** 2).sum()), df))
    var = sum(v for v, _ in parts)
    df_w = var**2 / sum(v**2 / d for v, d in parts)
    return var, df_w


def slope_test(u_e: np.ndarray, y_e: np.ndarray, u_t: np.ndarray, y_t: np.ndarray, n_perm: int,
               rng: np.random.Generator) -> SlopeTest:
    """ANCOVA y = b0 + b1 u + b2 D + b3 D u (D = 1 for EBT); H0: b3 = 0.

    b3 = c'y is linear in the data, so Var(b3) = sigma^2 ||c||^2 for independent seed noise whatever the
    true curve. With replicated seeds in both families, each family's seed variance is estimated from its
    own within-level spread (pure error) and the df follow Welch-Satterthwaite (``welch_slope_diff``): the
    test then asks whether the two OLS slopes over this design differ beyond seed noise, the same question
    the seed bootstrap answers, curvature (lack of fit) is not mistaken for noise, and the families need not
    share one seed variance. Without replicates in a family the residual variance of the pooled model is
    used (conservative when the straight line is misspecified).

    The permutation p-value permutes the residuals of the reduced model y ~ u + D (Freedman & Lane 1983)
    and compares |t| of b3 (residual variance), which keeps the intercept difference under H0.
    """
    u = np.concatenate([u_t, u_e])
    y = np.concatenate([y_t, y_e])
    d = np.concatenate([np.zeros(u_t.size), np.ones(u_e.size)])
    uc = u - u.mean()  # centring keeps X'X well conditioned; b3 is unchanged
    X = np.column_stack([np.ones_like(u), uc, d, d * uc])
    n = y.size
    df_res = n - 4
    XtX_inv = np.linalg.pinv(X.T @ X)
    C = XtX_inv @ X.T  # (4, n): beta = C y
    H = X @ C
    M = np.eye(n) - H

    def tstat(Y: np.ndarray) -> np.ndarray:
        b3 = Y @ C[3]
        R = Y @ M
        s2 = (R**2).sum(axis=-1) / df_res
        with np.errstate(divide="ignore", invalid="ignore"):
            return b3 / np.sqrt(s2 * XtX_inv[3, 3])

    b3 = float(C[3] @ y)
    welch = welch_slope_diff(u_e, y_e, u_t, y_t)
    df: float
    if welch is not None:
        variance, df = "pure error, per family (Welch df)", welch[1]
        t_obs = b3 / math.sqrt(welch[0])
    else:
        variance, df = "residual", df_res
        t_obs = float(tstat(y[None, :])[0]) if df_res > 0 else float("nan")
    p = float(2 * stats.t.sf(abs(t_obs), df)) if math.isfinite(t_obs) and df > 0 else float("nan")
    # Freedman-Lane
    t_res = float(tstat(y[None, :])[0]) if df_res > 0 else float("nan")
    p_perm = float("nan")
    if math.isfinite(t_res):
        X0 = X[:, :3]
        beta0, *_ = np.linalg.lstsq(X0, y, rcond=None)
        fit0 = X0 @ beta0
        r0 = y - fit0
        perms = np.argsort(rng.random((n_perm, n)), axis=1)
        t_perm = tstat(fit0[None, :] + r0[perms])
        p_perm = float((1 + np.sum(np.abs(t_perm) >= abs(t_res) * (1 - 1e-9))) / (n_perm + 1))
    return SlopeTest(b3, float(t_obs), float(df), p, variance, p_perm, n_perm)


def holm(pvalues: list[float | None]) -> list[float | None]:
    """Holm step-down adjustment; None / NaN entries are skipped and stay None."""
    idx = [i for i, p in enumerate(pvalues) if p is not None and math.isfinite(p)]
    m = len(idx)
    out: list[float | None] = [None] * len(pvalues)
    order = sorted(idx, key=lambda i: pvalues[i])  # type: ignore[arg-type, return-value]
    running = 0.0
    for rank, i in enumerate(order):
        adj = min(1.0, (m - rank) * float(pvalues[i]))  # type: ignore[arg-type]
        running = max(running, adj)
        out[i] = running
    return out


# ---------------------------------------------------------------------------------------------------------
# Crossover of two straight lines in (ln x, loss)
# ---------------------------------------------------------------------------------------------------------


def crossover_u(b_e, c_e, b_t, c_t):
    """u* where c_e + b_e u = c_t + b_t u (inf / nan when parallel)."""
    with np.errstate(divide="ignore", invalid="ignore"):  # numpy division: Python floats would raise
        return np.divide(np.subtract(c_e, c_t), np.subtract(b_t, b_e))
