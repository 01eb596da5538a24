"""Schema creation, the schema check on open, and Alembic migrations (configured in code, so they work from
an installed wheel: the migration scripts ship as ``ebt_scaling/_alembic``; in a checkout they are the
top-level ``alembic/``).

A database without our tables is created at head directly (``create_all`` + stamping the version table,
as Optuna and MLflow do), under a lock so that parallel first starts do not race. A database at an older
revision raises ``SchemaOutOfDate`` naming ``ebt-scale db upgrade``; one at an unknown (newer) revision
asks for a newer package.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import Column, MetaData, PrimaryKeyConstraint, String, Table, inspect, select
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import SQLAlchemyError

from ebt_scaling.db import schema
from ebt_scaling.db.engine import (
    SQLITE_BEGIN,
    advisory_lock,
    init_lock,
    make_engine,
    sqlite_path,
)
from ebt_scaling.db.retry import translate, with_retries
from ebt_scaling.errors import SchemaOutOfDate, StoreError
from ebt_scaling.security import mask_url, scrub

# Same shape as the table Alembic creates (so either may create it first).
_version_md = MetaData()
version_table = Table(
    schema.VERSION_TABLE, _version_md,
    Column("version_num", String(32), nullable=False),
    PrimaryKeyConstraint("version_num", name=f"{schema.VERSION_TABLE}_pkc"),
)


def upgrade_hint(url: str) -> str:
    return f"ebt-scale db upgrade --db {mask_url(url)}"


def include_name(name: str | None, type_: str, parent_names: Any) -> bool:
    """Alembic filter: only our tables (the database may also hold Optuna's or MLflow's)."""
    if type_ == "table":
        return bool(name) and str(name).startswith(schema.TABLE_PREFIX)
    return True


def _read_revision(conn: Connection) -> tuple[str | None, set[str]]:
    tables = set(inspect(conn).get_table_names())
    rev = None
    if schema.VERSION_TABLE in tables:
        rows = conn.execute(select(version_table.c.version_num)).scalars().all()
        if len(rows) > 1:
            raise StoreError(f"{schema.VERSION_TABLE} holds several revisions {rows}; this database has "
                             "branched migrations that ebt-scaling does not support")
        rev = rows[0] if rows else None
    return rev, tables


def check_revision(rev: str | None, url: str) -> None:
    if rev == schema.SCHEMA_REVISION:
        return
    if rev in schema.KNOWN_REVISIONS or rev is None:
        raise SchemaOutOfDate(
            f"database schema is at revision {rev or 'base'} but this ebt-scaling needs "
            f"{schema.SCHEMA_REVISION}: run `{upgrade_hint(url)}`")
    raise StoreError(f"database schema revision {rev!r} is newer than this ebt-scaling knows "
                     f"({schema.SCHEMA_REVISION}); upgrade the package: pip install -U ebt-scaling")


def ensure_schema(engine: Engine, url: str, create: bool = True) -> None:
    """Create the schema at head in an empty database (StoreError instead when ``create`` is False), or check
    that an existing one is at head."""

    def unit() -> None:
        with engine.connect() as c0:
            conn = c0.execution_options(**{SQLITE_BEGIN: "IMMEDIATE"})
            with conn.begin():
                advisory_lock(conn)
                rev, tables = _read_revision(conn)
                ours = {t for t in tables if t.startswith(schema.TABLE_PREFIX) and t != schema.VERSION_TABLE}
                if rev is None and not ours:
                    schema.Base.metadata.create_all(conn)
                    version_table.create(conn, checkfirst=True)
                    conn.execute(version_table.delete())
                    conn.execute(version_table.insert().values(version_num=schema.SCHEMA_REVISION))
                    return
                if rev is None:
                    raise StoreError(f"database {mask_url(url)} has ebt-scaling tables ({', '.join(sorted(ours))}) "
                                     f"but no {schema.VERSION_TABLE}; it was not created by ebt-scaling")
                check_revision(rev, url)

    def read() -> str | None:
        with engine.connect() as conn:
            return _read_revision(conn)[0]

    # Fast path: an existing database at head needs no lock.
    try:
        rev = with_retries(read)
        if rev is not None:
            check_revision(rev, url)
            return
        if not create:
            raise StoreError(f"database {mask_url(url)} holds no ebt-scaling results (no schema); check --db or "
                             "EBT_SCALE_DB (only ebt-scale sweep, import and db upgrade create a database)")
        with init_lock(engine):
            with_retries(unit)
    except SQLAlchemyError as exc:
        raise translate(exc, url, "opening the database") from None


# ---------------------------------------------------------------- Alembic


def alembic_dir() -> Path:
    """The migration environment: inside the installed package, else the checkout's ``alembic/``."""
    pkg = Path(__file__).resolve().parents[1]
    for cand in (pkg / "_alembic", pkg.parent / "alembic"):
        if (cand / "env.py").is_file():
            return cand
    raise StoreError(f"migration scripts not found (looked in {pkg / '_alembic'} and {pkg.parent / 'alembic'}); "
                     "reinstall ebt-scaling")


def alembic_config(connection: Connection | None = None, url: str | None = None) -> Any:
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(alembic_dir()))
    if url is not None:
        cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))  # Config uses %-interpolation
    if connection is not None:
        cfg.attributes["connection"] = connection
    return cfg


def script_head() -> str:
    from alembic.script import ScriptDirectory

    heads = ScriptDirectory.from_config(alembic_config()).get_heads()
    if len(heads) != 1:
        raise StoreError(f"migration scripts have {len(heads)} heads {heads}; reinstall ebt-scaling")
    return heads[0]


def script_revisions() -> list[str]:
    """All revisions of the shipped scripts, oldest first."""
    from alembic.script import ScriptDirectory

    revs = [s.revision for s in ScriptDirectory.from_config(alembic_config()).walk_revisions()]
    return list(reversed(revs))


def _migration_connection(engine: Engine) -> Connection:
    conn = engine.connect()
    if sqlite_path(engine.url) is not None or engine.dialect.name == "sqlite":
        # Batch migrations copy and drop tables: foreign keys must be off (outside any transaction).
        conn.connection.driver_connection.execute("PRAGMA foreign_keys = OFF")  # type: ignore[union-attr]
        conn = conn.execution_options(**{SQLITE_BEGIN: "IMMEDIATE"})
    return conn


def current(url: str) -> str | None:
    """The revision stored in the database (None for an empty database). Creates nothing."""
    engine = make_engine(url, null_pool=True)
    try:
        with engine.connect() as conn:
            return _read_revision(conn)[0]
    except SQLAlchemyError as exc:
        raise translate(exc, url, "reading the schema revision") from None
    finally:
        engine.dispose()


def _run_alembic(url: str, fn_name: str, revision: str) -> tuple[str | None, str | None]:
    from alembic import command, util

    engine = make_engine(url, null_pool=True)
    try:
        with init_lock(engine):
            before = current(url)
            conn = _migration_connection(engine)
            try:
                cfg = alembic_config(conn, url)
                getattr(command, fn_name)(cfg, revision)
            finally:
                conn.close()
            return before, current(url)
    except SQLAlchemyError as exc:
        raise translate(exc, url, f"{fn_name} to {revision}") from None
    except util.CommandError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise StoreError(f"cannot {fn_name} {mask_url(url)} to {revision!r}: {scrub(first)}; known revisions: "
                         f"{', '.join(schema.KNOWN_REVISIONS)}, head, base") from None
    finally:
        engine.dispose()


def upgrade(url: str, revision: str = "head") -> tuple[str | None, str | None]:
    """``alembic upgrade``; returns (revision before, revision after)."""
    return _run_alembic(url, "upgrade", revision)


def downgrade(url: str, revision: str) -> tuple[str | None, str | None]:
    """``alembic downgrade`` (``base`` drops every ebt-scaling table); returns (before, after)."""
    return _run_alembic(url, "downgrade", revision)
