"""Shared by the benchmark scripts: how a result leaves the process."""

from __future__ import annotations

import json
from pathlib import Path


def emit_json(result: dict, out: str | None, indent: int = 2) -> dict:
    """Print ``result`` as JSON and, when ``out`` is given, also write it there; returns ``result``."""
    text = json.dumps(result, indent=indent)
    print(text)
    if out:
        Path(out).write_text(text + "\n")
    return result
