"""Checks of a token store before it is read: the manifest's schema, then the shards' sizes and checksums.

``load_manifest`` reads ``manifest.json`` and checks its schema (every field the writer records, the shard
names, the totals); ``verify_shards`` checks that every shard file the manifest maps has the recorded size
and sha256. Hashing a large store takes a while, so a successful check is remembered in a small file under
the cache root (``verified/``), keyed by the store's resolved path, the manifest's own checksum and each shard
file's (size, mtime_ns, ctime_ns, inode): a sweep pays for it once per store and machine, and any rewrite of
a shard (which changes its ctime even if its mtime is put back) or of the manifest makes the next open hash
again. Every problem is one ``DataError`` line naming the store, the file and the command that rewrites it.
The cache itself (``remembered_check``) is shared with the video stores (``data/video.py``).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import pathlib
import re
import shlex
from collections.abc import Callable
from typing import Any

import numpy as np

from ebt_scaling.data.cache import atomic_write_json, cache_root, locked, read_json, sha256_file
from ebt_scaling.errors import DataError

FORMAT = 1
MANIFEST = "manifest.json"
DEFAULT_SHARD_TOKENS = 1 << 26  # 64 Mi tokens: 128 MB shards in uint16 (the writer's buffer is one shard)
CACHE_VERSION = 1
_HEX64 = re.compile(r"[0-9a-f]{64}")


def shard_name(i: int) -> str:
    return f"shard-{i:05d}"


def store_dtype(vocab_size: int) -> np.dtype:
    return np.dtype("<u2") if vocab_size <= 1 << 16 else np.dtype("<u4")


def prepare_command(out: pathlib.Path | str, params: dict[str, Any] | None) -> str:
    """The ``ebt-scale data prepare`` command that (re)writes the store at ``out`` with ``params``."""
    q = shlex.quote
    if not isinstance(params, dict) or not isinstance(params.get("source"), str) \
            or not isinstance(params.get("tokenizer"), str):
        return f"ebt-scale data prepare --source SOURCE --tokenizer TOKENIZER --out {q(str(out))}"
    parts = ["ebt-scale data prepare", f"--source {q(params['source'])}", f"--tokenizer {q(params['tokenizer'])}"]
    if params.get("bpe_vocab_size") is not None:
        parts.append(f"--vocab-size {params['bpe_vocab_size']}")
    if params.get("field") not in (None, "text"):
        parts.append(f"--field {q(str(params['field']))}")
    if params.get("data_files"):
        parts.append(f"--data-files {q(str(params['data_files']))}")
    if params.get("shard_tokens") not in (None, DEFAULT_SHARD_TOKENS):
        parts.append(f"--shard-tokens {params['shard_tokens']}")
    parts.append(f"--out {q(str(out))}")
    return " ".join(parts)


def _fix(out: pathlib.Path, params: Any) -> str:
    if isinstance(params, dict) and params.get("builtin") is not None:
        return "it is a built-in corpus's store: remove the folder and the next run prepares it again"
    return f"re-run `{prepare_command(out, params)}`"


# ---------------------------------------------------------------------------------------- the manifest
def _int(v: Any, lo: int, hi: int | None = None) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= lo and (hi is None or v <= hi)


def manifest_problem(m: Any) -> str | None:
    """``field: problem`` of the first schema violation of a parsed manifest, or None."""
    if not isinstance(m, dict):
        return f"the top level must be a JSON object, got {type(m).__name__}"
    for key in ("params", "complete", "shards", "documents", "documents_empty", "tokens"):
        if key not in m:
            return f"{key}: missing"
    p = m["params"]
    if not isinstance(p, dict):
        return "params: must be an object"
    if p.get("format") != FORMAT:
        return f"params.format: {p.get('format')!r} is not format {FORMAT} (written by another version?)"
    for key in ("source", "tokenizer", "tokenizer_hash"):
        if not isinstance(p.get(key), str) or not p.get(key):
            return f"params.{key}: must be a non-empty string, got {p.get(key)!r}"
    if not _int(p.get("vocab_size"), 1, 1 << 32):
        return f"params.vocab_size: must be an integer in 1..2^32, got {p.get('vocab_size')!r}"
    if p.get("dtype") != store_dtype(p["vocab_size"]).name:
        return (f"params.dtype: {p.get('dtype')!r} does not hold a vocabulary of {p['vocab_size']} "
                f"(expected {store_dtype(p['vocab_size']).name!r})")
    if not _int(p.get("shard_tokens"), 1, 1 << 31):
        return f"params.shard_tokens: must be an integer in 1..2^31, got {p.get('shard_tokens')!r}"
    if not isinstance(m["complete"], bool):
        return f"complete: must be true or false, got {m['complete']!r}"
    for key in ("documents", "documents_empty", "tokens"):
        if not _int(m[key], 0):
            return f"{key}: must be a non-negative integer, got {m[key]!r}"
    shards = m["shards"]
    if not isinstance(shards, list):
        return "shards: must be a list"
    for i, s in enumerate(shards):
        where = f"shards[{i}]"
        if not isinstance(s, dict):
            return f"{where}: must be an object"
        if s.get("name") != shard_name(i):
            return f"{where}.name: expected {shard_name(i)!r}, got {s.get('name')!r}"
        if not _int(s.get("tokens"), 1, p["shard_tokens"]):
            return f"{where}.tokens: must be an integer in 1..{p['shard_tokens']}, got {s.get('tokens')!r}"
        if not _int(s.get("documents"), 0, s["tokens"]):
            return f"{where}.documents: must be an integer in 0..{s['tokens']}, got {s.get('documents')!r}"
        for key in ("sha256", "idx_sha256"):
            if not isinstance(s.get(key), str) or not _HEX64.fullmatch(s[key]):
                return f"{where}.{key}: must be 64 lowercase hex digits, got {str(s.get(key))[:80]!r}"
    if sum(s["tokens"] for s in shards) != m["tokens"]:
        return f"tokens: {m['tokens']} is not the sum of the shards' tokens ({sum(s['tokens'] for s in shards)})"
    if sum(s["documents"] for s in shards) != m["documents"]:
        return (f"documents: {m['documents']} is not the sum of the shards' documents "
                f"({sum(s['documents'] for s in shards)})")
    resume = m.get("resume")
    if m["complete"] and resume is not None:
        return "resume: must be null in a complete store"
    if not m["complete"] and not (isinstance(resume, dict) and _int(resume.get("next_doc"), 0)
                                  and _int(resume.get("next_offset"), 0)):
        return f"resume: must hold next_doc and next_offset in an incomplete store, got {resume!r}"
    return None


def load_manifest(out: pathlib.Path) -> tuple[dict[str, Any], str]:
    """(manifest, sha256 of its bytes) of the store at ``out``, schema-checked (DataError: one line)."""
    path = out / MANIFEST
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"{out}: not a token store (no readable {MANIFEST}); prepare it with "
                        "`ebt-scale data prepare --out DIR`") from None
    except OSError as exc:
        raise DataError(f"{out}: not a token store ({MANIFEST} unreadable: {exc.strerror}); prepare it with "
                        "`ebt-scale data prepare --out DIR`") from None
    try:
        m = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        why = f"line {exc.lineno} column {exc.colno}: {exc.msg}" if isinstance(exc, json.JSONDecodeError) \
            else "not UTF-8"
        raise DataError(f"store {out}: {MANIFEST} is not valid JSON ({why}); remove the folder and "
                        f"{_fix(out, None)}") from None
    problem = manifest_problem(m)
    if problem is not None:
        params = m.get("params") if isinstance(m, dict) else None
        raise DataError(f"store {out}: {MANIFEST} is malformed ({problem}); remove the folder and "
                        f"{_fix(out, params)}")
    return m, hashlib.sha256(raw).hexdigest()


# ---------------------------------------------------------------------------------------- the shards
def _expected_files(m: dict[str, Any]) -> list[tuple[str, int, str]]:
    """(file name, size in bytes, sha256) of every file the manifest maps."""
    item = np.dtype(m["params"]["dtype"]).itemsize
    out = []
    for s in m["shards"]:
        out.append((f"{s['name']}.bin", s["tokens"] * item, s["sha256"]))
        out.append((f"{s['name']}.idx", s["documents"] * 4, s["idx_sha256"]))
    return out


def file_stamp(st: os.stat_result) -> list[int]:
    """What the verification cache compares: (size, mtime_ns, ctime_ns, inode)."""
    return [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino]


def _shard_word(name: str) -> str:
    return "index" if name.endswith(".idx") else "shard"


def check_sizes(out: pathlib.Path, m: dict[str, Any]) -> dict[str, list[int]]:
    """Every mapped file exists with the recorded size; returns their stat stamps (DataError: one line)."""
    stamps = {}
    for name, size, _ in _expected_files(m):
        try:
            st = (out / name).stat()
        except OSError:
            raise DataError(f"store {out}: {_shard_word(name)} {name} is missing (named in {MANIFEST}); "
                            f"{_fix(out, m['params'])}") from None
        if st.st_size != size:
            what = "empty" if st.st_size == 0 else ("truncated" if st.st_size < size else "longer than recorded")
            raise DataError(f"store {out}: {_shard_word(name)} {name} holds {st.st_size:,} bytes but {MANIFEST} "
                            f"records {size:,} ({what}: corrupted or rewritten); {_fix(out, m['params'])}")
        stamps[name] = file_stamp(st)
    return stamps


def _cache_file(root: pathlib.Path, out: pathlib.Path) -> tuple[pathlib.Path, str]:
    key = hashlib.sha256(str(out.resolve()).encode("utf-8", "surrogateescape")).hexdigest()[:24]
    return root / "verified" / f"{key}.json", key


def verify_shards(out: pathlib.Path, m: dict[str, Any], manifest_sha: str, *,
                  cache_dir: str | None = None, use_cache: bool = True) -> bool:
    """Check every file the manifest maps (size, then sha256); DataError naming the first bad one.

    A check that passed before on this machine for the same manifest and unchanged files (size, mtime,
    ctime, inode) is not repeated. Returns True when the files were hashed, False when the cache answered."""
    stamps = check_sizes(out, m)

    def hash_all() -> dict[str, list[int]]:
        _hash_all(out, m)
        return check_sizes(out, m)

    return remembered_check(out, manifest_sha, stamps, hash_all, cache_dir=cache_dir, use_cache=use_cache)


def remembered_check(out: pathlib.Path, manifest_sha: str, stamps: dict[str, list[int]],
                     hash_all: Callable[[], dict[str, list[int]]], *, cache_dir: str | None = None,
                     use_cache: bool = True) -> bool:
    """Run ``hash_all()`` (hash every file of the store at ``out``, raise DataError on the first mismatch, return
    the files' ``file_stamp``s afterwards) unless the same check passed before on this machine: the cache under
    ``cache_root(cache_dir)/verified`` holds the store's path, its manifest's sha256 and ``stamps`` (name ->
    ``file_stamp``, taken before hashing) of the last passed check. Returns True when hashed, False when the cache
    answered. Token stores (``verify_shards``) and video stores (``video.verify_video_store``) share it."""
    root: pathlib.Path | None = None
    if use_cache:
        with contextlib.suppress(DataError):
            root = cache_root(cache_dir)
    if root is None:
        hash_all()
        return True
    path, key = _cache_file(root, out)
    want = {"version": CACHE_VERSION, "store": str(out.resolve()), "manifest_sha256": manifest_sha,
            "files": stamps}
    with locked(root, f"verify-{key}"):  # trials opening the same store at once hash it once
        try:
            if read_json(path) == want:
                return False
        except (OSError, ValueError):
            pass
        stamps_after = hash_all()
        if stamps_after == stamps:  # rewritten while we hashed: do not remember it
            with contextlib.suppress(OSError):
                atomic_write_json(path, want)
    return True


def _hash_all(out: pathlib.Path, m: dict[str, Any]) -> None:
    for name, _, digest in _expected_files(m):
        if sha256_file(out / name) != digest:
            raise DataError(f"store {out}: {_shard_word(name)} {name} does not match its checksum in {MANIFEST} "
                            f"(corrupted or rewritten); {_fix(out, m['params'])}")


def verify_store(out: pathlib.Path | str, *, cache_dir: str | None = None, use_cache: bool = True
                 ) -> dict[str, Any]:
    """The manifest of the complete store at ``out`` after its schema and every shard's checksum are checked."""
    out = pathlib.Path(out)
    m, sha = load_manifest(out)
    if not m["complete"]:
        raise DataError(f"{out}: the token store is incomplete; rerun the same `ebt-scale data prepare` command to "
                        f"finish it ({prepare_command(out, m['params'])})")
    verify_shards(out, m, sha, cache_dir=cache_dir, use_cache=use_cache)
    return m
