"""Fit one axis: M1 per family, M2 per family, EBT-vs-T++ comparison, crossover; then Holm across axes.

Every number comes with the bootstrap that produced its interval; awkward data produce messages instead
of exceptions, and whatever can be fitted still is. Results are the frozen dataclasses of ``fit/results.py``.
"""

from __future__ import annotations

import hashlib
import json
import math
import zlib
from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np

from ebt_scaling.fit import guards as guard_rails
from ebt_scaling.fit import ols, saturating
from ebt_scaling.fit.design import (
    EBT,
    PARAMETRIC,
    TPP,
    AxisData,
    FamilyData,
    bootstrap_kind,
    parametric_resample,
    percentile_ci,
    stratified_resample,
)
from ebt_scaling.fit.results import (
    TEXT,
    AxisFit,
    Band,
    Comparison,
    Crossover,
    FamilyFit,
    FamilyPlot,
    Guard,
    Interval,
    LawFit,
    LawHoldout,
    LineHoldout,
    json_value,
    paper_gains,
)

FIT_CODE_VERSION = 3  # bump when a change alters fitted numbers, so stored fits are not reused
LN10 = math.log(10.0)
MIN_LEVELS_M1 = 3
MIN_LEVELS_M2 = 4


@dataclass(frozen=True)
class FitSettings:
    resamples: int = 2000
    seed: int = 0
    level: float = 0.95
    delta: float = 1e-3
    e_mode: str = "auto"  # auto | shared | free
    permutations: int = 2000
    # The hold-out check of the saturating law as well as of the line (``fit --holdout-largest``): a refit and a
    # bootstrap of the law per family, about doubling the fit's time on axes of 5 or more levels.
    holdout_law: bool = False

    def __post_init__(self) -> None:
        from ebt_scaling.errors import ConfigError

        if self.resamples < 100:
            raise ConfigError(f"--resamples {self.resamples}: too few for a percentile interval; use >= 100")
        if not 0.5 < self.level < 1.0:
            raise ConfigError(f"level {self.level}: must be in (0.5, 1)")
        if self.e_mode not in ("auto", "shared", "free"):
            raise ConfigError(f"e_mode {self.e_mode!r}: use auto, shared or free")
        if self.permutations < 99:
            raise ConfigError(f"permutations {self.permutations}: use >= 99")

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "fit_code_version": FIT_CODE_VERSION}


def fingerprint(data: AxisData, settings: FitSettings) -> str:
    """sha256 of the exact points (run id, family, x, seed, loss) and the method settings."""
    rows = sorted((int(r), f.family, repr(float(x)), int(s), repr(float(y)))
                  for f in data.families.values() for r, x, s, y in zip(f.run_id, f.x, f.seed, f.y, strict=True))
    what: dict[str, Any] = {"sweep": data.sweep, "axis": data.axis, "rows": rows, "settings": settings.as_dict(),
                            "baselines": data.baselines}
    if data.tuning:  # the grid runs not chosen change the tuning block, not the fitted rows
        what["tuning"] = json_value(data.tuning)
    if data.measure.modality != TEXT:  # text fingerprints stay what they were (stored fits are reused)
        what["modality"] = data.measure.modality
    blob = json.dumps(what, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()


def _f(v: Any) -> float | None:
    """Finite float or None (JSON has no NaN)."""
    if v is None:
        return None
    v = float(v)
    return v if math.isfinite(v) else None


def _ci(lo: Any, hi: Any) -> Interval:
    return (_f(lo), _f(hi))


def _t(a: np.ndarray) -> tuple[Any, ...]:
    return tuple(a.tolist())


def _log10_drawn(loss: np.ndarray, data: AxisData) -> np.ndarray:
    """log10 of the quantity the report plots, from the loss: perplexity (loss / ln 10) for text, the SmoothL1
    itself for video. The fitted y is ln of that quantity, so M1 bands are (y line) / ln 10 in the same units."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.log10(loss) if data.measure.log_loss else loss / LN10


def _x_scale(data: AxisData) -> float:
    allx = np.concatenate([f.x for f in data.families.values()])
    return float(10.0 ** round(float(np.mean(np.log10(allx)))))


def fit_axis(data: AxisData, settings: FitSettings | None = None) -> AxisFit:
    s = settings or FitSettings()
    fp = fingerprint(data, s)
    messages = list(data.messages)
    fams: dict[str, FamilyFit] = {}
    plot: dict[str, FamilyPlot] = {}
    if not data.families:
        messages.append("no fit-eligible runs on this axis" + (f" ({data.n_excluded} excluded)" if data.n_excluded
                                                               else ""))
        return AxisFit(data.sweep, data.axis, {}, None, None, 0, dict(data.excluded), tuple(messages), s.as_dict(),
                       fp, (), modality=data.measure.modality)
    rng = np.random.default_rng([s.seed, zlib.crc32(f"{data.sweep}/{data.axis}".encode())])
    B = s.resamples
    x_scale = _x_scale(data)
    boot: dict[str, dict[str, np.ndarray]] = {}
    lines: dict[str, ols.Line] = {}
    ystar: dict[str, np.ndarray | None] = {}
    for name in (TPP, EBT):
        if name not in data.families:
            continue
        fd = data.families[name]
        u = np.log(fd.x)
        kind = bootstrap_kind(fd)
        entry = FamilyFit(n_runs=fd.n, n_levels=fd.n_levels, x_range=(_f(fd.x.min()), _f(fd.x.max())),
                          seeds_per_level=(int(min(c.size for c in fd.cells())), int(max(c.size for c in fd.cells()))),
                          bootstrap=kind, modality=data.measure.modality)
        fams[name] = entry
        plot[name] = FamilyPlot(_t(fd.x), _t(fd.loss), _t(fd.seed), _t(fd.run_id))
        ystar[name] = stratified_resample(fd, fd.y, B, rng) if kind != PARAMETRIC else None
        if fd.n_levels < MIN_LEVELS_M1:
            msg = f"{name}: {fd.n_levels} distinct x value(s); a slope needs at least {MIN_LEVELS_M1} - add levels"
            fams[name] = replace(entry, message=msg)
            messages.append(msg)
            continue
        line = ols.fit_line(u, fd.y)
        lines[name] = line
        Y1 = ystar[name] if ystar[name] is not None else parametric_resample(line.fitted, line.resid, 2, B, rng)
        bs, bc = ols.bootstrap_lines(u, Y1)
        boot[name] = {"slope": bs, "intercept": bc}
        lo, hi = percentile_ci(bs, s.level)
        if data.measure.log_loss:  # video: y = ln SmoothL1, the slope is the paper's log-log slope
            units: dict[str, Any] = {"intercept_log10_loss": _f(line.intercept / LN10),
                                     "loss_factor_per_doubling": _f(2.0 ** line.slope)}
        else:
            units = {"intercept_log10_ppl": _f(line.intercept / LN10),
                     "loss_change_per_decade_nats": _f(line.slope * LN10)}
        fams[name] = replace(entry, slope=_f(line.slope), slope_ci=_ci(lo, hi), slope_se=_f(line.slope_se),
                             r2=_f(line.r2), lack_of_fit_p=_f(line.lack_of_fit_p), **units)
        ug = np.linspace(u.min(), u.max(), 60)
        band = (bc[:, None] + bs[:, None] * ug[None, :]) / LN10
        blo, bhi = percentile_ci(band, s.level)
        plot[name] = replace(plot[name], m1=Band(_t(np.exp(ug)), _t((line.intercept + line.slope * ug) / LN10),
                                                 _t(blo), _t(bhi)), resid_m1=_t(line.resid))

    alpha_boot: dict[str, np.ndarray] = {}
    _fit_laws(data, s, fams, plot, ystar, x_scale, rng, messages, alpha_boot)

    guards: list[Guard] = []
    for name, entry in list(fams.items()):
        fit_line = lines.get(name)
        fired = guard_rails.family_guards(data.families[name], entry, data.baselines.get(name),
                                          fit_line.resid if fit_line is not None else None)
        if name in data.tuning:
            fired += guard_rails.lr_edge_guards(name, data.tuning[name])
        fams[name] = replace(entry, guards=tuple(g.code for g in fired))
        guards += fired
        if data.baselines.get(name):
            plot[name] = replace(plot[name], baseline=dict(data.baselines[name]))
    holdout = {name: h for name in fams if (h := _holdout(data.families[name], s, rng)) is not None}
    for name, h in list(holdout.items()):
        if s.holdout_law and (m2 := _holdout_m2(data.families[name], s, x_scale, rng)) is not None:
            holdout[name] = replace(h, m2=m2)

    comparison = None
    crossover = None
    if EBT in lines and TPP in lines:
        comparison = _compare(data, s, lines, boot, fams, alpha_boot, rng)
        rate_note = guard_rails.unreliable_verdict(guards, "rate")
        exponent_note = guard_rails.unreliable_verdict(guards, "exponent")
        comparison = replace(comparison, guards=tuple(sorted({g.code for g in guards})),
                             unreliable_verdict=rate_note, unreliable=rate_note is not None,
                             exponent_unreliable_note=exponent_note, exponent_unreliable=exponent_note is not None)
        crossover = _crossover(data, s, lines, boot)
        if comparison.warning:
            messages.append(comparison.warning)
    elif len(data.families) == 1:
        only = next(iter(data.families))
        messages.append(f"only one family ({only}) has fit-eligible runs; no EBT vs Transformer++ comparison")
    else:
        messages.append("no comparison: a slope is missing for one family")
    return AxisFit(data.sweep, data.axis, fams, comparison, crossover, data.n_runs, dict(data.excluded),
                   tuple(messages), s.as_dict(), fp, data.run_ids(), plot, guards=tuple(guards), holdout=holdout,
                   baselines=dict(data.baselines), tuning=dict(data.tuning), modality=data.measure.modality)


def _holdout(fd: FamilyData, s: FitSettings, rng: np.random.Generator) -> LineHoldout | None:
    """Extrapolation check: the M1 line fitted on every level but the largest, its prediction at the largest
    level, and the prediction error (observed mean - predicted, nats) with a bootstrap interval. The interval
    resamples both the fit (seeds, or the fitted line plus drawn noise for single seeds) and the held-out
    observation, so it is a prediction interval. None with fewer than MIN_LEVELS_M2 levels (3 left to fit)."""
    if fd.n_levels < MIN_LEVELS_M2:
        return None
    x_out = float(fd.levels.max())
    keep = fd.x < x_out
    u, u_out = np.log(fd.x), math.log(x_out)
    line = ols.fit_line(u[keep], fd.y[keep])
    observed = float(fd.y[~keep].mean())
    predicted = line.intercept + line.slope * u_out
    error = observed - predicted
    if bootstrap_kind(fd) == PARAMETRIC:  # noise around the reduced line, at the held-out level too: centred on 0
        Y = parametric_resample(line.intercept + line.slope * u, line.resid, 2, s.resamples, rng)
        centre = 0.0
    else:  # seeds resampled in every cell, the held-out one included: centred on the observed error
        Y = stratified_resample(fd, fd.y, s.resamples, rng)
        centre = error
    bs, bc = ols.bootstrap_lines(u[keep], Y[:, keep])
    err_b = Y[:, ~keep].mean(axis=1) - (bc + bs * u_out) - centre
    lo, hi = percentile_ci(err_b, s.level)
    out = LineHoldout(x=x_out, n_levels_fit=fd.n_levels - 1, observed=_f(observed), predicted=_f(predicted),
                      error_nats=_f(error), error_ci=_ci(error + lo, error + hi),
                      covered=bool(error + lo <= 0.0 <= error + hi), method="M1 line on all levels but the largest")
    if not fd.measure.log_loss:
        return out
    # video: y = ln SmoothL1; observed and predicted as SmoothL1 (geometric mean of the seeds), the error as
    # log10(observed / predicted)
    return replace(out, observed=_f(math.exp(observed)), predicted=_f(math.exp(predicted)), error_nats=None,
                   error_log10=_f(error / LN10), error_ci=_ci((error + lo) / LN10, (error + hi) / LN10),
                   modality=fd.measure.modality)


def _holdout_m2(fd: FamilyData, s: FitSettings, x_scale: float, rng: np.random.Generator) -> LawHoldout | None:
    """The same check for the saturating law (this family alone, its own E): fitted on every level but the
    largest, its prediction there, and the error with a bootstrap prediction interval (each resample refitted
    to its optimum by ``bootstrap_saturating``). None with fewer than MIN_LEVELS_M2 levels left to fit."""
    if fd.n_levels < MIN_LEVELS_M2 + 1:
        return None
    x_out = float(fd.levels.max())
    keep = fd.x < x_out
    u = np.log(fd.x / x_scale)
    loss = fd.loss
    sat = saturating.fit_saturating([u[keep]], [loss[keep]], x_scale, s.delta)
    at_all = saturating.make_layout([u])
    m_all = saturating.model_log(sat.theta[None, :], at_all)[0]  # ln L of the reduced law at every point
    observed = float(loss[~keep].mean())
    predicted = float(np.exp(m_all[~keep][0]))
    # text: observed - predicted in nats; video: log10(observed / predicted) of the SmoothL1
    video = fd.measure.log_loss
    error = math.log10(observed / predicted) if video else observed - predicted
    if bootstrap_kind(fd) == PARAMETRIC:  # noise on the log scale around the reduced law: centred on 0
        Y = np.exp(parametric_resample(m_all, np.log(loss[keep]) - m_all[keep], 3, s.resamples, rng))
        centre = 0.0
    else:
        Y = stratified_resample(fd, fd.y, s.resamples, rng)
        Y = np.exp(Y) if video else Y
        centre = error
    bf = saturating.bootstrap_saturating([u[keep]], [Y[:, keep]], sat.theta, s.delta)
    pred_b = np.exp(saturating.model_log(bf.theta, saturating.make_layout([np.array([math.log(x_out / x_scale)])])))
    if video:
        err_b = np.log10(Y[:, ~keep].mean(axis=1) / pred_b[:, 0]) - centre
    else:
        err_b = Y[:, ~keep].mean(axis=1) - pred_b[:, 0] - centre
    lo, hi = percentile_ci(err_b, s.level)
    out = LawHoldout(x=x_out, n_levels_fit=fd.n_levels - 1, observed=_f(observed), predicted=_f(predicted),
                     error_nats=_f(error), error_ci=_ci(error + lo, error + hi),
                     covered=bool(error + lo <= 0.0 <= error + hi), alpha=_f(sat.alpha(0)), E=_f(sat.E),
                     method="M2 law (own E) on all levels but the largest")
    return replace(out, error_nats=None, error_log10=_f(error), modality=fd.measure.modality) if video else out


def _fit_laws(data: AxisData, s: FitSettings, fams: dict[str, FamilyFit], plot: dict[str, FamilyPlot],
              ystar: dict[str, np.ndarray | None], x_scale: float, rng: np.random.Generator,
              messages: list[str], alpha_boot: dict[str, np.ndarray]) -> None:
    ok = []
    for name in (TPP, EBT):
        if name in data.families:
            fd = data.families[name]
            if fd.n_levels < MIN_LEVELS_M2:
                msg = (f"{name}: saturating law needs at least {MIN_LEVELS_M2} distinct x values "
                       f"(have {fd.n_levels})")
                fams[name] = replace(fams[name], law_message=msg)
                messages.append(msg)
            else:
                ok.append(name)
    if not ok:
        return
    mode = saturating.choose_e_mode([data.families[n].levels for n in ok], s.e_mode)
    groups = [ok] if (mode == "shared" and len(ok) == 2) else [[n] for n in ok]
    for grp in groups:
        fds = [data.families[n] for n in grp]
        us = [np.log(fd.x / x_scale) for fd in fds]
        ys = [fd.loss for fd in fds]  # the law is in the loss itself (nats, or SmoothL1): E in its units
        sat = saturating.fit_saturating(us, ys, x_scale, s.delta)
        lay = saturating.make_layout(us)
        m_log = saturating.model_log(sat.theta[None, :], lay)[0]
        splits = np.cumsum([fd.n for fd in fds])[:-1]
        m_parts = np.split(m_log, splits)
        Ys = []
        for fd, mp in zip(fds, m_parts, strict=True):
            Y = ystar[fd.family]
            if Y is not None and fd.measure.log_loss:  # resampled ln SmoothL1 -> SmoothL1
                Y = np.exp(Y)
            if Y is None:  # one seed per level: parametric bootstrap on the log residuals of this fit
                r = np.log(fd.loss) - mp
                n_par = 3 if len(grp) == 1 else 2.5
                Y = np.exp(parametric_resample(mp, r, n_par, s.resamples, rng))
            Ys.append(Y)
        bf = saturating.bootstrap_saturating(us, Ys, sat.theta, s.delta)
        th = bf.theta
        K = len(grp)
        Eb = np.exp(th[:, 0])
        for k, (name, fd, mp) in enumerate(zip(grp, fds, m_parts, strict=True)):
            al_b = th[:, 1 + K + k]
            Ab = np.exp(th[:, 1 + k] + al_b * math.log(x_scale))
            yhat = np.exp(mp)
            loss = fd.loss
            tss = float(((loss - loss.mean()) ** 2).sum())
            r2 = 1.0 - float(((loss - yhat) ** 2).sum()) / tss if tss > 0 else float("nan")
            with np.errstate(invalid="ignore"):
                corr = float(np.corrcoef(Eb, al_b)[0, 1]) if np.std(Eb) > 0 and np.std(al_b) > 0 else float("nan")
            law = LawFit(
                E=_f(sat.E), A=_f(sat.A(k)), alpha=_f(sat.alpha(k)),
                E_ci=_ci(*percentile_ci(Eb, s.level)), A_ci=_ci(*percentile_ci(Ab, s.level)),
                alpha_ci=_ci(*percentile_ci(al_b, s.level)),
                A_scaled=_f(sat.A_scaled(k)), x_scale=x_scale, e_mode=mode if len(ok) == 2 else "single",
                shared_with=tuple(n for n in grp if n != name), objective=_f(sat.objective),
                n_starts=int(sat.n_starts), n_starts_at_best=int(sat.n_at_best), r2=_f(r2),
                E_alpha_corr=_f(corr),
                alpha_at_bound_frac=_f(np.mean((al_b < 0.01) | (al_b > 1.99))),
                boot_stopped_early_frac=_f(np.mean(bf.stopped_early)),
                boot_rechecked_frac=_f(np.mean(bf.thorough)),
                boot_unconverged_frac=_f(np.mean(bf.unconverged)),
                bootstrap=fams[name].bootstrap if ystar[name] is not None
                else "parametric bootstrap (log residuals of this law)",
            )
            fams[name] = replace(fams[name], law=law)
            alpha_boot[name] = al_b
            xg = np.exp(np.linspace(np.log(fd.x.min()), np.log(fd.x.max()), 60))
            with np.errstate(over="ignore", invalid="ignore"):
                curves = Eb[:, None] + Ab[:, None] * xg[None, :] ** (-al_b[:, None])
                lo, hi = percentile_ci(_log10_drawn(curves, data), s.level)
            fit_curve = sat.E + sat.A(k) * xg ** (-sat.alpha(k))
            plot[name] = replace(plot[name], m2=Band(_t(xg), _t(_log10_drawn(fit_curve, data)), _t(lo), _t(hi)),
                                 resid_m2=_t(np.log(loss) - mp))


def _compare(data: AxisData, s: FitSettings, lines: dict[str, ols.Line], boot: dict[str, dict[str, np.ndarray]],
             fams: dict[str, FamilyFit], alpha_boot: dict[str, np.ndarray],
             rng: np.random.Generator) -> Comparison:
    le, lt = lines[EBT], lines[TPP]
    gain = float(ols.rate_gain(le.slope, lt.slope))
    gb = ols.rate_gain(boot[EBT]["slope"], boot[TPP]["slope"])
    glo, ghi = percentile_ci(gb, s.level)
    fe, ft = data.families[EBT], data.families[TPP]
    test = ols.slope_test(np.log(fe.x), fe.y, np.log(ft.x), ft.y, s.permutations, rng)
    out = Comparison(
        rate_gain=_f(gain), rate_gain_ci=_ci(glo, ghi), p_value=_f(test.p_value),
        p_value_method=f"interaction t-test (y ~ ln x * family), {test.variance}",
        p_value_permutation=_f(test.p_value_permutation),
        n_permutations=int(test.n_permutations), slope_diff=_f(test.diff), t=_f(test.t), df=_f(test.df),
        paper_v1=paper_gains(data.axis, data.measure.modality)[0],
        paper_iclr=paper_gains(data.axis, data.measure.modality)[1],
    )
    le_law, lt_law = fams[EBT].law, fams[TPP].law
    ae, at = alpha_boot.get(EBT), alpha_boot.get(TPP)
    if le_law and lt_law and ae is not None and at is not None:
        ag = le_law.alpha / lt_law.alpha - 1.0 if lt_law.alpha else float("nan")  # type: ignore[operator]
        with np.errstate(divide="ignore", invalid="ignore"):
            agb = ae / at - 1.0
        warning = None
        if math.isfinite(ag) and math.isfinite(gain) and (np.sign(ag) != np.sign(gain)):
            warning = (f"M1 rate gain ({gain:+.1%}) and M2 exponent gain ({ag:+.1%}) disagree in sign: "
                       "the M1 gap reflects reducible loss, not the exponent")
        elif math.isfinite(ag) and math.isfinite(gain) and abs(ag - gain) > 0.5 * max(abs(ag), abs(gain), 0.02):
            warning = (f"M1 rate gain ({gain:+.1%}) and M2 exponent gain ({ag:+.1%}) differ in size: "
                       "M1 mixes the exponent with the remaining reducible loss")
        out = replace(out, alpha_gain=_f(ag), alpha_gain_ci=_ci(*percentile_ci(agb, s.level)), warning=warning)
    return out


def _crossover(data: AxisData, s: FitSettings, lines: dict[str, ols.Line],
               boot: dict[str, dict[str, np.ndarray]]) -> Crossover:
    le, lt = lines[EBT], lines[TPP]
    u_star = float(ols.crossover_u(le.slope, le.intercept, lt.slope, lt.intercept))
    ub = ols.crossover_u(boot[EBT]["slope"], boot[EBT]["intercept"], boot[TPP]["slope"], boot[TPP]["intercept"])
    lo_x = min(float(f.x.min()) for f in data.families.values())
    hi_x = max(float(f.x.max()) for f in data.families.values())
    steeper = np.sign(lt.slope - le.slope)  # > 0: EBT falls faster, so EBT is better above the crossover
    same_dir = np.sign(boot[TPP]["slope"] - boot[EBT]["slope"]) == steeper
    frac = float(np.mean(same_dir))
    base = Crossover(x=None, x_ci=(None, None), log10_x=None, in_range=False, range=(lo_x, hi_x),
                     ebt_better_above=bool(steeper > 0) if steeper != 0 else None,
                     fraction_resamples_same_direction=frac, modality=data.measure.modality)
    if not math.isfinite(u_star) or steeper == 0:
        return replace(base, message="no crossover: the fitted lines are parallel")
    lo_x_ln, hi_x_ln = math.log(lo_x), math.log(hi_x)
    in_range = bool(lo_x_ln <= u_star <= hi_x_ln)
    # A resample whose slope order flips has no x above which the steeper family is lower: its crossover (in
    # that sense) is at +infinity. It is counted as such, not dropped, so flips widen the interval upwards.
    q = (1 - s.level) / 2
    ub_eff = np.where(same_dir & np.isfinite(ub), ub, np.inf)
    ulo, uhi = (float(v) for v in np.quantile(ub_eff, [q, 1 - q], method="inverted_cdf"))
    lo_note = f"10^{ulo / LN10:.2f}" if math.isfinite(ulo) else "infinity"
    if math.isfinite(uhi):
        ci_note = f"95% interval 10^{ulo / LN10:.2f} to 10^{uhi / LN10:.2f}"
        if frac < 1:
            ci_note += f" (the slope order flips in {1 - frac:.1%} of resamples, counted as never crossing)"
    else:
        ci_note = (f"95% interval {lo_note} to infinity: in {1 - frac:.0%} of resamples the slope order flips, "
                   "so the lines may never cross")
    better = "EBT" if steeper > 0 else "Transformer++"
    where = "inside the fitted range" if in_range else (
        f"{(u_star - hi_x_ln) / LN10:.1f} decades above the largest x" if u_star > hi_x_ln
        else f"{(lo_x_ln - u_star) / LN10:.1f} decades below the smallest x")
    prefix = "" if in_range else "no crossover in range; "
    gap_x = min(float(data.families[EBT].x.max()), float(data.families[TPP].x.max()))
    gu = math.log(gap_x)
    gap = (le.intercept + le.slope * gu) - (lt.intercept + lt.slope * gu)
    gapb = (boot[EBT]["intercept"] + boot[EBT]["slope"] * gu) - (boot[TPP]["intercept"] + boot[TPP]["slope"] * gu)
    glo, ghi = percentile_ci(gapb, s.level)
    if data.measure.log_loss:  # video: the lines are ln SmoothL1, so their gap is the log of the SmoothL1 ratio
        gap_fields: dict[str, Any] = {"loss_ratio": _f(math.exp(gap)), "loss_ratio_ci": _ci(np.exp(glo), np.exp(ghi))}
    else:
        gap_fields = {"loss_gap_nats": _f(gap), "loss_gap_ci": _ci(glo, ghi)}
    return replace(
        base, x=_f(math.exp(u_star)) if u_star < 700 else None,
        x_ci=(_f(math.exp(ulo)) if ulo < 700 else None, _f(math.exp(uhi)) if uhi < 700 else None),
        log10_x=u_star / LN10, in_range=in_range, log10_x_ci=(_f(ulo / LN10), _f(uhi / LN10)),
        message=f"{prefix}lines cross at x = 10^{u_star / LN10:.2f} ({where}; {better} lower above it); " + ci_note,
        gap_at_x=gap_x, **gap_fields)


def adjust_holm(fits: list[AxisFit], tests: list[list[int]] | None = None,
                note: str | None = None) -> list[AxisFit]:
    """Holm-adjust the comparison p-values of one family of tests: ``fits`` with their comparisons' Holm fields
    set (a new list; results are frozen).

    ``fits`` are the axes of the family; ``tests`` groups indices into ``fits`` that are one test (axes that
    share runs, such as params and flops re-expressing the same runs): a group counts once, with the largest
    p-value of its members, and every member gets the group's adjusted p. Default: each axis is a test."""
    tests = tests if tests is not None else [[i] for i in range(len(fits))]
    ps: list[float | None] = []
    for grp in tests:
        vals = [float(p) for i in grp if (c := fits[i].comparison) is not None and (p := c.p_value) is not None]
        ps.append(max(vals) if vals else None)
    adj = ols.holm(ps)
    labels = tuple(f"{f.sweep}/{f.axis}" for f in fits if f.comparison is not None)
    out = list(fits)
    for grp, a in zip(tests, adj, strict=True):
        for i in grp:
            c = fits[i].comparison
            if c is None:
                continue
            c = replace(c, p_value_holm=a, holm_axes=sum(p is not None for p in ps), holm_family=labels,
                        holm_note=note)
            out[i] = replace(fits[i], comparison=replace(c, verdict=verdict(c, a)))
    return out


def verdict(comparison: Comparison, p_holm: float | None, alpha: float = 0.05) -> str:
    """EBT faster/slower at Holm-adjusted p < alpha, unless a guard-rail fired (then the reason, never a
    direction): a family whose loss does not fall, or any other guard, makes the rate gain unreadable."""
    gain = comparison.rate_gain
    if gain is None or p_holm is None:
        return "not testable"
    if comparison.unreliable_verdict:
        return str(comparison.unreliable_verdict)
    if p_holm < alpha:
        return "EBT faster" if gain > 0 else "EBT slower"
    return "not distinguishable at 95%"


def shared_tests(datas: list[AxisData]) -> list[list[int]]:
    """Group axes that share runs into one test: the same runs (config hashes; the params and flops axes of a
    sweep re-express one set of runs, linked to both)."""
    parent = list(range(len(datas)))

    def root(i: int) -> int:
        while parent[i] != i:
            i = parent[i]
        return i

    for i, a in enumerate(datas):
        for j in range(i + 1, len(datas)):
            b = datas[j]
            if a.run_keys & b.run_keys:
                parent[root(j)] = root(i)
    groups: dict[int, list[int]] = {}
    for i in range(len(datas)):
        groups.setdefault(root(i), []).append(i)
    return list(groups.values())


def holm_note(fits: list[AxisFit], tests: list[list[int]]) -> str | None:
    """Plain words on how params and flops entered the Holm family (one test when they share runs)."""
    notes = []
    for grp in tests:
        if len(grp) > 1:
            notes.append(" and ".join(fits[i].axis for i in grp) + " share runs: one test (the larger p-value)")
    axes = {f.axis: i for i, f in enumerate(fits)}
    if "params" in axes and "flops" in axes and not any({axes["params"], axes["flops"]} <= set(g) for g in tests):
        notes.append("params and flops use different runs: two tests")
    return "; ".join(notes) or None


def fit_axes(datas: list[AxisData], settings: FitSettings | None = None) -> list[AxisFit]:
    """Fit every axis; Holm over the axes of each sweep (axes sharing runs are one test)."""
    fits = [fit_axis(d, settings) for d in datas]
    for sweep in dict.fromkeys(d.sweep for d in datas):
        idx = [i for i, d in enumerate(datas) if d.sweep == sweep]
        for i, f in zip(idx, holm_family([fits[i] for i in idx], [datas[i] for i in idx]), strict=True):
            fits[i] = f
    return fits


def holm_family(fits: list[AxisFit], datas: list[AxisData]) -> list[AxisFit]:
    """Holm over exactly these axes (one family of tests), axes sharing runs counted once: the adjusted fits."""
    tests = shared_tests(datas)
    return adjust_holm(fits, tests, holm_note(fits, tests))
