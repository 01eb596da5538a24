"""Fits and report pages of video sweeps (issue 31.3): stored video runs (``model.frame_dim`` set, validation SmoothL1
as ``final_val_loss``, ``copy_loss`` / ``mean_loss`` as summary metrics) in a real SQLite Store, with known power laws.

The fit is the paper's video measure, the log-log slope of SmoothL1 on x; the near-baseline guard compares with the
copy-last-frame loss; an axis mixing text and video runs is refused; the report draws SmoothL1 pages with both
baselines and no perplexity. Text outputs are pinned by tests/test_fit_results.py (golden JSON)."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess

import numpy as np
import pytest
from typer.testing import CliRunner

from ebt_scaling.cli.main import app
from ebt_scaling.db.store import Store
from ebt_scaling.errors import ConfigError
from ebt_scaling.fit import AxisFit, FitSettings, axis_data_from_arrays, exclusion_reason, fit_axes
from ebt_scaling.fit.service import fit_store
from ebt_scaling.records import MetricPoint, PlannedRun, RunRecord

FAST = FitSettings(resamples=300, permutations=99)
WIDTHS = (384, 512, 768, 1024, 1536, 2048)
# SmoothL1 = A (x / 384)^b: the T++ and the EBT with different log-log slopes; the EBT starts higher (as in the paper)
TRUTH = {"transformer_pp": (0.50, -0.30), "ebt": (0.60, -0.40)}
TRUE_GAIN = 0.40 / 0.30 - 1.0
COPY, MEAN = 0.90, 1.15  # SmoothL1 of repeating the last frame / predicting the mean embedding
runner = CliRunner()


def _hash(*parts: object) -> str:
    return hashlib.sha256(repr(parts).encode()).hexdigest()


def _config(family: str, width: int, seed: int, video: bool = True) -> dict:
    model = {"family": family, "n_layer": 2, "n_embd": width, "n_head": 4, "sequence_len": 16}
    if video:
        model["frame_dim"] = 64
    return {"model": model, "train": {"batch_size": 8, "seed": seed}}


def store_runs(store: Store, sweep: str, losses: dict[tuple[str, int, int], float], *, video: bool = True,
               copy: float = COPY, mean: float = MEAN, curves: bool = False) -> None:
    """Plan, start and finish one trained run per (family, width, seed) with the given final SmoothL1, as the
    training loop stores a video run (baselines in ``extra``, no perplexity)."""
    store.create_sweep(sweep, "width")
    planned = [PlannedRun(fam, "width", float(w), s, _hash(sweep, fam, w, s, video), _config(fam, w, s, video))
               for (fam, w, s) in losses]
    for rec, loss in zip(store.plan_runs(sweep, planned), losses.values(), strict=True):
        store.mark_running(rec.id)
        if curves:
            store.log_metrics(rec.id, [MetricPoint("train_loss", k, loss * (1 + 2.0 / k)) for k in (1, 2, 4, 8)]
                              + [MetricPoint("val_loss", k, loss * (1 + 1.5 / k)) for k in (2, 4, 8)])
        extra = {"copy_loss": copy, "mean_loss": mean} if video else {"unigram_loss": 7.0}
        store.finish_run(rec.id, "completed", result={"final_val_loss": loss, "final_val_ppl": None, "extra": extra})


def power_law_losses(seeds: int = 3, noise: float = 0.01, rng_seed: int = 2) -> dict[tuple[str, int, int], float]:
    rng = np.random.default_rng(rng_seed)
    return {(fam, w, s): float(A * (w / 384) ** b * np.exp(rng.normal(0.0, noise)))
            for fam, (A, b) in TRUTH.items() for w in WIDTHS for s in range(seeds)}


@pytest.fixture
def video_store(tmp_path):
    url = f"sqlite:///{tmp_path / 'video.db'}"
    with Store(url) as store:
        store_runs(store, "vid", power_law_losses(), curves=True)
    return url


def test_video_fit_recovers_log_log_slopes_and_says_which_scales_faster(video_store):
    with Store(video_store) as store:
        fit = fit_store(store, sweep="vid", settings=FAST).fits[0]
    assert fit.modality == "video" and fit.measure.log_loss
    for fam, (_, b) in TRUTH.items():
        e = fit.families[fam]
        assert abs(e.slope - b) < 0.02, (fam, e.slope)
        assert e.slope_ci[0] <= b <= e.slope_ci[1]
        assert e.loss_factor_per_doubling == pytest.approx(2.0 ** e.slope)
        assert e.intercept_log10_ppl is None and e.loss_change_per_decade_nats is None
        # the law is in SmoothL1 units: its floor is a SmoothL1 below every run, not a loss in nats
        assert e.law is not None and 0.0 <= e.law.E < 0.2
    c = fit.comparison
    assert c.rate_gain_ci[0] <= TRUE_GAIN <= c.rate_gain_ci[1]
    assert c.rate_gain_ci[0] > 0 and c.verdict == "EBT faster"
    assert (c.paper_v1, c.paper_iclr) == (0.3366, None)  # the paper's video width gain (Fig. 9a), not text's +0.02%
    assert fit.baselines == {"ebt": {"copy": COPY, "mean": MEAN}, "transformer_pp": {"copy": COPY, "mean": MEAN}}
    assert "near_baseline" not in {g.code for g in fit.guards}
    # the EBT starts higher and falls faster: the SmoothL1 ratio EBT / T++ at the largest width is above 1
    assert fit.crossover.loss_ratio > 1.0 and fit.crossover.loss_gap_nats is None


def test_video_json_names_no_text_units_and_reads_back(video_store):
    with Store(video_store) as store:
        fit = fit_store(store, sweep="vid", settings=FAST).fits[0]
        again = fit_store(store, sweep="vid", settings=FAST).fits[0]
    assert again.reused and again.modality == "video"
    stored = fit.to_json()
    assert AxisFit.from_json(json.loads(json.dumps(stored))).to_json() == stored
    summary = json.dumps(fit.summary_json(holdout=True))
    for word in ("nats", "ppl", "unigram", "uniform"):
        assert word not in summary, word
    out = fit.summary_json(holdout=True)
    assert out["modality"] == "video" and out["measure"] == "log-log slope of SmoothL1 on x"
    fam = out["families"]["ebt"]
    assert {"intercept_log10_loss", "loss_factor_per_doubling"} <= set(fam)
    assert {"loss_ratio", "loss_ratio_ci"} <= set(out["crossover"])
    h = out["holdout"]["ebt"]
    assert "error_log10" in h and h["observed"] == pytest.approx(0.6 * (2048 / 384) ** -0.4, rel=0.03)


def test_copy_baseline_guard_fires_at_the_copy_loss_and_not_below_it():
    x = [w for w in WIDTHS for _ in range(2)]
    seeds = [s for _ in WIDTHS for s in range(2)]
    rng = np.random.default_rng(3)

    def fit_with(level: float):  # losses falling with width, the smallest width's mean at level x copy
        fam, xs, ys, sd = [], [], [], []
        for f, b in (("transformer_pp", -0.2), ("ebt", -0.25)):
            fam += [f] * len(x)
            xs += x
            sd += seeds
            ys += [level * COPY * (w / 384) ** b * np.exp(rng.normal(0, 0.005)) for w in x]
        data = axis_data_from_arrays(fam, xs, ys, sd, axis="width", modality="video", copy_loss=COPY,
                                     mean_loss=MEAN)
        return fit_axes([data], FAST)[0]

    at_copy = fit_with(1.0)
    fired = [g for g in at_copy.guards if g.code == "near_baseline"]
    assert {g.family for g in fired} == {"ebt", "transformer_pp"}
    assert "copy (last frame) baseline" in fired[0].message and "nats" not in fired[0].message
    assert at_copy.comparison.unreliable and at_copy.comparison.verdict.startswith("unreliable")
    # 0.92 x copy at the smallest width is inside the 10% margin; 0.8 x copy is clearly below it
    assert any(g.code == "near_baseline" for g in fit_with(0.92).guards)
    below = fit_with(0.8)
    assert not any(g.code == "near_baseline" for g in below.guards)


def test_an_axis_mixing_text_and_video_runs_is_refused(tmp_path):
    url = f"sqlite:///{tmp_path / 'mixed.db'}"
    with Store(url) as store:
        store_runs(store, "mixed", {("ebt", 384, 0): 0.5, ("ebt", 512, 0): 0.45})
        store_runs(store, "mixed", {("transformer_pp", 384, 0): 4.0}, video=False)
        with pytest.raises(ConfigError, match="mixes 1 text and 2 video runs"):
            fit_store(store, sweep="mixed", settings=FAST)
    r = runner.invoke(app, ["fit", "--sweep", "mixed", "--db", url, "--resamples", "300"])
    assert r.exit_code != 0
    lines = [line for line in r.output.splitlines() if line.strip()]
    assert len(lines) == 1 and "separate sweeps" in lines[0], r.output


def test_video_exclusions_use_smoothl1_rules():
    def run(loss: float, source: str = "trained") -> RunRecord:
        return RunRecord(id=1, sweep="v", family="ebt", axis="width", x=384.0, seed=0, config_hash="a" * 16,
                         status="completed", config=_config("ebt", 384, 0), final_val_loss=loss, fit_eligible=True,
                         source=source)

    assert exclusion_reason(run(2e6)) == "validation loss above 1e+06 SmoothL1 (numerically unusable)"
    assert exclusion_reason(run(0.0)) == "non-positive validation loss"
    # the ln V + 2 bound of imported text losses is a text rule: an imported SmoothL1 of 30 is kept
    assert exclusion_reason(run(30.0, "imported")) is None


def test_fit_table_names_the_video_measure(video_store):
    r = runner.invoke(app, ["fit", "--sweep", "vid", "--db", video_store, "--resamples", "300"])
    assert r.exit_code == 0, r.output
    assert "log-log slope of SmoothL1" in r.output
    assert "EBT faster" in r.output


@pytest.mark.skipif(shutil.which("pdftotext") is None, reason="needs pdftotext (poppler-utils)")
def test_report_draws_a_smoothl1_page_with_both_baselines_and_no_perplexity(video_store, tmp_path):
    out = tmp_path / "video.pdf"
    r = runner.invoke(app, ["report", "--sweep", "vid", "--db", video_store, "--out", str(out),
                            "--resamples", "300"])
    assert r.exit_code == 0, r.output
    text = subprocess.run(["pdftotext", "-layout", str(out), "-"], capture_output=True, text=True,
                          check=True).stdout
    pages = text.split("\f")
    axis_page = next(p for p in pages if "Axis: width" in p)
    assert "validation SmoothL1 (log scale)" in axis_page
    assert "copy (last frame) baseline" in axis_page and "mean embedding baseline" in axis_page
    assert "perplexity" not in axis_page.lower() and "ppl" not in axis_page and "nats" not in axis_page
    curves = next(p for p in pages if "Loss curves: width" in p)
    assert "SmoothL1 (log scale)" in curves and "copying the last frame" in curves and "unigram" not in curves
    assert "log-log slope of SmoothL1" in pages[0]
