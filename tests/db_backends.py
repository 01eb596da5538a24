"""Database backends for the DB test-suite: every test that takes ``db_url`` runs once on a fresh SQLite
file and once on a fresh PostgreSQL database of its own (created on the server named by
EBT_SCALE_TEST_PG, dropped afterwards), so tests never interfere. Without EBT_SCALE_TEST_PG the
PostgreSQL variant is skipped with that reason (CI always sets it)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
from conftest import pg_url_or_skip


def _admin_engine(server_url: str):
    import sqlalchemy as sa

    from ebt_scaling.db.engine import parse_url

    return sa.create_engine(parse_url(server_url), isolation_level="AUTOCOMMIT", poolclass=sa.pool.NullPool)


def fresh_pg_database() -> Iterator[str]:
    """Create an empty database on the test server; yield its URL; drop it afterwards."""
    import sqlalchemy as sa

    from ebt_scaling.db.engine import parse_url

    server = pg_url_or_skip()
    name = f"ebt_t_{uuid.uuid4().hex[:12]}"
    admin = _admin_engine(server)
    with admin.connect() as c:
        c.execute(sa.text(f'CREATE DATABASE "{name}"'))
    try:
        yield parse_url(server).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as c:
            c.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def _db_url(request, tmp_path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'test.db'}"
    else:
        yield from fresh_pg_database()


def _pg_db_url(request) -> Iterator[str]:
    yield from fresh_pg_database()


#: ``db_url = db_url_fixture`` in a test module gives it the parametrised fixture.
db_url_fixture = pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)],
                                name="db_url")(_db_url)
pg_db_url_fixture = pytest.fixture(name="pg_db_url")(_pg_db_url)

#: On a test that takes ``db_url`` and whose logic does not depend on the backend (a fit, a report): its
#: PostgreSQL case leaves the default suite for ``-m slow``. The Store's own PostgreSQL behaviour (fits, links,
#: imports, migrations) stays in the default suite: tests/test_db_*.py and tests/test_cli_db.py.
slow_on_postgresql = pytest.mark.parametrize(
    "db_url", ["sqlite", pytest.param("postgresql", marks=[pytest.mark.postgres, pytest.mark.slow])], indirect=True)
