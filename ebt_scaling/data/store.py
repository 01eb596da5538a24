"""The sharded token store: ``ebt-scale data prepare`` writes it, ``TokenStore`` reads it through memory maps.

Layout of a store folder::

    manifest.json        source, tokenizer (spec, content hash, vocabulary), dtype, shard size, per-shard
                         token/document counts and sha256 checksums, totals; ``complete`` once finished;
                         ``tokenizer_file`` (the tokenizer kept in the store) and ``split`` (the validation
                         split rule, ``sampler.py``) for stores written since issue 30
    tokenizer.json       the tokenizer the tokens were made with (any tokenizer but ``byte``): think and
                         ``--ood`` encode other text with it
    shard-00000.bin      ``shard_tokens`` tokens, raw little-endian uint16 (uint32 for vocabularies > 65,536)
    shard-00000.idx      uint32 positions inside the shard where a document starts
    ...

The token stream is every document's tokens back to back, in source order; documents may run across a
shard boundary (the last shard is shorter). Empty documents are counted but hold no tokens.

Preparing streams the documents, tokenises batches of them in worker processes (the ``tokenizers`` batch
API) with a bounded number of batches in flight, and fills one shard buffer: memory is O(shard + workers x
batch) whatever the corpus size. Each finished shard is written to a temporary name, fsynced, renamed, and
only then recorded in the manifest together with where the stream stands (the document that continues in
the next shard and how many of its tokens are written). A killed run, rerun with the same arguments,
checks the recorded shards, skips the documents they hold and ends with the same tokens as an
uninterrupted run.
"""

from __future__ import annotations

import bisect
import contextlib
import fcntl
import hashlib
import multiprocessing
import os
import pathlib
import socket
import time
from collections import deque
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from ebt_scaling.data.cache import atomic_write_bytes, atomic_write_json
from ebt_scaling.data.streams import Source
from ebt_scaling.data.verify import (
    DEFAULT_SHARD_TOKENS,
    FORMAT,
    MANIFEST,
    load_manifest,
    prepare_command,
    store_dtype,
    verify_shards,
)
from ebt_scaling.data.verify import shard_name as _shard_name
from ebt_scaling.errors import DataError

__all__ = ["DEFAULT_SHARD_TOKENS", "FORMAT", "LOCK", "LONG_DOC_TOKENS", "MANIFEST", "TOKENIZER_FILE", "TokenStore",
           "prepare", "store_dtype", "store_tokenizer", "summary", "write_documents", "writer_lock"]

LOCK = ".prepare.lock"  # held (flock) by the one `data prepare` writing the folder; dies with its process
TOKENIZER_FILE = "tokenizer.json"
# Validation split of a store written since issue 30 (recorded in its manifest, read by sampler.StoreData): a
# document of at least LONG_DOC_TOKENS tokens keeps its last val_fraction of tokens for validation (a tail
# split), so a corpus of one or a few long documents has a validation share near the requested one; shorter
# documents go to one side whole, by the document hash. Stores without the record keep the hash split only.
LONG_DOC_TOKENS = 16384
SPLIT_RULE = {"rule": "tail-long", "long_doc_tokens": LONG_DOC_TOKENS}
BPE_TRAIN_CHARS = 512_000_000  # text a --tokenizer bpe is trained on at most (a larger source: its first part)
BATCH_CHARS = 4_000_000  # characters per tokenisation batch (bounds the memory per batch in flight)
BATCH_DOCS = 1024

Progress = Callable[[str], None]


# ---------------------------------------------------------------------------------------- tokenizers
def _bpe_docs(source: Source, cache_dir: str | None, progress: Progress) -> tuple[list[str], str]:
    """(documents, corpus sha256) a ``--tokenizer bpe`` is trained on: for ``text:`` and the built-in corpora
    exactly the corpus cache's (``sources.load_documents``), so the BPE is the one `ebt-scale train` trains on
    the same text (the same cached file); other sources: their documents up to ``BPE_TRAIN_CHARS``."""
    from ebt_scaling.data.cache import cache_root
    from ebt_scaling.data.sources import docs_to_jsonl, load_documents

    if source.kind == "text" or source.kind in ("shakespeare", "kjv"):
        docs, sha, _ = load_documents(source.spec if source.kind == "text" else source.kind, cache_root(cache_dir),
                                      progress)
        return docs, sha
    docs, chars = [], 0
    for text, _ in source.documents(cache_dir):
        docs.append(text)
        chars += len(text)
        if chars >= BPE_TRAIN_CHARS:
            progress(f"training the BPE on the first {len(docs):,} documents ({chars / 1e6:.0f} MB of text)")
            break
    if not docs:
        raise DataError(f"source {source.spec}: no documents to train a BPE tokenizer on; check the source")
    return docs, hashlib.sha256(docs_to_jsonl(docs)).hexdigest()


def tokenizer_blob(spec: str, source: Source | None = None, vocab_size: int = 2048, cache_dir: str | None = None,
                   progress: Progress = lambda _: None) -> tuple[str, str, int]:
    """``--tokenizer`` -> (serialised tokenizer for the workers, its content hash, vocabulary size).

    ``byte``: UTF-8 bytes (256); ``bpe``: a byte-level BPE of ``vocab_size`` entries trained on ``source``
    (the corpus cache's BPE of the same text, ``tokenizer.bpe_tokenizer``); ``file:PATH``: a ``tokenizer.json``;
    ``hf:NAME``: a pretrained tokenizer from the Hugging Face hub (needs the network once; e.g.
    hf:EleutherAI/gpt-neox-20b, the paper's)."""
    if spec == "byte":
        return "byte", "byte", 256
    from tokenizers import Tokenizer

    kind, _, target = spec.partition(":")
    if spec == "bpe":
        if source is None:
            raise DataError("--tokenizer bpe: needs the source to train on")
        from ebt_scaling.data.cache import cache_root
        from ebt_scaling.data.tokenizer import bpe_tokenizer

        docs, sha = _bpe_docs(source, cache_dir, progress)
        tok = bpe_tokenizer(docs, sha, vocab_size, cache_root(cache_dir), progress)._tok
    elif kind == "file" and target:
        path = pathlib.Path(target).expanduser()
        try:
            tok = Tokenizer.from_file(str(path))
        except Exception as exc:  # missing file, not a tokenizer.json
            msg = (str(exc).splitlines() or [type(exc).__name__])[0][:120]
            raise DataError(f"tokenizer file:{target}: cannot load it ({msg}); give a tokenizer.json "
                            "saved by the `tokenizers` library") from None
    elif kind == "hf" and target:
        from ebt_scaling.data.tokenizer import pretrained_tokenizer

        tok = pretrained_tokenizer(target)._tok
    else:
        raise DataError(f"tokenizer {spec!r}: use bpe, byte, file:PATH (a tokenizer.json) or hf:NAME "
                        "(e.g. hf:EleutherAI/gpt-neox-20b)")
    blob = tok.to_str()
    return blob, "sha256:" + hashlib.sha256(blob.encode("utf-8")).hexdigest(), tok.get_vocab_size(True)


_WORKER_TOK: Any = None


def _init_worker(blob: str) -> None:
    global _WORKER_TOK
    os.environ["TOKENIZERS_PARALLELISM"] = "false"  # one process per core; no nested thread pool
    if blob == "byte":
        _WORKER_TOK = "byte"
    else:
        from tokenizers import Tokenizer

        _WORKER_TOK = Tokenizer.from_str(blob)


def _encode(texts: list[str]) -> list[np.ndarray]:
    """Each text's tokens; encoded in the corpus cache's pieces (``tokenizer.pieces``), so a text gives the
    same tokens here as in the cache."""
    if _WORKER_TOK == "byte":
        return [np.frombuffer(t.encode("utf-8"), dtype=np.uint8).astype(np.uint32) for t in texts]
    from ebt_scaling.data.tokenizer import pieces

    parts = [pieces(t) for t in texts]
    flat = [p for ps in parts for p in ps]
    ids = [np.asarray(e.ids, dtype=np.uint32) for e in _WORKER_TOK.encode_batch(flat)] if flat else []
    out, k = [], 0
    for ps in parts:
        out.append(np.concatenate(ids[k:k + len(ps)]) if ps else np.zeros(0, dtype=np.uint32))
        k += len(ps)
    return out


# ---------------------------------------------------------------------------------------- writer
class _ShardWriter:
    """Fills one shard buffer; every full shard is written and recorded in the manifest."""

    def __init__(self, out: pathlib.Path, manifest: dict, dtype: np.dtype) -> None:
        self.out, self.m, self.dtype = out, manifest, dtype
        self.cap = int(manifest["params"]["shard_tokens"])
        self.buf = np.empty(self.cap, dtype=dtype)
        self.fill = 0
        self.starts: list[int] = []
        self.docs = 0  # documents that start in this shard

    def add(self, doc: int, tokens: np.ndarray, skip: int = 0) -> None:
        """Append document number ``doc`` of the stream (its first ``skip`` tokens are already stored)."""
        if skip == 0:
            if len(tokens) == 0:
                self.m["documents_empty"] += 1
                return
            self.starts.append(self.fill)
            self.docs += 1
        pos = skip
        while pos < len(tokens):
            take = min(self.cap - self.fill, len(tokens) - pos)
            self.buf[self.fill:self.fill + take] = tokens[pos:pos + take]
            self.fill += take
            pos += take
            if self.fill == self.cap:
                done = pos == len(tokens)
                self.flush(next_doc=doc + 1 if done else doc, next_offset=0 if done else pos)

    def flush(self, next_doc: int, next_offset: int) -> None:
        if self.fill == 0:
            return
        i = len(self.m["shards"])
        data = memoryview(self.buf[:self.fill]).cast("B")  # written and hashed in place: no copy of the shard
        idx = np.asarray(self.starts, dtype="<u4").tobytes()
        atomic_write_bytes(self.out / f"{_shard_name(i)}.bin", data)
        atomic_write_bytes(self.out / f"{_shard_name(i)}.idx", idx)
        self.m["shards"].append({"name": _shard_name(i), "tokens": self.fill, "documents": self.docs,
                                 "sha256": hashlib.sha256(data).hexdigest(),
                                 "idx_sha256": hashlib.sha256(idx).hexdigest()})
        self.m["tokens"] += self.fill
        self.m["documents"] += self.docs
        self.m["resume"] = {"next_doc": next_doc, "next_offset": next_offset}
        atomic_write_json(self.out / MANIFEST, self.m)
        self.fill, self.starts, self.docs = 0, [], 0


def _params(source: Source, tok_spec: str, tok_hash: str, vocab: int, shard_tokens: int,
            bpe_vocab: int | None = None) -> dict:
    p = {"format": FORMAT, "source": source.spec, "field": source.field, "data_files": source.data_files,
         "tokenizer": tok_spec, "tokenizer_hash": tok_hash, "vocab_size": vocab,
         "dtype": store_dtype(vocab).name, "shard_tokens": shard_tokens}
    if bpe_vocab is not None:  # --vocab-size of a trained BPE (the store's vocab_size may be smaller)
        p["bpe_vocab_size"] = bpe_vocab
    return p


def _fresh(params: dict) -> dict:
    return {"params": params, "complete": False, "shards": [], "documents": 0, "documents_empty": 0,
            "tokens": 0, "resume": {"next_doc": 0, "next_offset": 0}, "split": dict(SPLIT_RULE)}


def _keep_tokenizer(out: pathlib.Path, m: dict, blob: str) -> None:
    """Write the tokenizer into the store (``tokenizer.json``, named by the manifest) unless it is there."""
    if blob == "byte" or (m.get("tokenizer_file") == TOKENIZER_FILE and (out / TOKENIZER_FILE).is_file()):
        return
    atomic_write_bytes(out / TOKENIZER_FILE, blob.encode("utf-8"))
    m["tokenizer_file"] = TOKENIZER_FILE
    atomic_write_json(out / MANIFEST, m)


def _others(out: pathlib.Path) -> list[str]:
    """Names in ``out`` other than the writer's lock file and the tokenizer it keeps."""
    return sorted(p.name for p in out.iterdir() if p.name not in (LOCK, TOKENIZER_FILE)) if out.is_dir() else []


def _start_or_resume(out: pathlib.Path, params: dict, progress: Progress, cache_dir: str | None = None) -> dict:
    """A fresh manifest for an empty/new ``out``, or the recorded one when ``out`` holds a store of the same
    parameters whose recorded shards pass their checksums (a store whose shards do not is prepared again from
    the start, its manifest reset first). DataError for anything else, before any write. Called under the
    writer's lock."""
    if (out / MANIFEST).exists():
        m, sha = load_manifest(out)  # a malformed manifest: one line, nothing written
        if m["params"] != params:
            diff = sorted(k for k in set(params) | set(m["params"]) if params.get(k) != m["params"].get(k))
            raise DataError(f"{out} holds a token store prepared with other settings ({', '.join(diff)}); "
                            "use another --out, or the same arguments to continue it")
        try:
            verify_shards(out, m, sha, cache_dir=cache_dir)
        except DataError as exc:
            why = str(exc).split(": ", 1)[-1].split("; ")[0]
            progress(f"{out}: {why}; preparing the store again from the start")
            m = _fresh(params)
            atomic_write_json(out / MANIFEST, m)  # before any shard is overwritten: no manifest names them
            return m
        if not m["complete"]:
            progress(f"continuing {out}: {len(m['shards'])} complete shards, {m['tokens']:,} tokens")
        return m
    if _others(out):
        raise DataError(f"{out} exists and is not a token store (no {MANIFEST}); choose an empty or new folder")
    return _fresh(params)


@contextlib.contextmanager
def writer_lock(out: pathlib.Path) -> Iterator[None]:
    """Hold the exclusive lock of the store folder ``out`` (created if needed) while writing it.

    An flock on ``out/.prepare.lock``: the kernel frees it when the holder exits, killed or not, so a dead
    writer never blocks the next one. A second writer is refused in one line naming the holder."""
    if out.exists() and not out.is_dir():
        raise DataError(f"--out {out}: exists and is not a folder; choose an empty or new folder")
    if not (out / MANIFEST).exists() and _others(out):
        raise DataError(f"{out} exists and is not a token store (no {MANIFEST}); choose an empty or new folder")
    out.mkdir(parents=True, exist_ok=True)
    fd = os.open(out / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 256, 0).decode("utf-8", "replace").strip() or "a process that just started"
            raise DataError(f"{out}: another `ebt-scale data prepare` ({holder}) is writing this token store; "
                            "wait for it to end, or choose another --out") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)


def _remove_orphans(out: pathlib.Path, m: dict) -> None:
    """Shard files beyond the manifest's last shard and temporary files of killed writes (the caller holds the
    lock, so no writer is using them)."""
    named = {f"{s['name']}{ext}" for s in m["shards"] for ext in (".bin", ".idx")}
    for p in out.iterdir():
        orphan = p.name.startswith("shard-") and p.suffix in (".bin", ".idx") and p.name not in named
        if orphan or (p.name.startswith(".") and p.name.endswith(".tmp")):
            with contextlib.suppress(OSError):
                p.unlink()


def _batches(docs: Iterator[tuple[str, float | None]], first: int
             ) -> Iterator[tuple[list[int], list[str], float | None]]:
    """(document numbers, texts, fraction done) batches of the stream from document ``first`` on; the
    documents before it are read and dropped, never tokenised."""
    nums: list[int] = []
    texts: list[str] = []
    chars = 0
    frac: float | None = None
    for n, (text, frac) in enumerate(docs):
        if n < first:
            continue
        nums.append(n)
        texts.append(text)
        chars += len(text)
        if chars >= BATCH_CHARS or len(texts) >= BATCH_DOCS:
            yield nums, texts, frac
            nums, texts, chars = [], [], 0
    if texts:
        yield nums, texts, frac


def _fmt_s(s: float) -> str:
    s = int(s)
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


def prepare(source: Source, tokenizer: str, out: pathlib.Path, *, shard_tokens: int = DEFAULT_SHARD_TOKENS,
            workers: int = 1, progress: Progress = lambda _: None, every_s: float = 2.0,
            cache_dir: str | None = None, vocab_size: int = 2048) -> dict:
    """Tokenise ``source`` into a token store at ``out`` (or continue a partial one); returns the manifest.

    ``workers`` tokenising processes (1: in this process). Progress lines at most every ``every_s`` s.
    ``vocab_size``: the vocabulary of a ``bpe`` tokenizer (trained on the source; ignored otherwise). Any
    tokenizer but ``byte`` is kept in the store (``tokenizer.json``, named by the manifest)."""
    if not 1 <= shard_tokens <= 1 << 31:
        raise DataError(f"--shard-tokens: must be between 1 and 2^31, got {shard_tokens}; the default is "
                        f"{DEFAULT_SHARD_TOKENS}")
    if workers < 1:
        raise DataError(f"--workers: must be >= 1, got {workers}")
    blob, tok_hash, vocab = tokenizer_blob(tokenizer, source, vocab_size, cache_dir, progress)
    params = _params(source, tokenizer, tok_hash, vocab, shard_tokens, vocab_size if tokenizer == "bpe" else None)
    with writer_lock(out):
        m = _start_or_resume(out, params, progress, cache_dir)
        _keep_tokenizer(out, m, blob)
        if m["complete"]:
            progress(f"{out} is already complete (checksums verified): {m['documents']:,} documents, "
                     f"{m['tokens']:,} tokens")
            return m
        return _write(source, blob, vocab, tokenizer, out, m, workers, progress, every_s, cache_dir)


def _write(source: Source, blob: str, vocab: int, tokenizer: str, out: pathlib.Path, m: dict, workers: int,
           progress: Progress, every_s: float, cache_dir: str | None) -> dict:
    """Tokenise the rest of ``source`` into ``out`` from where manifest ``m`` stands (under the lock)."""
    writer = _ShardWriter(out, m, store_dtype(vocab))
    first, skip = m["resume"]["next_doc"], m["resume"]["next_offset"]
    t0 = last = time.monotonic()
    new_tokens = 0
    end_doc = first  # the stream's next document after everything consumed so far
    batches = _batches(source.documents(cache_dir), first)

    def consume(nums: list[int], encoded: list[np.ndarray], frac: float | None) -> None:
        nonlocal new_tokens, last, end_doc
        for n, toks in zip(nums, encoded, strict=True):
            if toks.size and int(toks.max()) >= vocab:
                raise DataError(f"tokenizer {tokenizer}: token id {int(toks.max())} >= vocabulary {vocab}")
            writer.add(n, toks.astype(writer.dtype, copy=False), skip if n == first else 0)
            new_tokens += len(toks) - (skip if n == first else 0)
            end_doc = n + 1
        now = time.monotonic()
        if now - last >= every_s:
            last = now
            rate = new_tokens / max(now - t0, 1e-9)
            eta = ""
            if frac:
                eta = f", {100 * frac:.0f}% of the source, ETA {_fmt_s((now - t0) * (1 - frac) / frac)}"
            progress(f"{nums[-1] + 1:,} documents, {m['tokens'] + writer.fill:,} tokens, {rate:,.0f} tokens/s, "
                     f"{len(m['shards'])} shards written{eta}")

    if workers == 1:
        _init_worker(blob)
        for nums, texts, frac in batches:
            consume(nums, _encode(texts), frac)
    else:
        ctx = multiprocessing.get_context("spawn")  # no fork of a process that may hold tokenizer threads
        with ctx.Pool(workers, initializer=_init_worker, initargs=(blob,)) as pool:
            pending: deque = deque()
            for nums, texts, frac in batches:
                pending.append((nums, pool.apply_async(_encode, (texts,)), frac))
                if len(pending) >= 2 * workers:  # bounded: at most 2 batches per worker in flight
                    n_, r, f_ = pending.popleft()
                    consume(n_, r.get(), f_)
            while pending:
                n_, r, f_ = pending.popleft()
                consume(n_, r.get(), f_)
    writer.flush(next_doc=end_doc, next_offset=0)  # a kill after this flush resumes at the stream's end
    seconds = time.monotonic() - t0
    m["complete"] = True
    m["resume"] = None
    m["last_run"] = {"seconds": round(seconds, 3), "tokens": new_tokens, "workers": workers,
                     "tokens_per_s": round(new_tokens / max(seconds, 1e-9), 1)}
    atomic_write_json(out / MANIFEST, m)
    _remove_orphans(out, m)
    progress(f"done: {m['documents']:,} documents ({m['documents_empty']:,} empty), {m['tokens']:,} tokens in "
             f"{len(m['shards'])} shards; this run {new_tokens:,} tokens in {_fmt_s(seconds)}, "
             f"{new_tokens / max(seconds, 1e-9):,.0f} tokens/s with {workers} worker(s)")
    return m


def write_documents(out: pathlib.Path, params: dict, docs: list[np.ndarray]) -> dict:
    """Write already tokenised documents (small, in memory: the built-in corpora of the corpus cache) as a
    complete store at ``out``, in one go (the caller holds the artefact's lock). ``params`` as ``_params``
    makes them, with ``dtype`` and ``shard_tokens``. Returns the manifest."""
    out.mkdir(parents=True, exist_ok=True)
    m = {"params": params, "complete": False, "shards": [], "documents": 0, "documents_empty": 0, "tokens": 0,
         "resume": {"next_doc": 0, "next_offset": 0}}
    writer = _ShardWriter(out, m, np.dtype(params["dtype"]))
    for n, toks in enumerate(docs):
        writer.add(n, np.asarray(toks).astype(writer.dtype, copy=False))
    writer.flush(next_doc=len(docs), next_offset=0)
    m["complete"], m["resume"] = True, None
    atomic_write_json(out / MANIFEST, m)
    return m


def summary(m: dict) -> dict:
    """The manifest's summary for ``--json``: counts, tokenizer, shards with their checksums."""
    p = m["params"]
    return {"source": p["source"], "tokenizer": p["tokenizer"], "tokenizer_hash": p["tokenizer_hash"],
            "tokenizer_file": m.get("tokenizer_file"), "split": m.get("split"),
            "vocab_size": p["vocab_size"], "dtype": p["dtype"], "documents": m["documents"],
            "documents_empty": m["documents_empty"], "tokens": m["tokens"], "complete": m["complete"],
            "shards": [{"name": s["name"], "tokens": s["tokens"], "sha256": s["sha256"]} for s in m["shards"]],
            "last_run": m.get("last_run")}


def store_tokenizer(path: pathlib.Path | str, manifest: dict | None = None):  # noqa: ANN201 - a tokenizer
    """The tokenizer a store's tokens were made with (``data.tokenizer``'s ByteTokenizer or HFTokenizer): the
    one kept in the store (``tokenizer.json``, checked against the manifest's hash), else the ``file:PATH`` it
    was prepared with when that file still has the recorded hash, else ``hf:NAME`` from the hub. DataError (one
    line) when none is found."""
    from ebt_scaling.data.tokenizer import ByteTokenizer, HFTokenizer

    path = pathlib.Path(path)
    m = manifest if manifest is not None else load_manifest(path)[0]
    p = m["params"]
    if p["tokenizer"] == "byte":
        return ByteTokenizer()
    from tokenizers import Tokenizer

    candidates: list[pathlib.Path] = []
    if isinstance(m.get("tokenizer_file"), str):
        candidates.append(path / m["tokenizer_file"])
    kind, _, target = p["tokenizer"].partition(":")
    if kind == "file":
        candidates.append(pathlib.Path(target).expanduser())
    for f in candidates:
        if not f.is_file():
            continue
        blob = f.read_text(encoding="utf-8")
        tok = Tokenizer.from_str(blob)
        if "sha256:" + hashlib.sha256(tok.to_str().encode("utf-8")).hexdigest() == p["tokenizer_hash"] or \
                "sha256:" + hashlib.sha256(blob.encode("utf-8")).hexdigest() == p["tokenizer_hash"]:
            return HFTokenizer(tok, p["tokenizer"], "store-" + p["tokenizer_hash"][7:23])
    if kind == "hf":
        from ebt_scaling.data.tokenizer import pretrained_tokenizer

        return pretrained_tokenizer(target)
    raise DataError(f"{path}: the store's tokenizer ({p['tokenizer']}) is not in the store (no {TOKENIZER_FILE} "
                    f"with its hash); prepare the store again with `{prepare_command(path, p)}`")


# ---------------------------------------------------------------------------------------- reader
class TokenStore:
    """Read-only view of a complete store: tokens and documents through memory maps.

    Opening checks the manifest's schema; ``verify=True`` also checks every shard's size and checksum
    (``verify.verify_shards``: once per store and machine, remembered in the cache under ``cache_dir``)."""

    def __init__(self, path: pathlib.Path | str, *, verify: bool = False, cache_dir: str | None = None) -> None:
        self.path = pathlib.Path(path)
        self.manifest, sha = load_manifest(self.path)
        if not self.manifest["complete"]:
            raise DataError(f"{self.path}: the token store is incomplete; rerun the same `ebt-scale data "
                            f"prepare` command to finish it ({prepare_command(self.path, self.manifest['params'])})")
        if verify:
            verify_shards(self.path, self.manifest, sha, cache_dir=cache_dir)
        p = self.manifest["params"]
        self.vocab_size = int(p["vocab_size"])
        self.dtype = np.dtype(p["dtype"])
        shards = self.manifest["shards"]
        self._tok_offsets = np.cumsum([0] + [s["tokens"] for s in shards]).tolist()
        self._doc_offsets = np.cumsum([0] + [s["documents"] for s in shards]).tolist()
        self._bins: dict[int, np.memmap] = {}
        self._idx: dict[int, np.ndarray] = {}

    @property
    def num_tokens(self) -> int:
        return self._tok_offsets[-1]

    @property
    def num_documents(self) -> int:
        return self._doc_offsets[-1]

    def _bin(self, i: int) -> np.ndarray:
        if i not in self._bins:
            self._bins[i] = np.memmap(self.path / f"{_shard_name(i)}.bin", dtype=self.dtype, mode="r")
        return self._bins[i]

    def _starts(self, i: int) -> np.ndarray:
        if i not in self._idx:
            self._idx[i] = np.fromfile(self.path / f"{_shard_name(i)}.idx", dtype="<u4")
        return self._idx[i]

    def read(self, start: int, n: int) -> np.ndarray:
        """Tokens ``start .. start + n - 1`` of the stream (across shards), as int64."""
        if start < 0 or n < 0 or start + n > self.num_tokens:
            raise IndexError(f"tokens {start}..{start + n} outside 0..{self.num_tokens}")
        out = np.empty(n, dtype=np.int64)
        pos = 0
        while pos < n:
            i = bisect.bisect_right(self._tok_offsets, start + pos) - 1
            lo = start + pos - self._tok_offsets[i]
            take = min(n - pos, self._tok_offsets[i + 1] - self._tok_offsets[i] - lo)
            out[pos:pos + take] = self._bin(i)[lo:lo + take]
            pos += take
        return out

    def doc_start(self, d: int) -> int:
        """Position in the stream of document ``d``'s first token (``num_tokens`` for d = num_documents)."""
        if d == self.num_documents:
            return self.num_tokens
        if not 0 <= d < self.num_documents:
            raise IndexError(f"document {d} outside 0..{self.num_documents - 1}")
        i = bisect.bisect_right(self._doc_offsets, d) - 1
        return self._tok_offsets[i] + int(self._starts(i)[d - self._doc_offsets[i]])

    def document(self, d: int) -> np.ndarray:
        start = self.doc_start(d)
        return self.read(start, self.doc_start(d + 1) - start)

    def verify(self) -> list[str]:
        """Names of the shards whose bytes do not match the manifest's checksums (empty: all good)."""
        bad = []
        for s in self.manifest["shards"]:
            for suffix, key in ((".bin", "sha256"), (".idx", "idx_sha256")):
                f = self.path / f"{s['name']}{suffix}"
                h = hashlib.sha256(f.read_bytes()).hexdigest() if f.is_file() else ""
                if h != s[key]:
                    bad.append(f.name)
        return bad
