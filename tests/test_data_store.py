"""The sharded token store (``ebt-scale data prepare --out``): sources, shards, resume after kill -9, errors."""

from __future__ import annotations

import gzip
import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from typer.testing import CliRunner

from ebt_scaling.cli.main import app
from ebt_scaling.data.store import MANIFEST, TokenStore, prepare
from ebt_scaling.data.streams import parse_source
from ebt_scaling.errors import DataError

WORDS = "the quick brown fox jumps over a lazy dog while energy based transformers think".split()


def make_docs(n: int, seed: int = 0, empty_every: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    docs = []
    for i in range(n):
        k = 0 if empty_every and i % empty_every == 0 else int(rng.integers(1, 120))
        docs.append(" ".join(WORDS[j] for j in rng.integers(0, len(WORDS), k)) + ("" if k == 0 else " é"))
    return docs


def write_jsonl(path: pathlib.Path, docs: list[str], field: str = "text") -> None:
    text = "".join(json.dumps({field: d, "id": i}) + "\n" for i, d in enumerate(docs)).encode("utf-8")
    if path.name.endswith(".gz"):
        text = gzip.compress(text)
    elif path.name.endswith(".zst"):
        import zstandard

        text = zstandard.ZstdCompressor().compress(text)
    path.write_bytes(text)


def bpe_file(tmp_path: pathlib.Path, docs: list[str], vocab: int = 300) -> pathlib.Path:
    from ebt_scaling.data.tokenizer import train_bpe

    path = tmp_path / "tokenizer.json"
    train_bpe(docs, vocab).save(str(path))
    return path


def expected_tokens(docs: list[str], tok_path: pathlib.Path | None) -> list[list[int]]:
    if tok_path is None:
        return [list(d.encode("utf-8")) for d in docs]
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(tok_path))
    return [tok.encode(d).ids for d in docs]


@pytest.mark.parametrize("workers", [1, 2])
def test_jsonl_folder_with_gzip_and_zstd_round_trips_through_shards(tmp_path, workers):
    docs_a, docs_b, docs_c = make_docs(300, 0, empty_every=50), make_docs(200, 1), make_docs(50, 5)
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    write_jsonl(src / "a.jsonl", docs_a)
    write_jsonl(src / "b.jsonl.gz", docs_b)
    write_jsonl(src / "sub" / "c.jsonl.zst", docs_c)
    (src / "notes.md").write_text("not a jsonl file")  # ignored
    tok = bpe_file(tmp_path, docs_a)
    m = prepare(parse_source(f"jsonl:{src}"), f"file:{tok}", tmp_path / "store", shard_tokens=997, workers=workers)
    want = expected_tokens(docs_a + docs_b + docs_c, tok)  # files in sorted path order
    nonempty = [t for t in want if t]
    assert m["complete"] and m["documents"] == len(nonempty) and m["documents_empty"] == len(want) - len(nonempty)
    assert m["tokens"] == sum(map(len, want)) and m["params"]["dtype"] == "uint16"
    assert all(s["tokens"] == 997 for s in m["shards"][:-1]) and 0 < m["shards"][-1]["tokens"] <= 997
    store = TokenStore(tmp_path / "store")
    assert store.verify() == []
    assert store.read(0, store.num_tokens).tolist() == [t for d in want for t in d]
    for d in (0, 1, 57, len(nonempty) - 1):  # documents, including ones that cross a shard boundary
        assert store.document(d).tolist() == nonempty[d]


def test_text_and_parquet_sources(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    docs = make_docs(40, 2)
    folder = tmp_path / "txt"
    folder.mkdir()
    for i, d in enumerate(docs[:3]):
        (folder / f"{i:02d}.txt").write_text(d + "\r\nend")
    m = prepare(parse_source(f"text:{folder}"), "byte", tmp_path / "t", shard_tokens=64, workers=1)
    got = TokenStore(tmp_path / "t")
    assert m["documents"] == 3
    assert got.document(1).tolist() == list((docs[1] + "\nend").encode())  # CRLF normalised
    pq.write_table(pa.table({"content": docs, "n": list(range(40))}), tmp_path / "d.parquet", row_group_size=7)
    m = prepare(parse_source(f"parquet:{tmp_path / 'd.parquet'}", field="content"), "byte", tmp_path / "p",
                shard_tokens=500, workers=1)
    store = TokenStore(tmp_path / "p")
    assert [store.document(i).tolist() for i in range(40)] == [list(d.encode()) for d in docs]


def test_hf_streaming_source_reads_local_files(tmp_path):
    pytest.importorskip("datasets")
    docs = make_docs(50, 3)
    write_jsonl(tmp_path / "d.jsonl", docs)
    src = parse_source("hf:json", data_files=str(tmp_path / "d.jsonl"))
    prepare(src, "byte", tmp_path / "s", shard_tokens=1000, workers=1)
    store = TokenStore(tmp_path / "s")
    assert [store.document(i).tolist() for i in range(50)] == [list(d.encode()) for d in docs]


def test_bad_inputs_fail_in_one_line_and_write_nothing(tmp_path):
    runner = CliRunner()
    write_jsonl(tmp_path / "d.jsonl", ["a b c"])
    cases = [
        (["--source", "csv:/x", "--tokenizer", "byte"], "use text:PATH, jsonl:PATH"),
        (["--source", f"jsonl:{tmp_path / 'missing'}", "--tokenizer", "byte"], "does not exist"),
        (["--source", f"jsonl:{tmp_path / 'd.jsonl'}", "--tokenizer", "bpe", "--vocab-size", "100"],
         "needs at least 256 entries"),
        (["--source", f"jsonl:{tmp_path / 'd.jsonl'}", "--tokenizer", "file:/nope.json"], "cannot load it"),
        (["--source", f"jsonl:{tmp_path / 'd.jsonl'}", "--tokenizer", "byte", "--field", "body"],
         "no string field 'body'"),
    ]
    for args, msg in cases:
        out = tmp_path / "out"
        r = runner.invoke(app, ["data", "prepare", *args, "--out", str(out), "--workers", "1"])
        assert r.exit_code != 0, args
        lines = [ln for ln in r.output.splitlines() if ln.strip()]
        assert len(lines) == 1 and msg in lines[0], r.output
        assert not (out / MANIFEST).exists() and not list(out.glob("shard-*"))
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("precious")
    r = runner.invoke(app, ["data", "prepare", "--source", f"jsonl:{tmp_path / 'd.jsonl'}", "--tokenizer", "byte",
                            "--out", str(tmp_path / "full")])
    assert r.exit_code != 0 and "is not a token store" in r.output
    assert sorted(p.name for p in (tmp_path / "full").iterdir()) == ["keep.txt"]


def test_other_settings_on_an_existing_store_are_refused(tmp_path):
    write_jsonl(tmp_path / "d.jsonl", make_docs(20))
    src = parse_source(f"jsonl:{tmp_path / 'd.jsonl'}")
    prepare(src, "byte", tmp_path / "s", shard_tokens=100)
    with pytest.raises(DataError, match="other settings \\(shard_tokens\\)"):
        prepare(src, "byte", tmp_path / "s", shard_tokens=200)
    again = prepare(src, "byte", tmp_path / "s", shard_tokens=100)  # same settings: already complete
    assert again["complete"]
    with pytest.raises(DataError, match="incomplete"):
        (tmp_path / "s" / MANIFEST).write_text(json.dumps({**again, "complete": False}))
        TokenStore(tmp_path / "s")


def test_cli_json_summary(tmp_path):
    write_jsonl(tmp_path / "d.jsonl", make_docs(30))
    r = CliRunner().invoke(app, ["data", "prepare", "--source", f"jsonl:{tmp_path / 'd.jsonl'}", "--tokenizer",
                                 "byte", "--out", str(tmp_path / "s"), "--shard-tokens", "500", "--workers", "1",
                                 "--json"])
    assert r.exit_code == 0, r.output
    s = json.loads(r.stdout[r.stdout.index("{"):])
    assert s["documents"] == 30 and s["tokens"] == sum(len(d.encode()) for d in make_docs(30))
    assert len(s["shards"]) == -(-s["tokens"] // 500) and all(len(x["sha256"]) == 64 for x in s["shards"])
    assert s["last_run"]["tokens_per_s"] > 0


def test_kill_dash_9_then_rerun_gives_the_uninterrupted_tokens(tmp_path):
    docs = make_docs(6000, 4)
    write_jsonl(tmp_path / "d.jsonl", docs)
    tok = bpe_file(tmp_path, docs[:200])
    args = ["--source", f"jsonl:{tmp_path / 'd.jsonl'}", "--tokenizer", f"file:{tok}", "--shard-tokens", "2003",
            "--workers", "1", "--json"]
    cmd = [sys.executable, "-m", "ebt_scaling.cli.main", "data", "prepare", *args]
    whole = subprocess.run([*cmd, "--out", str(tmp_path / "whole")], capture_output=True, text=True, timeout=300)
    assert whole.returncode == 0, whole.stderr
    want = json.loads(whole.stdout)
    killed = tmp_path / "killed"
    p = subprocess.Popen([*cmd, "--out", str(killed)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and p.poll() is None:
        if (killed / MANIFEST).exists() and len(json.loads((killed / MANIFEST).read_text())["shards"]) >= 3:
            break
        time.sleep(0.005)
    assert p.poll() is None, "prepare finished before it could be killed: make the input larger"
    os.kill(p.pid, signal.SIGKILL)
    p.wait()
    partial = json.loads((killed / MANIFEST).read_text())
    assert not partial["complete"] and 3 <= len(partial["shards"]) < len(want["shards"])
    rerun = subprocess.run([*cmd, "--out", str(killed)], capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    assert "continuing" in rerun.stderr
    got = json.loads(rerun.stdout)
    for k in ("documents", "documents_empty", "tokens", "shards"):
        assert got[k] == want[k], k
    assert TokenStore(killed).verify() == []


def test_cli_default_shard_size_is_the_stores():
    import inspect

    from ebt_scaling.cli.data import prepare_cmd
    from ebt_scaling.data.store import DEFAULT_SHARD_TOKENS

    assert inspect.signature(prepare_cmd).parameters["shard_tokens"].default == DEFAULT_SHARD_TOKENS
