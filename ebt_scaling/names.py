"""Names that reach the database and the terminal (sweep names): one check, stdlib only.

A name is printed in tables, progress lines and reports and stored in a ``VARCHAR(200)`` column, so it must
be printable text of at most ``MAX_NAME`` characters: a control character (a newline, an ANSI escape) could
rewrite a colleague's terminal, and a longer name would fail in the database after other rows were written.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable

MAX_NAME = 200  # ebt_sweeps.name is String(200)


def name_problem(name: object) -> str | None:
    """Why ``name`` cannot be a sweep name (one phrase), or None when it can."""
    if not isinstance(name, str) or not name.strip():
        return "must be a non-empty string"
    if len(name) > MAX_NAME:
        return f"is {len(name)} characters long; at most {MAX_NAME}"
    bad = next((c for c in name if unicodedata.category(c) in ("Cc", "Cf", "Zl", "Zp")), None)
    if bad is not None:
        return f"holds the control character {ascii(bad)}; use printable characters only"
    return None


FORMULA_LEADS = ("=", "+", "-", "@", "\t", "\r")
_PLAIN_NUMBER = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?")


def csv_safe(cell: object) -> object:
    """A text cell that a spreadsheet would run as a formula (it starts with =, +, -, @, a tab or a carriage
    return) gets a leading apostrophe (OWASP's CSV-injection rule); numbers, text that is a plain number
    (``-3.5``, ``+1e-3``) and other cells are unchanged. Every CSV the tool writes passes its header and
    every value through this (``csv_row``; ``export`` maps it over the frame and its columns)."""
    if isinstance(cell, str) and cell[:1] in FORMULA_LEADS and not _PLAIN_NUMBER.fullmatch(cell):
        return "'" + cell
    return cell


def csv_row(cells: Iterable[object]) -> list[object]:
    """``csv_safe`` of every cell of a header or data row."""
    return [csv_safe(c) for c in cells]
