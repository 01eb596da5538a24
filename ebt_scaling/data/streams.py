"""Document streams for ``ebt-scale data prepare``: one document at a time, whatever the corpus size.

A source string names where the documents come from:

* ``text:PATH``: a UTF-8 text file (one document), or every ``*.txt`` below a folder (sorted, one
  document per file).
* ``jsonl:PATH``: a JSON-lines file or every ``*.jsonl``, ``*.jsonl.gz``, ``*.jsonl.zst`` and ``*.json.gz``
  (RedPajama's naming) below a folder (sorted); one document per line, from the field ``field`` (``text``).
* ``parquet:PATH``: a Parquet file or every ``*.parquet`` below a folder (sorted), column ``field``, read
  in record batches.
* ``hf:NAME[:CONFIG[:SPLIT]]``: a Hugging Face dataset in streaming mode (optional ``datasets``; split
  ``train`` by default). ``NAME`` may be a builder for local files (``json``, ``parquet``, ``text``) when
  ``data_files`` is given.
* ``shakespeare``, ``kjv``: the shipped corpora (small: read through the corpus cache).

Each stream yields ``(document, fraction_done)``: the fraction of the source's bytes (or rows) consumed so
far, or None where the size is unknown (Hugging Face streaming), so progress can show an ETA.
"""

from __future__ import annotations

import gzip
import io
import json
import pathlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from ebt_scaling.errors import DataError

Doc = tuple[str, float | None]

KINDS = ("text", "jsonl", "parquet", "hf")
BUILTIN = ("shakespeare", "kjv")


@dataclass(frozen=True)
class Source:
    """A parsed source string. ``files`` are the local files in reading order (empty for hf/builtins)."""

    spec: str
    kind: str
    target: str
    field: str
    files: tuple[pathlib.Path, ...] = ()
    data_files: str | None = None

    @property
    def total_bytes(self) -> int:
        return sum(f.stat().st_size for f in self.files)

    def documents(self, cache_dir: str | None = None) -> Iterator[Doc]:
        """Every document of the source, in a fixed order."""
        if self.kind == "text":
            return _text_docs(self.files)
        if self.kind == "jsonl":
            return _jsonl_docs(self.files, self.field)
        if self.kind == "parquet":
            return _parquet_docs(self.files, self.field)
        if self.kind == "hf":
            return _hf_docs(self.target, self.field, self.data_files)
        return _builtin_docs(self.kind, cache_dir)


def parse_source(spec: str, field: str = "text", data_files: str | None = None) -> Source:
    """``spec`` -> Source; DataError (one line, with the fix) for an unknown kind or a missing path."""
    if spec in BUILTIN:
        return Source(spec, spec, spec, field)
    kind, sep, target = spec.partition(":")
    if not sep or kind not in KINDS or not target:
        raise DataError(f"source {spec!r}: use text:PATH, jsonl:PATH, parquet:PATH, hf:NAME[:CONFIG[:SPLIT]], "
                        f"{' or '.join(BUILTIN)}")
    if not field:
        raise DataError("--field: empty field name; use the JSON key or column that holds the text, e.g. text")
    if kind == "hf":
        return Source(spec, kind, target, field, data_files=data_files)
    path = pathlib.Path(target).expanduser()
    patterns = {"text": ("*.txt",), "jsonl": ("*.jsonl", "*.jsonl.gz", "*.jsonl.zst", "*.json.gz"),
                "parquet": ("*.parquet",)}
    if path.is_dir():
        files = sorted({f for pat in patterns[kind] for f in path.rglob(pat) if f.is_file()})
        if not files:
            raise DataError(f"source {spec}: no {' / '.join(patterns[kind])} files below {path}; "
                            "check the folder or the source kind")
    elif path.is_file():
        files = [path]
    else:
        raise DataError(f"source {spec}: {path} does not exist; give an existing file or folder")
    return Source(spec, kind, target, field, tuple(files))


class _Counting(io.RawIOBase):
    """A raw file that counts the bytes read from it (compressed bytes for .gz/.zst: the size we know)."""

    def __init__(self, f: io.BufferedReader) -> None:
        self.f, self.n = f, 0

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:  # noqa: ANN001 - a writable buffer
        k = self.f.readinto(b)
        self.n += k
        return k

    def close(self) -> None:
        self.f.close()
        super().close()


def _open_text(path: pathlib.Path, counter: _Counting) -> io.TextIOBase:
    """A text reader over ``counter`` that decompresses by suffix."""
    if path.name.endswith(".gz"):
        raw = gzip.GzipFile(fileobj=io.BufferedReader(counter))
    elif path.name.endswith(".zst"):
        try:
            import zstandard
        except ImportError:
            raise DataError(f"{path.name}: reading .zst needs the `zstandard` package; run "
                            "`pip install zstandard` or decompress the file") from None
        raw = zstandard.ZstdDecompressor().stream_reader(io.BufferedReader(counter))
    else:
        raw = io.BufferedReader(counter)
    return io.TextIOWrapper(raw, encoding="utf-8", newline=None)  # type: ignore[arg-type]


def _byte_progress(files: tuple[pathlib.Path, ...]) -> tuple[int, Callable[[int, int], float]]:
    total = max(1, sum(f.stat().st_size for f in files))
    return total, lambda done, n: min(1.0, (done + n) / total)


def _text_docs(files: tuple[pathlib.Path, ...]) -> Iterator[Doc]:
    _, frac = _byte_progress(files)
    done = 0
    for path in files:
        with open(path, "rb") as f:
            data = f.read()  # one document = one file; a single file bigger than memory is not a document
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise DataError(f"{path}: not UTF-8 at byte {exc.start}; convert it (iconv -t UTF-8)") from None
        done += len(data)
        yield text.replace("\r\n", "\n").replace("\r", "\n"), frac(done, 0)


def _jsonl_docs(files: tuple[pathlib.Path, ...], field: str) -> Iterator[Doc]:
    _, frac = _byte_progress(files)
    done = 0
    for path in files:
        counter = _Counting(open(path, "rb"))  # noqa: SIM115 - closed by the text wrapper
        with _open_text(path, counter) as f:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise DataError(f"{path.name} line {lineno}: not JSON ({exc.msg}); fix or remove the "
                                    "line") from None
                text = row.get(field) if isinstance(row, dict) else None
                if not isinstance(text, str):
                    keys = ", ".join(sorted(row)[:8]) if isinstance(row, dict) else type(row).__name__
                    raise DataError(f"{path.name} line {lineno}: no string field {field!r} (has: {keys}); "
                                    "pass --field NAME")
                yield text, frac(done, counter.n)
        done += path.stat().st_size


def _parquet_docs(files: tuple[pathlib.Path, ...], field: str) -> Iterator[Doc]:
    import pyarrow.parquet as pq

    metas = [pq.ParquetFile(f) for f in files]
    total = max(1, sum(m.metadata.num_rows for m in metas))
    rows = 0
    for path, pf in zip(files, metas, strict=True):
        if field not in pf.schema_arrow.names:
            raise DataError(f"{path.name}: no column {field!r} (has: {', '.join(pf.schema_arrow.names[:8])}); "
                            "pass --field NAME")
        for batch in pf.iter_batches(batch_size=1024, columns=[field]):
            for text in batch.column(0).to_pylist():
                rows += 1
                if text is not None:
                    yield str(text), rows / total


def _hf_docs(target: str, field: str, data_files: str | None) -> Iterator[Doc]:
    parts = target.split(":")
    if len(parts) > 3 or not parts[0]:
        raise DataError(f"hf:{target}: use hf:NAME[:CONFIG[:SPLIT]], e.g. hf:togethercomputer/RedPajama-Data-V2"
                        ":sample-100B:train")
    name, config, split = parts[0], (parts[1] or None) if len(parts) > 1 else None, \
        (parts[2] if len(parts) > 2 and parts[2] else "train")
    try:
        import datasets
    except ImportError:
        raise DataError(f"hf:{target}: the optional dependency `datasets` is not installed; run "
                        "`pip install 'ebt-scaling[hf]'`, or use jsonl:/parquet:/text: on local files") from None
    kwargs = {"data_files": data_files} if data_files else {}
    try:
        ds = datasets.load_dataset(name, config, split=split, streaming=True, **kwargs)
    except Exception as exc:  # network errors, unknown dataset/config/split, offline mode
        msg = (str(exc).splitlines() or [type(exc).__name__])[0][:160]
        raise DataError(f"hf:{target}: cannot open the dataset in streaming mode ({msg}); check the name, "
                        "config, split and network access (HF_DATASETS_OFFLINE must be unset for the hub)") from None
    for i, row in enumerate(ds):
        text = row.get(field)
        if not isinstance(text, str):
            raise DataError(f"hf:{target} row {i}: no string field {field!r} (has: {', '.join(list(row)[:8])}); "
                            "pass --field NAME")
        yield text, None


def _builtin_docs(name: str, cache_dir: str | None) -> Iterator[Doc]:
    from ebt_scaling.data.cache import cache_root, stderr_progress
    from ebt_scaling.data.sources import load_documents

    docs, _, _ = load_documents(name, cache_root(cache_dir), stderr_progress)
    for i, d in enumerate(docs, 1):
        yield d, i / len(docs)
