"""One trainer per run across sweeps: a driver claims each run it is about to train, for as long as it
trains it.

The sweep lease (``lease.py``) keeps two drivers off one sweep; two sweeps that share configurations link
the same run rows, so each run needs its own claim. A claim follows the lease's rule: it lives as long as
the driver's process or database session, so a driver that exits, crashes or is killed with -9 frees its
claims at once and needs no heartbeat.

* PostgreSQL: a session-level advisory lock ``(CLAIM_SPACE, run_id)`` (the two-key form, which cannot
  collide with the sweep leases' one-key locks) on one dedicated connection per driver, whose
  ``application_name`` names the holder (host, pid, since), read from ``pg_stat_activity`` by the others.
* SQLite: an exclusive ``flock`` on ``<database>.claims/run-<id>``, which holds the same JSON. Files are
  never deleted (deleting a lock file races with a driver opening it); they are a few bytes each.
* In-memory SQLite: one process, nothing to claim.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import threading
from pathlib import Path
from typing import Any

from sqlalchemy import text
from sqlalchemy.engine import Connection, Engine

from ebt_scaling.db.lease import APP_PREFIX, _holder, flock_holder, read_lock_info

CLAIM_SPACE = 0x45425452  # "EBTR": the first key of every run claim's advisory lock


class RunClaims:
    """The claims of this driver. ``take(run_id)`` returns None when the run is now claimed here (or was
    already), else the live holder's {host, pid, since} ({} when not recorded); ``holder`` asks without
    taking; ``release`` frees one claim, ``close`` all of them."""

    def __init__(self, engine: Engine | None, db_path: Path | None) -> None:
        self._lock = threading.Lock()
        self._mine: dict[int, Any] = {}  # run id -> fd (SQLite) or True (PostgreSQL)
        self._conn: Connection | None = None
        self._dir: Path | None = None
        if engine is not None:
            me = _holder()
            app = f"{APP_PREFIX} pid={me['pid']} host={me['host']} since={me['since']}"[:63]
            self._conn = engine.connect().execution_options(isolation_level="AUTOCOMMIT")
            self._conn.execute(text("SELECT set_config('application_name', :a, false)"), {"a": app})
        elif db_path is not None:
            self._dir = db_path.with_name(f"{db_path.name}.claims")
            self._dir.mkdir(mode=0o700, exist_ok=True)
            _raise_open_files_limit()

    def take(self, run_id: int) -> dict | None:
        run_id = int(run_id)
        with self._lock:
            if run_id in self._mine:
                return None
            if self._conn is not None:
                if self._conn.execute(text("SELECT pg_try_advisory_lock(:s, :r)"),
                                      {"s": CLAIM_SPACE, "r": run_id}).scalar():
                    self._mine[run_id] = True
                    return None
                return self._pg_holder(run_id) or {}
            if self._dir is None:
                self._mine[run_id] = True
                return None
            fd = os.open(self._dir / f"run-{run_id}", os.O_RDWR | os.O_CREAT, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                info = read_lock_info(fd)
                os.close(fd)
                return info
            data = json.dumps({**_holder(), "run_id": run_id}).encode()
            os.ftruncate(fd, 0)
            os.pwrite(fd, data, 0)
            self._mine[run_id] = fd
            return None

    def holder(self, run_id: int) -> dict | None:
        """The live driver other than this one that holds the run's claim, or None."""
        run_id = int(run_id)
        with self._lock:
            if run_id in self._mine:
                return None
            if self._conn is not None:
                return self._pg_holder(run_id)
            if self._dir is None:
                return None
            return flock_holder(self._dir / f"run-{run_id}")

    def mine(self) -> set[int]:
        with self._lock:
            return set(self._mine)

    def release(self, run_id: int) -> None:
        with self._lock:
            self._release(int(run_id))

    def _release(self, run_id: int) -> None:
        held = self._mine.pop(run_id, None)
        if held is None:
            return
        if self._conn is not None:
            with contextlib.suppress(Exception):  # a lost connection has released the lock already
                self._conn.execute(text("SELECT pg_advisory_unlock(:s, :r)"), {"s": CLAIM_SPACE, "r": run_id})
        elif held is not True:
            os.ftruncate(held, 0)
            fcntl.flock(held, fcntl.LOCK_UN)
            os.close(held)

    def close(self) -> None:
        with self._lock:
            for run_id in list(self._mine):
                self._release(run_id)
            if self._conn is not None:
                with contextlib.suppress(Exception):
                    self._conn.close()
                self._conn = None

    def __enter__(self) -> RunClaims:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _pg_holder(self, run_id: int) -> dict | None:
        assert self._conn is not None
        row = self._conn.execute(text(
            "SELECT a.application_name FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid "
            "WHERE l.locktype = 'advisory' AND l.granted AND l.classid = :s AND l.objid = :r AND l.objsubid = 2 "
            "AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database()) "
            "AND l.pid <> pg_backend_pid()"), {"s": CLAIM_SPACE, "r": run_id}).first()
        if row is None:
            return None
        name = str(row[0])
        if not name.startswith(APP_PREFIX + " "):
            return {}
        return dict(kv.split("=", 1) for kv in name.split(" ")[1:] if "=" in kv)


def _raise_open_files_limit() -> None:
    """A SQLite claim is an open file per run being trained: lift the soft limit to the hard one."""
    try:
        import resource

        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        want = hard if hard != resource.RLIM_INFINITY else 65536
        if soft != resource.RLIM_INFINITY and soft < want:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    except (ImportError, ValueError, OSError):
        pass
