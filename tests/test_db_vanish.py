"""A SQLite database deleted or replaced under a running process stops it in one line (issue 27 item 3).

SQLite keeps writing into an unlinked file, so without a check a sweep whose database was deleted reports
its runs completed into a file nobody can open again. Real files, a real Store, and (slow) a real local Ray
sweep whose database is deleted while it trains.
"""

from __future__ import annotations

import os
import pathlib
import sqlite3
import subprocess
import sys
import time

import pytest

from ebt_scaling.db.store import Store
from ebt_scaling.errors import StoreError


@pytest.mark.parametrize("how", ["deleted", "replaced by another file"])
def test_a_store_stops_when_its_sqlite_file_is_deleted_or_replaced(tmp_path, how):
    db = tmp_path / "r.db"
    st = Store(f"sqlite:///{db}")
    try:
        st.create_sweep("a", "depth", {}, "v")
        for suffix in ("", "-wal", "-shm"):
            pathlib.Path(f"{db}{suffix}").unlink(missing_ok=True)
        if how != "deleted":
            other = tmp_path / "other.db"
            sqlite3.connect(other).close()
            os.replace(other, db)
        with pytest.raises(StoreError) as e:
            st.create_sweep("b", "depth", {}, "v")
        msg = str(e.value)
        assert f"the SQLite database {db} was {how} while this process was using it" in msg, msg
        assert "\n" not in msg and "rerun the same command" in msg
    finally:
        st.close()
    if how != "deleted":  # nothing was written into the file put in its place
        con = sqlite3.connect(db)
        assert con.execute("SELECT count(*) FROM sqlite_master").fetchone()[0] == 0
        con.close()
    _remove_lock_files(db)


def _remove_lock_files(db: pathlib.Path) -> None:
    """The lock files of a database this test deleted (the session's clean-up finds only files still there)."""
    from ebt_scaling.db.engine import lock_files

    for f in lock_files(db.resolve()):
        pathlib.Path(f).unlink(missing_ok=True)


def test_an_untouched_database_is_reopened_and_written_as_usual(tmp_path):
    url = f"sqlite:///{tmp_path / 'r.db'}"
    with Store(url) as st:
        st.create_sweep("a", "depth", {}, "v")
    with Store(url) as st:  # a new engine: the identity is the file's as it is now
        st.create_sweep("b", "depth", {}, "v")
        assert sorted(s.name for s in st.list_sweeps()) == ["a", "b"]


SPEC = """
[sweep]
name = "vanish"
axis = "depth"
families = ["transformer_pp"]
seeds = [0]
[model]
preset = "nano"
sequence_len = 32
[train]
steps = 100000
batch_size = 4
warmup_steps = 2
log_interval = 10
[data]
source = "synthetic"
vocab_size = 64
[axis]
values = [1, 2]
[resources]
max_concurrent = 1
"""


@pytest.mark.slow
def test_a_sweep_whose_database_is_deleted_mid_run_exits_non_zero_without_completed_lines(tmp_path):
    spec = tmp_path / "s.toml"
    spec.write_text(SPEC)
    db = tmp_path / "v.db"
    env = dict(os.environ, RAY_AUTH_MODE="disabled")
    p = subprocess.Popen([sys.executable, "-m", "ebt_scaling.cli.main", "sweep", "--spec", str(spec), "--db",
                          f"sqlite:///{db}", "--progress", "plain"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True, env=env, cwd=tmp_path)
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and p.poll() is None:  # until the first run has stored some metrics
            try:
                con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
                n = con.execute("SELECT count(*) FROM ebt_metrics").fetchone()[0]
                con.close()
            except sqlite3.Error:
                n = 0
            if n > 20:
                break
            time.sleep(0.5)
        assert p.poll() is None, p.communicate()
        for suffix in ("", "-wal", "-shm"):
            pathlib.Path(f"{db}{suffix}").unlink(missing_ok=True)
        out, err = p.communicate(timeout=240)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    assert p.returncode not in (0, None), (out, err)
    assert "completed" not in out, out
    assert f"error: the SQLite database {db} was deleted while this process was using it" in err, err
    assert "Traceback" not in err, err
    _remove_lock_files(db)


@pytest.mark.postgres
def test_a_postgresql_database_dropped_under_a_store_stops_it_at_once_in_one_line():
    """DROP DATABASE ... WITH (FORCE) ends the Store's connections; reconnecting finds no database. That is not
    a restart to ride out (the driver's reconnect window would wait minutes for nothing): one line at once."""
    from conftest import pg_url_or_skip
    from sqlalchemy import create_engine, text

    from ebt_scaling.db.engine import parse_url

    base = parse_url(pg_url_or_skip())
    admin = create_engine(base, isolation_level="AUTOCOMMIT")
    name = f"vanish_{os.getpid()}"
    try:
        with admin.connect() as c:
            c.execute(text(f"DROP DATABASE IF EXISTS {name}"))
            c.execute(text(f"CREATE DATABASE {name}"))
        st = Store(base.set(database=name).render_as_string(hide_password=False))
        st.reconnect_s = 60
        try:
            st.create_sweep("a", "depth", {}, "v")
            with admin.connect() as c:
                c.execute(text(f"DROP DATABASE {name} WITH (FORCE)"))
            t0 = time.monotonic()
            with pytest.raises(StoreError) as e:
                st.create_sweep("b", "depth", {}, "v")
            assert time.monotonic() - t0 < 20  # not the 60 s reconnect window
            msg = str(e.value)
            assert f'database "{name}" does not exist' in msg and "dropped or never created" in msg, msg
            assert "\n" not in msg and base.password not in msg
        finally:
            st.close()
    finally:
        with admin.connect() as c:
            c.execute(text(f"DROP DATABASE IF EXISTS {name}"))
        admin.dispose()
