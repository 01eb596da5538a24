"""System-2 thinking (issue 6): think service + CLI end to end on tiny runs trained in-process."""

from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import pytest
import torch
from db_helpers import metric_names
from typer.testing import CliRunner

from ebt_scaling.cli.main import app
from ebt_scaling.config import DataConfig, RunSpec, TrainConfig, model_config
from ebt_scaling.db import Store
from ebt_scaling.models import build_model
from ebt_scaling.records import ListSink, PlannedRun
from ebt_scaling.think import metrics as tm
from ebt_scaling.think.evaluate import evaluate_split, load_run_model, ood_batches
from ebt_scaling.train import train

V, T = 32, 32


@pytest.fixture(autouse=True)
def _threads():
    n = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(n)


def _spec(family: str, ckpt, steps: int) -> RunSpec:
    recipe = "ebt_s2" if family == "ebt" else None
    m = model_config(family, "nano", vocab_size=V, sequence_len=T, recipe=recipe)
    t = TrainConfig(steps=steps, batch_size=8, lr=3e-2 if family == "ebt" else 1e-2, warmup_steps=10,
                    eval_interval=0, eval_batches=2, log_interval=10, seed=0, threads=2)
    return RunSpec(model=m, train=t, data=DataConfig(source="synthetic", vocab_size=V), sweep="think",
                   axis="data", x=float(steps), checkpoint_dir=str(ckpt) if ckpt else None, recipe=recipe)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny ebt_s2 EBT and a tiny T++ trained on the synthetic source, stored in a tmp SQLite DB, plus an
    EBT run without a checkpoint."""
    root = tmp_path_factory.mktemp("think")
    url = f"sqlite:///{root / 'db.sqlite'}"
    store = Store(url)
    store.create_sweep("think", "data")
    specs = [_spec("ebt", root / "ebt", 60), _spec("transformer_pp", root / "tpp", 40), _spec("ebt", None, 1)]
    recs = store.plan_runs("think", [PlannedRun(s.family, "data", s.x, s.seed, s.config_hash, s.to_dict())
                                     for s in specs])
    results = []
    for rec, spec in zip(recs, specs, strict=True):
        sink = ListSink()
        res = train(spec, sink, data_progress=lambda m: None)
        assert res.status == "completed", res.reason
        store.log_metrics(rec.id, sink.points)
        store.finish_run(rec.id, "completed", result={"final_val_loss": res.final_val_loss,
                                                      "final_val_ppl": res.final_val_ppl})
        if res.checkpoint_dir:
            store.set_checkpoint(rec.id, res.checkpoint_dir)
        results.append(res)
    store.close()
    return {"url": url, "root": root, "specs": specs, "runs": recs, "results": results}


def test_metric_helpers():
    assert tm.parse_ppl_name(tm.ppl_name("ood:text:a/b.txt", 5)) == ("ood:text:a/b.txt", 5)
    assert tm.parse_ppl_name("val_ppl") is None
    assert tm.parse_int_list("6, 1,2,2", "--steps") == [1, 2, 6]
    for bad in ("", "a,b", "0,1", "100"):
        with pytest.raises(Exception, match="--steps"):
            tm.parse_int_list(bad, "--steps")
    g = tm.gains({(3, 1): 10.0, (6, 1): 9.0, (3, 5): 8.0, (1, 1): 30.0}, 3)
    assert (g.longer_at, g.verify_at, g.max_at) == ((6, 1), (3, 5), (3, 5))  # which setting gave each
    assert tm.setting_label(g.max_at) == "steps=3 x samples=5" and tm.setting_label((6, 1)) == "steps=6"
    assert g.longer == pytest.approx(0.1) and g.verify == pytest.approx(0.2) and g.max == pytest.approx(0.2)
    assert tm.ood_magnitude(20.0, 10.0) == 2.0 and math.isnan(tm.improvement(0.0, 1.0))


def test_shared_descent_equals_think_and_best_of_n_energy(trained):
    """The grid's sample s after k steps is exactly EBT.think(k, 1) under that sample's generator, and the
    per-setting best-of-N never has a higher scored energy than N=1 (same seeds)."""
    spec = trained["specs"][0]
    model = load_run_model(spec, trained["results"][0].checkpoint_dir, torch.device("cpu"))
    from ebt_scaling.data import load_corpus
    from ebt_scaling.think.evaluate import sample_seed

    corpus = load_corpus(spec.data, T, progress=lambda m: None)
    batch = corpus.val_batches(1, 4, T)
    res = evaluate_split(model, batch, [2, 3], [1, 3], seed=5, device=torch.device("cpu"))
    idx = torch.from_numpy(batch[0])[:, :-1]
    tgt = torch.from_numpy(batch[0])[:, 1:]
    ces, es = [], []
    for s in range(3):
        logits, e = model.think(idx, steps=3, samples=1, generator=torch.Generator().manual_seed(sample_seed(5, 0, s)))
        ces.append(torch.nn.functional.cross_entropy(logits.flatten(0, 1), tgt.flatten(), reduction="none"))
        es.append(e.flatten())
    assert math.exp(float(ces[0].mean())) == pytest.approx(res.ppl[(3, 1)], rel=1e-5)
    e_all = torch.stack(es)
    pick = e_all.argmin(0)
    best = torch.stack(ces).gather(0, pick[None])[0]
    assert math.exp(float(best.mean())) == pytest.approx(res.ppl[(3, 3)], rel=1e-5)
    assert (e_all.min(0).values <= es[0]).all()
    assert res.tokens == 4 * T


def test_think_cli_end_to_end(trained, tmp_path):
    url = trained["url"]
    runner = CliRunner()
    args = ["think", "--sweep", "think", "--steps", "1,2,3,6", "--samples", "1,3", "--batches", "2",
            "--db", url, "--json"]
    r = runner.invoke(app, args)
    assert r.exit_code == 0, r.output
    import json

    out = json.loads(r.stdout)
    by_id = {o["run_id"]: o for o in out}
    ebt_id, tpp_id, bare_id = (rec.id for rec in trained["runs"])
    assert by_id[bare_id]["status"] == "skipped" and "no checkpoint" in by_id[bare_id]["message"]
    assert "no checkpoint" in r.stderr and f"run {bare_id}" in r.stderr
    e, t = by_id[ebt_id], by_id[tpp_id]
    assert e["status"] == "done" and t["status"] == "done"
    assert e["base_steps"] == 3 and e["ood_source"] == "synthetic-shift"
    # The baseline setting reproduces the training loop's validation perplexity (other noise draws, so
    # approximately) and the T++ reproduces it exactly (same first validation batches, deterministic).
    ebt_val = trained["results"][0].final_val_ppl
    assert e["val_ppl_base"] == pytest.approx(ebt_val, rel=0.1)
    assert t["val_ppl_base"] == pytest.approx(trained["results"][1].final_val_ppl, rel=1e-4)
    # Learned something: far below the uniform perplexity V.
    assert e["val_ppl_base"] < 0.6 * V and t["val_ppl_base"] < 0.6 * V
    # OOD is harder than in-distribution for both.
    assert e["ood_magnitude"] > 1.0 and t["ood_magnitude"] > 1.0
    # After training, steps at the trained step size lower the mean energy below the initial candidate's
    # (for this tiny run the curve is flat within the Langevin noise after the first step).
    en = e["energy_steps"]
    assert len(en) == 7 and all(x < en[0] - 0.1 * abs(en[0]) for x in en[1:]), en

    store = Store(url)
    try:
        names = metric_names(store, ebt_id, prefix="think/")
        assert tm.ppl_name("val", 1) in names and tm.ppl_name("ood:synthetic-shift", 3) in names
        assert tm.energy_name("val") in names and tm.token_energy_name(6) in names
        val1 = store.get_metrics(ebt_id, tm.ppl_name("val", 1))
        assert [p.step for p in val1] == [1, 2, 3, 6]
        assert [p.step for p in store.get_metrics(ebt_id, tm.ppl_name("val", 3))] == [3, 6, 9, 18]
        # Best-of-N: stored at passes = steps x samples; T++ flat at every budget.
        tpp = store.get_metrics(tpp_id, tm.ppl_name("val", 1))
        assert len(tpp) == len({1, 2, 3, 6, 9, 18}) and len({p.value for p in tpp}) == 1
        assert metric_names(store, bare_id, prefix="think/") == []
        n_before = store.count_metrics(ebt_id)
        snapshot = {(p.name, p.step): p.value for p in store.get_metrics(ebt_id)}
    finally:
        store.close()
    # Idempotent: a re-run gives the same values, no new rows.
    r2 = runner.invoke(app, args)
    assert r2.exit_code == 0, r2.output
    store = Store(url)
    try:
        assert store.count_metrics(ebt_id) == n_before
        assert {(p.name, p.step): p.value for p in store.get_metrics(ebt_id)} == snapshot
    finally:
        store.close()
    # Another grid replaces the previous series entirely (no mix of grids).
    r4 = runner.invoke(app, ["think", "--sweep", "think", "--steps", "3", "--samples", "1", "--batches", "1",
                             "--ood", "none", "--db", url])
    assert r4.exit_code == 0, r4.output
    store = Store(url)
    try:
        assert [p.step for p in store.get_metrics(ebt_id, tm.ppl_name("val", 1))] == [3]
        assert not [n for n in metric_names(store, ebt_id, prefix="think/ppl/split=ood")]
        assert store.get_metrics(ebt_id, "val_loss")  # the training series are untouched
        with pytest.raises(Exception, match="empty prefix"):
            store.delete_metrics(ebt_id, "")
    finally:
        store.close()
    r2 = runner.invoke(app, args)
    assert r2.exit_code == 0, r2.output
    # The report carries the thinking pages.
    pdf = tmp_path / "r.pdf"
    r3 = runner.invoke(app, ["report", "--sweep", "think", "--db", url, "--out", str(pdf), "--resamples", "100"])
    assert r3.exit_code == 0, r3.output
    from ebt_scaling.think.pages import load_think_data

    store = Store(url)
    try:
        data = load_think_data(store, "think")
    finally:
        store.close()
    assert data is not None and len(data.runs) == 2
    text = subprocess.run(["pdftotext", str(pdf), "-"], capture_output=True, text=True).stdout
    assert "System-2 thinking" in text and "token energy" in text.lower()


def test_think_failures(trained, tmp_path):
    runner = CliRunner()
    url = trained["url"]
    r = runner.invoke(app, ["think", "--sweep", "nope", "--db", url])
    assert r.exit_code != 0 and "no sweep named 'nope'" in r.stderr
    r = runner.invoke(app, ["think", "--sweep", "think", "--steps", "x", "--db", url])
    assert r.exit_code == 2 and "--steps" in r.stderr
    r = runner.invoke(app, ["think", "--sweep", "think", "--ood", "bogus", "--db", url])
    assert r.exit_code == 2 and "--ood bogus" in r.stderr
    # A sweep whose only completed run has no checkpoint: one line for it, a non-zero exit.
    store = Store(url)
    store.create_sweep("bare", "data")
    s = _spec("ebt", None, 3).with_(sweep="bare", x=7.0)
    s = s.with_(train=TrainConfig(steps=3, batch_size=8, seed=1, warmup_steps=1))
    (rec,) = store.plan_runs("bare", [PlannedRun("ebt", "data", 7.0, 1, s.config_hash, s.to_dict())])
    store.finish_run(rec.id, "completed", result={"final_val_loss": 3.0})
    store.create_sweep("empty", "data")
    store.close()
    r = runner.invoke(app, ["think", "--sweep", "bare", "--db", url])
    assert r.exit_code == 1 and "no checkpoint stored" in r.stderr and "no run could be evaluated" in r.stderr
    r = runner.invoke(app, ["think", "--sweep", "empty", "--db", url])
    assert r.exit_code == 1 and "no completed runs" in r.stderr
    # An OOD corpus that does not fit the run's tokenizer is a clear error.
    from ebt_scaling.data import load_corpus

    spec = trained["specs"][0]
    corpus = load_corpus(spec.data, T, progress=lambda m: None)
    with pytest.raises(Exception, match="synthetic-shift"):
        ood_batches("kjv", corpus, spec, 1, 2, T)


def test_tpp_curve_is_flat():
    """A Transformer++ evaluated at every (steps, samples) setting gives one perplexity."""
    m = build_model(model_config("transformer_pp", "nano", vocab_size=V, sequence_len=T)).eval()
    rng = np.random.default_rng(0)
    batches = [rng.integers(0, V, size=(2, T + 1)) for _ in range(2)]
    res = evaluate_split(m, batches, [1, 3], [1, 2], seed=0, device=torch.device("cpu"))
    assert len(set(res.ppl.values())) == 1 and res.energy_steps == []


def test_think_import_rules():
    """The torch part never imports the database; metrics and pages never import torch."""
    code = ("import sys; import ebt_scaling.think.metrics, ebt_scaling.think.pages, ebt_scaling.think.service; "
            "assert 'torch' not in sys.modules, 'torch'; import ebt_scaling.think.evaluate; "
            "assert 'ebt_scaling.db' not in sys.modules, 'db'")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def test_sweep_checkpoint_marker_is_followed(trained, tmp_path):
    """A sweep records Ray's checkpoint folder, whose ebt_checkpoint.json names the entry to load."""
    import json
    import shutil

    spec = trained["specs"][0]
    src = trained["results"][0].checkpoint_dir
    stored = tmp_path / "ray_ckpt"
    shutil.copytree(src, stored / "ckpt")
    (stored / "ebt_checkpoint.json").write_text(json.dumps({"step": 60, "entry": "ckpt"}))
    a = load_run_model(spec, str(stored), torch.device("cpu")).state_dict()
    b = load_run_model(spec, src, torch.device("cpu")).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    with pytest.raises(Exception, match="missing or incomplete"):
        load_run_model(spec, str(tmp_path / "nothing"), torch.device("cpu"))
    other = trained["specs"][1]
    with pytest.raises(Exception, match="another run"):
        load_run_model(other, src, torch.device("cpu"))


def test_s2_recipe_selectable_in_spec_file_and_train_cli(tmp_path):
    """recipe = "ebt_s2" in a sweep spec and ebt-scale train --recipe ebt_s2 both build the S2 model."""
    import json
    import pathlib

    from ebt_scaling.sweeps import expand, load_spec

    spec = load_spec(pathlib.Path(__file__).resolve().parents[1] / "analysis" / "think-tiny.toml")
    ebt = [r.spec for r in expand(spec) if r.planned.family == "ebt"]
    assert ebt and all(s.recipe == "ebt_s2" and s.model.truncate_steps and not s.model.detach_between_steps
                       and s.model.langevin_noise_std == 3.0 and s.model.replay_buffer_size == 192 for s in ebt)
    r = CliRunner().invoke(app, ["train", "--family", "ebt", "--preset", "nano", "--recipe", "ebt_s2", "--steps", "2",
                                 "--data", "synthetic", "--vocab-size", "16", "--seq-len", "8", "--batch-size", "2",
                                 "--device", "cpu", "--json"])
    assert r.exit_code == 0, r.output
    m = json.loads(r.stdout)["spec"]["model"]
    assert m["truncate_steps"] and m["randomize_num_steps"] == 2 and m["step_size"] == 5.0


def test_think_on_a_token_store_run_with_document_sampling(tmp_path):
    """A run trained on `store:DIR` with padded document rows: think scores the run's own validation split, every
    sum over real targets only (the T++'s perplexity equals one computed by hand on the same rows), the energy
    curve over real positions; OOD needs a corpus tokenizer, so `auto` says why it is skipped and a named corpus
    is refused in one line."""
    import json

    from ebt_scaling.data import open_data
    from ebt_scaling.data.sampler import PAD
    from ebt_scaling.data.store import prepare
    from ebt_scaling.data.streams import parse_source
    from ebt_scaling.errors import DataError
    from ebt_scaling.think.evaluate import think_run

    rng = np.random.default_rng(0)
    words = ["the", "energy", "model", "thinks", "again", "and", "descends", "to", "a", "lower", "loss"]
    docs = [" ".join(rng.choice(words, int(rng.integers(2, 12)))) for _ in range(200)]
    (tmp_path / "docs.jsonl").write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    prepare(parse_source(f"jsonl:{tmp_path / 'docs.jsonl'}"), "byte", tmp_path / "store", shard_tokens=4000)
    data = DataConfig(source=f"store:{tmp_path / 'store'}", sampling="document", val_fraction=0.2, vocab_size=256)

    runs = {}
    for family in ("transformer_pp", "ebt"):
        recipe = "ebt_s1" if family == "ebt" else None
        spec = RunSpec(model=model_config(family, "nano", vocab_size=256, sequence_len=T, recipe=recipe),
                       train=TrainConfig(steps=12, batch_size=4, lr=1e-2, warmup_steps=2, eval_interval=0,
                                         eval_batches=2, log_interval=4, seed=0, threads=2),
                       data=data, recipe=recipe, checkpoint_dir=str(tmp_path / family))
        res = train(spec, ListSink(), data_progress=lambda m: None)
        assert res.status == "completed", res.reason
        runs[family] = (spec, res.checkpoint_dir)

    rows = open_data(data, T, seed=0).val_batches(2, 4, T)
    real = sum(int((np.asarray(b)[:, 1:] != PAD).sum()) for b in rows)
    assert real < sum(b.shape[0] for b in rows) * T  # the rows are padded: the test means something

    spec, ckpt = runs["transformer_pp"]
    out = think_run(spec, ckpt, steps=[1], samples=[1], ood="auto", n_batches=2, batch_size=4)
    model = load_run_model(spec, ckpt, torch.device("cpu"))
    with torch.no_grad():
        ce = sum(float(torch.nn.functional.cross_entropy(
            model(torch.from_numpy(b[:, :-1]).clamp(min=0)).flatten(0, 1), torch.from_numpy(b[:, 1:]).flatten(),
            ignore_index=PAD, reduction="sum")) for b in rows)
    assert out.val.tokens == real
    assert out.val.ppl[(1, 1)] == pytest.approx(math.exp(ce / real), rel=1e-5)
    assert out.ood is None and any("token store" in m for m in out.messages), out.messages

    spec, ckpt = runs["ebt"]
    out = think_run(spec, ckpt, steps=[1, 2, 3], samples=[1, 2], ood=None, n_batches=2, batch_size=4)
    assert out.val.tokens == real and all(math.isfinite(v) for v in out.val.ppl.values())
    assert len(out.val.energy_steps) == 4 and all(math.isfinite(e) for e in out.val.energy_steps)
    assert 0 < len(out.val.token_target) <= T and PAD not in out.val.token_target
    # issue 30: --ood text:PATH on a store-trained run is encoded with the store's tokenizer (here: bytes)
    (tmp_path / "ood.txt").write_text("zebra quartz jinx vow " * 400)
    out = think_run(spec, ckpt, steps=[1, 2], samples=[1], ood=f"text:{tmp_path / 'ood.txt'}", n_batches=2,
                    batch_size=4)
    assert out.ood is not None and out.ood_source and all(math.isfinite(v) for v in out.ood.ppl.values())
    with pytest.raises(DataError, match=r"--ood synthetic-shift: a run trained on a token store reads text") as e:
        think_run(spec, ckpt, steps=[1], samples=[1], ood="synthetic-shift", n_batches=1, batch_size=4)
    assert "\n" not in str(e.value)
