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
              tol: float = 1e-10) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Levenberg-Marquardt / IRLS on the Huber log-residual objective for B rows at once.

    theta0 (B, P), logy (B, n). Returns (theta, objective, converged) of shape (B, P), (B,), (B,):
    ``converged`` is False for rows still moving when ``max_iter`` ran out.
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
        # A parameter held at a bound by the slope (descent would leave the box) is frozen for this step, so the
        # free ones take a full step instead of a clipped one creeping along the bound.
        th = theta[ix]
        held = ((th <= lo) & (g > 0)) | ((th >= hi) & (g < 0))
        if held.any():
            A = np.where(held[:, :, None] | held[:, None, :], 0.0, A) + held[:, :, None] * eye
            g = np.where(held, 0.0, g)
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
    return theta, F, ~active


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
    converged: bool  # the best polished point is stationary (``polish``)

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


def chinchilla_grid(K: int) -> np.ndarray:
    """Chinchilla-style starts (alpha 0..2 step 0.5, e -1..1 step 0.5, a over a coarse range; x is rescaled):
    (100, 1 + 2K)."""
    return np.array([[e] + [a] * K + [al] * K for al in (0.05, 0.5, 1.0, 1.5, 1.95)
                     for e in (-1.0, -0.5, 0.0, 0.5, 1.0) for a in (-1.0, 0.0, 1.0, 2.0)])


STATIONARY_GRAD = 1e-3  # projected-gradient max-norm (objective in units of delta^2) that counts as an optimum


def polish(theta0: np.ndarray, logy: np.ndarray, lay: Layout, delta: float) -> tuple[float, np.ndarray, bool]:
    """L-BFGS-B from ``theta0`` with the analytic gradient and tight tolerances: (objective, theta, stationary).

    ``stationary``: the projected gradient at the end is below STATIONARY_GRAD (L-BFGS-B's own success flag is
    False at many true optima, when ftol = 1e-15 ends in a failed line search)."""
    fun = _scalar_objective(lay, logy, delta)
    lo, hi = lay.lower(), lay.upper()
    res = optimize.minimize(fun, theta0, jac=True, method="L-BFGS-B", bounds=list(zip(lo, hi, strict=True)),
                            options={"gtol": 1e-12, "ftol": 1e-15, "maxiter": 20000, "maxfun": 40000})
    g = fun(res.x)[1]
    g = np.where(((res.x <= lo) & (g > 0)) | ((res.x >= hi) & (g < 0)), 0.0, g)
    return float(res.fun), res.x, bool(np.abs(g).max() < STATIONARY_GRAD)


def fit_saturating(us: list[np.ndarray], ys: list[np.ndarray], x_scale: float, delta: float = 1e-3) -> SatFit:
    """Fit K = len(us) families with one shared E. us[k] = ln(x / x_scale), ys[k] = loss in nats."""
    K = len(us)
    lay = make_layout(us)
    logy = np.log(np.concatenate(ys))
    # 1. variable-projection grid: the best grid points of a fine alpha grid
    alphas = np.arange(0.01, 2.0, 0.01) if K == 1 else np.arange(0.02, 2.0, 0.02)
    vp, _ = vp_grid(us, [y[None, :] for y in ys], alphas, top=8)
    starts = [vp[0]]
    starts.append(chinchilla_grid(K))
    S = np.concatenate(starts, axis=0)
    theta, F, _ = lm_refine(S, np.broadcast_to(logy, (S.shape[0], logy.size)).copy(), lay, delta, max_iter=200)
    # 3. polish the best five distinct local optima with L-BFGS-B (tight tolerances, analytic gradient)
    order = np.argsort(F)
    polished = sorted((polish(theta[i], logy, lay, delta) for i in order[:5]), key=lambda t: t[0])
    best_F, best_theta, ok = polished[0]
    # agreement: every start whose LM optimum lies within a tiny objective tolerance of the best
    tolF = 1e-6 * max(1.0, abs(best_F))
    n_at_best = int(np.sum((F - best_F <= tolF + 1e-4 * max(1.0, abs(best_F)))
                           & (np.abs(theta[:, 1 + K:] - best_theta[1 + K:]).max(axis=1) < 1e-2)))
    return SatFit(best_theta, best_F, x_scale, K, S.shape[0], max(n_at_best, 1), ok)


@dataclass(frozen=True)
class BootFits:
    """Bootstrap refits of the saturating law: theta (B, P), objective (B,), and how they were reached."""

    theta: np.ndarray
    objective: np.ndarray
    stopped_early: np.ndarray  # (B,) the warm start alone ended above the multi-start optimum (the old refit)
    unconverged: np.ndarray  # (B,) the final optimum still moving when LM's iteration cap ran out
    thorough: np.ndarray  # (B,) refitted from scratch with fit_saturating (starts disagreed or unconverged)


def bootstrap_saturating(us: list[np.ndarray], Ystar: list[np.ndarray], warm: np.ndarray,
                         delta: float = 1e-3) -> BootFits:
    """Refit B resampled data sets so that each reaches its own optimum, not the nearest stop of a warm start.

    Multi-start per resample, vectorised: the full-data optimum (warm start), the best three points of a
    variable-projection alpha grid computed on that resample, and the best one with the floor E at its
    E >= 0 edge (pure power law; LM walks there slowly). Every start runs LM to convergence (cap 200). A
    resample is then checked: when its starts disagree (best objectives differ by more than 1e-6 relative) or
    its best start hit the iteration cap, it is refitted from the 100 starts of ``chinchilla_grid`` as well
    and the best optimum is kept. A best optimum that LM left still moving is finished with L-BFGS-B
    (``polish``). ``stopped_early`` records the resamples where the warm start alone (a single refit from
    the full-data optimum) stopped above the optimum found; ``unconverged`` those whose final point is not
    stationary (projected gradient >= STATIONARY_GRAD after L-BFGS-B).
    """
    lay = make_layout(us)
    Y = np.concatenate(Ystar, axis=1)
    logy = np.log(np.clip(Y, 1e-12, None))
    B = Y.shape[0]
    vp, _ = vp_grid(us, Ystar, np.arange(0.04, 2.0, 0.08), top=3)  # (B, 3, P)
    edge = vp[:, :1].copy()
    edge[:, :, 0] = -10.0  # E = 4.5e-5 nats: the pure-power-law edge
    starts = np.concatenate([warm[None, None, :].repeat(B, axis=0), vp, edge], axis=1)  # (B, S, P)
    n_s = starts.shape[1]
    th, F, conv = lm_refine(starts.reshape(B * n_s, -1), np.repeat(logy, n_s, axis=0), lay, delta, max_iter=200)
    th, F, conv = th.reshape(B, n_s, -1), F.reshape(B, n_s), conv.reshape(B, n_s)
    best = np.argmin(F, axis=1)
    rows = np.arange(B)
    theta, Fb, conv_b = th[rows, best], F[rows, best], conv[rows, best]
    tol = 1e-6 * np.maximum(1.0, np.abs(Fb))
    polished = ~conv_b  # LM still creeping (along a Huber kink, or a flat valley): more LM, then L-BFGS-B
    ix = np.flatnonzero(polished)
    if ix.size:
        theta[ix], Fb[ix], conv_b[ix] = lm_refine(theta[ix], logy[ix], lay, delta, max_iter=2000)
    for b in np.flatnonzero(~conv_b):
        Fp, thp, conv_b[b] = polish(theta[b], logy[b], lay, delta)
        if Fp <= Fb[b]:
            theta[b], Fb[b] = thp, Fp
    stopped_early = F[:, 0] > Fb + tol
    return BootFits(theta, Fb, stopped_early, ~conv_b, polished)


def choose_e_mode(levels: list[np.ndarray], requested: str) -> str:
    """``shared`` (one E for both families) unless asked otherwise or both families span >= 1.5
    decades with >= 6 levels (the rule of thumb under which E and alpha become separately identifiable)."""
    if requested in ("shared", "free"):
        return requested
    if len(levels) < 2:
        return "shared"
    ok = all(lv.size >= 6 and math.log10(lv.max() / lv.min()) >= 1.5 for lv in levels)
    return "free" if ok else "shared"
