"""Engines, connection settings, retries and error translation for the results database.

* SQLite: every connection runs ``PRAGMA busy_timeout``, ``journal_mode=WAL`` (file databases),
  ``foreign_keys=ON`` and ``synchronous=NORMAL``; the driver's own transaction handling is switched off so
  that writers start with ``BEGIN IMMEDIATE`` (a writer waits for the lock up front instead of failing
  when it upgrades a read transaction), readers with a plain ``BEGIN``.
* PostgreSQL: ``postgresql+psycopg://`` (``postgresql://`` and ``postgres://`` are rewritten to it),
  ``pool_pre_ping``.
* SQLite files: every transaction first checks that the file is still the one the engine opened (same
  device and inode): a database deleted or replaced under a running sweep stops it in one line instead of
  writing into a file nobody can read again.
* Retries of a whole unit of work and error translation live in ``retry.py``.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import random
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, event
from sqlalchemy.engine import URL, Connection, Engine, make_url
from sqlalchemy.exc import ArgumentError, SQLAlchemyError
from sqlalchemy.pool import NullPool, StaticPool

from ebt_scaling.db.retry import TRANSIENT_SQLITE, translate
from ebt_scaling.errors import StoreError
from ebt_scaling.security import mask_url, scrub

SQLITE_BUSY_TIMEOUT_MS = 60_000
# Execution option read by the SQLite "begin" hook: "IMMEDIATE" for writers, "DEFERRED" for readers.
SQLITE_BEGIN = "ebt_sqlite_begin"
URL_HELP = "use sqlite:///PATH.db or postgresql+psycopg://USER:PASSWORD@HOST:PORT/DB"

def check_database(url: str, timeout_s: int = 5) -> str:
    """Check, without writing anything, that ``url`` is valid and reachable (``sweep --dry-run``); returns a
    one-line description, raises StoreError (one masked line) otherwise."""
    u = parse_url(url)
    path = sqlite_path(u)
    if u.get_backend_name() == "sqlite":
        if path is None:
            return "in-memory SQLite (nothing is kept)"
        if path.exists():
            return f"SQLite file {path} (exists)"
        if not path.parent.is_dir() or not os.access(path.parent, os.W_OK):
            raise StoreError(f"cannot create SQLite database {path}: directory {path.parent} does not exist or is "
                             "not writable; create it or choose another --db path")
        return f"SQLite file {path} (will be created)"
    engine = create_engine(u, poolclass=NullPool, connect_args={"connect_timeout": timeout_s})
    try:
        with engine.connect() as conn:
            version = conn.exec_driver_sql("SHOW server_version").scalar()
    except SQLAlchemyError as exc:
        raise translate(exc, url, "checking the database") from None
    finally:
        engine.dispose()
    return f"PostgreSQL {version} at {mask_url(url)} (reachable)"


def _create_private(path: Path) -> None:
    """Create a new SQLite file readable by its owner only (0600; SQLite gives its -wal/-shm files the same
    mode). An existing file is left as it is."""
    try:
        os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
    except FileExistsError:
        pass
    except OSError as exc:
        raise StoreError(f"cannot create SQLite database {path} ({exc.strerror}); choose another --db path") from None


def _encode_at_signs(url: str) -> str:
    """``scheme://user:p@ss@host/db`` -> ``scheme://user:p%40ss@host/db``: a host never holds ``@``, so the
    user info ends at the last ``@`` of the authority; unencoded ``@`` before it belong to the password
    (SQLAlchemy would take the first ``@`` and read ``ss@host`` as the host)."""
    scheme, sep, rest = url.partition("://")
    if not sep or scheme.startswith("sqlite"):
        return url
    slash = rest.find("/", rest.rfind("@") + 1)
    authority = rest if slash < 0 else rest[:slash]
    userinfo, at, host = authority.rpartition("@")
    if not at or "@" not in userinfo:
        return url
    return f"{scheme}://{userinfo.replace('@', '%40')}@{host}{rest[len(authority):]}"


def parse_url(url: str) -> URL:
    """Parse a database URL, accepting the plain ``postgresql://`` spelling for psycopg 3."""
    try:
        u = make_url(_encode_at_signs(url))
        _ = u.port
    except (ArgumentError, ValueError):  # ValueError: a port that is not a number (its text may hold a secret)
        raise StoreError(f"invalid database URL {mask_url(url)!r}; {URL_HELP}") from None
    if u.drivername in ("postgresql", "postgres", "postgresql+psycopg2"):
        u = u.set(drivername="postgresql+psycopg")
    if u.get_backend_name() not in ("sqlite", "postgresql"):
        raise StoreError(f"unsupported database {u.get_backend_name()!r} in {mask_url(url)}; {URL_HELP}")
    if u.get_backend_name() == "postgresql" and importlib.util.find_spec("psycopg") is None:
        raise StoreError(f"{mask_url(url)}: PostgreSQL needs the psycopg driver, an optional extra: "
                         "pip install 'ebt-scaling[postgres]'")
    return u


def sqlite_path(u: URL) -> Path | None:
    """The file of a SQLite URL, or None for in-memory databases."""
    if u.get_backend_name() != "sqlite":
        return None
    db = u.database or ""
    if db in ("", ":memory:") or db.startswith("file::memory:") or u.query.get("mode") == "memory":
        return None
    return Path(db).expanduser().resolve()


def _sqlite_connect_hook(wal: bool) -> Callable[..., None]:
    def on_connect(dbapi_conn: Any, _record: Any) -> None:
        # Let SQLAlchemy's "begin" hook below issue BEGIN itself (pysqlite's implicit BEGIN is deferred
        # and only starts at the first write, which makes lock upgrades fail with "database is locked").
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}")
        if wal:
            _set_wal(cur)
        cur.execute("PRAGMA foreign_keys = ON")
        cur.execute("PRAGMA synchronous = NORMAL")
        cur.close()

    return on_connect


def _set_wal(cur: Any) -> None:
    """Switch a SQLite file to WAL (persistent; a no-op once done). The switch needs an exclusive lock and
    SQLite reports "database is locked" at once, without its busy handler, when other connections are
    opening the brand-new file at the same moment: retry here for up to the busy timeout."""
    deadline = time.monotonic() + SQLITE_BUSY_TIMEOUT_MS / 1000
    while True:
        try:
            if str(cur.execute("PRAGMA journal_mode").fetchone()[0]).lower() != "wal":
                cur.execute("PRAGMA journal_mode = WAL")
            return
        except Exception as exc:  # sqlite3.OperationalError; sqlite3 is not imported here on purpose
            if not TRANSIENT_SQLITE.search(str(exc)) or time.monotonic() > deadline:
                raise
            time.sleep(random.uniform(0.005, 0.05))


def file_identity(path: Path) -> tuple[int, int] | None:
    """(device, inode) of a SQLite file, or None when it does not exist."""
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    return st.st_dev, st.st_ino


def _identity_guard(path: Path, ident: tuple[int, int] | None) -> Callable[[Connection], None]:
    """A "begin" hook: the file the engine opened is still the one at ``path``. SQLite keeps writing into a
    deleted (unlinked) file, and a file put in its place is another database: either way every later write
    would be lost or land elsewhere, so each transaction checks first (one stat) and stops with one line."""
    def check(_conn: Connection) -> None:
        now = file_identity(path)
        if now != ident:
            what = "deleted" if now is None else "replaced by another file"
            raise StoreError(f"the SQLite database {path} was {what} while this process was using it; stopped "
                             "before writing anything more; put the file back and rerun the same command (the "
                             "runs' checkpoints are kept)")

    return check


def _sqlite_begin(conn: Connection) -> None:
    mode = conn.get_execution_options().get(SQLITE_BEGIN, "DEFERRED")
    conn.exec_driver_sql(f"BEGIN {mode}")


def make_engine(url: str, *, null_pool: bool = False) -> Engine:
    """An engine for ``url`` with the connection settings above."""
    u = parse_url(url)
    if u.get_backend_name() == "sqlite":
        path = sqlite_path(u)
        kwargs: dict[str, Any] = {"connect_args": {"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000,
                                                   "check_same_thread": False}}
        if path is None:
            kwargs["poolclass"] = StaticPool
        else:
            if not path.parent.is_dir():
                raise StoreError(f"cannot create SQLite database {path}: directory {path.parent} does not exist; "
                                 "create it or choose another --db path")
            _create_private(path)
            if null_pool:
                kwargs["poolclass"] = NullPool
        engine = create_engine(u, **kwargs)
        event.listen(engine, "connect", _sqlite_connect_hook(wal=path is not None))
        if path is not None:
            event.listen(engine, "begin", _identity_guard(path, file_identity(path)))
        event.listen(engine, "begin", _sqlite_begin)
        return engine
    kwargs = {"pool_pre_ping": True}
    if null_pool:
        kwargs["poolclass"] = NullPool
    try:
        return create_engine(u, **kwargs)
    except (ImportError, ArgumentError, SQLAlchemyError) as exc:
        raise StoreError(f"cannot use {mask_url(url)}: {scrub(str(exc))}; {URL_HELP}") from None


def lock_files(path: Path) -> tuple[str, str]:
    """The two lock files of the SQLite database ``path`` (resolved), in the temp directory: the init lock
    (``init_lock``) and the writers' queue (``WriterLock``). They outlive the database; a caller that
    knows a database is gone for good (a test's temporary folder) may remove them."""
    key = hashlib.sha256(str(path).encode()).hexdigest()[:20]
    base = os.path.join(tempfile.gettempdir(), f"ebt-scale-{key}")
    return base + ".lock", base + ".writer.lock"


@contextmanager
def init_lock(engine: Engine) -> Iterator[None]:
    """Serialise first-time schema creation and migrations between processes on this host.

    SQLite files get a file lock (keyed by the database path, kept in the temp directory so nothing is
    left beside the database); PostgreSQL uses a transaction-level advisory lock inside the init
    transaction itself (see ``advisory_lock``), which also covers other hosts.
    """
    path = sqlite_path(engine.url)
    if path is None:
        yield
        return
    from filelock import FileLock

    lock = FileLock(lock_files(path)[0])
    with lock.acquire(timeout=300):
        yield


LOCK_TIMEOUT_ENV = "EBT_SCALE_DB_LOCK_TIMEOUT_S"
LOCK_TIMEOUT_S = 600.0


class WriterLock:
    """A host-wide queue for SQLite writers: an exclusive ``flock`` on a file in the temp directory, taken
    around each write transaction. A waiting writer polls it every 0.5-5 ms, whereas SQLite's own busy
    handler sleeps up to 100 ms between retries (measured: 6 processes writing small batches ran several
    times slower without the lock), and gives up with the holder's pid after ``$EBT_SCALE_DB_LOCK_TIMEOUT_S``.
    SQLite's busy_timeout stays as the safety net for
    writers that do not use this lock (other tools, other hosts: which SQLite does not support anyway).
    A no-op where ``fcntl`` is missing (Windows) and for in-memory databases."""

    def __init__(self, engine: Engine) -> None:
        import threading

        path = sqlite_path(engine.url)
        self._engine_url = engine.url
        self._file: Any = None
        self._thread_lock = threading.Lock()
        self._path: str | None = None
        if path is not None:
            self._path = lock_files(path)[1]

    @contextmanager
    def hold(self) -> Iterator[None]:
        if self._path is None:
            yield
            return
        try:
            import fcntl
        except ImportError:  # pragma: no cover - Windows
            yield
            return
        with self._thread_lock:
            if self._file is None:
                self._file = open(self._path, "a+")  # noqa: SIM115 - kept open for the Store's lifetime
            fd = self._file.fileno()
            self._acquire(fcntl, fd)
            try:
                os.ftruncate(fd, 0)  # who holds it, for a writer that gives up waiting
                os.pwrite(fd, f"pid {os.getpid()} ({' '.join(sys.argv[:2])[:80]})".encode(), 0)
                yield
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)

    def _acquire(self, fcntl: Any, fd: int) -> None:
        """flock with a limit (``$EBT_SCALE_DB_LOCK_TIMEOUT_S``, default 600 s): polled every 0.5-5 ms, so a
        waiting writer still follows within milliseconds; past the limit a StoreError names the holder."""
        limit = float(os.environ.get(LOCK_TIMEOUT_ENV) or LOCK_TIMEOUT_S)
        deadline = time.monotonic() + limit
        wait = 0.0005
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                if time.monotonic() > deadline:
                    holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"
                    raise StoreError(f"the SQLite database {sqlite_path(self._engine_url)} has been locked for writing "
                                     f"by {holder} for over {limit:g} s; wait for it to finish or stop it "
                                     f"({LOCK_TIMEOUT_ENV} sets the limit)") from None
                time.sleep(wait)
                wait = min(0.005, wait * 2)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


ADVISORY_LOCK_KEY = 0x656274_7363616C  # "ebt" "scal"


def advisory_lock(conn: Connection) -> None:
    """Take the schema lock for the rest of this PostgreSQL transaction (no-op on SQLite)."""
    if conn.dialect.name == "postgresql":
        conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({ADVISORY_LOCK_KEY})")
