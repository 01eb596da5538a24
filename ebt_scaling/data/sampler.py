"""Training samples from a token store: the split, the two sampling modes and the fixed validation set.

``StoreData`` reads a ``TokenStore`` (``store.py``) through memory maps; nothing loads all tokens, and a
shard (and its document index) is opened only when a sample touches it.

Split. Document ``d`` (its number in the store, in source order) belongs to the validation split iff
``u(split_seed, d) < val_fraction``, where ``u`` is a 64-bit hash mapped to [0, 1): a pure function of the
document, no pass over the corpus, the same for every tokenizer and shard size of the same source. A store
whose manifest records the ``tail-long`` split rule (every store ``data prepare`` writes since issue 30) splits
a long document (at least ``long_doc_tokens`` tokens, 16,384) by position instead: its last
``ceil(val_fraction x length)`` tokens are validation, the rest training, so a corpus of one or a few long
documents (one text file) holds out about ``val_fraction`` of its tokens. Stores without the record (older
ones, the cache's stores of built-in corpora) keep the hash split alone.

Order. Sample ``j`` of the global batch of step ``s`` is a pure function of ``(seed, s, j)`` (a counter-based
hash, ``keyed``): no generator state, so resume needs nothing but the step, and a data-parallel worker ``k``
of ``N`` draws only its own rows with ``sample_batch(step, indices)`` (e.g. ``indices = range(k, B, N)``);
the union over workers is the single-process batch whatever ``N``.

Modes (``DataConfig.sampling``):

* ``packed``: a window of ``seq_len + 1`` tokens at a uniformly drawn position of the token stream; windows
  may cross document boundaries (documents are concatenated) but never touch a validation document or a
  long document's validation tail (such a draw is redrawn with the next attempt counter).
* ``document``: one training document drawn uniformly, its first ``seq_len + 1`` tokens, right-padded with
  ``PAD`` (-100, the models' ignore index): targets at pad positions drop out of the loss and the token
  counts; inputs at pad positions are clamped to token 0 by the training loop and, being after every real
  position, are never attended to by a real one (causal attention). Documents of fewer than 2 tokens have
  no target and are redrawn.

Built-in corpora in packed mode use ``split = "blocks"`` instead: the corpus cache's block split and the
run's sequential generator (``train_batch``), i.e. the windows of every run trained before token stores existed.

Validation set (fixed per sweep): the validation documents in store order, as many as needed for the
requested tokens: ``packed``: ``n_windows`` windows of ``seq_len + 1`` tokens spread evenly over the
concatenated validation documents; ``document``: one row per document until the real target tokens reach
``n_windows x seq_len``. It depends on the store, the split, the mode, ``seq_len`` and the token budget;
never on the batch size, the worker count or the family.

Selection set (issue 28, ``select_batches``): a second fixed validation set disjoint from the evaluation set, which
a ``[tune]`` sweep uses to pick the LR: the validation documents after the evaluation set's (same rules), or, with
the block split, windows spread over the validation tokens no evaluation window covers.
"""

from __future__ import annotations

import pathlib
from typing import Any

import numpy as np

from ebt_scaling.data.split import split_blocks
from ebt_scaling.data.store import TokenStore
from ebt_scaling.errors import DataError

PAD = -100  # ignore index of both models' cross-entropy
SAMPLING_MODES = ("packed", "document")
MAX_ATTEMPTS = 64  # redraws of one sample (validation overlap, too-short document) before giving up

_TAG_SPLIT, _TAG_PACKED, _TAG_DOCUMENT = 1, 2, 3
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)


def _splitmix(x: np.ndarray) -> np.ndarray:
    x = x + _GOLDEN
    x = (x ^ (x >> np.uint64(30))) * _M1
    x = (x ^ (x >> np.uint64(27))) * _M2
    return x ^ (x >> np.uint64(31))


def keyed(*keys: Any) -> np.ndarray:
    """A 64-bit hash of non-negative integer keys (scalars or arrays, broadcast): splitmix64 chained over them."""
    arrs = np.broadcast_arrays(*(np.asarray(k, dtype=np.uint64) for k in keys))
    h = np.zeros(arrs[0].shape, dtype=np.uint64)
    with np.errstate(over="ignore"):
        for a in arrs:
            h = _splitmix(h ^ a)
    return h


def uniform01(h: np.ndarray) -> np.ndarray:
    """Hashes -> floats in [0, 1) (the top 53 bits)."""
    return (h >> np.uint64(11)).astype(np.float64) * 2.0**-53


class StoreData:
    """Train and validation samples of one token store (see the module doc). Samples are (n, seq_len + 1) int64
    arrays: inputs ``[:, :-1]``, targets ``[:, 1:]``, ``PAD`` where a document mode row has no token."""

    def __init__(self, store: TokenStore, *, seq_len: int, sampling: str = "packed", val_fraction: float = 0.05,
                 split_seed: int = 33, seed: int = 0, name: str | None = None, split: str = "documents",
                 block_size: int | None = None) -> None:
        if sampling not in SAMPLING_MODES:
            raise DataError(f"sampling {sampling!r}: use packed or document")
        if split not in ("documents", "blocks") or (split == "blocks" and sampling != "packed"):
            raise DataError(f"split {split!r} with sampling {sampling!r}: use documents, or blocks with packed")
        self.split = split
        self.store, self.seq_len, self.sampling = store, int(seq_len), sampling
        self.val_fraction, self.split_seed, self.seed = float(val_fraction), int(split_seed), int(seed)
        self.name = name or f"store:{store.path}"
        self.vocab_size = store.vocab_size
        rule = store.manifest.get("split") if split == "documents" else None
        self.long_doc_tokens: int | None = int(rule["long_doc_tokens"]) if isinstance(rule, dict) \
            and rule.get("rule") == "tail-long" else None
        self.entropy_rate: float | None = None
        self._val_cache: dict[tuple[int, int], np.ndarray] = {}
        self._select_cache: dict[tuple[int, int, int], np.ndarray] = {}
        self._val_docs_used = 0
        self._train_tokens: int | None = None
        self._unigram: float | None = None
        if split == "documents" and (store.num_documents == 0 or store.num_tokens < self.seq_len + 1):
            raise DataError(f"{self.name}: {store.num_tokens} tokens in {store.num_documents} documents, fewer than "
                            f"sequence_len+1 = {self.seq_len + 1}; use a shorter --seq-len or a larger store")
        if split == "blocks":
            self._blocks(block_size)

    # ------------------------------------------------------------------------------------ the block split
    def _blocks(self, block_size: int | None) -> None:
        """The corpus cache's split (split.split_blocks: contiguous blocks, a seeded permutation picks the
        validation ones) as runs of train and validation positions; the built-in corpora's packed mode."""
        n = self.store.num_tokens
        bs, val_blocks = split_blocks(n, self.val_fraction, self.split_seed, block_size)
        is_val = np.zeros(-(-n // bs), dtype=bool)
        is_val[val_blocks] = True
        edges = np.flatnonzero(np.diff(is_val.astype(np.int8))) + 1  # block indices where the side changes
        run_starts = np.concatenate(([0], edges)) * bs
        run_ends = np.minimum(np.concatenate((edges * bs, [n])), n)
        side = is_val[np.concatenate(([0], edges))]
        self._runs = {}
        for val in (False, True):
            st, en = run_starts[side == val], run_ends[side == val]
            self._runs[val] = (st, np.concatenate(([0], np.cumsum(en - st))))
        for val, label in ((False, "train"), (True, "val")):
            if self._runs[val][1][-1] < self.seq_len + 1:
                raise DataError(f"{self.name}: the {label} split has {int(self._runs[val][1][-1])} tokens, fewer "
                                f"than sequence_len+1 = {self.seq_len + 1}; use a shorter --seq-len or more text")

    def _read_runs(self, val: bool, pos: int, n: int) -> np.ndarray:
        """Tokens ``pos .. pos + n - 1`` of the concatenated train (or validation) runs of the block split."""
        starts, cum = self._runs[val]
        out = np.empty(n, dtype=np.int64)
        filled = 0
        while filled < n:
            k = int(np.searchsorted(cum, pos, side="right") - 1)
            take = min(n - filled, int(cum[k + 1]) - pos)
            out[filled:filled + take] = self.store.read(int(starts[k]) + pos - int(cum[k]), take)
            filled += take
            pos += take
        return out

    # ------------------------------------------------------------------------------------ the split
    def is_val(self, docs: np.ndarray | int) -> np.ndarray:
        """Whether the hash puts documents ``docs`` in the validation split (a pure function of the document);
        a long document of a ``tail-long`` store is split by position instead (``val_start``)."""
        return uniform01(keyed(_TAG_SPLIT, self.split_seed, docs)) < self.val_fraction

    def val_start(self, docs: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
        """Per document, the stream position where its validation tokens start (its start: all of it; its end:
        none): the hash split, or a long document's tail (module doc)."""
        vs = np.where(self.is_val(docs), starts, ends)
        if self.long_doc_tokens is not None:
            n = ends - starts
            tail = np.ceil(self.val_fraction * n).astype(np.int64)
            vs = np.where(n >= self.long_doc_tokens, ends - tail, vs)
        return vs

    def _shard_docs(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """(global numbers, global token starts + the end of the last one) of the documents that start in
        shard ``i``."""
        st = self.store
        d0, d1 = st._doc_offsets[i], st._doc_offsets[i + 1]
        starts = st._tok_offsets[i] + st._starts(i).astype(np.int64)
        return np.arange(d0, d1, dtype=np.int64), np.append(starts, st.doc_start(d1))

    def _iter_docs(self, val: bool):  # noqa: ANN202 - a generator of (doc, start, length) arrays per shard
        for i in range(len(self.store._tok_offsets) - 1):
            docs, bounds = self._shard_docs(i)
            if docs.size:
                starts, ends = bounds[:-1], bounds[1:]
                vs = self.val_start(docs, starts, ends)
                if val:  # the validation part of each document: [vs, end)
                    keep = vs < ends
                    yield docs[keep], vs[keep], (ends - vs)[keep]
                else:  # the training part: [start, vs)
                    keep = vs > starts
                    yield docs[keep], starts[keep], (vs - starts)[keep]

    def doc_at(self, pos: np.ndarray) -> np.ndarray:
        """Number of the document holding stream position(s) ``pos``."""
        st = self.store
        pos = np.asarray(pos, dtype=np.int64)
        shard = np.searchsorted(st._tok_offsets, pos, side="right") - 1
        out = np.empty(pos.shape, dtype=np.int64)
        for i in np.unique(shard):
            m = shard == i
            local = pos[m] - st._tok_offsets[i]
            out[m] = np.searchsorted(st._starts(int(i)), local, side="right") - 1 + st._doc_offsets[i]
        return out

    def _touches_val(self, first: np.ndarray, last: np.ndarray, hi: np.ndarray | None = None) -> np.ndarray:
        """Per row, whether the window ending at stream position ``hi[i]`` (inclusive) over documents
        ``first[i]..last[i]`` touches validation tokens: a validation document (one hash call), or with the
        ``tail-long`` rule the validation tail of a long document."""
        n = last - first + 1
        offsets = np.concatenate(([0], np.cumsum(n)[:-1]))
        docs = np.repeat(first - offsets, n) + np.arange(int(n.sum()))  # every document of every row
        if self.long_doc_tokens is None or hi is None:
            return np.add.reduceat(self.is_val(docs).astype(np.int64), offsets) > 0
        starts, ends = self.doc_starts(docs), self.doc_starts(docs + 1)
        vs = self.val_start(docs, starts, ends)
        bad = (vs < ends) & (vs <= np.repeat(hi, n))
        return np.add.reduceat(bad.astype(np.int64), offsets) > 0

    def doc_len(self, d: int) -> int:
        return self.store.doc_start(d + 1) - self.store.doc_start(d)

    # ------------------------------------------------------------------------------------ training samples
    def sample_batch(self, step: int, indices: np.ndarray | list[int] | range) -> np.ndarray:
        """Rows ``indices`` of the global training batch of step ``step``: (len(indices), seq_len + 1) int64.
        A pure function of (seed, step, index): any split of a step's indices over workers gives the same rows."""
        if self.split == "blocks":
            raise DataError("the block split's order is sequential: use train_batch with the run's generator")
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        if idx.size and (idx.min() < 0 or step < 0):
            raise ValueError("step and sample indices must be non-negative")
        if self.sampling == "packed":
            return self._packed(step, idx)
        return self._documents(step, idx)

    def train_batch(self, step: int, batch_size: int, seq_len: int, rng: Any = None,
                    indices: np.ndarray | None = None) -> np.ndarray:
        """The training loop's entry: step ``step``'s global batch (or its rows ``indices``). ``rng`` serves the
        block split only (built-in corpora, packed): its windows are the next ``batch_size`` draws of the run's
        checkpointed generator, as in every run trained before token stores existed; call it once per step, in
        order (a data-parallel worker draws the whole batch from its copy and keeps its rows)."""
        if seq_len != self.seq_len:
            raise ValueError(f"seq_len {seq_len} differs from the sampler's {self.seq_len}")
        if self.split == "blocks":
            n_train = int(self._runs[False][1][-1])
            starts = rng.integers(0, n_train - seq_len, size=batch_size)
            rows = np.stack([self._read_runs(False, int(p), seq_len + 1) for p in starts])
            return rows if indices is None else rows[np.asarray(indices)]
        return self.sample_batch(step, np.arange(batch_size) if indices is None else indices)

    def _give_up(self, what: str) -> DataError:
        return DataError(f"{self.name}: no {what} found in {MAX_ATTEMPTS} draws; the validation split "
                         f"(val_fraction {self.val_fraction}) or short documents cover almost all of the store; "
                         "lower val_fraction or use a larger store")

    def _packed(self, step: int, idx: np.ndarray) -> np.ndarray:
        T, n_tok = self.seq_len, self.store.num_tokens
        starts = np.full(idx.size, -1, dtype=np.int64)
        pending = np.arange(idx.size)
        for attempt in range(MAX_ATTEMPTS):
            if not pending.size:
                break
            p = (keyed(_TAG_PACKED, self.seed, step, idx[pending], attempt) % np.uint64(n_tok - T)).astype(np.int64)
            first, last = self.doc_at(p), self.doc_at(p + T)
            ok = ~self._touches_val(first, last, p + T)
            starts[pending[ok]] = p[ok]
            pending = pending[~ok]
        if pending.size:
            raise self._give_up("window outside the validation documents")
        out = np.empty((idx.size, T + 1), dtype=np.int64)
        for r, s in enumerate(starts):
            out[r] = self.store.read(int(s), T + 1)
        return out

    def doc_starts(self, docs: np.ndarray) -> np.ndarray:
        """Stream positions of the first tokens of documents ``docs`` (``num_tokens`` for ``num_documents``)."""
        st = self.store
        docs = np.asarray(docs, dtype=np.int64)
        out = np.full(docs.shape, st.num_tokens, dtype=np.int64)
        inside = docs < st.num_documents
        shard = np.searchsorted(st._doc_offsets, docs, side="right") - 1
        for i in np.unique(shard[inside]):
            m = inside & (shard == i)
            out[m] = st._tok_offsets[i] + st._starts(int(i))[docs[m] - st._doc_offsets[i]].astype(np.int64)
        return out

    def _documents(self, step: int, idx: np.ndarray) -> np.ndarray:
        T, n_docs = self.seq_len, self.store.num_documents
        starts = np.zeros(idx.size, dtype=np.int64)
        lens = np.zeros(idx.size, dtype=np.int64)
        pending = np.arange(idx.size)
        for attempt in range(MAX_ATTEMPTS):
            if not pending.size:
                break
            d = (keyed(_TAG_DOCUMENT, self.seed, step, idx[pending], attempt) % np.uint64(n_docs)).astype(np.int64)
            s0, s1 = self.doc_starts(d), self.doc_starts(d + 1)
            head = self.val_start(d, s0, s1) - s0  # the document's training tokens (all of it, none, or a head)
            ok = head >= 2
            starts[pending[ok]], lens[pending[ok]] = s0[ok], np.minimum(head, T + 1)[ok]
            pending = pending[~ok]
        if pending.size:
            raise self._give_up("training document of 2 tokens or more")
        out = np.full((idx.size, T + 1), PAD, dtype=np.int64)
        for r in range(idx.size):
            out[r, :lens[r]] = self.store.read(int(starts[r]), int(lens[r]))
        return out

    # ------------------------------------------------------------------------------------ validation
    def _val_rows(self, n_windows: int) -> np.ndarray:
        key = (self.seq_len, n_windows)
        if key not in self._val_cache:
            if self.split == "blocks":  # windows spread evenly over the validation runs (the corpus cache's rule)
                T, n_val = self.seq_len, int(self._runs[True][1][-1])
                starts = np.linspace(0, n_val - T - 1, n_windows).round().astype(np.int64)
                self._val_cache[key] = np.stack([self._read_runs(True, int(p), T + 1) for p in starts])
            elif self.sampling == "packed":
                self._val_cache[key] = self._val_packed(n_windows)
            else:
                self._val_cache[key] = self._val_documents(n_windows * self.seq_len)
        return self._val_cache[key]

    def _val_packed(self, n_windows: int, skip: int = 0) -> np.ndarray:
        T = self.seq_len
        need = n_windows * (T + 1)
        segs: list[tuple[int, int]] = []
        total = seen = 0
        for _, starts, lens in self._iter_docs(val=True):
            for s, n in zip(starts.tolist(), lens.tolist(), strict=True):
                seen += 1
                if seen <= skip:  # the evaluation set's documents (a selection set starts after them)
                    continue
                segs.append((s, n))
                total += n
                if total >= need:
                    break
            if total >= need:
                break
        self._val_docs_used = seen
        if total < T + 1:
            after = " after the evaluation set" if skip else ""
            raise DataError(f"{self.name}: the validation split holds {total} tokens{after}, fewer than "
                            f"sequence_len+1 = {T + 1}; raise val_fraction, change split_seed or use a larger store")
        cum = np.cumsum([0] + [n for _, n in segs])
        out = np.empty((n_windows, T + 1), dtype=np.int64)
        for r, v in enumerate(np.linspace(0, total - T - 1, n_windows).round().astype(np.int64).tolist()):
            pos, filled = v, 0  # position in the concatenated validation documents
            while filled < T + 1:
                k = int(np.searchsorted(cum, pos, side="right") - 1)
                take = min(T + 1 - filled, int(cum[k + 1]) - pos)
                out[r, filled:filled + take] = self.store.read(segs[k][0] + pos - int(cum[k]), take)
                filled += take
                pos += take
        return out

    def _val_documents(self, n_targets: int, skip: int = 0) -> np.ndarray:
        T = self.seq_len
        rows: list[np.ndarray] = []
        got = seen = 0
        for _, starts, lens in self._iter_docs(val=True):
            for s, n in zip(starts.tolist(), lens.tolist(), strict=True):
                seen += 1
                if seen <= skip or n < 2:
                    continue
                row = np.full(T + 1, PAD, dtype=np.int64)
                k = min(n, T + 1)
                row[:k] = self.store.read(s, k)
                rows.append(row)
                got += k - 1
                if got >= n_targets:
                    break
            if got >= n_targets:
                break
        self._val_docs_used = seen
        if not rows:
            raise DataError(f"{self.name}: the validation split holds no document of 2 tokens or more"
                            f"{' after the evaluation set' if skip else ''}; raise val_fraction, change split_seed "
                            "or use a larger store")
        return np.stack(rows)

    def _select_rows(self, n_eval: int, n_windows: int) -> np.ndarray:
        """The selection set (issue 28): validation rows disjoint from the evaluation set of ``n_eval`` windows
        (``_val_rows(n_eval)``), as many as ``n_windows`` evaluation windows. Document split: the validation
        documents after the evaluation set's, by the same rule (disjoint documents). Block split: windows spread
        evenly over the validation tokens no evaluation window covers (the evaluation windows cut out of the
        validation stream, the rest concatenated). Fixed like the evaluation set: a function of the store, the
        split, the mode, ``seq_len`` and the two sizes."""
        key = (self.seq_len, n_eval, n_windows)
        if key in self._select_cache:
            return self._select_cache[key]
        T = self.seq_len
        if self.split == "blocks":
            n_val = int(self._runs[True][1][-1])
            starts = np.unique(np.linspace(0, n_val - T - 1, n_eval).round().astype(np.int64))
            free: list[tuple[int, int]] = []  # (position in the validation stream, length) outside every window
            pos = 0
            for st in starts.tolist():
                if st > pos:
                    free.append((pos, st - pos))
                pos = max(pos, st + T + 1)
            if pos < n_val:
                free.append((pos, n_val - pos))
            cum = np.cumsum([0] + [n for _, n in free])
            n_free = int(cum[-1])
            if n_free < T + 1:
                raise DataError(f"{self.name}: the validation split holds {n_val} tokens, {n_free} of them outside "
                                f"the evaluation set's {n_eval} windows, fewer than sequence_len+1 = {T + 1} for a "
                                "selection set; raise val_fraction or lower eval_tokens")
            rows = np.empty((n_windows, T + 1), dtype=np.int64)
            for r, v in enumerate(np.linspace(0, n_free - T - 1, n_windows).round().astype(np.int64).tolist()):
                p, filled = v, 0
                while filled < T + 1:
                    k = int(np.searchsorted(cum, p, side="right") - 1)
                    take = min(T + 1 - filled, int(cum[k + 1]) - p)
                    rows[r, filled:filled + take] = self._read_runs(True, free[k][0] + p - int(cum[k]), take)
                    filled += take
                    p += take
        else:
            if self.sampling == "packed":
                self._val_packed(n_eval)  # how many validation documents the evaluation set spans
                rows = self._val_packed(n_windows, skip=self._val_docs_used)
            else:
                self._val_documents(n_eval * T)
                rows = self._val_documents(n_windows * T, skip=self._val_docs_used)
        self._select_cache[key] = rows
        return rows

    def select_batches(self, batch_size: int, seq_len: int, n_eval_windows: int,
                       n_windows: int) -> list[np.ndarray]:
        """The selection set (``_select_rows``) in batches of ``batch_size`` rows: ``n_windows`` windows (or
        documents up to ``n_windows x seq_len`` targets) disjoint from the evaluation set of ``n_eval_windows``."""
        if seq_len != self.seq_len:
            raise ValueError(f"seq_len {seq_len} differs from the sampler's {self.seq_len}")
        rows = self._select_rows(n_eval_windows, n_windows)
        return [rows[i:i + batch_size] for i in range(0, len(rows), batch_size)]

    def val_batches(self, n_batches: int, batch_size: int, seq_len: int,
                    n_windows: int | None = None) -> list[np.ndarray]:
        """The fixed validation set in batches of ``batch_size`` rows (the last may be smaller). ``n_windows``
        (None: ``n_batches x batch_size``) packed windows, or documents up to ``n_windows x seq_len`` real
        targets: the same rows whatever the batch size."""
        if seq_len != self.seq_len:
            raise ValueError(f"seq_len {seq_len} differs from the sampler's {self.seq_len}")
        rows = self._val_rows(n_batches * batch_size if n_windows is None else n_windows)
        return [rows[i:i + batch_size] for i in range(0, len(rows), batch_size)]

    # ------------------------------------------------------------------------------------ summaries
    @property
    def train_tokens(self) -> int:
        """Tokens of the training documents (one pass over the document indexes, not the tokens)."""
        if self._train_tokens is None and self.split == "blocks":
            self._train_tokens = int(self._runs[False][1][-1])
        if self._train_tokens is None:
            self._train_tokens = int(sum(int(lens.sum()) for _, _, lens in self._iter_docs(val=False)))
        return self._train_tokens

    def unigram_entropy(self, max_train: int = 1 << 22, max_val: int = 1 << 20) -> float:
        """Validation cross-entropy (nats/token) of a unigram model (add-one smoothing) fitted on the first
        ``max_train`` training tokens and scored on the first ``max_val`` validation tokens (store order)."""
        if self._unigram is None and self.split == "blocks":  # small corpora: fitted and scored on everything
            c = {}
            for val in (False, True):
                c[val] = np.zeros(self.vocab_size, dtype=np.float64)
                starts, cum = self._runs[val]
                for st, n in zip(starts.tolist(), np.diff(cum).tolist(), strict=True):
                    c[val] += np.bincount(self.store.read(st, n), minlength=self.vocab_size)
            logq = np.log((c[False] + 1.0) / (c[False] + 1.0).sum())
            self._unigram = float(-(c[True] * logq).sum() / c[True].sum())
        if self._unigram is None:
            def counts(val: bool, limit: int) -> np.ndarray:
                c = np.zeros(self.vocab_size, dtype=np.float64)
                left = limit
                for _, starts, lens in self._iter_docs(val=val):
                    for s, n in zip(starts.tolist(), lens.tolist(), strict=True):
                        k = min(n, left)
                        c += np.bincount(self.store.read(s, k), minlength=self.vocab_size)
                        left -= k
                        if left <= 0:
                            return c
                return c

            q = counts(False, max_train) + 1.0
            v = counts(True, max_val)
            self._unigram = float(-(v * np.log(q / q.sum())).sum() / max(v.sum(), 1.0))
        return self._unigram

    def summary(self) -> dict[str, Any]:
        m = self.store.manifest["params"]
        return {"source": self.name, "tokenizer": m["tokenizer"], "vocab_size": self.vocab_size,
                "sampling": self.sampling, "documents": self.store.num_documents, "tokens": self.store.num_tokens,
                "train_tokens": self.train_tokens, "unigram_loss": self.unigram_entropy(),
                "folder": str(self.store.path)}


def val_token_count(rows: np.ndarray) -> int:
    """Real target tokens of sample rows (pad targets excluded)."""
    return int((rows[:, 1:] != PAD).sum())


def store_path(source: str) -> pathlib.Path:
    return pathlib.Path(source[len("store:"):]).expanduser()


def split_summary(store: TokenStore, val_fraction: float = 0.05, split_seed: int = 33) -> dict[str, Any]:
    """How a store splits with ``val_fraction`` and ``split_seed`` (DataConfig's defaults): the validation share
    of its tokens, the long documents split by position and the documents split by hash (``data prepare``
    prints it and warns when the share is far from the requested one). Reads the document indexes only."""
    d = StoreData.__new__(StoreData)  # the split needs no sequence length: no window checks
    d.store, d.val_fraction, d.split_seed, d.split = store, float(val_fraction), int(split_seed), "documents"
    rule = store.manifest.get("split")
    d.long_doc_tokens = int(rule["long_doc_tokens"]) if isinstance(rule, dict) and rule.get("rule") == "tail-long" \
        else None
    val_tokens = val_docs_whole = long_docs = 0
    for i in range(len(store._tok_offsets) - 1):
        docs, bounds = d._shard_docs(i)
        if not docs.size:
            continue
        starts, ends = bounds[:-1], bounds[1:]
        vs = d.val_start(docs, starts, ends)
        val_tokens += int((ends - vs).sum())
        if d.long_doc_tokens is not None:
            long = (ends - starts) >= d.long_doc_tokens
            long_docs += int(long.sum())
            val_docs_whole += int(((vs == starts) & ~long).sum())
        else:
            val_docs_whole += int((vs == starts).sum())
    share = val_tokens / max(store.num_tokens, 1)
    return {"val_fraction": float(val_fraction), "split_seed": int(split_seed), "rule": rule.get("rule") if
            isinstance(rule, dict) else "hash", "long_doc_tokens": d.long_doc_tokens, "long_documents": long_docs,
            "hashed_documents": store.num_documents - long_docs, "val_documents_whole": val_docs_whole,
            "val_tokens": val_tokens, "val_share": share,
            "far_from_requested": not (0.5 * val_fraction <= share <= 2 * val_fraction)}
