"""Issue 16 acceptance: signed-slope verdicts, guard-rails (each firing on data built to trigger it and silent
on clean data), Holm families defined by the analysis, bootstrap refits that reach the optimum, Welch df for
the pure-error test, crossover intervals that count order flips, and the hold-out-largest check."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
from test_fit import FAST, inside, loglinear, saturating_data

from ebt_scaling.errors import ConfigError
from ebt_scaling.fit import FitSettings, axis_data_from_arrays, fit_axes, fit_axis, ols, saturating
from ebt_scaling.fit.design import axis_data_from_runs, parametric_resample
from ebt_scaling.fit.results import holdout_lines
from ebt_scaling.records import RunRecord

CLEAN = {"transformer_pp": -0.08, "ebt": -0.12}


def codes(fit, family=None):
    return {g.code for g in fit.guards if family is None or g.family == family}


QUICK = FitSettings(resamples=200, permutations=99)  # guard tests: intervals need not be precise


def one(data):
    return fit_axes([data], QUICK)[0]


def clean_loglinear(**kw):
    """Log-linear data on which no rate-view guard fires (seed chosen so that the lack-of-fit test, which
    rejects a true line 5% of the time, does not fire by chance)."""
    rng = np.random.default_rng(14)
    return axis_data_from_arrays(*loglinear(rng, CLEAN), axis="data", **kw)


# ------------------------------------------------------------------------------------- signed slopes


def test_rising_loss_gets_no_faster_verdict():
    # EBT's loss rises (+0.20 per ln x) while the T++'s falls (-0.10): |b| ratio says "+100%, EBT faster".
    rng = np.random.default_rng(1)
    fit = one(axis_data_from_arrays(*loglinear(rng, {"transformer_pp": -0.10, "ebt": 0.20}), axis="data"))
    c = fit.comparison
    assert c.rate_gain == pytest.approx(1.0, abs=0.1) and c.p_value < 1e-6  # the trap is there
    assert c.verdict == "no verdict: EBT loss does not fall with x"
    assert "faster" not in c.verdict and "slower" not in c.verdict
    assert c.unreliable is True
    (g,) = [g for g in fit.guards if g.code == "not_falling"]
    assert g.family == "ebt" and "does not clearly fall" in g.message
    assert "not_falling" not in codes(fit, "transformer_pp")


def test_clean_falling_losses_keep_their_verdict():
    fit = one(clean_loglinear(unigram_loss=7.0))
    assert not any(g.scope in ("rate", "both") for g in fit.guards), fit.guards
    assert fit.comparison.verdict == "EBT faster" and fit.comparison.unreliable is False


# ------------------------------------------------------------------------------------- guard-rails


def test_near_unigram_baseline_fires_and_blocks_the_verdict():
    fit = one(clean_loglinear(unigram_loss=4.2))  # losses 4.0 -> 3.6: within 0.5 nats at several levels
    (g,) = [g for g in fit.guards if g.code == "near_baseline" and g.family == "ebt"]
    assert "unigram baseline (4.200 nats" in g.message and "token frequencies" in g.message
    assert fit.comparison.verdict.startswith("unreliable: ") and "near baseline" in fit.comparison.verdict
    assert fit.plot["ebt"].baseline["unigram"] == 4.2
    assert "near_baseline" not in codes(one(clean_loglinear(unigram_loss=5.0)))  # 1 nat above: silent
    assert "near_baseline" not in codes(one(clean_loglinear()))  # no baseline known: nothing to compare


def test_uniform_baseline_from_the_vocabulary_when_no_unigram_is_stored():
    rng = np.random.default_rng(3)
    fam, xs, ys, sd = loglinear(rng, CLEAN)
    runs = [RunRecord(id=i + 1, sweep="s", family=f, axis="data", x=x, seed=s, config_hash=f"h{i}",
                      status="completed", final_val_loss=y + 0.6, fit_eligible=True,
                      config={"model": {"vocab_size": 128}})  # ln 128 = 4.85; losses 4.6 -> 4.2
                for i, (f, x, y, s) in enumerate(zip(fam, xs, ys, sd, strict=True))]
    data = axis_data_from_runs("s", "data", runs)
    assert data.baselines["ebt"] == {"unigram": None, "uniform": pytest.approx(math.log(128))}
    g = [g for g in fit_axis(data, FAST).guards if g.code == "near_baseline"]
    assert g and "uniform (ln V) baseline" in g[0].message
    # a stored unigram loss takes precedence over ln V
    runs2 = [RunRecord(**{**r.__dict__, "extra_metrics": {"unigram_loss": 9.0}}) for r in runs]
    assert not [g for g in fit_axis(axis_data_from_runs("s", "data", runs2), FAST).guards
                if g.code == "near_baseline"]


def test_law_at_bound_fires_on_a_straight_line_and_not_on_a_saturating_law():
    fit = one(clean_loglinear())  # no curvature: alpha runs to its bound 0
    g = [g for g in fit.guards if g.code == "at_bound"]
    assert g and all(x.scope == "exponent" for x in g)
    assert "do not pin the law down" in g[0].message
    assert fit.comparison.exponent_unreliable is True and fit.comparison.verdict == "EBT faster"
    rng = np.random.default_rng(3)
    laws = {"transformer_pp": (1.8, 4.0, 0.30), "ebt": (1.8, 4.4, 0.36)}
    sat_data = axis_data_from_arrays(*saturating_data(rng, laws), axis="data")
    assert all(h.m2 is None for h in one(sat_data).holdout.values())  # the law's check only when asked
    sat = fit_axes([sat_data], dataclasses.replace(QUICK, holdout_law=True))[0]
    assert not any(g.scope == "exponent" for g in sat.guards), sat.guards
    assert sat.comparison.exponent_unreliable is False


def test_lack_of_fit_fires_on_curvature():
    rng = np.random.default_rng(3)
    laws = {"transformer_pp": (1.8, 4.0, 0.30), "ebt": (1.8, 4.4, 0.36)}
    fit = one(axis_data_from_arrays(*saturating_data(rng, laws), axis="data"))
    assert {"ebt", "transformer_pp"} <= {g.family for g in fit.guards if g.code == "lack_of_fit"}
    assert fit.comparison.verdict == "unreliable: lack of fit"
    assert "lack_of_fit" not in codes(one(clean_loglinear()))


def test_single_seed_and_few_levels_fire():
    rng = np.random.default_rng(4)
    fit = one(axis_data_from_arrays(*loglinear(rng, CLEAN, seeds=1), axis="data"))
    g = [g for g in fit.guards if g.code == "single_seed"]
    assert len(g) == 2 and "one seed at 6 of 6 levels" in g[0].message
    few = one(axis_data_from_arrays(*loglinear(rng, CLEAN, levels=3), axis="data"))
    assert "few_levels" in codes(few, "ebt") and few.comparison.verdict.startswith("unreliable")
    clean = one(clean_loglinear())
    assert not codes(clean) & {"single_seed", "few_levels"}


def test_non_monotone_family_fires():
    rng = np.random.default_rng(5)
    fam, xs, ys, sd = loglinear(rng, CLEAN)
    xs_u = sorted(set(xs))
    bump = {xs_u[2]: 0.15, xs_u[3]: 0.15}  # EBT rises by 0.15 nats between levels 2 and 3, then falls again
    ys = [y + (bump.get(x, 0.0) if f == "ebt" else 0.0) for f, x, y in zip(fam, xs, ys, strict=True)]
    fit = one(axis_data_from_arrays(fam, xs, ys, sd, axis="data"))
    assert "non_monotone" in codes(fit, "ebt") and "non_monotone" not in codes(fit, "transformer_pp")
    assert "non_monotone" not in codes(one(clean_loglinear()))


def test_interval_wider_than_the_estimate_fires():
    rng = np.random.default_rng(6)
    fit = one(axis_data_from_arrays(*loglinear(rng, {"transformer_pp": -0.08, "ebt": -0.01}, sigma=0.05),
                                    axis="data"))
    g = [g for g in fit.guards if g.code == "wide_interval" and g.scope == "rate"]
    assert g and g[0].family == "ebt" and "wider than the slope itself" in g[0].message
    assert not [g for g in one(clean_loglinear()).guards if g.code == "wide_interval" and g.scope == "rate"]


# ------------------------------------------------------------------------------------- Holm


def _write(path, sweeps):
    rng = np.random.default_rng(8)
    lines = ["family,axis,x,seed,val_loss"]
    for axis, slopes in sweeps:
        for fam, b in slopes.items():
            for xi in np.geomspace(1e7, 10**8.5, 5):
                for s in range(2):
                    y = 4.0 + b * math.log(xi / 1e7) + rng.normal(0, 0.01)
                    lines.append(f"{fam},{axis},{xi:.10g},{s},{y:.8f}")
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def _csv_shared(path):
    """params and flops rows with the same losses, data separate. Imported rows are runs of their own: equal
    losses no longer make two axes share runs (only the same runs, linked to both axes, do)."""
    rng = np.random.default_rng(9)
    lines = ["family,axis,x,seed,val_loss"]
    for fam, b in {"transformer_pp": -0.08, "ebt": -0.10}.items():
        for xi in np.geomspace(1e7, 10**8.5, 5):
            for s in range(2):
                y = 4.0 + b * math.log(xi / 1e7) + rng.normal(0, 0.01)
                lines.append(f"{fam},params,{xi:.10g},{s},{y:.8f}")
                lines.append(f"{fam},flops,{xi * 6e9 * (6.67 if fam == 'ebt' else 1):.10g},{s},{y:.8f}")
                lines.append(f"{fam},data,{xi:.10g},{s},{y + rng.normal(0, 0.01):.8f}")
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def test_importing_an_unrelated_sweep_changes_no_p_value(tmp_path):
    from ebt_scaling.db.importer import read_import_csv
    from ebt_scaling.db.store import Store

    def import_csv(store, path, sweep):
        store.import_rows(sweep, read_import_csv(path))
    from ebt_scaling.fit.service import fit_store

    store = Store(f"sqlite:///{tmp_path / 'h.db'}")
    try:
        import_csv(store, _csv_shared(tmp_path / "x.csv"), "X")

        def holm(sweep=None):
            return {(f.sweep, f.axis): (f.comparison.p_value, f.comparison.p_value_holm)
                    for f in fit_store(store, sweep=sweep, settings=FAST).fits}

        before, before_all = holm("X"), holm()
        assert before == before_all
        import_csv(store, _write(tmp_path / "y.csv", [("depth", {"transformer_pp": -0.1, "ebt": -0.3}),
                                                      ("width", {"transformer_pp": -0.1, "ebt": -0.1})]), "Y")
        after_all = holm()
        assert {k: v for k, v in after_all.items() if k[0] == "X"} == before  # not one p-value moved
        assert holm("X") == before
        fits = {f.axis: f.comparison for f in fit_store(store, sweep="X", settings=FAST).fits}
        # separate imported rows, equal losses or not: three tests, and the note says params and flops differ
        assert fits["params"].holm_axes == 3
        assert fits["params"].holm_note == "params and flops use different runs: two tests"
        # an explicit family of tests: just data (and only data reported)
        only = fit_store(store, sweep="X", axis="data", settings=FAST, family_of_tests="data").fits[0].comparison
        assert only.holm_axes == 1 and only.p_value_holm == only.p_value
        with pytest.raises(ConfigError, match="leaves out X/flops"):
            fit_store(store, sweep="X", settings=FAST, family_of_tests="data,params")
        with pytest.raises(ConfigError, match="is not an axis"):
            fit_store(store, sweep="X", settings=FAST, family_of_tests="data,lr")
        with pytest.raises(ConfigError, match="no runs for depth"):
            fit_store(store, sweep="X", settings=FAST, family_of_tests="data,params,flops,depth")
    finally:
        store.close()


def test_params_and_flops_on_different_runs_are_two_tests_and_say_so():
    rng = np.random.default_rng(10)
    p = axis_data_from_arrays(*loglinear(rng, CLEAN), axis="params", sweep="s")
    f = axis_data_from_arrays(*loglinear(rng, CLEAN), axis="flops", sweep="s")
    fits = fit_axes([p, f], FAST)
    assert fits[0].comparison.holm_axes == 2
    assert fits[0].comparison.holm_note == "params and flops use different runs: two tests"


def test_params_and_flops_on_the_same_runs_are_one_test():
    """The same runs (config hashes) linked to both axes: one test with the larger p-value, said in the note."""
    rng = np.random.default_rng(10)
    p = axis_data_from_arrays(*loglinear(rng, CLEAN), axis="params", sweep="s")
    f = axis_data_from_arrays(*loglinear(rng, {"transformer_pp": -0.08, "ebt": -0.09}), axis="flops", sweep="s")
    d = axis_data_from_arrays(*loglinear(rng, CLEAN), axis="data", sweep="s")
    runs = frozenset(f"config:{i:016x}" for i in range(12))
    p, f = dataclasses.replace(p, run_keys=runs), dataclasses.replace(f, run_keys=runs)
    fits = {x.axis: x.comparison for x in fit_axes([d, p, f], FAST)}
    assert fits["params"].holm_axes == 2 and fits["params"].p_value_holm == fits["flops"].p_value_holm
    assert fits["params"].p_value_holm >= max(fits["params"].p_value, fits["flops"].p_value)
    assert fits["params"].holm_note == "params and flops share runs: one test (the larger p-value)"
    assert fits["data"].holm_note == fits["params"].holm_note and fits["data"].holm_axes == 2


# ------------------------------------------------------------------------------------- bootstrap refits


def test_bootstrap_refits_reach_the_optimum_of_each_resample():
    """On resamples where a thorough refit finds a lower objective, a single warm start stops short; the
    multi-start bootstrap reaches the thorough optimum on every resample and says how often the warm start
    alone would have stopped early."""
    rng = np.random.default_rng(2)
    laws = {"transformer_pp": (1.8, 4.0, 0.30), "ebt": (1.8, 4.4, 0.30)}
    fam, xs, ys, _ = saturating_data(rng, laws, levels=5, decades=1.5, sigma=0.02, seeds=1)
    fam, xs, ys = np.array(fam), np.array(xs), np.array(ys)
    us = [np.log(xs[fam == f] / 1e8) for f in laws]
    yy = [ys[fam == f] for f in laws]
    sat = saturating.fit_saturating(us, yy, 1e8)
    parts = np.split(saturating.model_log(sat.theta[None, :], saturating.make_layout(us))[0], [us[0].size])
    B = 60
    Ys = [np.exp(parametric_resample(mp, np.log(y) - mp, 2.5, B, rng)) for mp, y in zip(parts, yy, strict=True)]
    thorough = np.array([saturating.fit_saturating(us, [Y[b] for Y in Ys], 1e8).objective for b in range(B)])
    tol = 1e-6 * np.maximum(1.0, thorough)
    # the previous refit (50 LM iterations from the full-data optimum) stops short on some of these resamples
    lay = saturating.make_layout(us)
    logy = np.log(np.concatenate(Ys, axis=1))
    _, F_old, _ = saturating.lm_refine(np.tile(sat.theta, (B, 1)), logy, lay, 1e-3, max_iter=50)
    assert (F_old > thorough + tol).sum() >= 3
    bf = saturating.bootstrap_saturating(us, Ys, sat.theta)
    assert (bf.objective <= thorough + tol).all(), np.flatnonzero(bf.objective > thorough + tol)
    assert 0 < bf.stopped_early.sum() < B and not bf.unconverged.any()
    law = fit_axis(axis_data_from_arrays(fam, xs, ys), FAST).families["ebt"].law
    assert 0.0 <= law.boot_stopped_early_frac <= 1.0 and law.boot_unconverged_frac == 0.0


# ------------------------------------------------------------------------------------- Welch, crossover


def test_pure_error_test_keeps_its_size_with_unequal_seed_variances():
    """Null of equal slopes; T++ 5 seeds with sd 0.002, EBT 2 seeds with sd 0.03. A pooled pure-error variance
    is dominated by the 4 quiet T++ df and rejects far too often; the Welch df test keeps its size."""
    x = np.repeat(np.geomspace(1e7, 1e9, 5), 1)
    rej_welch = rej_pooled = 0
    n = 300
    for k in range(n):
        rng = np.random.default_rng(700 + k)
        ut = np.log(np.repeat(x, 5))
        ue = np.log(np.repeat(x, 2))
        yt = 4 - 0.08 * ut + rng.normal(0, 0.002, ut.size)
        ye = 4 - 0.08 * ue + rng.normal(0, 0.03, ue.size)
        t = ols.slope_test(ue, ye, ut, yt, 99, rng)
        assert t.variance == "pure error, per family (Welch df)"
        rej_welch += t.p_value < 0.05
        # the pooled variant, for contrast
        ss = sum(float(((y[u == v] - y[u == v].mean()) ** 2).sum()) for u, y in ((ut, yt), (ue, ye))
                 for v in np.unique(u))
        df = ut.size - 5 + ue.size - 5
        se = math.sqrt(ss / df * (1 / ((ut - ut.mean()) ** 2).sum() + 1 / ((ue - ue.mean()) ** 2).sum()))
        from scipy import stats

        rej_pooled += 2 * stats.t.sf(abs(t.diff) / se, df) < 0.05
    assert 0.02 <= rej_welch / n <= 0.09, rej_welch / n
    assert rej_pooled / n > 0.12, rej_pooled / n


def test_crossover_interval_counts_order_flips():
    rng = np.random.default_rng(12)
    b = {"transformer_pp": -0.080, "ebt": -0.082}  # barely different slopes: the order flips in many resamples
    fit = fit_axis(axis_data_from_arrays(*loglinear(rng, b, sigma=0.03), axis="flops"), FAST)
    cr = fit.crossover
    assert cr.fraction_resamples_same_direction < 0.975
    assert cr.log10_x_ci[1] is None and "to infinity" in cr.message
    assert cr.log10_x_ci[0] is not None
    sharp = fit_axis(axis_data_from_arrays(*loglinear(rng, {"transformer_pp": -0.08, "ebt": -0.12}),
                                           axis="flops"), FAST).crossover
    assert sharp.fraction_resamples_same_direction == 1.0 and None not in sharp.log10_x_ci


# ------------------------------------------------------------------------------------- hold-out


def test_holdout_largest_predicts_a_straight_line_and_flags_curvature():
    lin = one(clean_loglinear())
    for fam in ("ebt", "transformer_pp"):
        h = lin.holdout[fam]
        assert h.n_levels_fit == 5 and h.x == pytest.approx(1e7 * 10**1.5)
        assert inside(h.error_ci, 0.0) and h.covered is True
        assert h.error_ci[1] - h.error_ci[0] < 0.05
    rng = np.random.default_rng(3)
    laws = {"transformer_pp": (1.8, 4.0, 0.30), "ebt": (1.8, 4.4, 0.36)}
    sat_data = axis_data_from_arrays(*saturating_data(rng, laws), axis="data")
    assert all(h.m2 is None for h in one(sat_data).holdout.values())  # the law's check only when asked
    sat = fit_axes([sat_data], dataclasses.replace(QUICK, holdout_law=True))[0]
    for fam in ("ebt", "transformer_pp"):
        h = sat.holdout[fam]  # the curve flattens: the extrapolated line undershoots the observed loss
        assert h.error_nats > 0 and h.error_ci[0] > 0 and h.covered is False
        m2 = h.m2  # ... while the saturating law, fitted on the same levels, predicts it
        assert m2.n_levels_fit == h.n_levels_fit and m2.x == h.x
        assert m2.covered is True and abs(m2.error_nats) < 0.5 * h.error_nats
        assert m2.error_ci[0] < m2.error_nats < m2.error_ci[1]
        assert "M2 law" in "\n".join(holdout_lines(fam, h)) and len(holdout_lines(fam, h)) == 2
    single = one(axis_data_from_arrays(*loglinear(np.random.default_rng(4), CLEAN, seeds=1), axis="data"))
    assert inside(single.holdout["ebt"].error_ci, 0.0)
    few = one(axis_data_from_arrays(*loglinear(rng, CLEAN, levels=3), axis="data"))
    assert few.holdout == {}
    four = one(axis_data_from_arrays(*loglinear(rng, CLEAN, levels=4), axis="data"))
    assert four.holdout and all(h.m2 is None for h in four.holdout.values())  # M2 needs 4 levels to fit
