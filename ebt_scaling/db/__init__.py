"""The results database: schema (``schema``), ``Store`` (``store``), migrations (``migrate``), CSV import
(``importer``). Importing this package does not import SQLAlchemy; ``Store`` is loaded on first use."""

from __future__ import annotations

from typing import Any

__all__ = ["Store", "ImportRow", "ImportSummary"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from ebt_scaling.db import store

        return getattr(store, name)
    raise AttributeError(f"module 'ebt_scaling.db' has no attribute {name!r}")
