"""Tokenizers: byte-level BPE trained locally with ``tokenizers``, raw bytes, or a named HF tokenizer.

A trained BPE is cached as ``tokenizers/bpe-<corpus sha[:16]>-<vocab>.json``: the same text and vocabulary
size give the same file, trained once. ``Tokenizer.ident`` (a content hash) keys the token files.
"""

from __future__ import annotations

import hashlib
import os
import pathlib
from collections.abc import Sequence

from ebt_scaling.data.cache import Progress, atomic_write_bytes, locked
from ebt_scaling.errors import ConfigError, DataError


class ByteTokenizer:
    """UTF-8 bytes as tokens (vocabulary 256)."""

    kind = "byte"
    vocab_size = 256
    ident = "byte"

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return [self.encode(t) for t in texts]

    def decode(self, ids: Sequence[int]) -> str:
        return bytes(int(i) for i in ids).decode("utf-8", errors="replace")


class HFTokenizer:
    """A ``tokenizers.Tokenizer`` (our trained BPE, or a pretrained one by name)."""

    def __init__(self, tok, kind: str, ident: str) -> None:  # noqa: ANN001 - tokenizers.Tokenizer
        self._tok = tok
        self.kind = kind
        self.ident = ident
        self.vocab_size = int(tok.get_vocab_size(with_added_tokens=True))
        self.path: pathlib.Path | None = None

    def encode(self, text: str) -> list[int]:
        return self._tok.encode(text).ids

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return [e.ids for e in self._tok.encode_batch(list(texts))]

    def decode(self, ids: Sequence[int]) -> str:
        return self._tok.decode([int(i) for i in ids])


Tokenizer = ByteTokenizer | HFTokenizer

ENCODE_PIECE_CHARS = 1 << 16


def pieces(doc: str) -> list[str]:
    """The pieces a document is encoded in: ~64k characters each, cut after a newline (parallel in
    ``tokenizers``); a document's tokens are its pieces' tokens back to back. One rule for the corpus cache and
    ``data prepare --out`` alike, so the same text gives the same tokens whichever way it is prepared."""
    out: list[str] = []
    start = 0
    while start < len(doc):
        end = min(len(doc), start + ENCODE_PIECE_CHARS)
        if end < len(doc):
            nl = doc.rfind("\n", start, end)
            end = nl + 1 if nl > start else end
        out.append(doc[start:end])
        start = end
    return out


def train_bpe(docs: Sequence[str], vocab_size: int):  # noqa: ANN201 - tokenizers.Tokenizer
    """Byte-level BPE with exactly ``vocab_size`` entries at most (256 byte symbols + merges)."""
    from tokenizers import Tokenizer as _Tok
    from tokenizers import decoders, models, pre_tokenizers, trainers

    tok = _Tok(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  special_tokens=[], show_progress=False)
    tok.train_from_iterator(docs, trainer=trainer, length=len(docs))
    return tok


def bpe_tokenizer(docs: Sequence[str], corpus_sha: str, vocab_size: int, root: pathlib.Path,
                  progress: Progress) -> HFTokenizer:
    from tokenizers import Tokenizer as _Tok

    if vocab_size < 256:
        raise ConfigError(f"DataConfig.vocab_size: byte-level BPE needs at least 256 entries, got {vocab_size}; "
                          "use --vocab-size 256 or more, or --tokenizer byte")
    path = root / "tokenizers" / f"bpe-{corpus_sha[:16]}-{vocab_size}.json"
    with locked(root, path.stem):
        if not path.exists():
            mb = sum(len(d) for d in docs) / 1e6
            progress(f"training a byte-level BPE tokenizer (vocab {vocab_size}) on {mb:.1f} MB of text (once)")
            tok = train_bpe(docs, vocab_size)
            atomic_write_bytes(path, tok.to_str().encode("utf-8"))
        blob = path.read_bytes()
    tok = _Tok.from_str(blob.decode("utf-8"))
    out = HFTokenizer(tok, "bpe", "bpe-" + hashlib.sha256(blob).hexdigest()[:16])
    out.path = path  # where the cache keeps it (data prepare prints it)
    return out


def pretrained_tokenizer(name: str) -> HFTokenizer:
    from tokenizers import Tokenizer as _Tok

    if not name:
        raise ConfigError("DataConfig.tokenizer: empty name in hf:NAME; use e.g. hf:gpt2, or bpe")
    try:
        tok = _Tok.from_pretrained(name)
    except Exception as exc:  # network errors, unknown repo, offline mode
        msg = (str(exc).splitlines() or [type(exc).__name__])[0][:160]
        offline = " (offline: HF_HUB_OFFLINE is set)" if os.environ.get("HF_HUB_OFFLINE") else ""
        raise DataError(f"tokenizer hf:{name}: cannot load it from the Hugging Face hub{offline} ({msg}); "
                        "check the name and network access, or use --tokenizer bpe (trained locally)") from None
    blob = tok.to_str().encode("utf-8")
    return HFTokenizer(tok, f"hf:{name}", "hf-" + hashlib.sha256(blob).hexdigest()[:16])
