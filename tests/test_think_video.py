"""System-2 thinking on video EBTs (issue 31 item 5): ``VideoEBT.think`` / ``think_grid``, the video branch of the
think service (SmoothL1 per (steps, samples), per-frame energies, copy baseline, OOD sets) and ``ebt-scale think``
on a video sweep. Tiny runs trained in-process through train() on synthetic video."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from ebt_scaling.cli.main import app
from ebt_scaling.config import (
    CPU_VIDEO_EBT_S1,
    VIDEO_RECIPE_OVERRIDES,
    DataConfig,
    ModelConfig,
    RunSpec,
    TrainConfig,
)
from ebt_scaling.db import Store
from ebt_scaling.records import ListSink, PlannedRun
from ebt_scaling.think import metrics as tm

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # conftest.py

E, T = 8, 4


def _model_cfg(family: str, recipe: str | None = None, **kw) -> ModelConfig:
    opts = {**VIDEO_RECIPE_OVERRIDES[recipe], **CPU_VIDEO_EBT_S1} if recipe else {}
    return ModelConfig(**{**dict(family=family, n_layer=1, n_embd=16, n_head=2, vocab_size=2, sequence_len=T,
                                 frame_dim=E), **opts, **kw})


# --------------------------------------------------------------------------------------- the model
def _descent_by_hand(model, frames, y0, steps, gen):
    """The video EBT's inner descent written out (float64): y <- y - alpha dE/dy, E of frame_to_embed(y) plus the
    Langevin noise drawn from ``gen`` after y0, step j on landscape min(j, M-1)."""
    cfg = model.cfg
    y, out = y0, []
    alpha, sigma = float(model.alpha_value().detach()), cfg.langevin_noise_std
    for j in range(steps):
        land = min(j, cfg.mcmc_num_steps - 1)
        y = y.detach().requires_grad_(True)
        h = model.frame_to_embed(y)
        if sigma > 0:
            h = h + sigma * torch.randn(h.shape, generator=gen, dtype=h.dtype)
        e = model.energies_from_embedding(h, model.observed_stream(frames, land)).sum()
        (g,) = torch.autograd.grad(e, y)
        y = (y - alpha * g).detach()
        out.append(y)
    return out


@pytest.mark.parametrize("recipe", ["ebt_vid_s1", "ebt_vid_s2"])
def test_think_is_the_models_own_descent_and_best_of_n_never_raises_the_energy(recipe):
    from ebt_scaling.models import build_model
    from ebt_scaling.models.ebt import Draws
    from ebt_scaling.models.video import smooth_l1

    torch.manual_seed(0)
    cfg = _model_cfg("ebt", recipe, step_size=0.5)
    model = build_model(cfg).double().eval()
    frames = torch.randn(3, T, E, dtype=torch.float64)
    targets = torch.randn(3, T, E, dtype=torch.float64)

    def gen(s):
        return torch.Generator().manual_seed(100 + s)

    steps, samples = [1, 2, 4], [1, 2, 3]
    grid = model.think_grid(frames, steps, samples, [gen(s) for s in range(3)])
    for k in steps:  # the k-step candidate of one sample: the descent by hand from the same noise
        g = gen(0)
        y0 = torch.randn((3, T, E), generator=g, dtype=torch.float64) * cfg.init_noise_scale
        want = _descent_by_hand(model, frames, y0, k, g)[-1]
        y, e = model.think(frames, k, 1, generator=gen(0))
        assert torch.allclose(y, want, rtol=0, atol=1e-10) and torch.equal(grid.y[(k, 1)], y)
        assert torch.allclose(e, model.energies(frames, want, min(k, cfg.mcmc_num_steps) - 1), rtol=0, atol=1e-10)
    # at the trained step count, think's candidate is the one the training/validation loss descends to
    k = cfg.eval_steps
    g = gen(0)
    y0 = torch.randn((3, T, E), generator=g, dtype=torch.float64) * cfg.init_noise_scale
    noise = torch.stack([torch.randn((3, T, cfg.n_embd), generator=g, dtype=torch.float64)
                         for _ in range(k)], 1) if cfg.langevin_noise_std > 0 else None
    lands = tuple(model.landscapes(False))
    _, info = model.loss(frames, targets, Draws(lands, y0, noise, None))
    y, _ = model.think(frames, k, 1, generator=gen(0))
    assert float(info["smooth_l1"]) == pytest.approx(float(smooth_l1(y, targets)), rel=1e-12)
    # best-of-N: per (batch, position) the minimum-energy sample, so the chosen energy never rises with N
    per_sample = [model.think(frames, 4, 1, generator=gen(s)) for s in range(3)]
    es = torch.stack([e for _, e in per_sample])  # (samples, B, T)
    for n in samples:
        assert torch.equal(grid.energy[(4, n)], es[:n].min(0).values)
        pick = es[:n].argmin(0)
        want = torch.stack([y for y, _ in per_sample])[pick, torch.arange(3)[:, None], torch.arange(T)]
        assert torch.equal(grid.y[(4, n)], want)
    for k in steps:
        assert bool((grid.energy[(k, 2)] <= grid.energy[(k, 1)]).all())
        assert bool((grid.energy[(k, 3)] <= grid.energy[(k, 2)]).all())
    assert len(grid.energy_steps) == 5 and torch.equal(grid.energy_steps[4], grid.energy[(4, 1)])
    # think with samples=N draws them one after another from one generator: sample 0 is the samples=1 result
    y3, e3 = model.think(frames, 2, 3, generator=gen(7))
    y1, e1 = model.think(frames, 2, 1, generator=gen(7))
    assert bool((e3 <= e1).all())
    with pytest.raises(Exception, match="steps: must be an integer >= 1"):
        model.think(frames, 0)
    with pytest.raises(Exception, match="generator"):
        model.think_grid(frames, [1], [2], [gen(0)])


# --------------------------------------------------------------------------------------- runs and the CLI
def _spec(family, root, source, *, steps=20, seed=0, sweep="vthink"):
    recipe = "ebt_vid_s1" if family == "ebt" else None
    t = TrainConfig(steps=steps, batch_size=8, lr=3e-3, warmup_steps=2, eval_interval=0, eval_batches=2,
                    log_interval=10, seed=seed, threads=1)
    return RunSpec(model=_model_cfg(family, recipe), train=t, data=DataConfig(source=source, val_fraction=0.125),
                   sweep=sweep, axis="width", x=16.0, checkpoint_dir=str(root / f"{family}-{seed}"))


def _train_sweep(url, sweep, specs):
    from ebt_scaling.train.loop import train

    store = Store(url)
    store.create_sweep(sweep, "width")
    recs = store.plan_runs(sweep, [PlannedRun(s.family, "width", s.x, s.seed, s.config_hash, s.to_dict())
                                   for s in specs])
    results = []
    for rec, spec in zip(recs, specs, strict=True):
        sink = ListSink()
        res = train(spec, sink, data_progress=lambda m: None)
        assert res.status == "completed", res.reason
        store.log_metrics(rec.id, sink.points)
        store.finish_run(rec.id, "completed", result={"final_val_loss": res.final_val_loss})
        store.set_checkpoint(rec.id, res.checkpoint_dir)
        results.append(res)
    store.close()
    return recs, results


@pytest.fixture(scope="module")
def vsweep(tmp_path_factory):
    """A tiny video EBT (ebt_vid_s1, CPU alpha) and a tiny video T++ trained 20 steps on synthetic-video:16."""
    root = tmp_path_factory.mktemp("vthink")
    url = f"sqlite:///{root / 'db.sqlite'}"
    specs = [_spec("ebt", root, "synthetic-video:16"), _spec("transformer_pp", root, "synthetic-video:16")]
    recs, results = _train_sweep(url, "vthink", specs)
    return {"url": url, "root": root, "runs": recs, "results": results}


def test_think_cli_on_a_video_sweep(vsweep):
    url = vsweep["url"]
    args = ["think", "--sweep", "vthink", "--steps", "1,2,4", "--samples", "1,2", "--batches", "2", "--db", url]
    r = CliRunner().invoke(app, [*args, "--json"])
    assert r.exit_code == 0, r.output
    by_id = {o["run_id"]: o for o in json.loads(r.stdout)}
    ebt_id, tpp_id = (rec.id for rec in vsweep["runs"])
    e, t = by_id[ebt_id], by_id[tpp_id]
    assert e["status"] == t["status"] == "done"
    assert e["measure"] == "smooth_l1" and e["base_steps"] == 2 and e["ood_source"] == "synthetic-video-shift"
    assert not any("ppl" in k for k in e) and e["frames_per_split"] == 2 * 8 * T
    assert set(e["val_loss"]) == {f"{k}x{n}" for k in (1, 2, 4) for n in (1, 2)}
    # the T++ evaluates the training loop's validation windows (2 batches x 8): its final val_loss exactly
    assert t["val_loss_base"] == pytest.approx(vsweep["results"][1].final_val_loss, rel=1e-6)
    assert len(set(t["val_loss"].values())) == 1
    # the copy baseline is the training result's (same windows); the OOD set is harder for the T++ (faster motion)
    assert e["val_copy_loss"] == pytest.approx(vsweep["results"][0].extra["copy_loss"], rel=1e-6)
    assert t["ood_magnitude"] > 1 and t["ood_copy_loss"] > t["val_copy_loss"]
    assert e["val_max_at"] is None or "step" in e["val_max_at"]
    with Store(url, create=False) as store:
        names = {p.name for p in store.get_metrics(ebt_id)}
        assert not any(n.startswith("think/ppl/") or n.startswith("think/token_") for n in names)
        assert {tm.loss_name("val", 1), tm.loss_name("val", 2), tm.loss_name("ood:synthetic-video-shift", 2),
                tm.frame_energy_name(0), tm.frame_energy_name(4), "think/summary/copy_loss/split=val",
                "think/summary/gain_max/split=val", "think/summary/ood_magnitude"} <= names
        assert [p.step for p in store.get_metrics(ebt_id, tm.loss_name("val", 2))] == [2, 4, 8]
        val1 = {p.step: p.value for p in store.get_metrics(ebt_id, tm.loss_name("val", 1))}
        assert val1[2] == pytest.approx(e["val_loss_base"]) and all(math.isfinite(v) for v in val1.values())
        energy = [p.value for p in store.get_metrics(ebt_id, tm.energy_name("val"))]
        assert len(energy) == 5 and energy == e["energy_steps"]
        assert len(store.get_metrics(ebt_id, tm.frame_energy_name(2))) == T
        tpp = store.get_metrics(tpp_id, tm.loss_name("val", 1))
        assert [p.step for p in tpp] == [1, 2, 4, 8] and len({p.value for p in tpp}) == 1
    # the table: SmoothL1, which direction is better, the setting in words; a re-run gives the same rows
    r2 = CliRunner().invoke(app, args)
    assert r2.exit_code == 0, r2.output
    line = next(x for x in r2.stdout.splitlines() if x.startswith(f"run {ebt_id} "))
    assert "val SmoothL1" in line and "SmoothL1 change (lower is better)" in line and "ppl" not in line
    assert " steps" in line and "OOD synthetic-video-shift SmoothL1" in line
    with Store(url, create=False) as store:
        assert [p.value for p in store.get_metrics(ebt_id, tm.energy_name("val"))] == energy
        _check_pages(store)


def _check_pages(store):
    """The report's think pages of a video sweep: SmoothL1 axes and labels, the copy baseline, frame energies."""
    from matplotlib.figure import Figure

    from ebt_scaling.think.pages import think_pages

    figs: list[Figure] = []

    def new_page() -> Figure:
        figs.append(Figure(figsize=(11.69, 8.27)))
        return figs[-1]

    for build in think_pages(store, "vthink"):
        build(None, new_page)
    assert len(figs) == 3
    texts = [" ".join(t.get_text() for t in f.texts) + " " + (f._suptitle.get_text() if f._suptitle else "")
             for f in figs]
    assert "SmoothL1 vs forward passes" in texts[0] and "Per-frame energy" in texts[2]
    assert not any("perplexity" in t or "ppl" in t for t in texts)
    passes_axes = [a for a in figs[0].axes if a.get_ylabel()]
    assert [a.get_ylabel() for a in passes_axes] == ["validation SmoothL1"] * 2
    legend = [t.get_text() for lg in figs[0].legends for t in lg.get_texts()]
    assert "copy last frame" in legend and "Transformer++ (flat)" in legend
    assert figs[1].axes[0].get_ylabel() == "thinking gain (% SmoothL1 improvement)"
    heat = figs[2].axes[0]
    assert heat.get_ylabel() == "predicted frame" and [t.get_text() for t in heat.get_yticklabels()] == \
        [f"frame {i}" for i in range(1, T + 1)]


def test_video_think_ood_options_and_refusals(vsweep, tmp_path):
    from ebt_scaling.data.video import prepare_video

    url = vsweep["url"]
    ebt_id = vsweep["runs"][0].id
    base = ["think", "--sweep", "vthink", "--steps", "1", "--samples", "1", "--batches", "1", "--db", url]
    other = tmp_path / "other"  # a video store of the same frame_dim: an OOD set
    prepare_video("synthetic", other, frame_dim=E, clip_frames=T + 1, synthetic_clips=6, seed=9)
    r = CliRunner().invoke(app, [*base, "--ood", f"store:{other}", "--json"])
    assert r.exit_code == 0, r.output
    e = {o["run_id"]: o for o in json.loads(r.stdout)}[ebt_id]
    assert e["ood_source"] == "store:other" and math.isfinite(e["ood_loss_base"])
    wide = tmp_path / "wide"
    prepare_video("synthetic", wide, frame_dim=E + 2, clip_frames=T + 1, synthetic_clips=4)
    r = CliRunner().invoke(app, [*base, "--ood", f"store:{wide}"])
    assert r.exit_code == 1 and f"frame_dim {E + 2} differs from the run's {E}" in r.stderr, r.output
    assert r.stderr.count("skipped") == 2
    r = CliRunner().invoke(app, [*base, "--ood", "kjv"])
    assert r.exit_code == 1 and "a video run reads frame embeddings" in r.stderr, r.output
    r = CliRunner().invoke(app, [*base, "--ood", f"store:{tmp_path / 'missing'}"])
    assert r.exit_code == 2 and "no such folder" in r.output
    r = CliRunner().invoke(app, [*base, "--ood", "none", "--json"])
    assert r.exit_code == 0 and all(o["ood_source"] is None for o in json.loads(r.stdout))


def test_video_store_runs_have_no_default_ood_said_once(tmp_path):
    """Runs trained on a video store have no default OOD set: `think` says so once, not once per run."""
    from ebt_scaling.data.video import prepare_video

    vs = tmp_path / "vs"
    prepare_video("synthetic", vs, frame_dim=E, clip_frames=T + 1, synthetic_clips=16)
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    specs = [_spec("transformer_pp", tmp_path, f"store:{vs}", steps=4, seed=s, sweep="vstore") for s in (0, 1)]
    _train_sweep(url, "vstore", specs)
    r = CliRunner().invoke(app, ["think", "--sweep", "vstore", "--steps", "1", "--samples", "1", "--batches", "1",
                                 "--db", url, "--json"])
    assert r.exit_code == 0, r.output
    assert r.stderr.count("no default OOD set for video runs trained on a video store; pass --ood store:DIR") == 1
    assert all(o["status"] == "done" and o["ood_source"] is None for o in json.loads(r.stdout))


def test_metric_names_keep_ppl_for_text_only():
    assert tm.parse_curve_name(tm.loss_name("ood:store:x", 3)) == ("smooth_l1", "ood:store:x", 3)
    assert tm.parse_curve_name(tm.ppl_name("val", 2)) == ("ppl", "val", 2)
    assert tm.parse_ppl_name(tm.loss_name("val", 2)) is None  # a SmoothL1 series is never read as a perplexity
    assert tm.curve_name("ppl", "val", 1) == tm.ppl_name("val", 1)
    assert tm.curve_name("smooth_l1", "val", 1) == "think/loss/split=val/samples=1"
    assert tm.setting_words((4, 8)) == "4 steps x best-of-8" and tm.setting_words((1, 1)) == "1 step"
    assert tm.setting_words(None) is None
    g = tm.gains({(2, 1): 0.05, (4, 1): 0.045, (2, 2): 0.04, (4, 2): 0.044, (1, 1): 0.5}, 2)
    assert g.max == pytest.approx(0.2) and g.max_at == (2, 2) and g.longer == pytest.approx(0.1)
    assert np.isfinite(g.verify)


def test_text_runs_refuse_the_video_ood_sets(tmp_path):
    from ebt_scaling.errors import DataError
    from ebt_scaling.think.evaluate import think_run

    spec = RunSpec(model=ModelConfig(family="ebt", n_layer=1, n_embd=16, n_head=2, vocab_size=8, sequence_len=T),
                   train=TrainConfig(steps=1), data=DataConfig(source="synthetic", vocab_size=8))
    for ood in ("synthetic-video-shift", f"store:{tmp_path}"):
        with pytest.raises(DataError, match="video OOD sets are for video runs; a text run takes kjv"):
            think_run(spec, str(tmp_path / "none"), steps=[1], samples=[1], ood=ood, n_batches=1)
