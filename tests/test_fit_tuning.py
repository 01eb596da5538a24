"""The LR envelope of a ``[tune]`` sweep (fit/tuning.py): per (family, level) the grid point with the lowest mean
selection loss over seeds is fitted with its evaluation loss; every grid point is listed in ``fit --json``'s tuning
block; a chosen LR at the grid's edge fires ``lr_at_edge`` naming the LR to add; seeds that disagree are said.
Synthetic grid runs (RunRecords as the store returns them) go straight to the fit."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from ebt_scaling.fit import FitSettings, fit_axes
from ebt_scaling.fit.design import group_runs
from ebt_scaling.fit.results import AxisFit, seeds_advice
from ebt_scaling.fit.service import SweepFits
from ebt_scaling.fit.tuning import select_level
from ebt_scaling.records import RunRecord

GRID = (0.005, 0.01, 0.02)
LEVELS = (1.0, 2.0, 4.0, 8.0)
# the best LR per level (log-quadratic valley): the EBT's falls with depth and leaves the grid at the top at 1 block
BEST = {"ebt": {1.0: 0.04, 2.0: 0.012, 4.0: 0.009, 8.0: 0.008}, "transformer_pp": {x: 0.01 for x in LEVELS}}
SLOPE = {"ebt": -0.12, "transformer_pp": -0.10}
SETTINGS = FitSettings(resamples=200, permutations=99)


def loss(fam: str, x: float, lr: float) -> float:
    return 4.0 + SLOPE[fam] * math.log(x) + 0.3 * math.log(lr / BEST[fam][x]) ** 2


def grid_runs(seeds=(0, 1), tuned=True, sweep="tuned", drop=()):
    rng = np.random.default_rng(3)
    runs, rid = [], 0
    for fam in ("transformer_pp", "ebt"):
        for x in LEVELS:
            for lr in GRID:
                for s in seeds:
                    rid += 1
                    y = loss(fam, x, lr) + rng.normal(0, 0.01)
                    sel = y + rng.normal(0, 0.01)
                    cfg = {"train": {"lr": lr}, **({"tune": {"lr": lr}} if tuned else {})}
                    status = "failed" if (fam, x, lr, s) in drop else "completed"
                    runs.append(RunRecord(rid, sweep, fam, "depth", x, s, f"h{rid}", status, cfg,
                                          final_val_loss=y if status == "completed" else None,
                                          fit_eligible=status == "completed",
                                          extra_metrics={"val_select_loss": sel, "unigram_loss": 5.2}))
    return runs


@pytest.fixture(scope="module")
def tuned():
    runs = grid_runs()
    data = group_runs(runs)[("tuned", "depth")]
    return runs, data, fit_axes([data], SETTINGS)[0]


def test_the_envelope_is_fitted_and_every_grid_point_is_reported(tuned):
    runs, data, fit = tuned
    out = SweepFits("tuned", ["tuned"], [fit]).to_json()["axes"][0]
    block = out["tuning"]
    assert set(block) == {"ebt", "transformer_pp"}
    by_id = {r.id: r for r in runs}
    for fam, levels in block.items():
        assert [lv["x"] for lv in levels] == list(LEVELS)
        for lv in levels:
            assert [p["lr"] for p in lv["points"]] == list(GRID)
            assert lv["selection"] == "val_select_loss"
            means = [p["select_mean"] for p in lv["points"]]
            assert lv["chosen"] == int(np.argmin(means)) and lv["chosen_lr"] == GRID[lv["chosen"]]
            for p in lv["points"]:  # per seed: both losses, from the runs themselves
                assert p["seeds"] == [0, 1] and len(p["select"]) == len(p["eval"]) == 2
                assert p["eval"] == [by_id[i].final_val_loss for i in p["run_ids"]]
                assert p["select"] == [by_id[i].extra_metrics["val_select_loss"] for i in p["run_ids"]]
        # the fit uses exactly the chosen points' runs, every seed of each: the LR envelope
        chosen_ids = sorted(i for lv in levels for i in lv["points"][lv["chosen"]]["run_ids"])
        assert sorted(fit.plot[fam].run_id) == chosen_ids
        assert out["families"][fam]["n_runs"] == len(LEVELS) * 2
    assert fit.n_runs == 2 * len(LEVELS) * 2 and out["n_excluded"] == 0  # the other grid runs are not exclusions
    # the chosen LRs of the truth (the valley's grid point nearest the best LR)
    assert [lv["chosen_lr"] for lv in block["transformer_pp"]] == [0.01] * 4
    assert [lv["chosen_lr"] for lv in block["ebt"]] == [0.02, 0.01, 0.01, 0.01]
    assert any("tuned LR envelope" in m for m in out["messages"])


def test_lr_at_edge_fires_and_names_the_lr_to_add(tuned):
    _, _, fit = tuned
    edge = [g for g in fit.guards if g.code == "lr_at_edge"]
    assert len(edge) == 1 and edge[0].family == "ebt" and edge[0].scope == "both"
    assert "x = 1: 0.02 is the largest, add lr 0.04" in edge[0].message
    assert "lr_at_edge" in fit.families["ebt"].guards and "lr_at_edge" not in fit.families["transformer_pp"].guards
    lv = fit.tuning["ebt"][0]
    assert (lv.at_edge, lv.add_lr) == ("largest", 0.04)
    assert all(lv.at_edge is None for lv in fit.tuning["transformer_pp"])
    assert fit.comparison is not None and fit.comparison.unreliable  # the envelope may be wrong: no verdict
    assert "lr at edge" in fit.comparison.unreliable_verdict


def test_smallest_edge_on_a_multiplier_grid_names_scale_and_lr():
    def run(i, scale, seed, sel):
        return RunRecord(i, "s", "ebt", "depth", 2.0, seed, f"h{i}", "completed",
                         {"tune": {"lr_scale": scale, "lr": 0.004 * scale}}, final_val_loss=sel + 0.05,
                         fit_eligible=True, extra_metrics={"val_select_loss": sel})
    runs = [run(1, 0.5, 0, 3.0), run(2, 1, 0, 3.1), run(3, 2, 0, 3.2),
            run(4, 0.5, 1, 3.3), run(5, 1, 1, 3.2), run(6, 2, 1, 3.4)]
    lv = select_level(2.0, runs, {r.id for r in runs})
    assert (lv.chosen_lr, lv.at_edge, lv.add_lr_scale, lv.add_lr) == (0.002, "smallest", 0.25, 0.001)
    # seed 0 alone would pick 0.5x, seed 1 alone 1x: said, and the mean over seeds decides (3.15 < 3.15 + 0.05)
    assert lv.seeds_disagree and lv.best_by_seed == ((0, 0.002), (1, 0.004))


def test_selection_set_not_evaluation_set_picks_the_point():
    """The point with the lower val_loss loses when its selection loss is higher: the fitted loss is never the
    one that chose it (no winner's curse). Without a selection set the choice falls back to val_loss and says so."""
    def run(i, lr, y, sel):
        return RunRecord(i, "s", "ebt", "depth", 1.0, 0, f"h{i}", "completed", {"tune": {"lr": lr}},
                         final_val_loss=y, fit_eligible=True,
                         extra_metrics={} if sel is None else {"val_select_loss": sel})
    a, b, c = run(1, 0.01, 3.0, 3.5), run(2, 0.02, 3.2, 3.1), run(3, 0.04, 3.4, 3.6)
    lv = select_level(1.0, [a, b, c], {1, 2, 3})
    assert lv.chosen_lr == 0.02 and lv.selection == "val_select_loss" and lv.at_edge is None
    a2, b2, c2 = run(1, 0.01, 3.0, None), run(2, 0.02, 3.2, None), run(3, 0.04, 3.4, None)
    lv = select_level(1.0, [a2, b2, c2], {1, 2, 3})
    assert lv.chosen_lr == 0.01 and lv.selection == "val_loss" and lv.at_edge == "smallest" and lv.add_lr == 0.005


def test_a_failed_grid_point_stays_in_the_grid():
    """A point whose runs failed (e.g. diverged at the largest LR) is part of the grid: the point below it is
    not reported as the grid's edge."""
    drop = {("ebt", 1.0, 0.02, 0), ("ebt", 1.0, 0.02, 1)}
    data = group_runs(grid_runs(drop=drop))[("tuned", "depth")]
    lv = data.tuning["ebt"][0]
    top = lv.points[-1]
    assert top.lr == 0.02 and top.select_mean is None and top.eval == (None, None)
    assert lv.chosen_lr == 0.01 and lv.at_edge is None
    assert data.excluded == {"status failed": 2}


def test_untuned_runs_fit_as_before_and_the_json_has_no_tuning_block():
    data = group_runs(grid_runs(tuned=False, seeds=(0,)))[("tuned", "depth")]
    assert data.tuning == {} and data.n_runs == 2 * len(LEVELS) * len(GRID)  # every run is a point, as before
    fit = fit_axes([data], SETTINGS)[0]
    assert "tuning" not in fit.to_json() and "tuning" not in fit.summary_json()
    assert not any(g.code == "lr_at_edge" for g in fit.guards)


def test_tuning_reads_back_from_the_stored_json_and_changes_the_fingerprint(tuned):
    runs, data, fit = tuned
    back = AxisFit.from_json(json.loads(json.dumps(fit.to_json())))
    assert back.tuning == fit.tuning
    # a worse grid point added later changes no fitted run, but the fit is not reused: its tuning block changed
    extra = RunRecord(999, "tuned", "ebt", "depth", 1.0, 0, "hx", "completed", {"tune": {"lr": 0.001}},
                      final_val_loss=9.0, fit_eligible=True, extra_metrics={"val_select_loss": 9.0})
    data2 = group_runs([*runs, extra])[("tuned", "depth")]
    assert data2.run_ids() == data.run_ids()
    fit2 = fit_axes([data2], SETTINGS)[0]
    assert fit2.fingerprint != fit.fingerprint and len(fit2.tuning["ebt"][0].points) == 4


def test_seeds_advice_estimates_the_seeds_that_narrow_the_interval(tuned):
    _, _, fit = tuned
    c = fit.comparison
    width, gain = c.rate_gain_ci[1] - c.rate_gain_ci[0], abs(c.rate_gain)
    text = seeds_advice(fit)
    if width <= gain:
        assert text is None
    else:
        assert f"about {math.ceil(round(2 * (width / gain) ** 2, 6))} seeds per level (now 2)" in text
    # a narrow interval needs no more seeds; single-seed levels give no estimate (the noise is not measured)
    narrow = fit.with_(comparison=c.__class__(**{**c.__dict__, "rate_gain": 0.5, "rate_gain_ci": (0.4, 0.6)}))
    assert seeds_advice(narrow) is None
    wide = fit.with_(comparison=c.__class__(**{**c.__dict__, "rate_gain": 0.1, "rate_gain_ci": (-0.2, 0.4)}))
    assert "about 72 seeds per level (now 2)" in seeds_advice(wide)


E2E_SPEC = """
[sweep]
name = "tuned-e2e"
axis = "depth"
families = ["ebt", "transformer_pp"]
seeds = [0, 1]
[model]
preset = "nano"
sequence_len = 32
[train]
steps = 20
batch_size = 4
warmup_steps = 2
eval_interval = 10
eval_batches = 1
log_interval = 10
checkpoint_interval = 10
lr = 0.001
[tune]
lr = [0.00001, 0.00003, 0.0001]
[data]
source = "synthetic"
vocab_size = 64
[resources]
cpus_per_trial = 1
[axis]
values = [1, 2]
"""


@pytest.mark.slow  # a local Ray sweep of 24 tiny runs (~1-2 min on 2 cores)
def test_a_tuned_sweep_end_to_end_names_the_chosen_lr_and_fires_lr_at_edge(tmp_path):
    """A real [tune] sweep on a tiny axis: every grid run is stored, `fit --json` names the chosen LR per family and
    level, the fitted runs are the chosen ones (the envelope), and a grid whose best point is its largest LR (20 steps
    at LRs far below the useful range: the largest learns most) fires lr_at_edge naming the LR to add."""
    import subprocess
    import sys
    from pathlib import Path

    from ebt_scaling.db import Store

    spec = tmp_path / "s.toml"
    spec.write_text(E2E_SPEC)
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    root = Path(__file__).resolve().parents[1]
    r = subprocess.run([sys.executable, "-m", "ebt_scaling", "sweep", "--spec", str(spec), "--db", url,
                        "--progress", "plain"], capture_output=True, text=True, cwd=root, timeout=900)
    assert r.returncode == 0, r.stdout + r.stderr
    runs = Store(url).list_runs(sweep="tuned-e2e")
    assert len(runs) == 2 * 2 * 3 * 2 and all(x.status == "completed" for x in runs)
    assert all(x.config["tune"]["lr"] == x.config["train"]["lr"] for x in runs)
    assert all("val_select_loss" in x.extra_metrics for x in runs)
    r = subprocess.run([sys.executable, "-m", "ebt_scaling", "fit", "--sweep", "tuned-e2e", "--json", "--db", url,
                        "--resamples", "200"], capture_output=True, text=True, cwd=root, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    ax = json.loads(r.stdout)["axes"][0]
    by_id = {x.id: x for x in runs}
    for fam in ("ebt", "transformer_pp"):
        levels = ax["tuning"][fam]
        assert [lv["x"] for lv in levels] == [1.0, 2.0]
        for lv in levels:
            assert [p["lr"] for p in lv["points"]] == [1e-5, 3e-5, 1e-4]
            means = [p["select_mean"] for p in lv["points"]]
            assert lv["chosen"] == means.index(min(means)) and lv["chosen_lr"] == [1e-5, 3e-5, 1e-4][lv["chosen"]]
            assert lv["at_edge"] == {0: "smallest", 1: None, 2: "largest"}[lv["chosen"]]
            chosen = lv["points"][lv["chosen"]]["run_ids"]
            assert sorted(by_id[i].config["tune"]["lr"] for i in chosen) == [lv["chosen_lr"]] * 2
        assert ax["families"][fam]["n_runs"] == 4  # the envelope: 2 levels x 2 seeds, not the 12 grid runs
    # the T++ learns monotonically faster with the LR this far below its useful range (the EBT's descent noise
    # makes its small differences seed-dependent): its best point is the grid's largest at both levels
    for lv in ax["tuning"]["transformer_pp"]:
        assert (lv["chosen_lr"], lv["at_edge"], lv["add_lr"]) == (1e-4, "largest", 0.000333)
    edge = [g for g in ax["guards"] if g["code"] == "lr_at_edge" and g["family"] == "transformer_pp"]
    assert len(edge) == 1 and "x = 1: 0.0001 is the largest, add lr 0.000333" in edge[0]["message"]


def test_report_has_a_tuning_page_and_says_what_the_axis_shows_first(tuned, tmp_path):
    from ebt_scaling.report.pdf import ReportData, build_report
    from ebt_scaling.report.tuning import headline, tuning_text

    runs, _, fit = tuned
    n = build_report(ReportData("t", [fit], runs), tmp_path / "tuned.pdf")
    m = build_report(ReportData("t", [fit.with_(tuning={})], runs), tmp_path / "plain.pdf")
    assert n == m + 1  # the tuning page, after the axis page
    head = headline(fit, "depth")  # first the conclusion in words, then each family's losses
    assert head[0].startswith("depth: ") and "rate gain" in head[0] and "95% interval" in head[0]
    assert head[1].startswith("depth (each family at its tuned LR per level): the EBT's loss goes from")
    assert "95% interval" in head[1] and "2 seeds per level" in head[1]
    text = tuning_text(fit)
    assert "EBT x = 1: chosen LR 0.02 (at the grid's largest LR: add 0.04)" in text[0]
    assert len(text) == 2 * len(LEVELS)
