"""Names that reach the database and the terminal (sweep names): one check, stdlib only.

A name is printed in tables, progress lines and reports and stored in a ``VARCHAR(200)`` column, so it must
be printable text of at most ``MAX_NAME`` characters: a control character (a newline, an ANSI escape) could
rewrite a colleague's terminal, and a longer name would fail in the database after other rows were written.
"""

from __future__ import annotations

import unicodedata

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


def csv_safe(cell: object) -> object:
    """A text cell that a spreadsheet would run as a formula (it starts with =, +, -, @, a tab or a carriage
    return) gets a leading apostrophe (OWASP's CSV-injection rule); numbers and other cells are unchanged."""
    if isinstance(cell, str) and cell[:1] in ("=", "+", "-", "@", "\t", "\r"):
        return "'" + cell
    return cell
