"""Retries and error translation for the results database.

* ``with_retries`` re-runs a whole unit of work on transient errors ("database is locked", serialization
  failures, deadlocks), so concurrent writers never see them, and (when asked) after a lost connection.
* ``translate`` turns SQLAlchemy errors into the project's exceptions with credentials masked.
"""

from __future__ import annotations

import random
import re
import time
from collections.abc import Callable
from typing import TypeVar

from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError, SQLAlchemyError

from ebt_scaling.errors import DuplicateError, NotFound, StoreError
from ebt_scaling.security import mask_url, scrub

T = TypeVar("T")

TRANSIENT_SQLITE = re.compile(r"database is locked|database table is locked|database is busy", re.I)
_TRANSIENT_PG = {"40001", "40P01", "55P03"}  # serialization failure, deadlock, lock not available


def is_transient(exc: BaseException) -> bool:
    if not isinstance(exc, DBAPIError):
        return False
    orig = exc.orig
    if TRANSIENT_SQLITE.search(str(orig)):
        return True
    return getattr(orig, "sqlstate", None) in _TRANSIENT_PG


_DISCONNECT_PG = {"57P01", "57P02", "57P03"}  # admin shutdown, crash shutdown, cannot connect now


_NO_DATABASE = re.compile(r'database "[^"]*" does not exist', re.I)


def is_disconnect(exc: BaseException) -> bool:
    """The server went away or cannot be reached right now (not: a wrong password, a bad query)."""
    if not isinstance(exc, DBAPIError):
        return False
    if exc.connection_invalidated:
        return True
    state = getattr(exc.orig, "sqlstate", None)
    if state is not None:
        return state in _DISCONNECT_PG or state.startswith("08")
    msg = str(exc.orig).lower()
    if _NO_DATABASE.search(msg):  # dropped (or never created): waiting will not bring it back
        return False
    return isinstance(exc, OperationalError) and any(
        m in msg for m in ("connection refused", "server closed the connection", "connection failed",
                           "terminating connection", "no connection to the server", "consuming input failed"))


def with_retries(fn: Callable[[], T], *, max_seconds: float = 120.0, reconnect_s: float = 0.0) -> T:
    """Run ``fn`` (a whole transaction) again after transient errors, with jittered exponential backoff
    (capped at 1 s per wait), for up to ``max_seconds``; then the last error is raised. With ``reconnect_s``
    > 0 a lost or refused connection is retried too (backoff capped at 2 s) for up to that many seconds:
    a sweep driver rides out a database restart instead of aborting."""
    start = time.monotonic()
    i = 0
    while True:
        try:
            return fn()
        except DBAPIError as exc:
            waited = time.monotonic() - start
            if is_transient(exc) and waited <= max_seconds:
                time.sleep(random.uniform(0, min(1.0, 0.01 * 2**i)))
            elif reconnect_s > 0 and is_disconnect(exc) and waited <= reconnect_s:
                time.sleep(random.uniform(0.5, 1.0) * min(2.0, 0.05 * 2**i))
            else:
                raise
            i += 1


def _orig_message(exc: SQLAlchemyError) -> str:
    orig = getattr(exc, "orig", None)
    text = str(orig) if orig is not None else str(exc)
    first = text.strip().splitlines()[0] if text.strip() else type(exc).__name__
    return scrub(first)


def translate(exc: SQLAlchemyError, url: str, what: str = "") -> Exception:
    """The project's exception for a SQLAlchemy error (one masked line, no SQL, no parameters)."""
    msg = _orig_message(exc)
    where = f" ({what})" if what else ""
    if isinstance(exc, IntegrityError):
        sqlstate = getattr(exc.orig, "sqlstate", None)
        if sqlstate == "23503" or "FOREIGN KEY" in msg.upper():
            return NotFound(f"a referenced sweep or run does not exist{where}: {msg}")
        if sqlstate == "23505" or "UNIQUE" in msg.upper():
            return DuplicateError(f"duplicate entry{where}: {msg}")
        return StoreError(f"constraint violated{where}: {msg}")
    if isinstance(exc, OperationalError):
        hint = ""
        if _NO_DATABASE.search(msg):
            hint = "; it was dropped or never created: restore or create it, then rerun the same command"
        elif "connection" in msg.lower() or "authentication" in msg.lower() or "unable to open" in msg.lower():
            hint = "; check the server, port, user and password in --db or EBT_SCALE_DB"
        return StoreError(f"database {mask_url(url)} failed{where}: {msg}{hint}")
    return StoreError(f"database error on {mask_url(url)}{where}: {msg}")
