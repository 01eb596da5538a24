"""Training from token stores (data/sampler.py): the document-hash split, keyed packed/document sampling,
lazy shards, one validation set per sweep, padding masked out of loss and token counts, resume."""

from __future__ import annotations

import json
import pathlib

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from ebt_scaling.cli.main import app
from ebt_scaling.config import DataConfig, RunSpec, TrainConfig, model_config
from ebt_scaling.data import open_data
from ebt_scaling.data.sampler import PAD, StoreData, keyed
from ebt_scaling.data.store import TokenStore, prepare
from ebt_scaling.data.streams import parse_source
from ebt_scaling.errors import ConfigError, DataError
from ebt_scaling.records import ListSink
from ebt_scaling.train import train
from ebt_scaling.train.loop import inputs_targets, validation_batches

WORDS = "the quick brown fox jumps over a lazy dog while energy based transformers think".split()


def _docs(n: int, lo: int, hi: int, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    return [" ".join(WORDS[j] for j in rng.integers(0, len(WORDS), int(rng.integers(lo, hi)))) for _ in range(n)]


@pytest.fixture(scope="module")
def store_dir(tmp_path_factory) -> pathlib.Path:
    """300 documents of 1-60 words, byte tokens, shards of 2,000 tokens (about 25 shards)."""
    root = tmp_path_factory.mktemp("store")
    src = root / "docs.jsonl"
    src.write_text("".join(json.dumps({"text": d}) + "\n" for d in _docs(300, 1, 60)))
    prepare(parse_source(f"jsonl:{src}"), "byte", root / "s", shard_tokens=2000)
    return root / "s"


def _stream(store: TokenStore) -> np.ndarray:
    return store.read(0, store.num_tokens)


def test_keyed_hash_is_pure_and_spread():
    a = keyed(1, 2, np.arange(1000))
    assert np.array_equal(a, keyed(1, 2, np.arange(1000))) and len(set(a.tolist())) == 1000
    assert not np.array_equal(a, keyed(1, 3, np.arange(1000)))
    assert abs(float((a % np.uint64(2)).mean()) - 0.5) < 0.06


def test_split_by_document_hash(store_dir):
    s = StoreData(TokenStore(store_dir), seq_len=32, val_fraction=0.1, split_seed=5)
    val = s.is_val(np.arange(s.store.num_documents))
    assert 0.04 < val.mean() < 0.18
    again = StoreData(TokenStore(store_dir), seq_len=64, sampling="document", val_fraction=0.1, split_seed=5, seed=9)
    assert np.array_equal(val, again.is_val(np.arange(s.store.num_documents)))  # not the mode, T or seed
    other = StoreData(TokenStore(store_dir), seq_len=32, val_fraction=0.1, split_seed=6)
    assert not np.array_equal(val, other.is_val(np.arange(s.store.num_documents)))
    assert s.train_tokens == sum(s.doc_len(d) for d in range(s.store.num_documents) if not val[d])


def test_packed_windows_are_keyed_and_avoid_validation(store_dir):
    store = TokenStore(store_dir)
    s = StoreData(store, seq_len=32, val_fraction=0.1, split_seed=5, seed=3)
    stream = _stream(store)
    b = s.sample_batch(7, range(16))
    assert b.shape == (16, 33) and b.dtype == np.int64
    assert np.array_equal(b, StoreData(TokenStore(store_dir), seq_len=32, val_fraction=0.1, split_seed=5,
                                       seed=3).sample_batch(7, range(16)))
    assert not np.array_equal(b, s.sample_batch(8, range(16)))
    assert not np.array_equal(b, StoreData(store, seq_len=32, val_fraction=0.1, split_seed=5,
                                           seed=4).sample_batch(7, range(16)))
    # worker k of N takes rows k, k+N, ...: together they are the single-process batch, whatever N
    for n in (2, 4):
        parts = {k: s.sample_batch(7, range(k, 16, n)) for k in range(n)}
        for k in range(n):
            assert np.array_equal(parts[k], b[k::n])
    # every window is a slice of the stream that touches no validation document
    val_docs = s.is_val(np.arange(store.num_documents))
    for _ in range(5):
        for row in s.sample_batch(_, range(32)):
            cand = np.flatnonzero((stream[:-33] == row[0]) & (stream[1:-32] == row[1]))
            hits = [int(p) for p in cand if np.array_equal(stream[p:p + 33], row)]
            assert hits
            assert any(not val_docs[s.doc_at(np.arange(p, p + 33))].any() for p in hits)


def test_document_rows_are_padded_training_documents(store_dir):
    store = TokenStore(store_dir)
    s = StoreData(store, seq_len=48, sampling="document", val_fraction=0.1, split_seed=5, seed=1)
    b = s.sample_batch(0, range(64))
    starts = {store.doc_start(d): d for d in range(store.num_documents)}
    padded = 0
    for row in b:
        n = int((row != PAD).sum())
        assert np.all(row[:n] != PAD) and np.all(row[n:] == PAD)  # right padding only
        hits = [d for p, d in starts.items() if np.array_equal(store.read(p, min(n, store.num_tokens - p)), row[:n])]
        assert any(not s.is_val(d) and min(s.doc_len(d), 49) == n for d in hits)
        padded += n < 49
    assert padded >= 2  # documents shorter than seq_len + 1 are padded


def test_shards_open_lazily(store_dir):
    store = TokenStore(store_dir)
    n_shards = len(store.manifest["shards"])
    assert n_shards >= 10
    s = StoreData(store, seq_len=16, sampling="packed", val_fraction=0.1, split_seed=5)
    s.is_val(np.arange(store.num_documents))
    assert not store._bins and not store._idx  # the split needs no shard
    s.sample_batch(0, [0])
    assert 1 <= len(store._bins) <= 2 and len(store._idx) <= 3  # one window: its shard(s) only
    s.val_batches(1, 4, 16, n_windows=4)
    assert len(store._bins) < n_shards


@pytest.mark.parametrize("sampling", ["packed", "document"])
def test_validation_set_is_the_same_for_every_batch_size(store_dir, sampling):
    s = StoreData(TokenStore(store_dir), seq_len=32, sampling=sampling, val_fraction=0.1, split_seed=5)
    sets = {}
    need = 2000 if sampling == "packed" else 600  # this store's ~30 validation documents hold ~970 targets at T=32
    for b in (8, 32):
        tcfg = TrainConfig(batch_size=b, eval_batches=2, eval_tokens=need)
        batches = validation_batches(s, tcfg, 32)
        assert all(len(x) <= b for x in batches)
        sets[b] = np.concatenate(batches)
    assert np.array_equal(sets[8], sets[32])
    rows = sets[8]
    assert (rows[:, 1:] != PAD).sum() >= need
    val = s.is_val(np.arange(s.store.num_documents))
    if sampling == "document":  # validation documents only, each from its start
        docs = [d for d in range(s.store.num_documents) if val[d] and s.doc_len(d) >= 2]
        for row, d in zip(rows, docs, strict=False):
            n = min(s.doc_len(d), 33)
            assert np.array_equal(row[:n], s.store.document(d)[:n])


def test_sweep_runs_with_batch_8_and_32_score_the_same_tokens(store_dir, tmp_path):
    """Two runs of one sweep (batch axis 8 and 32, both families) are scored on the same validation rows."""
    from ebt_scaling.sweeps.expand import expand
    from ebt_scaling.sweeps.spec import load_spec

    spec_file = tmp_path / "b.toml"
    spec_file.write_text(f"""
[sweep]
name = "b"
axis = "batch"
families = ["ebt", "transformer_pp"]
seeds = [0]
[model]
preset = "nano"
sequence_len = 32
[train]
steps = 10
warmup_steps = 2
eval_tokens = 1024
[data]
source = "store:{store_dir}"
tokenizer = "byte"
sampling = "document"
[axis]
values = [8, 32]
""")
    runs = expand(load_spec(spec_file))
    assert {r.spec.train.batch_size for r in runs} == {8, 32} and len(runs) == 4
    rows = []
    for r in runs:
        data = open_data(r.spec.data, r.spec.model.sequence_len, seed=r.spec.seed)
        rows.append(np.concatenate(validation_batches(data, r.spec.train, r.spec.model.sequence_len)))
    for x in rows[1:]:
        assert np.array_equal(rows[0], x)


def test_data_config_sampling_and_store_source():
    with pytest.raises(ConfigError, match="DataConfig.sampling: unknown mode"):
        DataConfig(sampling="windows")
    with pytest.raises(ConfigError, match="DataConfig.sampling: the synthetic source has no documents"):
        DataConfig(source="synthetic", sampling="document")
    with pytest.raises(ConfigError, match="DataConfig.source: store: needs a folder"):
        DataConfig(source="store:")
    m = model_config("transformer_pp", "nano", vocab_size=256, sequence_len=32)
    base = RunSpec(model=m, train=TrainConfig(), data=DataConfig())
    assert "sampling" not in base.identity()["data"]  # hashes of packed runs stay those of older versions
    doc = RunSpec(model=m, train=TrainConfig(), data=DataConfig(sampling="document"))
    assert doc.identity()["data"]["sampling"] == "document" and doc.config_hash != base.config_hash


def test_open_data_errors(tmp_path):
    with pytest.raises(DataError, match="not a token store"):
        open_data(DataConfig(source=f"store:{tmp_path}"), 32)


# ------------------------------------------------------------------------------------------ models and loop
@pytest.mark.parametrize(("family", "recipe"), [("transformer_pp", None), ("ebt", "ebt_s1"), ("ebt", "ebt_s2")])
def test_padding_is_masked_out_of_the_loss(family, recipe, one_torch_thread):
    """The CE over a padded row is the CE over its real targets; pad inputs change nothing (causal), in the
    T++ and in the EBT's S1 and S2 recipes (S2: random step count and step sizes, Langevin noise, replay)."""
    torch.manual_seed(0)
    from ebt_scaling.models import build_model

    model = build_model(model_config(family, "nano", vocab_size=64, sequence_len=16, recipe=recipe)).double()
    rows = torch.randint(0, 64, (3, 17))
    rows[0, 9:] = PAD  # 8 real targets
    rows[2, 3:] = PAD  # 2 real targets
    idx, tgt = inputs_targets(rows)
    other = idx.clone()
    other[tgt == PAD] = 7  # different pad inputs
    for recipe_train in (True, False):
        model.train(recipe_train)
        if family == "ebt":
            model.replay.clear()
        torch.manual_seed(1)
        loss_a, info_a = model.loss(idx, tgt)
        if family == "ebt":
            model.replay.clear()
        torch.manual_seed(1)
        loss_b, info_b = model.loss(other, tgt)
        torch.testing.assert_close(loss_a, loss_b)
        if family == "ebt":
            torch.testing.assert_close(info_a["energy_steps"], info_b["energy_steps"])
    # T++: the loss equals the CE of the real positions alone
    if family == "transformer_pp":
        logits = model(idx)
        real = tgt != PAD
        ref = torch.nn.functional.cross_entropy(logits[real].float(), tgt[real])
        torch.testing.assert_close(model.loss(idx, tgt)[0], ref)
    else:  # the EBT's gradient ignores the pads too: no parameter gets a gradient from a pad target
        model.train()
        for _ in range(2):  # S2: the second call replays the rows (and their -100 targets) the first pushed
            torch.manual_seed(2)
            loss, info = model.loss(idx, tgt)
            g = torch.autograd.grad(loss, [model.tok_embeddings.weight])[0]
            assert torch.isfinite(loss) and torch.isfinite(g).all() and g.abs().sum() > 0
        if recipe == "ebt_s2":
            assert info["replayed"] > 0


def _doc_store(tmp_path: pathlib.Path) -> pathlib.Path:
    src = tmp_path / "short.jsonl"
    src.write_text("".join(json.dumps({"text": d}) + "\n" for d in _docs(200, 1, 12, seed=4)))
    runner = CliRunner()
    res = runner.invoke(app, ["data", "prepare", "--source", f"jsonl:{src}", "--tokenizer", "byte",
                              "--out", str(tmp_path / "st"), "--shard-tokens", "3000", "--workers", "1"])
    assert res.exit_code == 0, res.output
    return tmp_path / "st"


@pytest.mark.parametrize("family", ["transformer_pp", "ebt"])
def test_document_mode_counts_real_tokens_only(tmp_path, family, one_torch_thread):
    store = _doc_store(tmp_path)
    T, B, steps = 64, 4, 3
    recipe = "ebt_s1" if family == "ebt" else None
    spec = RunSpec(model=model_config(family, "nano", vocab_size=256, sequence_len=T, recipe=recipe),
                   train=TrainConfig(steps=steps, batch_size=B, warmup_steps=1, eval_interval=0, eval_tokens=512,
                                     log_interval=1, seed=3, threads=1),
                   data=DataConfig(source=f"store:{store}", sampling="document", val_fraction=0.2), recipe=recipe)
    sink = ListSink()
    r = train(spec, sink)
    assert r.status == "completed" and np.isfinite(r.final_val_loss)
    data = open_data(spec.data, T, seed=3)
    real = sum(int((data.sample_batch(s, range(B))[:, 1:] != PAD).sum()) for s in range(steps))
    assert r.tokens == real < steps * B * T  # pads are not counted
    assert [v for _, v in sink.series("tokens")][-1] == real


def test_train_cli_from_a_prepared_store_and_resume(tmp_path, one_torch_thread):
    """`data prepare --out` then `train --data store:DIR`; a resumed run sees the same samples (same losses)."""
    store = _doc_store(tmp_path)
    runner = CliRunner()
    res = runner.invoke(app, ["train", "--family", "transformer_pp", "--preset", "nano", "--steps", "4",
                              "--seq-len", "32", "--batch-size", "4", "--data", f"store:{store}", "--threads", "1",
                              "--progress", "off", "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert out["status"] == "completed" and out["spec"]["data"]["source"] == f"store:{store}"
    assert out["tokens"] == 4 * 4 * 32 and out["final_val_loss"] is not None

    m = model_config("transformer_pp", "nano", vocab_size=256, sequence_len=32)
    t = TrainConfig(steps=6, batch_size=4, warmup_steps=1, eval_interval=3, eval_tokens=256, log_interval=1,
                    checkpoint_interval=3, seed=1, threads=1)
    spec = RunSpec(model=m, train=t, data=DataConfig(source=f"store:{store}"), checkpoint_dir=str(tmp_path / "ck"))
    full = ListSink()
    train(spec, full)
    resumed = ListSink()
    train(spec, resumed, resume_from=str(tmp_path / "ck" / "step_00000003"))
    a = [v for s, v in full.series("train_loss") if s > 3]
    b = [v for s, v in resumed.series("train_loss") if s > 3]
    assert a == b and len(a) == 3


def test_every_evaluation_of_a_run_scores_the_one_validation_set(tmp_path, monkeypatch, one_torch_thread):
    """A run evaluated at several steps (the data axis's mode = "evaluations") builds its validation set once
    and scores every evaluation on it."""
    store = _doc_store(tmp_path)
    calls = []
    real = StoreData.val_batches

    def spy(self, *a, **k):
        out = real(self, *a, **k)
        calls.append(np.concatenate(out))
        return out

    monkeypatch.setattr(StoreData, "val_batches", spy)
    spec = RunSpec(model=model_config("transformer_pp", "nano", vocab_size=256, sequence_len=32),
                   train=TrainConfig(steps=3, batch_size=4, warmup_steps=1, eval_interval=1, eval_tokens=256,
                                     log_interval=1, threads=1),
                   data=DataConfig(source=f"store:{store}", sampling="document", val_fraction=0.2))
    sink = ListSink()
    train(spec, sink)
    assert len(calls) == 1 and [s for s, _ in sink.series("val_loss")] == [1, 2, 3]


# ------------------------------------------------------------------------------------------ built-in sources
def test_builtin_packed_runs_sample_their_store_with_the_corpus_cache_windows(tmp_path):
    """A built-in source trains from a token store the cache prepares, and in packed mode draws exactly the
    windows, validation windows and unigram baseline of the corpus cache (load_corpus): runs stored before
    token stores existed keep their meaning under their hashes."""
    from ebt_scaling.data import load_corpus

    folder = tmp_path / "texts"
    folder.mkdir()
    for i, d in enumerate(_docs(40, 50, 400, seed=2)):
        (folder / f"d{i:02d}.txt").write_text(d + "\n")
    for cfg, T in ((DataConfig(source="synthetic", vocab_size=32, cache_dir=str(tmp_path)), 32),
                   (DataConfig(source=f"text:{folder}", tokenizer="byte", cache_dir=str(tmp_path)), 48)):
        legacy = load_corpus(cfg, T, progress=lambda m: None)
        data = open_data(cfg, T, seed=0, progress=lambda m: None)
        assert isinstance(data, StoreData) and data.store.path.parent.name == "stores"
        r1, r2 = np.random.default_rng(3), np.random.default_rng(3)
        for s in range(5):
            assert np.array_equal(legacy.sample_batch("train", 8, T, r1), data.train_batch(s, 8, T, r2))
        for a, b in zip(legacy.val_batches(2, 8, T, 30), data.val_batches(2, 8, T, 30), strict=True):
            assert np.array_equal(a, b)
        assert data.unigram_entropy() == legacy.unigram_entropy() and data.train_tokens == legacy.train_tokens
    assert data.store.num_documents == 40  # one per file: the document mode's rows


def test_builtin_store_is_rebuilt_when_corrupt(tmp_path):
    cfg = DataConfig(source="synthetic", vocab_size=16, cache_dir=str(tmp_path))
    first = open_data(cfg, 16, progress=lambda m: None)
    rows = first.val_batches(1, 4, 16)
    shard = first.store.path / "shard-00000.bin"
    del first
    data = bytearray(shard.read_bytes())
    data[10] ^= 1
    shard.write_bytes(bytes(data))
    msgs: list[str] = []
    again = open_data(cfg, 16, progress=msgs.append)
    assert any("fails its checksums" in m for m in msgs)
    assert np.array_equal(again.val_batches(1, 4, 16)[0], rows[0])
