"""One driver per sweep: a lease the sweep driver holds for as long as it runs.

The lease lives as long as the driver's own process or database session, so it needs no heartbeat and is
never left behind: a driver that exits, crashes or is killed with -9 releases it at once (the kernel closes
the lock file; PostgreSQL ends the session), and the next driver takes it over.

* PostgreSQL: a session-level advisory lock keyed by the sweep name, held on a dedicated connection whose
  ``application_name`` records who holds it (host, pid, since), which a second driver reads from
  ``pg_stat_activity`` for its error message. Works across hosts.
* SQLite: an exclusive ``flock`` on ``<database>.lease-<key>`` beside the database file, which holds the same
  JSON. One host only, like SQLite itself. In-memory databases need no lease.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from sqlalchemy import text
from sqlalchemy.engine import Engine

from ebt_scaling.errors import StoreError

APP_PREFIX = "ebt-scale-lease"


class LeaseHeld(StoreError):
    """Another live driver holds the sweep's lease."""


def _key(sweep: str) -> int:
    """A signed 64-bit advisory-lock key for the sweep name."""
    return int.from_bytes(hashlib.sha256(f"ebt-scale sweep {sweep}".encode()).digest()[:8], "big", signed=True)


def _holder() -> dict:
    return {"host": socket.gethostname(), "pid": os.getpid(),
            "since": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime())}


def _describe(info: dict | None) -> str:
    if not info:
        return "another driver (who and since when is not recorded)"
    return f"pid {info.get('pid')} on {info.get('host')} since {info.get('since')}"


def _held_message(sweep: str, info: dict | None) -> str:
    return (f"sweep {sweep!r} is being run by another driver ({_describe(info)}); wait for it to finish, watch it "
            "with `ebt-scale runs`, or stop that process first - its lease ends the moment it exits")


def _lease_file(db_path: Path, sweep: str) -> Path:
    return db_path.with_name(f"{db_path.name}.lease-{_key(sweep) & 0xFFFFFFFFFFFF:012x}")


def sqlite_holder(db_path: Path, sweep: str) -> dict | None:
    """Who holds the sweep's lease ({host, pid, since}), or None when no live driver does."""
    return flock_holder(_lease_file(db_path, sweep))


def flock_holder(path: Path) -> dict | None:
    """The JSON a live process wrote into the lock file ``path`` while it holds its exclusive flock ({} when
    unreadable), or None when no process holds it (the sweep lease and the run claims alike)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return read_lock_info(fd)
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def read_lock_info(fd: int) -> dict:
    """The holder's JSON at the start of an open lock file ({} when empty or unreadable)."""
    try:
        return json.loads(os.pread(fd, 4096, 0).decode() or "null") or {}
    except ValueError:
        return {}


def _pg_holder_info(conn: Any, key: int) -> dict | None:
    row = conn.execute(text(
        "SELECT a.application_name FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid "
        "WHERE l.locktype = 'advisory' AND l.granted AND l.classid = :hi AND l.objid = :lo "
        "AND l.objsubid = 1"), {"hi": (key >> 32) & 0xFFFFFFFF, "lo": key & 0xFFFFFFFF}).first()
    if row is None:
        return None
    name = str(row[0])
    if not name.startswith(APP_PREFIX + " "):
        return {}
    return dict(kv.split("=", 1) for kv in name.split(" ")[1:] if "=" in kv)


def postgres_holder(engine: Engine, sweep: str) -> dict | None:
    """Who holds the sweep's lease on PostgreSQL, or None."""
    with engine.connect() as conn:
        return _pg_holder_info(conn, _key(sweep))


@contextlib.contextmanager
def sqlite_lease(db_path: Path, sweep: str) -> Iterator[None]:
    path = _lease_file(db_path, sweep)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            try:
                info = json.loads(os.pread(fd, 4096, 0).decode() or "null")
            except ValueError:
                info = None
            raise LeaseHeld(_held_message(sweep, info)) from None
        data = json.dumps({**_holder(), "sweep": sweep}).encode()
        os.ftruncate(fd, 0)
        os.pwrite(fd, data, 0)
        try:
            yield
        finally:
            os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


@contextlib.contextmanager
def postgres_lease(engine: Engine, sweep: str) -> Iterator[None]:
    key = _key(sweep)
    me = _holder()
    app = f"{APP_PREFIX} pid={me['pid']} host={me['host']} since={me['since']}"[:63]  # NAMEDATALEN - 1
    conn = engine.connect().execution_options(isolation_level="AUTOCOMMIT")
    try:
        conn.execute(text("SELECT set_config('application_name', :a, false)"), {"a": app})
        if not conn.execute(text("SELECT pg_try_advisory_lock(:k)"), {"k": key}).scalar():
            raise LeaseHeld(_held_message(sweep, _pg_holder_info(conn, key)))
        try:
            yield
        finally:
            with contextlib.suppress(Exception):  # a lost connection has released the lock already
                conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": key})
                conn.execute(text("RESET application_name"))
    finally:
        conn.close()
