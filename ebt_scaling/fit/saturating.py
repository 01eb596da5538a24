"""M2: saturating power law L(x) = E + A * x^(-alpha) in nats, robust fit in log space.

Model for K families (K = 1 or 2) sharing one floor E (a free E per family is K separate K = 1 fits):

    ln L_k(x) = logaddexp(e, a_k - alpha_k * u),   u = ln(x / x_scale),  E = e^e,  A_k = e^(a_k)

Objective: sum of Huber_delta(ln y - ln L) / delta^2 (delta = 1e-3 as in Chinchilla's Approach 3). The
1/delta^2 scaling is deliberate: unscaled, the objective is ~1e-6 and L-BFGS-B stops at its first iterate
(the published Chinchilla fit failed exactly so, Besiroglu et al. 2024).

Fitting:
1. Variable projection over an alpha grid: for fixed alphas the model is linear in (E, A_k); the
   log-residuals are approximated by relative residuals (y - m)/y, so each grid point is a closed-form
   weighted least-squares problem (E >= 0 enforced, A_k < 0 rejected). The grid is vectorised across
   bootstrap resamples.
2. Levenberg-Marquardt on the exact Huber objective with iteratively reweighted Gauss-Newton steps,
   vectorised across starts and resamples; alpha is kept inside (0, 2).
3. Point estimate only: many starts (best grid points + a Chinchilla-style grid), then L-BFGS-B with an
   analytic gradient and gtol = 1e-12 from the best five local optima, recording how many agree.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import optimize

ALPHA_LO, ALPHA_HI = 1e-4, 2.0 - 1e-4
E_LO, E_HI = -25.0, 10.0
A_LO, A_HI = -60.0, 60.0


def huber_objective(r: np.ndarray, delta: float) -> np.ndarray:
    a = np.abs(r)
    return np.where(a <= delta, 0.5 * r * r, delta * (a - 0.5 * delta)).sum(axis=-1) / delta**2


@dataclass(frozen=True)
class Layout:
    """Parameter columns: theta = [e, a_0 .. a_{K-1}, alpha_0 .. alpha_{K-1}]; fam[i] = family of point i."""

    u: np.ndarray  # (n,) ln(x / x_scale)
    fam: np.ndarray  # (n,) int in [0, K)
    K: int

    @property
    def P(self) -> int:
        return 1 + 2 * self.K

    def lower(self) -> np.ndarray:
        return np.array([E_LO] + [A_LO] * self.K + [ALPHA_LO] * self.K)

    def upper(self) -> np.ndarray:
        return np.array([E_HI] + [A_HI] * self.K + [ALPHA_HI] * self.K)


def model_log(theta: np.ndarray, lay: Layout) -> np.ndarray:
    """ln L at every point for every parameter row: theta (B, P) -> (B, n)."""
    e = theta[:, :1]
    a = theta[:, 1 + lay.fam]
    al = theta[:, 1 + lay.K + lay.fam]
    return np.logaddexp(e, a - al * lay.u)


def _resid_jac(theta: np.ndarray, logy: np.ndarray, lay: Layout) -> tuple[np.ndarray, np.ndarray]:
    e = theta[:, :1]
    t = theta[:, 1 + lay.fam] - theta[:, 1 + lay.K + lay.fam] * lay.u
    m = np.logaddexp(e, t)
    r = logy - m
    s_e = np.exp(e - m)  # dm/de
    s_a = 1.0 - s_e  # dm/da_k
    B, n = r.shape
    J = np.zeros((B, n, lay.P))
    rows = np.arange(n)
    J[:, :, 0] = -s_e
    J[:, rows, 1 + lay.fam] = -s_a
    J[:, rows, 1 + lay.K + lay.fam] = lay.u * s_a
    return r, J


def lm_refine(theta0: np.ndarray, logy: np.ndarray, lay: Layout, delta: float, max_iter: int = 80,
              tol: float = 1e-10) -> tuple[np.ndarray, np.ndarray]:
    """Levenberg-Marquardt / IRLS on the Huber log-residual objective for B rows at once.

    theta0 (B, P), logy (B, n). Returns (theta, objective) of shape (B, P), (B,).
    """
    lo, hi = lay.lower(), lay.upper()
    theta = np.clip(theta0.astype(float), lo, hi)
    r, J = _resid_jac(theta, logy, lay)
    F = huber_objective(r, delta)
    lam = np.full(theta.shape[0], 1e-3)
    eye = np.eye(lay.P)
    active = np.ones(theta.shape[0], dtype=bool)
    for _ in range(max_iter):
        if not active.any():
            break
        ix = np.flatnonzero(active)
        ra, Ja = r[ix], J[ix]
        absr = np.abs(ra)
        w = np.where(absr <= delta, 1.0, delta / np.maximum(absr, 1e-300))
        JW = Ja * w[:, :, None]
        JWt = JW.transpose(0, 2, 1)
        Hm = JWt @ Ja
        g = (JWt @ ra[:, :, None])[:, :, 0]
        diag = np.einsum("bpp->bp", Hm)
        A = Hm + lam[ix, None, None] * (diag[:, :, None] * eye + 1e-12 * eye)
        try:
            step = -np.linalg.solve(A, g[:, :, None])[:, :, 0]
        except np.linalg.LinAlgError:
            step = -np.linalg.lstsq(A[0], g[0], rcond=None)[0][None, :] if ix.size == 1 else np.zeros_like(g)
        new = np.clip(theta[ix] + step, lo, hi)
        r_new, J_new = _resid_jac(new, logy[ix], lay)
        F_new = huber_objective(r_new, delta)
        ok = F_new < F[ix]
        acc = ix[ok]
        moved = np.abs(new[ok] - theta[acc]).max(axis=1) if acc.size else np.zeros(0)
        theta[acc] = new[ok]
        r[acc] = r_new[ok]
        J[acc] = J_new[ok]
        rel = (F[acc] - F_new[ok]) / np.maximum(F[acc], 1e-300)
        F[acc] = F_new[ok]
        lam[acc] = np.maximum(lam[acc] / 3.0, 1e-12)
        rej = ix[~ok]
        lam[rej] = lam[rej] * 4.0
        done = np.zeros(theta.shape[0], dtype=bool)
        done[acc[(moved < tol) | (rel < 1e-14)]] = True
        done[rej[lam[rej] > 1e12]] = True
        active &= ~done
    return theta, F


# ---------------------------------------------------------------------------------------------------------
# Variable projection over an alpha grid (vectorised across resamples)
# ---------------------------------------------------------------------------------------------------------


def _suff(u: np.ndarray, Y: np.ndarray, alphas: np.ndarray) -> dict[str, np.ndarray]:
    w = 1.0 / Y**2  # relative residuals: ((y - m) / y)^2
    Z = np.exp(-np.outer(alphas, u))  # (nA, n)
    return {
        "S0": w.sum(axis=1), "Sy": (w * Y).sum(axis=1), "Syy": (w * Y * Y).sum(axis=1),
        "Sz": w @ Z.T, "Szz": w @ (Z * Z).T, "Szy": (w * Y) @ Z.T,
    }


def vp_grid(us: list[np.ndarray], Ys: list[np.ndarray], alphas: np.ndarray,
            top: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Best grid starts for K = 1 or 2 families with a shared E.

    us[k] (n_k,), Ys[k] (B, n_k) in nats. Returns theta (B, top, P) and weighted-LS RSS (B, top).
    """
    K = len(us)
    st = [_suff(u, Y, alphas) for u, Y in zip(us, Ys, strict=True)]
    B = Ys[0].shape[0]
    nA = alphas.size
    with np.errstate(divide="ignore", invalid="ignore"):
        p = [s["Sz"] * s["Szy"] / s["Szz"] for s in st]
        q = [s["Sz"] ** 2 / s["Szz"] for s in st]
        S0 = sum(s["S0"] for s in st)
        Sy = sum(s["Sy"] for s in st)
        Syy = sum(s["Syy"] for s in st)
        if K == 1:
            num = Sy[:, None] - p[0]
            den = S0[:, None] - q[0]
            shape: tuple[int, ...] = (B, nA)
        else:
            num = Sy[:, None, None] - p[0][:, :, None] - p[1][:, None, :]
            den = S0[:, None, None] - q[0][:, :, None] - q[1][:, None, :]
            shape = (B, nA, nA)
        E = np.where(den > 0, num / den, 0.0)
        E = np.maximum(E, 0.0)  # E >= 0: the E = 0 edge is pure power laws
        # RSS at (E, A(E)): Syy - 2 E Sy + E^2 S0 - sum_k (Szy_k - Sz_k E)^2 / Szz_k
        rss = (Syy.reshape((B,) + (1,) * K) - 2 * E * Sy.reshape((B,) + (1,) * K)
               + E * E * S0.reshape((B,) + (1,) * K))
        A = []
        for k in range(K):
            idx: tuple = (slice(None), slice(None)) if K == 1 else (
                (slice(None), slice(None), None) if k == 0 else (slice(None), None, slice(None)))
            Szy, Sz, Szz = st[k]["Szy"][idx], st[k]["Sz"][idx], st[k]["Szz"][idx]
            Ak = (Szy - Sz * E) / Szz
            rss = rss - (Szy - Sz * E) ** 2 / Szz
            A.append(np.broadcast_to(Ak, shape))
        bad = np.zeros(shape, dtype=bool)
        for Ak in A:
            bad |= ~(Ak > 0)
        rss = np.where(bad | ~np.isfinite(rss), np.inf, rss)
    flat = rss.reshape(B, -1)
    top = min(top, flat.shape[1])
    order = np.argsort(flat, axis=1)[:, :top]
    theta = np.empty((B, top, 1 + 2 * K))
    rows = np.arange(B)[:, None]
    Ef = E.reshape(B, -1)[rows, order]
    ymin = min(float(Y.min()) for Y in Ys)
    theta[:, :, 0] = np.log(np.maximum(Ef, 0.02 * max(ymin, 1e-6)))
    grid_idx = np.unravel_index(order, shape[1:])
    for k in range(K):
        Akf = A[k].reshape(B, -1)[rows, order]
        theta[:, :, 1 + k] = np.log(np.maximum(Akf, 1e-12))
        theta[:, :, 1 + K + k] = alphas[grid_idx[k]]
    return theta, flat[rows, order]


# ---------------------------------------------------------------------------------------------------------
# Point estimate
# ---------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SatFit:
    theta: np.ndarray  # (P,)
    objective: float
    x_scale: float
    K: int
    n_starts: int
    n_at_best: int  # starts whose polished optimum agrees with the best (objective and alphas)
    converged: bool

    @property
    def E(self) -> float:
        return float(math.exp(self.theta[0]))

    def A(self, k: int) -> float:
        """A in the original x units: A_scaled * x_scale^alpha."""
        return float(math.exp(self.theta[1 + k] + self.theta[1 + self.K + k] * math.log(self.x_scale)))

    def A_scaled(self, k: int) -> float:
        return float(math.exp(self.theta[1 + k]))

    def alpha(self, k: int) -> float:
        return float(self.theta[1 + self.K + k])


def make_layout(us: list[np.ndarray]) -> Layout:
    return Layout(np.concatenate(us), np.concatenate([np.full(u.size, k) for k, u in enumerate(us)]), len(us))


def _scalar_objective(lay: Layout, logy: np.ndarray, delta: float):
    def fun(th: np.ndarray) -> tuple[float, np.ndarray]:
        r, J = _resid_jac(th[None, :], logy[None, :], lay)
        psi = np.clip(r[0], -delta, delta)  # Huber derivative
        return float(huber_objective(r, delta)[0]), (J[0].T @ psi) / delta**2

    return fun


def fit_saturating(us: list[np.ndarray], ys: list[np.ndarray], x_scale: float, delta: float = 1e-3) -> SatFit:
    """Fit K = len(us) families with one shared E. us[k] = ln(x / x_scale), ys[k] = loss in nats."""
    K = len(us)
    lay = make_layout(us)
    logy = np.log(np.concatenate(ys))
    # 1. variable-projection grid: the best grid points of a fine alpha grid
    alphas = np.arange(0.01, 2.0, 0.01) if K == 1 else np.arange(0.02, 2.0, 0.02)
    vp, _ = vp_grid(us, [y[None, :] for y in ys], alphas, top=8)
    starts = [vp[0]]
    # 2. Chinchilla-style grid (alpha 0..2 step 0.5, e -1..1 step 0.5, a over a coarse range; x is rescaled)
    grid = []
    for al in (0.05, 0.5, 1.0, 1.5, 1.95):
        for e in (-1.0, -0.5, 0.0, 0.5, 1.0):
            for a in (-1.0, 0.0, 1.0, 2.0):
                grid.append([e] + [a] * K + [al] * K)
    starts.append(np.array(grid))
    S = np.concatenate(starts, axis=0)
    theta, F = lm_refine(S, np.broadcast_to(logy, (S.shape[0], logy.size)).copy(), lay, delta, max_iter=200)
    # 3. polish the best five distinct local optima with L-BFGS-B (tight tolerances, analytic gradient)
    order = np.argsort(F)
    fun = _scalar_objective(lay, logy, delta)
    bounds = list(zip(lay.lower(), lay.upper(), strict=True))
    polished = []
    for i in order[:5]:
        res = optimize.minimize(fun, theta[i], jac=True, method="L-BFGS-B", bounds=bounds,
                                options={"gtol": 1e-12, "ftol": 1e-15, "maxiter": 20000, "maxfun": 40000})
        polished.append((float(res.fun), res.x, bool(res.success)))
    polished.sort(key=lambda t: t[0])
    best_F, best_theta, ok = polished[0]
    # agreement: every start whose LM optimum lies within a tiny objective tolerance of the best
    tolF = 1e-6 * max(1.0, abs(best_F))
    n_at_best = int(np.sum((F - best_F <= tolF + 1e-4 * max(1.0, abs(best_F)))
                           & (np.abs(theta[:, 1 + K:] - best_theta[1 + K:]).max(axis=1) < 1e-2)))
    return SatFit(best_theta, best_F, x_scale, K, S.shape[0], max(n_at_best, 1), ok)


def bootstrap_saturating(us: list[np.ndarray], Ystar: list[np.ndarray], warm: np.ndarray,
                         delta: float = 1e-3) -> tuple[np.ndarray, np.ndarray]:
    """Refit B resampled data sets. Every resample starts from the full-data optimum; where its own best
    variable-projection grid point lies in another basin (an alpha more than one grid step away from
    where the warm start ended), it is refined too and the better optimum is kept.
    Returns theta (B, P) and objective (B,)."""
    K = len(us)
    lay = make_layout(us)
    Y = np.concatenate(Ystar, axis=1)
    logy = np.log(np.clip(Y, 1e-12, None))
    B = Y.shape[0]
    theta, F = lm_refine(np.broadcast_to(warm, (B, warm.size)).copy(), logy, lay, delta, max_iter=50)
    alphas = np.arange(0.04, 2.0, 0.08)
    vp, _ = vp_grid(us, Ystar, alphas, top=1)
    far = np.abs(vp[:, 0, 1 + K:] - theta[:, 1 + K:]).max(axis=1) > 0.08
    if far.any():
        ix = np.flatnonzero(far)
        th2, F2 = lm_refine(vp[ix, 0, :], logy[ix], lay, delta, max_iter=50)
        better = F2 < F[ix]
        theta[ix[better]] = th2[better]
        F[ix[better]] = F2[better]
    return theta, F


def choose_e_mode(levels: list[np.ndarray], requested: str) -> str:
    """``shared`` (one E for both families) unless asked otherwise or both families span >= 1.5
    decades with >= 6 levels (the rule of thumb under which E and alpha become separately identifiable)."""
    if requested in ("shared", "free"):
        return requested
    if len(levels) < 2:
        return "shared"
    ok = all(lv.size >= 6 and math.log10(lv.max() / lv.min()) >= 1.5 for lv in levels)
    return "free" if ok else "shared"
