"""Alembic environment of ebt-scaling.

Configured in code by ``ebt_scaling.db.migrate`` (script_location, and the connection passed in
``config.attributes["connection"]``), so it works from an installed wheel without an alembic.ini.
Plain ``alembic`` with a config naming ``sqlalchemy.url`` works too (online mode only).
"""

from __future__ import annotations

from alembic import context
from ebt_scaling.db.engine import make_engine
from ebt_scaling.db.migrate import include_name
from ebt_scaling.db.schema import VERSION_TABLE, Base

config = context.config
target_metadata = Base.metadata


def _configure(connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        version_table=VERSION_TABLE,  # not "alembic_version": the DB may be shared with Optuna/MLflow
        render_as_batch=True,  # SQLite cannot ALTER most things; batch mode copies the table
        include_name=include_name,  # only ebt_* tables, never another tool's
        compare_type=True,
    )


def run_migrations_offline() -> None:
    context.configure(
        url=config.get_main_option("sqlalchemy.url"),
        target_metadata=target_metadata,
        version_table=VERSION_TABLE,
        render_as_batch=True,
        include_name=include_name,
        literal_binds=True,
        dialect_opts={"paramstyle": "named"},
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _configure(connection)
        with context.begin_transaction():
            context.run_migrations()
        return
    engine = make_engine(config.get_main_option("sqlalchemy.url"), null_pool=True)
    try:
        with engine.connect() as conn:
            _configure(conn)
            with context.begin_transaction():
                context.run_migrations()
    finally:
        engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
