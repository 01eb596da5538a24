"""The unit of work every ``Store`` module builds on: engine, one transaction per public method (retried as
a whole on transient lock errors), errors translated to the project's exceptions with credentials masked,
the server's clock, and the sweep-name lookup every module needs."""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime, timezone
from typing import Any, TypeVar

from sqlalchemy import func, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection
from sqlalchemy.exc import SQLAlchemyError

from ebt_scaling.db.codec import RUNS, SWEEPS, chunks
from ebt_scaling.db.engine import SQLITE_BEGIN, WriterLock, make_engine, parse_url, sqlite_path
from ebt_scaling.db.migrate import ensure_schema
from ebt_scaling.db.retry import translate, with_retries
from ebt_scaling.errors import NotFound, StoreError
from ebt_scaling.security import mask_url

T = TypeVar("T")


class UnitOfWork:
    """The database at ``url``: created at the current schema revision if empty, unless ``create`` is False
    (read-only commands), where a missing SQLite file or an empty database is a StoreError and nothing is
    written."""

    def __init__(self, url: str, create: bool = True) -> None:
        self._raw_url = url
        self.url = mask_url(url)
        # Seconds a lost or refused connection is retried before an operation fails (0: fail at once). A sweep
        # driver sets it (``run_sweep``), so that a database restart does not abort days of training.
        self.reconnect_s = 0.0
        if not create:
            path = sqlite_path(parse_url(url))
            if path is not None and not path.is_file():
                raise StoreError(f"database {path} does not exist; check --db or EBT_SCALE_DB (only ebt-scale "
                                 "sweep, import and db upgrade create a database)")
        self._engine = make_engine(url)
        self.dialect = self._engine.dialect.name
        self._writer_lock = WriterLock(self._engine)
        try:
            ensure_schema(self._engine, url, create=create)
        except BaseException:
            self._engine.dispose()
            raise

    def close(self) -> None:
        self._engine.dispose()
        self._writer_lock.close()

    def __repr__(self) -> str:
        return f"Store({self.url!r})"

    @contextmanager
    def _tx(self, write: bool) -> Iterator[Connection]:
        if write:
            with self._writer_lock.hold(), self._engine.connect() as c0:
                conn = c0.execution_options(**{SQLITE_BEGIN: "IMMEDIATE"})
                with conn.begin():
                    yield conn
        else:
            with self._engine.connect() as conn, conn.begin():
                yield conn

    def _unit(self, fn: Callable[[Connection], T], *, write: bool = True, what: str = "") -> T:
        def attempt() -> T:
            with self._tx(write) as conn:
                return fn(conn)

        try:
            return with_retries(attempt, reconnect_s=self.reconnect_s)
        except SQLAlchemyError as exc:
            raise translate(exc, self._raw_url, what) from None

    def _now(self, conn: Connection) -> datetime:
        """Current naive UTC time: the server's clock on PostgreSQL (shared by every host), else this host's
        (SQLite is single-host)."""
        if self.dialect == "postgresql":
            return conn.execute(select(func.timezone("UTC", func.now()))).scalar_one()  # type: ignore[no-any-return]
        return datetime.now(timezone.utc).replace(tzinfo=None)

    def _insert(self, table: Any) -> Any:
        return (postgresql.insert if self.dialect == "postgresql" else sqlite.insert)(table)

    def _sweep_id(self, conn: Connection, name: str) -> int:
        sid = conn.execute(select(SWEEPS.c.id).where(SWEEPS.c.name == name)).scalar_one_or_none()
        if sid is None:
            names = list(conn.execute(select(SWEEPS.c.name)).scalars())
            close = difflib.get_close_matches(name, names, n=3, cutoff=0.5)
            hint = (f"did you mean {', '.join(repr(c) for c in close)}?" if close else
                    "`ebt-scale sweeps` lists them" if names else
                    "create it first (ebt-scale sweep or ebt-scale import)")
            raise NotFound(f"no sweep named {name!r}; {hint}")
        return int(sid)

    def _ids_by_hash(self, conn: Connection, hashes: Sequence[str]) -> dict[str, int]:
        out: dict[str, int] = {}
        for chunk in chunks(list(hashes)):
            out.update({h: i for i, h in conn.execute(select(RUNS.c.id, RUNS.c.config_hash)
                                                      .where(RUNS.c.config_hash.in_(chunk)))})
        return out
