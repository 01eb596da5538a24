"""Alembic migrations and the schema check on open, on SQLite and PostgreSQL."""

from __future__ import annotations

import pathlib

import pytest
import sqlalchemy as sa
from db_backends import db_url_fixture  # noqa: F401  (the parametrised ``db_url`` fixture)
from db_helpers import get_run_by_hash

from ebt_scaling.db import migrate, schema
from ebt_scaling.db.engine import make_engine
from ebt_scaling.db.store import Store
from ebt_scaling.errors import SchemaOutOfDate, StoreError
from ebt_scaling.records import CalibrationRecord, PlannedRun
from ebt_scaling.security import mask_url

ALL_TABLES = {t for t in schema.Base.metadata.tables}


def diffs(url: str) -> list:
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            mc = MigrationContext.configure(conn, opts={"include_name": migrate.include_name, "compare_type": True,
                                                        "version_table": schema.VERSION_TABLE})
            return compare_metadata(mc, schema.Base.metadata)
    finally:
        engine.dispose()


def tables(url: str) -> set[str]:
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            return set(sa.inspect(conn).get_table_names())
    finally:
        engine.dispose()


def test_code_revision_matches_scripts():
    assert migrate.script_head() == schema.SCHEMA_REVISION
    assert migrate.script_revisions() == list(schema.KNOWN_REVISIONS)
    d = migrate.alembic_dir()
    assert (d / "env.py").is_file() and (d / "script.py.mako").is_file()
    # alembic/ is data shipped as ebt_scaling/_alembic, never a package of its own
    assert not (d / "__init__.py").exists() and not (d / "versions" / "__init__.py").exists()
    assert migrate.alembic_config().get_main_option("script_location") == str(d)
    assert pathlib.Path(d).name in ("alembic", "_alembic")


def test_empty_to_head_matches_orm_metadata(db_url):
    assert migrate.current(db_url) is None
    before, after = migrate.upgrade(db_url)
    assert (before, after) == (None, schema.SCHEMA_REVISION)
    assert ALL_TABLES | {schema.VERSION_TABLE} <= tables(db_url)
    assert "alembic_version" not in tables(db_url)  # custom version table only
    assert diffs(db_url) == []
    with Store(db_url) as s:  # a migrated database opens without changes
        s.create_sweep("a", "depth")


def ddl_snapshot(url: str) -> set:
    """What Alembic's compare does not look at: CHECK constraint text, table options (SQLite's WITHOUT
    ROWID), exact index and constraint definitions."""
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            if conn.dialect.name == "sqlite":
                rows = conn.execute(sa.text("SELECT name, sql FROM sqlite_master WHERE sql IS NOT NULL AND "
                                            "(name LIKE 'ebt%' OR name LIKE 'ix_ebt%')")).all()
                return {(name, line.strip().rstrip(",").strip()) for name, sql in rows for line in sql.splitlines()
                        if line.strip()}
            cons = conn.execute(sa.text(
                "SELECT conrelid::regclass::text, conname, pg_get_constraintdef(oid) FROM pg_constraint "
                "WHERE conrelid::regclass::text LIKE 'ebt%'")).all()
            idx = conn.execute(sa.text("SELECT tablename, indexname, indexdef FROM pg_indexes "
                                       "WHERE tablename LIKE 'ebt%'")).all()
            return {tuple(r) for r in cons} | {tuple(r) for r in idx}
    finally:
        engine.dispose()


def test_migrated_ddl_equals_created_ddl_exactly(db_url):
    migrate.upgrade(db_url)
    migrated = ddl_snapshot(db_url)
    migrate.downgrade(db_url, "base")
    Store(db_url).close()  # create_all + stamp
    created = ddl_snapshot(db_url)
    assert migrated == created
    if db_url.startswith("sqlite"):
        assert ("ebt_metrics", "WITHOUT ROWID") in created  # relied on for ingest speed
        assert ("ebt_metrics", "CONSTRAINT ck_ebt_metrics_kind CHECK (kind = 'finite' OR kind = 'nan' OR "
                "kind = 'inf' OR kind = '-inf')") in created
    else:
        assert any(name == "ck_ebt_runs_status" and "running" in d for _, name, d in created)


def test_store_created_schema_equals_migrated_schema(db_url):
    with Store(db_url):
        pass
    assert migrate.current(db_url) == schema.SCHEMA_REVISION
    assert diffs(db_url) == []
    assert migrate.upgrade(db_url) == (schema.SCHEMA_REVISION, schema.SCHEMA_REVISION)


def test_calibrations_table_up_and_down_keeps_older_data(db_url):
    """0004 adds ebt_calibrations and nothing else; its downgrade drops only that table."""
    migrate.upgrade(db_url, "0003")
    with make_engine(db_url).begin() as conn:
        conn.execute(sa.text("INSERT INTO ebt_sweeps (name, axis, spec, created_at) "
                             "VALUES ('kept', 'depth', '{}', '2026-01-01 00:00:00')"))
    before = tables(db_url)
    assert "ebt_calibrations" not in before
    assert migrate.upgrade(db_url, "0004") == ("0003", "0004")
    assert tables(db_url) - before == {"ebt_calibrations"}
    assert migrate.upgrade(db_url) == ("0004", schema.SCHEMA_REVISION)
    assert diffs(db_url) == []
    with Store(db_url) as s:
        s.save_calibration(CalibrationRecord("cpu", "cpu model", "ebt", "L1-D32", "fp32", "ebt_s1", 1, 2, 1e9, 0.5,
                                             3, 1))
        assert [c.flops_per_s for c in s.list_calibrations()] == [2e9]
    assert migrate.downgrade(db_url, "0003") == (schema.SCHEMA_REVISION, "0003")
    assert tables(db_url) == before
    with make_engine(db_url).connect() as conn:
        assert conn.execute(sa.text("SELECT name FROM ebt_sweeps")).scalar() == "kept"


def test_downgrade_upgrade_round_trip(db_url):
    migrate.upgrade(db_url)
    assert migrate.downgrade(db_url, "0001") == (schema.SCHEMA_REVISION, "0001")
    assert "ebt_fits" not in tables(db_url) and "ebt_runs" in tables(db_url)
    assert migrate.downgrade(db_url, "base") == ("0001", None)
    assert not (tables(db_url) & ALL_TABLES)
    assert migrate.upgrade(db_url) == (None, schema.SCHEMA_REVISION)
    assert diffs(db_url) == []


def test_out_of_date_database_names_the_upgrade_command_and_upgrade_keeps_data(db_url):
    migrate.upgrade(db_url, "0001")
    engine = make_engine(db_url)
    with engine.begin() as conn:  # data written by an older ebt-scaling
        conn.execute(sa.text("INSERT INTO ebt_sweeps (name, axis, spec, created_at) "
                             "VALUES ('old', 'depth', '{}', '2026-01-01 00:00:00')"))
        conn.execute(sa.text(
            "INSERT INTO ebt_runs (sweep_id, family, axis, x, seed, config_hash, config, source, status, attempts,"
            " fit_eligible, final_val_loss, created_at) VALUES (1, 'ebt', 'depth', 4, 0, 'h-old', '{}', 'trained',"
            " 'completed', 1, true, 3.5, '2026-01-01 00:00:00')"))
    engine.dispose()
    with pytest.raises(SchemaOutOfDate) as e:
        Store(db_url)
    msg = str(e.value)
    assert "\n" not in msg and f"ebt-scale db upgrade --db {mask_url(db_url)}" in msg and "0001" in msg
    assert migrate.upgrade(db_url) == ("0001", schema.SCHEMA_REVISION)
    with Store(db_url) as s:
        r = get_run_by_hash(s, "h-old")
        assert (r.sweep, r.final_val_loss, r.fit_eligible) == ("old", 3.5, True)
        assert [p.id for p in s.list_runs(sweep="old")] == [r.id]  # every run is a member of its own sweep
        assert s.list_fits() == []


def test_unknown_newer_revision_asks_for_a_newer_package(db_url):
    with Store(db_url):
        pass
    engine = make_engine(db_url)
    with engine.begin() as conn:
        conn.execute(sa.text(f"UPDATE {schema.VERSION_TABLE} SET version_num = '9999'"))
    engine.dispose()
    with pytest.raises(StoreError, match="newer than this ebt-scaling"):
        Store(db_url)


def test_shares_a_database_with_mlflow_and_optuna_tables(db_url):
    engine = make_engine(db_url)
    with engine.begin() as conn:  # what MLflow/Optuna leave in a shared database
        conn.execute(sa.text("CREATE TABLE alembic_version (version_num VARCHAR(32) PRIMARY KEY)"))
        conn.execute(sa.text("INSERT INTO alembic_version VALUES ('mlflow_rev_1')"))
        conn.execute(sa.text("CREATE TABLE runs (run_uuid VARCHAR(32) PRIMARY KEY, name VARCHAR(250))"))
        conn.execute(sa.text("CREATE TABLE metrics (key VARCHAR(250), value FLOAT)"))
        conn.execute(sa.text("INSERT INTO runs VALUES ('abc', 'theirs')"))
    engine.dispose()
    with Store(db_url) as s:
        s.create_sweep("ours", "depth")
        s.plan_runs("ours", [PlannedRun("ebt", "depth", 2.0, 0, "h")])
    assert diffs(db_url) == []  # their tables are invisible to our migrations
    assert migrate.upgrade(db_url)[1] == schema.SCHEMA_REVISION
    engine = make_engine(db_url)
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT version_num FROM alembic_version")).scalar() == "mlflow_rev_1"
        assert conn.execute(sa.text("SELECT name FROM runs")).scalar() == "theirs"
    engine.dispose()
    migrate.downgrade(db_url, "base")
    assert {"runs", "metrics", "alembic_version"} <= tables(db_url)


def test_tables_without_version_table_are_refused(db_url):
    engine = make_engine(db_url)
    with engine.begin() as conn:
        conn.execute(sa.text("CREATE TABLE ebt_runs (id INTEGER PRIMARY KEY)"))
    engine.dispose()
    with pytest.raises(StoreError, match="no ebt_scale_alembic_version"):
        Store(db_url)


def test_installed_layout_migrates_outside_the_checkout(tmp_path):
    """What the wheel holds (pyproject force-includes alembic/ as ebt_scaling/_alembic), run from a
    directory with no checkout: ``ebt-scale db upgrade`` finds the shipped scripts."""
    import os
    import shutil
    import subprocess
    import sys

    root = pathlib.Path(__file__).resolve().parents[1]
    assert '"alembic" = "ebt_scaling/_alembic"' in (root / "pyproject.toml").read_text()
    site = tmp_path / "site"
    shutil.copytree(root / "ebt_scaling", site / "ebt_scaling", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(root / "alembic", site / "ebt_scaling" / "_alembic", ignore=shutil.ignore_patterns("__pycache__"))
    work = tmp_path / "elsewhere"
    work.mkdir()
    code = ("import sys; sys.argv = ['ebt-scale', 'db', 'upgrade']; from ebt_scaling.cli.main import main; main()")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    r = subprocess.run([sys.executable, "-c", code], cwd=work, capture_output=True, text=True, timeout=120,
                       env={**env, "PYTHONPATH": str(site)})
    assert r.returncode == 0, r.stderr
    assert f"upgraded from empty to {schema.SCHEMA_REVISION}" in r.stdout and (work / "ebt_scale.db").exists()
    r = subprocess.run([sys.executable, "-c", "import ebt_scaling.db.migrate as m; print(m.alembic_dir())"],
                       cwd=work, capture_output=True, text=True, env={**env, "PYTHONPATH": str(site)})
    assert r.stdout.strip() == str(site / "ebt_scaling" / "_alembic")
