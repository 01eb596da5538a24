"""Token stores are verified where they are read, and written by one process at a time (issue 27 items 1-2).

Real files throughout: stores written by ``prepare`` / ``ebt-scale data prepare``, then corrupted in place
the way a disk, a copy or a hand edit would; the readers (a sweep's pre-flight and dry run, a trial's
``open_data``, ``data prepare`` itself) must refuse them in one line naming the file.
"""

from __future__ import annotations

import json
import os
import pathlib

import numpy as np
import pytest
from typer.testing import CliRunner

from ebt_scaling.cli.main import app
from ebt_scaling.config import DataConfig
from ebt_scaling.data import open_data
from ebt_scaling.data.store import MANIFEST, TokenStore, prepare
from ebt_scaling.data.streams import parse_source
from ebt_scaling.data.verify import verify_shards, verify_store
from ebt_scaling.errors import DataError

WORDS = "the quick brown fox jumps over a lazy dog while energy based transformers think".split()
SHARD = 4000


def _corpus(tmp_path: pathlib.Path, n_docs: int = 300) -> pathlib.Path:
    rng = np.random.default_rng(0)
    lines = [json.dumps({"text": " ".join(WORDS[j] for j in rng.integers(0, len(WORDS), int(rng.integers(5, 60))))})
             for _ in range(n_docs)]
    src = tmp_path / "docs.jsonl"
    src.write_text("\n".join(lines) + "\n")
    return src


@pytest.fixture
def store(tmp_path) -> pathlib.Path:
    out = tmp_path / "store"
    prepare(parse_source(f"jsonl:{_corpus(tmp_path)}"), "byte", out, shard_tokens=SHARD)
    return out


def _xor_middle(path: pathlib.Path) -> None:
    """XOR the low byte of every uint16 token in the middle half of a shard with 0x5A: a byte tokenizer's ids
    stay below 256, so every value is still in the vocabulary (nothing but the checksum can tell)."""
    a = np.fromfile(path, dtype="<u2")
    lo, hi = len(a) // 4, 3 * len(a) // 4
    a[lo:hi] ^= 0x5A
    with open(path, "r+b") as f:  # in place: same inode, as a disk or a hand edit would
        f.write(a.tobytes())


def _one_line(msg: str) -> str:
    assert "\n" not in msg.strip() and "Traceback" not in msg, msg
    return msg


SPEC = """
[sweep]
name = "st"
axis = "depth"
families = ["transformer_pp"]
seeds = [0]
[model]
preset = "nano"
sequence_len = 32
[train]
steps = 4
batch_size = 4
warmup_steps = 1
[data]
source = "store:{store}"
tokenizer = "byte"
[axis]
values = [1]
"""


def test_a_store_corrupted_in_place_is_refused_before_training(store, tmp_path):
    clean = TokenStore(store).read(0, TokenStore(store).num_tokens)
    shards = sorted(store.glob("shard-*.bin"))
    assert len(shards) >= 3
    for f in shards:
        _xor_middle(f)
    bad = TokenStore(store)  # the schema is fine: the manifest was not touched
    tokens = bad.read(0, bad.num_tokens)
    assert int(tokens.max()) < 256 and not np.array_equal(tokens, clean)  # still in the vocabulary, but wrong

    # a trial (and `ebt-scale train`) opening the store
    with pytest.raises(DataError) as e:
        open_data(DataConfig(source=f"store:{store}", tokenizer="byte"), 32)
    msg = _one_line(str(e.value))
    assert "shard shard-00000.bin does not match its checksum in manifest.json (corrupted or rewritten)" in msg
    assert f"re-run `ebt-scale data prepare --source jsonl:{tmp_path / 'docs.jsonl'} --tokenizer byte " \
           f"--shard-tokens {SHARD} --out {store}`" in msg and "--retry-failed" in msg

    # a local sweep: refused by the pre-flight, before the database (or Ray) is touched; and its dry run
    spec = tmp_path / "s.toml"
    spec.write_text(SPEC.format(store=store))
    db = tmp_path / "r.db"
    for extra in ([], ["--dry-run"]):
        r = CliRunner().invoke(app, ["sweep", "--spec", str(spec), "--db", f"sqlite:///{db}", *extra])
        assert r.exit_code == 1 and r.output.count("\n") == 1, r.output
        assert "shard-00000.bin does not match its checksum" in r.output
        assert not db.exists()

    # `data prepare` with the same arguments re-verifies instead of saying "already complete", and rewrites it
    r = CliRunner().invoke(app, ["data", "prepare", "--source", f"jsonl:{tmp_path / 'docs.jsonl'}", "--tokenizer",
                                 "byte", "--shard-tokens", str(SHARD), "--out", str(store)])
    assert r.exit_code == 0, r.output
    assert "does not match its checksum" in r.output and "preparing the store again" in r.output
    assert "already complete" not in r.output
    fixed = TokenStore(store, verify=True)
    assert np.array_equal(fixed.read(0, fixed.num_tokens), clean)
    r = CliRunner().invoke(app, ["data", "prepare", "--source", f"jsonl:{tmp_path / 'docs.jsonl'}", "--tokenizer",
                                 "byte", "--shard-tokens", str(SHARD), "--out", str(store)])
    assert r.exit_code == 0 and "already complete (checksums verified)" in r.output, r.output
    r = CliRunner().invoke(app, ["sweep", "--spec", str(spec), "--db", f"sqlite:///{db}", "--dry-run"])
    assert r.exit_code == 0, r.output


def test_checksums_are_hashed_once_per_store_and_machine_until_a_file_changes(store, tmp_path):
    from ebt_scaling.data.verify import load_manifest

    m, sha = load_manifest(store)
    cache = str(tmp_path / "cache")
    assert verify_shards(store, m, sha, cache_dir=cache) is True  # hashed
    assert verify_shards(store, m, sha, cache_dir=cache) is False  # remembered
    assert verify_shards(store, m, sha, cache_dir=str(tmp_path / "other")) is True  # another machine's cache
    f = store / "shard-00001.bin"
    st = f.stat()
    _xor_middle(f)
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))  # size and mtime put back: the ctime still moved
    with pytest.raises(DataError, match="shard shard-00001.bin does not match its checksum"):
        verify_shards(store, m, sha, cache_dir=cache)
    _xor_middle(f)  # the same bytes again: hashed again (the stamps changed), passes, remembered
    assert verify_shards(store, m, sha, cache_dir=cache) is True
    assert verify_shards(store, m, sha, cache_dir=cache) is False


def _truncate(p: pathlib.Path) -> None:
    p.write_bytes(p.read_bytes()[:-6])


def _empty(p: pathlib.Path) -> None:
    p.write_bytes(b"")


def _flip_idx(p: pathlib.Path) -> None:
    a = np.fromfile(p, dtype="<u4")
    a[1] += 1
    a.tofile(p)


def _high_byte(p: pathlib.Path) -> None:
    b = bytearray(p.read_bytes())
    b[101] ^= 0x01  # the high byte of token 50: an id above the vocabulary
    p.write_bytes(bytes(b))


@pytest.mark.parametrize(("file", "damage", "problem"), [
    ("shard-00002.bin", _truncate, "shard shard-00002.bin holds 7,994 bytes but manifest.json records 8,000 "
                                   "(truncated"),
    ("shard-00001.bin", _empty, "shard shard-00001.bin holds 0 bytes but manifest.json records 8,000 (empty"),
    ("shard-00001.idx", _flip_idx, "index shard-00001.idx does not match its checksum"),
    ("shard-00000.bin", _high_byte, "shard shard-00000.bin does not match its checksum"),
    ("shard-00002.idx", lambda p: p.unlink(), "index shard-00002.idx is missing"),
])
def test_damaged_shards_and_indexes_are_named_in_one_line(store, tmp_path, file, damage, problem):
    damage(store / file)
    with pytest.raises(DataError) as e:
        verify_store(store, cache_dir=str(tmp_path / "c"))
    msg = _one_line(str(e.value))
    assert problem in msg and f"--out {store}`" in msg, msg
    with pytest.raises(DataError, match=problem.split(" (")[0].replace("(", r"\(")):
        open_data(DataConfig(source=f"store:{store}", tokenizer="byte"), 32)


def _edit(key_path: list, value):  # noqa: ANN202
    def go(m: dict) -> dict:
        d = m
        for k in key_path[:-1]:
            d = d[k]
        if value is KeyError:
            del d[key_path[-1]]
        else:
            d[key_path[-1]] = value
        return m
    return go


@pytest.mark.parametrize(("edit", "problem"), [
    (None, "manifest.json is not valid JSON (line 1 column 1: Expecting value)"),
    (_edit(["shards"], KeyError), "manifest.json is malformed (shards: missing)"),
    (_edit(["shards", 1, "sha256"], "abc"), "shards[1].sha256: must be 64 lowercase hex digits, got 'abc'"),
    (_edit(["shards", 2, "name"], "../../etc/passwd"), "shards[2].name: expected 'shard-00002'"),
    (_edit(["shards", 0, "tokens"], -5), "shards[0].tokens: must be an integer in 1..4000, got -5"),
    (_edit(["tokens"], 12), "tokens: 12 is not the sum of the shards' tokens"),
    (_edit(["params", "dtype"], "float32"), "params.dtype: 'float32' does not hold a vocabulary of 256"),
    (_edit(["params", "vocab_size"], "256"), "params.vocab_size: must be an integer in 1..2^32, got '256'"),
    (lambda m: [m], "the top level must be a JSON object, got list"),
])
def test_a_malformed_manifest_is_refused_in_one_line(store, tmp_path, edit, problem):
    path = store / MANIFEST
    if edit is None:
        path.write_text("not json {")
    else:
        path.write_text(json.dumps(edit(json.loads(path.read_text()))))
    for call in (lambda: TokenStore(store), lambda: open_data(DataConfig(source=f"store:{store}"), 32)):
        with pytest.raises(DataError) as e:
            call()
        msg = _one_line(str(e.value))
        assert msg.startswith(f"store {store}: ") and problem in msg and "remove the folder and re-run" in msg, msg
    spec = tmp_path / "s.toml"
    spec.write_text(SPEC.format(store=store))
    r = CliRunner().invoke(app, ["sweep", "--spec", str(spec), "--db", f"sqlite:///{tmp_path / 'r.db'}"])
    assert r.exit_code == 1 and problem in r.output and r.output.count("\n") == 1, r.output
    # `data prepare` into it: the same line, nothing overwritten
    before = path.read_bytes()
    with pytest.raises(DataError, match="malformed|not valid JSON"):
        prepare(parse_source(f"jsonl:{tmp_path / 'docs.jsonl'}"), "byte", store, shard_tokens=SHARD)
    assert path.read_bytes() == before


# ------------------------------------------------------------------------------------------ one writer per store
HOLDER = """
import pathlib, sys, time
from ebt_scaling.data.store import prepare
from ebt_scaling.data.streams import parse_source

src, out, go = sys.argv[1], pathlib.Path(sys.argv[2]), pathlib.Path(sys.argv[3])
real = parse_source(src)


class Paused:  # the real source, paused after 1500 documents until `go` exists (the lock is held meanwhile)
    spec, field, data_files = real.spec, real.field, real.data_files

    def documents(self, cache_dir=None):
        for n, doc in enumerate(real.documents(cache_dir)):
            if n == 1500:  # after the first batch (1024 documents) is written
                print("paused", flush=True)
                while not go.exists():
                    time.sleep(0.02)
            yield doc


prepare(Paused(), "byte", out, shard_tokens=SHARD_TOKENS, progress=lambda m: None)
print("done", flush=True)
""".replace("SHARD_TOKENS", str(SHARD))


def _start_holder(tmp_path: pathlib.Path, src: pathlib.Path, out: pathlib.Path):  # noqa: ANN202
    import subprocess
    import sys

    script = tmp_path / "holder.py"
    script.write_text(HOLDER)
    p = subprocess.Popen([sys.executable, str(script), f"jsonl:{src}", str(out), str(tmp_path / "go")],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = p.stdout.readline()
    assert line.strip() == "paused", (line, p.stderr.read() if p.poll() is not None else "")
    return p


def test_two_concurrent_prepares_into_one_folder_one_is_refused_and_the_store_verifies(tmp_path):
    import subprocess
    import sys

    src = _corpus(tmp_path, 2000)
    out = tmp_path / "store"
    holder = _start_holder(tmp_path, src, out)  # a real `prepare`, holding the folder's lock mid-write
    try:
        assert json.loads((out / MANIFEST).read_text())["shards"], "the holder has written shards already"
        from ebt_scaling.data.tokenizer import train_bpe

        train_bpe(["some text for a tokenizer"] * 50, 300).save(str(tmp_path / "tok.json"))
        for tok in ("byte", f"file:{tmp_path / 'tok.json'}"):  # the same and another tokenizer
            second = subprocess.run([sys.executable, "-m", "ebt_scaling.cli.main", "data", "prepare", "--source",
                                     f"jsonl:{src}", "--tokenizer", tok, "--shard-tokens", str(SHARD), "--out",
                                     str(out)], capture_output=True, text=True, timeout=120)
            assert second.returncode == 1, second.stderr
            err = _one_line(second.stderr)
            assert f"another `ebt-scale data prepare` (pid {holder.pid} on " in err and "choose another --out" in err
        (tmp_path / "go").touch()
        assert holder.wait(timeout=120) == 0, holder.stderr.read()
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait()
    m = verify_store(out, cache_dir=str(tmp_path / "c"))
    assert m["params"]["tokenizer"] == "byte" and m["complete"]
    names = {p.name for p in out.iterdir()}
    assert names == {MANIFEST, ".prepare.lock"} | {f"{s['name']}{e}" for s in m["shards"] for e in (".bin", ".idx")}
    whole = prepare(parse_source(f"jsonl:{src}"), "byte", tmp_path / "whole", shard_tokens=SHARD)
    assert [s["sha256"] for s in whole["shards"]] == [s["sha256"] for s in m["shards"]]


def test_a_killed_writers_lock_is_free_at_once_and_the_rerun_continues(tmp_path):
    import signal

    src = _corpus(tmp_path, 2000)
    out = tmp_path / "store"
    holder = _start_holder(tmp_path, src, out)
    os.kill(holder.pid, signal.SIGKILL)
    holder.wait()
    msgs: list[str] = []
    m = prepare(parse_source(f"jsonl:{src}"), "byte", out, shard_tokens=SHARD, progress=msgs.append)
    assert any(s.startswith(f"continuing {out}") for s in msgs) and m["complete"]
    whole = prepare(parse_source(f"jsonl:{src}"), "byte", tmp_path / "whole", shard_tokens=SHARD)
    assert [s["sha256"] for s in whole["shards"]] == [s["sha256"] for s in verify_store(out)["shards"]]


def test_the_lock_refuses_a_second_writer_in_the_same_process_and_a_non_folder(tmp_path):
    from ebt_scaling.data.store import writer_lock

    src = parse_source(f"jsonl:{_corpus(tmp_path)}")
    with writer_lock(tmp_path / "s"), pytest.raises(DataError, match=f"pid {os.getpid()} on "):
        prepare(src, "byte", tmp_path / "s", shard_tokens=SHARD)
    assert prepare(src, "byte", tmp_path / "s", shard_tokens=SHARD)["complete"]  # released
    (tmp_path / "f").write_text("x")
    with pytest.raises(DataError, match="exists and is not a folder"):
        prepare(src, "byte", tmp_path / "f", shard_tokens=SHARD)
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "x.txt").write_text("x")
    with pytest.raises(DataError, match="exists and is not a token store"):
        prepare(src, "byte", tmp_path / "d", shard_tokens=SHARD)
    assert sorted(p.name for p in (tmp_path / "d").iterdir()) == ["x.txt"]  # nothing written, not even the lock


def _store_spec(tmp_path: pathlib.Path, store: pathlib.Path, data_extra: str = "") -> pathlib.Path:
    spec = tmp_path / "s.toml"
    spec.write_text(f"""[sweep]
name = "on-store"
axis = "depth"
families = ["transformer_pp"]
[model]
preset = "tiny"
sequence_len = 16
[train]
steps = 2
batch_size = 2
warmup_steps = 0
[data]
source = "store:{store}"
{data_extra}
[axis]
values = [1, 2]
""")
    return spec


def test_a_sweep_on_a_token_store_takes_the_store_vocabulary(store, tmp_path):
    """The preset's BPE size (tiny: 512) is not the store's vocabulary: runs on a store get the store's own (here
    a byte store's 256); a [data] vocab_size smaller than it is refused at planning in one line, not in every
    trial; a larger one is kept."""
    from ebt_scaling.errors import SpecError
    from ebt_scaling.sweeps import expand, load_spec

    runs = expand(load_spec(_store_spec(tmp_path, store)))
    assert {r.spec.model.vocab_size for r in runs} == {256} and {r.spec.data.vocab_size for r in runs} == {256}
    with pytest.raises(SpecError) as e:
        expand(load_spec(_store_spec(tmp_path, store, "vocab_size = 128")))
    assert "vocab_size 128 is smaller than the vocabulary of store:" in _one_line(str(e.value))
    assert "(256, its tokenizer's)" in str(e.value)
    runs = expand(load_spec(_store_spec(tmp_path, store, "vocab_size = 1024")))
    assert {r.spec.model.vocab_size for r in runs} == {1024}
