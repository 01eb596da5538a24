"""Token corpora: memmapped train/validation token files, the split, batching and the unigram baseline.

Pipeline of ``load_corpus(cfg, sequence_len)`` (every stage cached, keyed by content checksums)::

    source --(sources.py)--> documents --(tokenizer.py)--> token stream --(split)--> train.bin / val.bin

Split: the token stream (documents concatenated in order) is cut into contiguous blocks of
``block_size`` tokens (4096, or fewer for small corpora: about 400 blocks); a permutation seeded with
``split_seed`` picks ``round(val_fraction * blocks)`` (at least 1) of them for validation. The split
depends only on the text, the tokenizer, ``val_fraction`` and ``split_seed`` - not on the sequence length,
so every run of a sweep sees the same validation tokens. A training window may straddle two train blocks
that were not adjacent in the text (like document concatenation); it never contains a validation token.
"""

from __future__ import annotations

import hashlib
import pathlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

import ebt_scaling.data.synthetic as syn
from ebt_scaling.config import DataConfig, tokenizer_vocab_size
from ebt_scaling.data.cache import (
    Progress,
    atomic_write_json,
    cache_root,
    locked,
    read_json,
    sha256_file,
    staging_dir,
    stderr_progress,
)
from ebt_scaling.data.sampler import StoreData, store_path
from ebt_scaling.data.sources import load_documents
from ebt_scaling.data.split import MAX_BLOCK, MIN_BLOCK, TARGET_BLOCKS, split_blocks
from ebt_scaling.data.store import FORMAT, TokenStore, store_dtype, write_documents
from ebt_scaling.data.tokenizer import ByteTokenizer, HFTokenizer, bpe_tokenizer, pretrained_tokenizer
from ebt_scaling.data.tokenizer import pieces as split_pieces
from ebt_scaling.data.video_data import VideoData, check_modality, open_video_data
from ebt_scaling.errors import ConfigError, DataError

__all__ = ["MAX_BLOCK", "MIN_BLOCK", "TARGET_BLOCKS", "TokenCorpus", "builtin_store", "load_corpus", "open_data",
           "split_blocks"]

TOKENS_FORMAT = 1  # bump when the token-file layout or the split rule changes


class SymbolTokenizer:
    """Tokens of the synthetic source are symbols 0..V-1, written as space-separated integers."""

    kind = "symbols"

    def __init__(self, vocab_size: int) -> None:
        self.vocab_size = vocab_size
        self.ident = f"symbols-{vocab_size}"

    def encode(self, text: str) -> list[int]:
        ids = [int(t) for t in text.split()]
        if any(not 0 <= i < self.vocab_size for i in ids):
            raise DataError(f"synthetic: symbols must be integers in 0..{self.vocab_size - 1}")
        return ids

    def decode(self, ids: Sequence[int]) -> str:
        return " ".join(str(int(i)) for i in ids)


def _token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16) if vocab_size <= 1 << 16 else np.dtype(np.uint32)


def _write_split(folder: pathlib.Path, stream: np.ndarray, vocab_size: int, cfg: DataConfig,
                 block_size: int | None, meta: dict[str, Any]) -> None:
    dtype = _token_dtype(vocab_size)
    if stream.size and int(stream.max()) >= vocab_size:
        raise DataError(f"token id {int(stream.max())} >= vocab_size {vocab_size}; this is a bug in the tokenizer "
                        "setup, please report it")
    bs, val_blocks = split_blocks(stream.size, cfg.val_fraction, cfg.split_seed, block_size)
    is_val = np.zeros(-(-stream.size // bs), dtype=bool)
    is_val[val_blocks] = True
    mask = np.repeat(is_val, bs)[: stream.size]
    with staging_dir(folder) as tmp:
        stream[~mask].astype(dtype).tofile(tmp / "train.bin")
        stream[mask].astype(dtype).tofile(tmp / "val.bin")
        atomic_write_json(tmp / "meta.json", {
            **meta, "format": TOKENS_FORMAT, "dtype": dtype.name, "vocab_size": vocab_size,
            "n_tokens": int(stream.size), "n_train": int((~mask).sum()), "n_val": int(mask.sum()),
            "block_size": bs, "val_blocks": [int(b) for b in val_blocks],
            "val_fraction": cfg.val_fraction, "split_seed": cfg.split_seed,
            "sha256": {"train.bin": sha256_file(tmp / "train.bin"), "val.bin": sha256_file(tmp / "val.bin")},
        })


def _valid_token_dir(folder: pathlib.Path) -> dict[str, Any] | None:
    meta_path = folder / "meta.json"
    if not meta_path.exists():
        return None
    meta = read_json(meta_path)
    if meta.get("format") != TOKENS_FORMAT:
        return None
    for name, digest in meta.get("sha256", {}).items():
        if not (folder / name).exists() or sha256_file(folder / name) != digest:
            return None
    return meta


@dataclass
class TokenCorpus:
    """Train/validation token files of one corpus and tokenizer, memmapped read-only."""

    name: str
    vocab_size: int
    train: np.ndarray
    val: np.ndarray
    tokenizer: Any
    meta: dict[str, Any] = field(default_factory=dict)
    folder: pathlib.Path | None = None
    # Analytic entropy rate in nats/token (synthetic source only): the best achievable validation loss.
    entropy_rate: float | None = None
    _unigram: float | None = field(default=None, repr=False)

    @property
    def checksum(self) -> str:
        return str(self.meta.get("corpus_sha256", ""))

    def _split(self, split: str) -> np.ndarray:
        if split == "train":
            return self.train
        if split == "val":
            return self.val
        raise ValueError(f"split must be 'train' or 'val', got {split!r}")

    def _check_len(self, arr: np.ndarray, seq_len: int, split: str) -> None:
        if arr.size < seq_len + 1:
            raise DataError(f"{self.name}: the {split} split has {arr.size} tokens, fewer than sequence_len+1 = "
                            f"{seq_len + 1}; use a shorter --seq-len or more text")

    def sample_batch(self, split: str, batch_size: int, seq_len: int, rng: np.random.Generator) -> np.ndarray:
        """``batch_size`` windows of ``seq_len + 1`` tokens at uniform random offsets: (B, T+1) int64."""
        arr = self._split(split)
        self._check_len(arr, seq_len, split)
        starts = rng.integers(0, arr.size - seq_len, size=batch_size)
        return np.asarray(arr[starts[:, None] + np.arange(seq_len + 1)], dtype=np.int64)

    @property
    def train_tokens(self) -> int:
        return int(self.train.size)

    def val_batches(self, n_batches: int, batch_size: int, seq_len: int,
                    n_windows: int | None = None) -> list[np.ndarray]:
        """Fixed validation windows of ``seq_len + 1`` tokens, evenly spread over the validation split
        (identical on every call), in batches of ``batch_size`` (the last one may be smaller). ``n_windows``
        fixes the set whatever the batch size; None: ``n_batches x batch_size`` windows."""
        self._check_len(self.val, seq_len, "val")
        total = n_batches * batch_size if n_windows is None else n_windows
        starts = np.linspace(0, self.val.size - seq_len - 1, total).round().astype(np.int64)
        windows = np.asarray(self.val[starts[:, None] + np.arange(seq_len + 1)], dtype=np.int64)
        return [windows[i:i + batch_size] for i in range(0, total, batch_size)]

    def unigram_entropy(self) -> float:
        """Validation cross-entropy (nats/token) of a unigram model fitted on train (add-one smoothing)."""
        if self._unigram is None:
            counts = np.bincount(np.asarray(self.train), minlength=self.vocab_size).astype(np.float64) + 1.0
            logq = np.log(counts / counts.sum())
            val_counts = np.bincount(np.asarray(self.val), minlength=self.vocab_size).astype(np.float64)
            self._unigram = float(-(val_counts * logq).sum() / val_counts.sum())
        return self._unigram

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text)

    def decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(ids)

    def summary(self) -> dict[str, Any]:
        out = {"source": self.name, "tokenizer": self.tokenizer.kind, "vocab_size": self.vocab_size,
               "train_tokens": int(self.train.size), "val_tokens": int(self.val.size),
               "unigram_loss": self.unigram_entropy(), "checksum": self.checksum,
               "folder": str(self.folder) if self.folder else None}
        if self.entropy_rate is not None:
            out["entropy_rate"] = self.entropy_rate
        return out


def _open(folder: pathlib.Path, meta: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    dt = np.dtype(meta["dtype"])
    train = np.memmap(folder / "train.bin", dtype=dt, mode="r", shape=(meta["n_train"],))
    val = np.memmap(folder / "val.bin", dtype=dt, mode="r", shape=(meta["n_val"],))
    return train, val


def _encode_docs(docs: Sequence[str], tokenizer: Any, progress: Progress) -> list[np.ndarray]:
    """Every document's tokens. Long documents are encoded in ~64k-character pieces cut after a newline
    (``tokenizer.pieces``, parallel in `tokenizers`); a document's tokens are its pieces' tokens back to back."""
    pieces: list[str] = []
    owner: list[int] = []
    for n, d in enumerate(docs):
        for piece in split_pieces(d):
            pieces.append(piece)
            owner.append(n)
    total = sum(len(p) for p in pieces)
    progress(f"tokenizing {total / 1e6:.1f} MB with {tokenizer.kind} (vocab {tokenizer.vocab_size})")
    per_doc: list[list[np.ndarray]] = [[] for _ in docs]
    batch = 256
    for i in range(0, len(pieces), batch):
        ids = tokenizer.encode_batch(pieces[i:i + batch])
        for n, x in zip(owner[i:i + batch], ids, strict=True):
            per_doc[n].append(np.asarray(x, dtype=np.int64))
        if len(pieces) > 4 * batch and (i // batch) % 8 == 7:
            progress(f"  tokenized {min(i + batch, len(pieces))}/{len(pieces)} pieces")
    return [np.concatenate(p) if p else np.zeros(0, dtype=np.int64) for p in per_doc]


def _make_tokenizer(cfg: DataConfig, docs: Sequence[str], corpus_sha: str, root: pathlib.Path,
                    progress: Progress) -> ByteTokenizer | HFTokenizer:
    if cfg.tokenizer == "byte":
        return ByteTokenizer()
    if cfg.tokenizer == "bpe":
        return bpe_tokenizer(docs, corpus_sha, cfg.vocab_size, root, progress)
    tok = pretrained_tokenizer(cfg.tokenizer[len("hf:"):])
    if tok.vocab_size > cfg.vocab_size:
        raise ConfigError(f"DataConfig.vocab_size: {cfg.tokenizer} has {tok.vocab_size} tokens but vocab_size is "
                          f"{cfg.vocab_size}; set --vocab-size {tok.vocab_size}")
    return tok


def _synthetic(cfg: DataConfig, root: pathlib.Path, progress: Progress) -> TokenCorpus:
    v = cfg.vocab_size
    syn._check_vocab(v)
    key = hashlib.sha256(f"synthetic|{v}|{syn.SYNTHETIC_SEED}|{cfg.val_fraction}|{cfg.split_seed}|"
                         f"{TOKENS_FORMAT}".encode()).hexdigest()[:16]
    folder = root / "tokens" / f"synthetic-{v}-{key}"
    with locked(root, folder.name):
        meta = _valid_token_dir(folder)
        if meta is None:
            progress(f"sampling the synthetic Markov source (vocab {v}, "
                     f"{syn.SYNTHETIC_CHAINS * syn.SYNTHETIC_CHAIN_LEN} tokens)")
            stream = syn.sample_synthetic(v).ravel()
            digest = hashlib.sha256(stream.astype(np.int64).tobytes()).hexdigest()
            _write_split(folder, stream, v, cfg, syn.SYNTHETIC_CHAIN_LEN,
                         {"source": "synthetic", "tokenizer": "symbols", "corpus_sha256": digest})
            meta = _valid_token_dir(folder)
            assert meta is not None
    train, val = _open(folder, meta)
    return TokenCorpus("synthetic", v, train, val, SymbolTokenizer(v), meta, folder,
                       entropy_rate=syn.synthetic_entropy_rate(v))


def load_corpus(cfg: DataConfig, sequence_len: int, progress: Progress | None = None) -> TokenCorpus:
    """Prepare (first use) or open (cached) the corpus of ``cfg``; checks both splits fit ``sequence_len``."""
    progress = progress or stderr_progress
    root = cache_root(cfg.cache_dir)
    if cfg.source == "synthetic":
        corpus = _synthetic(cfg, root, progress)
    else:
        docs, corpus_sha, doc_meta = load_documents(cfg.source, root, progress)
        tokenizer = _make_tokenizer(cfg, docs, corpus_sha, root, progress)
        vocab = tokenizer_vocab_size(cfg)
        key = hashlib.sha256(f"{corpus_sha}|{tokenizer.ident}|{vocab}|{cfg.val_fraction}|{cfg.split_seed}|"
                             f"{TOKENS_FORMAT}".encode()).hexdigest()[:16]
        folder = root / "tokens" / f"{corpus_sha[:12]}-{tokenizer.ident}-{key}"
        with locked(root, folder.name):
            meta = _valid_token_dir(folder)
            if meta is None:
                store = builtin_store(cfg, progress)  # tokenised once, for training and this view alike
                stream = store.read(0, store.num_tokens)
                _write_split(folder, stream, vocab, cfg, None, {
                    "source": cfg.source, "tokenizer": tokenizer.kind, "tokenizer_ident": tokenizer.ident,
                    "corpus_sha256": corpus_sha, "documents": doc_meta.get("documents"),
                })
                meta = _valid_token_dir(folder)
                assert meta is not None
                progress(f"wrote {meta['n_train']} train + {meta['n_val']} val tokens to {folder}")
        train, val = _open(folder, meta)
        corpus = TokenCorpus(cfg.source, vocab, train, val, tokenizer, meta, folder)
    corpus._check_len(corpus.train, sequence_len, "train")
    corpus._check_len(corpus.val, sequence_len, "val")
    return corpus


# ---------------------------------------------------------------------------------------- training data
BUILTIN_STORE_FORMAT = 1  # bump when the built-in stores' content rule changes


def builtin_store(cfg: DataConfig, progress: Progress | None = None) -> TokenStore:
    """The token store of a built-in source (shakespeare, kjv, synthetic, text:PATH, hf:NAME), prepared in the
    cache on first use (``stores/``; checked against its checksums on every open, rebuilt when corrupt). Its
    documents are ``load_corpus``'s, tokenised the same way, so its token stream is ``load_corpus``'s stream
    (synthetic: one document per chain)."""
    progress = progress or stderr_progress
    root = cache_root(cfg.cache_dir)
    if cfg.source == "synthetic":
        vocab = cfg.vocab_size
        syn._check_vocab(vocab)
        name, tok_ident = f"synthetic-{vocab}", f"symbols-{vocab}-{syn.SYNTHETIC_SEED}"

        def make() -> list[np.ndarray]:
            progress(f"sampling the synthetic Markov source (vocab {vocab}, "
                     f"{syn.SYNTHETIC_CHAINS * syn.SYNTHETIC_CHAIN_LEN} tokens)")
            return list(syn.sample_synthetic(vocab))
    else:
        docs, corpus_sha, _ = load_documents(cfg.source, root, progress)
        tokenizer = _make_tokenizer(cfg, docs, corpus_sha, root, progress)
        vocab = tokenizer_vocab_size(cfg)
        name, tok_ident = corpus_sha[:12], tokenizer.ident

        def make() -> list[np.ndarray]:
            return _encode_docs(docs, tokenizer, progress)
    key = hashlib.sha256(f"{name}|{tok_ident}|{vocab}|{FORMAT}|{BUILTIN_STORE_FORMAT}".encode()).hexdigest()[:16]
    out = root / "stores" / f"{name}-{tok_ident}-{key}"
    with locked(root, f"store-{out.name}"):
        store = None
        if (out / "manifest.json").exists():
            try:  # checksums checked once per machine (remembered in the cache while the files are unchanged)
                store = TokenStore(out, verify=True, cache_dir=cfg.cache_dir)
            except DataError as exc:
                why = str(exc).split("; ")[0].split(": ", 1)[-1]
                progress(f"token store {out} fails its checksums ({why}); preparing it again")
                store = None
        if store is None:
            tokens = make()
            top = max((int(t.max()) for t in tokens if t.size), default=0)
            if top >= vocab:
                raise DataError(f"token id {top} >= vocab_size {vocab}; this is a bug in the tokenizer setup, "
                                "please report it")
            params = {"format": FORMAT, "source": cfg.source, "field": None, "data_files": None,
                      "tokenizer": tok_ident, "tokenizer_hash": tok_ident, "vocab_size": vocab,
                      "dtype": store_dtype(vocab).name, "shard_tokens": 1 << 22, "builtin": BUILTIN_STORE_FORMAT}
            with staging_dir(out) as tmp:
                write_documents(tmp, params, tokens)
            store = TokenStore(out)
            progress(f"wrote the token store of {cfg.source}: {store.num_tokens:,} tokens, "
                     f"{store.num_documents:,} documents, {out}")
    return store


def open_data(cfg: DataConfig, sequence_len: int, *, seed: int = 0, progress: Progress | None = None,
              frame_dim: int | None = None) -> StoreData | VideoData:
    """The training data of ``cfg``: for a text model (``frame_dim`` None) a ``StoreData`` (sampler.py) over a
    token store: ``store:DIR``, or the cache's store of a built-in source. The document-hash split and keyed order
    for stores and the ``document`` mode; for a built-in source in ``packed`` mode the block split and sequential
    generator of every run trained before token stores existed (same windows; docs/data.md says why). For a video
    model (``frame_dim``: ``ModelConfig.frame_dim``) a ``VideoData`` (video_data.py) over a video store or
    ``synthetic-video``. A source of the other modality is refused in one line (``check_modality``)."""
    check_modality(cfg, frame_dim)
    if frame_dim is not None:
        return open_video_data(cfg, sequence_len, frame_dim, seed=seed, progress=progress)
    kw: dict[str, Any] = dict(seq_len=sequence_len, sampling=cfg.sampling, val_fraction=cfg.val_fraction,
                              split_seed=cfg.split_seed, seed=seed, name=cfg.source)
    if cfg.source.startswith("store:"):
        try:  # schema and checksums, before any sample is read (hashed once per store and machine)
            store = TokenStore(store_path(cfg.source), verify=True, cache_dir=cfg.cache_dir)
        except DataError as exc:
            raise DataError(f"{exc}, then rerun the sweep with --retry-failed to retrain the runs that failed "
                            "on it") from None
        cfg.check_store(store.manifest)  # the store the run was planned on (its content fingerprint)
        return StoreData(store, **kw)
    store = builtin_store(cfg, progress)
    if cfg.sampling == "packed":
        kw.update(split="blocks", block_size=syn.SYNTHETIC_CHAIN_LEN if cfg.source == "synthetic" else None)
    data = StoreData(store, **kw)
    if cfg.source == "synthetic":
        data.entropy_rate = syn.synthetic_entropy_rate(cfg.vocab_size)
    return data
