"""Which code produced a result: one format for every record that stores it (a sweep's ``code_version``, the
report's provenance page)."""

from __future__ import annotations

import functools
import subprocess
from pathlib import Path


def _git(*args: str) -> str | None:
    root = Path(__file__).resolve().parent
    try:
        r = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return r.stdout.strip() if r.returncode == 0 else None


@functools.lru_cache(maxsize=1)
def code_version() -> str:
    """The package version, plus the git commit of the checkout it runs from when there is one, as a PEP 440
    local version: ``0.1.0`` (installed), ``0.1.0+g0123456789ab`` (clean checkout) or
    ``0.1.0+g0123456789ab.dirty`` (tracked files changed since that commit)."""
    from ebt_scaling import __version__

    if _git("rev-parse", "--show-toplevel") is None:
        return __version__
    commit = _git("rev-parse", "--short=12", "HEAD")
    if not commit:
        return __version__
    dirty = _git("status", "--porcelain", "--untracked-files=no")
    return f"{__version__}+g{commit}" + (".dirty" if dirty else "")
