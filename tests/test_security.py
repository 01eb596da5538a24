"""Passwords in database URLs: masked in every message whatever they contain, and usable as typed."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid

import pytest
from db_backends import pg_db_url_fixture  # noqa: F401  (``pg_db_url``)

from ebt_scaling.db.engine import parse_url
from ebt_scaling.errors import StoreError
from ebt_scaling.security import mask_url, scrub

AWKWARD = ["pa ss w0rd", "p@ss@w0rd", "p:ss:w0rd", "s/e?c#r%et", "p@ s:s/x"]


@pytest.mark.parametrize("pw", AWKWARD)
def test_awkward_passwords_are_masked_in_text(pw):
    url = f"postgresql+psycopg://bob:{pw}@db.example:5432/ebt"
    for text in (url, f"error: cannot open {url}; retry", f"{url}\nsecond line", f"a {url} b sqlite:///x.db"):
        out = scrub(text)
        assert "bob:***@db.example:5432/ebt" in out, out
        for part in pw.replace("@", " ").replace(":", " ").replace("/", " ").split():
            if len(part) > 2:
                assert part not in out, (text, out)


def test_masking_keeps_urls_without_passwords_and_the_text_around():
    assert mask_url("sqlite:///ebt_scale.db") == "sqlite:///ebt_scale.db"
    assert mask_url("postgresql://bob@host/db") == "postgresql://bob@host/db"
    assert scrub("x postgresql://u:a@h/db and mysql://v:b@k/e y") == "x postgresql://u:***@h/db and mysql://v:***@k/e y"
    assert scrub("failed (password=s3cret) here") == "failed (password=***) here"
    assert scrub("dsn host=h password='a b' user=u") == "dsn host=h password=*** user=u"


@pytest.mark.parametrize("url", ["postgresql://bob:s3cret@host:port/db", "postgresql://bob:s3:cret@host:9x/db",
                                 "postgresql://bob:s3cret@[::1/db"])
def test_unparsable_urls_fail_in_one_masked_line(url):
    with pytest.raises(StoreError) as e:
        parse_url(url)
    assert "s3cret" not in str(e.value) and "cret" not in str(e.value) and "\n" not in str(e.value)
    r = subprocess.run([sys.executable, "-m", "ebt_scaling", "runs", "--db", url], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode != 0 and "cret" not in r.stdout + r.stderr and "Traceback" not in r.stderr
    assert r.stderr.count("\n") == 1 and "invalid database URL" in r.stderr


def test_unencoded_at_sign_belongs_to_the_password():
    u = parse_url("postgresql://bob:p@ss@db.example:5433/ebt")
    assert (u.username, u.password, u.host, u.port, u.database) == ("bob", "p@ss", "db.example", 5433, "ebt")
    assert parse_url("postgresql://bob:p%40ss@h/db").password == "p@ss"  # already encoded: unchanged
    assert parse_url("sqlite:///dir/a@b.db").database == "dir/a@b.db"  # SQLite paths are left alone


@pytest.mark.postgres
def test_a_password_with_space_colon_and_at_works_as_typed(pg_db_url):
    """A role whose password holds ' ', ':' and '@' connects with the URL typed raw, with PGPASSWORD and no
    password in the URL (nothing in `ps`), and is never printed."""
    import sqlalchemy as sa

    server = parse_url(pg_db_url)
    role, pw = f"r_{uuid.uuid4().hex[:8]}", "We1rd p@ss:w0rd"
    admin = sa.create_engine(server, isolation_level="AUTOCOMMIT", poolclass=sa.pool.NullPool)
    with admin.connect() as c:
        c.execute(sa.text(f"CREATE ROLE {role} LOGIN PASSWORD '{pw}'"))
        c.execute(sa.text(f'GRANT ALL ON DATABASE "{server.database}" TO {role}'))
        c.execute(sa.text(f"GRANT ALL ON SCHEMA public TO {role}"))
    host = f"{server.host}:{server.port}/{server.database}"
    try:
        for url, env in ((f"postgresql://{role}:{pw}@{host}", {}),
                         (f"postgresql://{role}@{host}", {"PGPASSWORD": pw})):
            r = subprocess.run([sys.executable, "-m", "ebt_scaling", "db", "upgrade", "--db", url],
                               capture_output=True, text=True, timeout=120, env={**os.environ, **env})
            text = r.stdout + r.stderr
            assert r.returncode == 0, scrub(text)
            assert "p@ss" not in text and "w0rd" not in text
    finally:
        with admin.connect() as c:
            c.execute(sa.text(f'REASSIGN OWNED BY {role} TO "{server.username}"'))
            c.execute(sa.text(f"DROP OWNED BY {role}"))
            c.execute(sa.text(f"DROP ROLE {role}"))
        admin.dispose()


def test_new_sqlite_databases_are_private(tmp_path):
    import stat

    from ebt_scaling.db.store import Store

    db = tmp_path / "results.db"
    with Store(f"sqlite:///{db}") as store:
        store.list_runs()
    assert stat.S_IMODE(db.stat().st_mode) == 0o600
    for extra in tmp_path.glob("results.db-*"):  # WAL and shared-memory files follow the database's mode
        assert stat.S_IMODE(extra.stat().st_mode) == 0o600, extra
    db2 = tmp_path / "shared.db"
    db2.touch(mode=0o640)
    with Store(f"sqlite:///{db2}") as store:  # an existing file keeps the mode its owner gave it
        store.list_runs()
    assert stat.S_IMODE(db2.stat().st_mode) == 0o640


@pytest.mark.parametrize("name,why", [("a\x1b[2Jb", "control character"), ("two\nlines", "control character"),
                                      ("x" * 201, "201 characters long"), ("  ", "non-empty")])
def test_bad_sweep_names_are_refused_before_anything_is_written(tmp_path, name, why):
    from typer.testing import CliRunner

    from ebt_scaling.cli.main import app

    csv = tmp_path / "r.csv"
    csv.write_text("family,axis,x,seed,val_loss\nebt,depth,2,0,3.5\n")
    db = tmp_path / "r.db"
    r = CliRunner().invoke(app, ["import", str(csv), "--sweep", name, "--db", f"sqlite:///{db}"])
    assert r.exit_code != 0 and why in r.output and r.output.count("\n") == 1, r.output
    assert "\x1b" not in r.output
    r = CliRunner().invoke(app, ["sweep", "--axis", "depth", "--name", name, "--dry-run", "--db", f"sqlite:///{db}"])
    assert r.exit_code == 2 and "--name" in r.output and "\x1b" not in r.output, r.output
    from ebt_scaling.db.store import Store

    if db.exists():
        with Store(f"sqlite:///{db}") as store:
            assert store.list_runs() == [] and store.list_sweeps() == []


def test_csv_export_defuses_formulas(tmp_path):
    from typer.testing import CliRunner

    from ebt_scaling.cli.main import app
    from ebt_scaling.names import csv_safe

    assert [csv_safe(c) for c in ("=1+1", "+x", "-cmd", "@SUM(A1)", "\tx", "ok", -3.5, 2)] == \
        ["'=1+1", "'+x", "'-cmd", "'@SUM(A1)", "'\tx", "ok", -3.5, 2]
    csv = tmp_path / "r.csv"
    csv.write_text("family,axis,x,seed,val_loss\nebt,depth,2,-1,3.5\n")  # seed -1: a negative number
    db = f"sqlite:///{tmp_path / 'r.db'}"
    assert CliRunner().invoke(app, ["import", str(csv), "--sweep", "=HYPERLINK(1)", "--db", db]).exit_code == 0
    r = CliRunner().invoke(app, ["export", "--table", "runs", "--db", db])
    assert r.exit_code == 0, r.output
    assert "'=HYPERLINK(1)" in r.output and ",=HYPERLINK" not in r.output
    assert ",-1," in r.output and "'-1" not in r.output  # numbers stay numbers


def test_a_writer_waits_for_the_sqlite_lock_with_a_limit_and_names_the_holder(tmp_path, monkeypatch):
    """A process that holds the writer lock for ever: the next write gives up after the limit, in one line."""
    import textwrap
    import time

    from ebt_scaling.db.store import Store

    url = f"sqlite:///{tmp_path / 'w.db'}"
    Store(url).close()
    code = textwrap.dedent(f"""
        import time
        from ebt_scaling.db.store import Store
        s = Store({url!r})
        with s._writer_lock.hold():
            print("locked", flush=True)
            time.sleep(120)
    """)
    p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout.readline().strip() == "locked"
        monkeypatch.setenv("EBT_SCALE_DB_LOCK_TIMEOUT_S", "1")
        t0 = time.monotonic()
        with Store(url) as st, pytest.raises(StoreError) as e:
            st.create_sweep("s", "depth")
        assert 1.0 <= time.monotonic() - t0 < 20
        assert f"locked for writing by pid {p.pid}" in str(e.value) and "EBT_SCALE_DB_LOCK_TIMEOUT_S" in str(e.value)
    finally:
        p.kill()
        p.wait()
    with Store(url) as st:  # the holder is gone: the lock is free again
        assert st.create_sweep("s", "depth").name == "s"
