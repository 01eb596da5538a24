"""Issue 30 items 1-2: a one-file corpus prepared with `data prepare --out` and the default tokenizer (bpe)
trains: the BPE is trained on the source and kept in the store (the manifest names it), the same text gives the
same tokens as the corpus cache, and a long document is split by position (its tail is validation)."""

from __future__ import annotations

import json
import pathlib

import numpy as np
import pytest
from typer.testing import CliRunner

from ebt_scaling.cli.main import app
from ebt_scaling.config import DataConfig
from ebt_scaling.data.corpus import builtin_store
from ebt_scaling.data.sampler import PAD, StoreData, split_summary
from ebt_scaling.data.store import LONG_DOC_TOKENS, TokenStore, store_tokenizer
from ebt_scaling.data.verify import prepare_command

WORDS = "the quick brown fox jumps over a lazy dog while energy based transformers think and verify".split()


def _text(n_lines: int, seed: int = 1) -> str:
    rng = np.random.default_rng(seed)
    return "".join(" ".join(WORDS[j] for j in rng.integers(0, len(WORDS), int(rng.integers(3, 15)))) + "\n"
                   for _ in range(n_lines))


@pytest.fixture(scope="module")
def one_file(tmp_path_factory) -> tuple[pathlib.Path, pathlib.Path, str]:
    """(corpus.txt, store folder, cache root): one document of ~30k tokens prepared with --out and bpe."""
    root = tmp_path_factory.mktemp("tail")
    corpus = root / "corpus.txt"
    corpus.write_text(_text(3000))
    cache = str(root / "cache")
    r = CliRunner().invoke(app, ["data", "prepare", "--source", f"text:{corpus}", "--out", str(root / "store"),
                                 "--vocab-size", "512", "--workers", "1"], env={"EBT_SCALE_CACHE": cache})
    assert r.exit_code == 0, r.output
    return corpus, root / "store", cache


def test_prepare_out_trains_the_bpe_keeps_it_and_says_so(one_file):
    corpus, out, cache = one_file
    store = TokenStore(out)
    m = store.manifest
    assert m["params"]["tokenizer"] == "bpe" and m["tokenizer_file"] == "tokenizer.json"
    assert (out / "tokenizer.json").is_file() and m["split"]["rule"] == "tail-long"
    assert "--vocab-size 512" in prepare_command(out, m["params"])
    # the same text gives the same tokens as the corpus cache (training on text:PATH), with the same BPE
    cached = builtin_store(DataConfig(source=f"text:{corpus}", tokenizer="bpe", vocab_size=512, cache_dir=cache),
                           progress=lambda _: None)
    assert np.array_equal(store.read(0, store.num_tokens), cached.read(0, cached.num_tokens))
    tok = store_tokenizer(out)
    assert tok.encode("the quick brown fox\n") == tok.encode("the quick brown fox\n") != []
    assert list(store.read(0, 5)) == tok.encode(corpus.read_text())[:5]
    # rerun on the complete store: nothing rewritten, the summary names the tokenizer, the store and the split
    r = CliRunner().invoke(app, ["data", "prepare", "--source", f"text:{corpus}", "--out", str(out),
                                 "--vocab-size", "512", "--workers", "1"], env={"EBT_SCALE_CACHE": cache})
    assert r.exit_code == 0, r.output
    assert f"token store: {out.resolve()}" in r.output and "tokenizer: bpe" in r.output
    assert f"kept in {(out / 'tokenizer.json').resolve()}" in r.output
    assert "split by position" in r.output and "tail split" in r.output and "warning" not in r.output


def test_one_long_document_splits_by_its_tail(one_file):
    _, out, _ = one_file
    store = TokenStore(out)
    n = store.num_tokens
    assert store.num_documents == 1 and n >= LONG_DOC_TOKENS
    s = StoreData(store, seq_len=32, val_fraction=0.05, split_seed=33, seed=0)
    n_val = int(np.ceil(0.05 * n))
    assert s.train_tokens == n - n_val
    info = split_summary(store)
    assert info["val_tokens"] == n_val and not info["far_from_requested"] and info["long_documents"] == 1
    stream = store.read(0, n)
    for step in range(5):  # training windows lie in the head (a hash split would have failed every draw)
        for row in s.sample_batch(step, range(16)):
            hits = [p for p in np.flatnonzero(stream[:n - 32] == row[0]) if np.array_equal(stream[p:p + 33], row)]
            assert any(p + 32 < n - n_val for p in hits)
    val = np.concatenate(s.val_batches(2, 4, 32))
    tail = stream[n - n_val:]
    for row in val:  # validation windows come from the tail
        assert any(np.array_equal(tail[p:p + 33], row) for p in np.flatnonzero(tail[:len(tail) - 32] == row[0]))
    d = StoreData(store, seq_len=32, sampling="document", val_fraction=0.05, split_seed=33)
    rows = d.sample_batch(0, range(4))
    assert np.array_equal(rows[0], stream[:33])  # the document's head, from its start
    vrows = d.val_batches(1, 2, 32)[0]
    assert np.array_equal(vrows[0][vrows[0] != PAD], tail[:33])


def test_few_short_documents_warn_about_the_validation_share(tmp_path):
    src = tmp_path / "d.jsonl"
    src.write_text("".join(json.dumps({"text": _text(20, seed=i)}) + "\n" for i in range(3)))
    r = CliRunner().invoke(app, ["data", "prepare", "--source", f"jsonl:{src}", "--tokenizer", "byte", "--out",
                                 str(tmp_path / "s"), "--workers", "1"])
    assert r.exit_code == 0, r.output
    warn = [ln for ln in r.output.splitlines() if "warning" in ln]
    assert len(warn) == 1 and "far from the requested 5%" in warn[0] and "add documents" in warn[0]
    assert "tokenizer: byte (vocabulary 256)" in r.output and "kept in" not in r.output
