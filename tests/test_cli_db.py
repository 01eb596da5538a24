"""CLI commands of the results database (runs, import, export, db) on SQLite and PostgreSQL."""

from __future__ import annotations

import csv
import io
import json
import os
import pathlib
import re
import subprocess
import sys

import pytest
from db_backends import db_url_fixture, pg_db_url_fixture  # noqa: F401  (``db_url``, ``pg_db_url``)
from typer.testing import CliRunner

from ebt_scaling.cli.main import app
from ebt_scaling.db import migrate, schema
from ebt_scaling.db.store import Store
from ebt_scaling.records import MetricPoint, PlannedRun
from ebt_scaling.security import mask_url

ROOT = pathlib.Path(__file__).resolve().parents[1]
runner = CliRunner()

GOOD = ("family,axis,x,seed,val_loss,val_acc\n"
        "ebt,depth,2,0,3.50,0.41\n"
        "ebt,depth,4,0,3.20,\n"
        "transformer_pp,depth,2,0,3.40,0.43\n"
        "transformer_pp,depth,4,1,3.05,0.45\n")


def invoke(*args: str):
    return runner.invoke(app, list(args))


def write(tmp_path: pathlib.Path, text: str, name: str = "r.csv") -> str:
    p = tmp_path / name
    p.write_text(text)
    return str(p)


def snapshot(url: str) -> tuple:
    with Store(url) as s:
        runs = s.list_runs()
        return (tuple(s.list_sweeps()), tuple(runs), tuple(tuple(s.get_metrics(r.id)) for r in runs))


def test_import_then_runs_in_every_format(db_url, tmp_path):
    r = invoke("import", write(tmp_path, GOOD), "--sweep", "paper-depth", "--db", db_url)
    assert r.exit_code == 0, r.output
    assert "imported 4 run(s) into sweep 'paper-depth': 4 new, 0 already present" in r.stdout
    again = invoke("import", write(tmp_path, GOOD), "--sweep", "paper-depth", "--db", db_url)
    assert again.exit_code == 0 and "0 new, 4 already present" in again.stdout
    r = invoke("runs", "--db", db_url, "--format", "json")
    assert r.exit_code == 0, r.output
    rows = json.loads(r.stdout)
    assert len(rows) == 4
    need = {"run_id", "sweep", "family", "axis", "x", "seed", "status", "config_hash", "final_val_loss"}
    assert all(need <= set(row) for row in rows)
    assert [(x["family"], x["x"], x["seed"], x["final_val_loss"]) for x in rows] == [
        ("ebt", 2.0, 0, 3.5), ("ebt", 4.0, 0, 3.2), ("transformer_pp", 2.0, 0, 3.4), ("transformer_pp", 4.0, 1, 3.05)]
    assert all(x["source"] == "imported" and x["fit_eligible"] and x["status"] == "completed" for x in rows)
    assert rows[0]["val_acc"] == 0.41 and "val_acc" not in rows[1]
    r = invoke("runs", "--db", db_url, "--format", "csv", "--family", "transformer_pp")
    got = list(csv.DictReader(io.StringIO(r.stdout)))
    assert [g["x"] for g in got] == ["2.0", "4.0"] and got[0]["val_acc"] == "0.43"
    r = invoke("runs", "--db", db_url, "--sweep", "paper-depth", "--axis", "depth", "--status", "completed")
    assert r.exit_code == 0 and "4 run(s)" in r.stdout and "transformer_pp" in r.stdout
    assert "no runs" in invoke("runs", "--db", db_url, "--status", "failed").stdout
    bad = invoke("runs", "--db", db_url, "--status", "done")
    assert bad.exit_code == 1 and bad.stderr.count("\n") == 1 and "unknown run status 'done'" in bad.stderr


BAD_CSVS = {
    "missing column": ("family,axis,x,val_loss\nebt,depth,2,3.5\n", "line 1: missing column 'seed'"),
    "unknown family": (GOOD + "gpt2,depth,8,0,3.0,\n", "line 6: unknown family 'gpt2'"),
    "unknown axis": (GOOD + "ebt,heads,8,0,3.0,\n", "line 6: unknown axis 'heads'"),
    "zero x": (GOOD + "ebt,depth,0,0,3.0,\n", "line 6: x must be a positive number"),
    "negative x": ("family,axis,x,seed,val_loss\nebt,depth,-2,0,3.0\n", "line 2: x must be a positive number"),
    "text loss": (GOOD + "ebt,depth,8,0,abc,\n", "line 6: val_loss must be a finite non-negative number"),
    "nan loss": (GOOD + "ebt,depth,8,0,nan,\n", "line 6: val_loss must be a finite"),
    "text metric": (GOOD + "ebt,depth,8,0,3.0,high\n", "line 6: column 'val_acc' must be numeric"),
    "float seed": (GOOD + "ebt,depth,8,0.5,3.0,\n", "line 6: seed must be an integer"),
    "duplicate": (GOOD + "ebt,depth,2,0,3.6,\n", "line 6: duplicates line 2"),
    "ragged": (GOOD + "ebt,depth,8,0\n", "line 6: 4 fields but the header has 6"),
    "empty": ("", "the file is empty"),
}


@pytest.mark.parametrize("case", sorted(BAD_CSVS))
def test_bad_csv_names_row_and_changes_nothing(case, tmp_path):
    url = f"sqlite:///{tmp_path / 'x.db'}"
    _bad_csv(url, tmp_path, case)


@pytest.mark.postgres
def test_bad_csv_changes_nothing_on_postgresql(pg_db_url, tmp_path):
    for case in ("unknown family", "text loss", "missing column"):
        _bad_csv(pg_db_url, tmp_path, case)


def _bad_csv(url: str, tmp_path: pathlib.Path, case: str) -> None:
    assert invoke("import", write(tmp_path, GOOD, "good.csv"), "--sweep", "s", "--db", url).exit_code == 0
    with Store(url) as s:
        s.log_metrics(s.list_runs()[0].id, [MetricPoint("val_loss", 1, 3.5)])
    before = snapshot(url)
    text, expected = BAD_CSVS[case]
    for sweep in ("s", "brand-new"):
        r = invoke("import", write(tmp_path, text), "--sweep", sweep, "--db", url)
        assert r.exit_code == 2, (case, r.output)
        assert r.stdout == "" and r.stderr.count("\n") == 1 and r.stderr.startswith("error: r.csv"), r.stderr
        assert expected in r.stderr, r.stderr
    assert snapshot(url) == before


def test_import_missing_file_and_mixed_axes(tmp_path):
    url = f"sqlite:///{tmp_path / 'x.db'}"
    r = invoke("import", str(tmp_path / "nope.csv"), "--sweep", "s", "--db", url)
    assert r.exit_code == 2 and "no such file" in r.stderr
    mixed = "family,axis,x,seed,val_loss\nebt,depth,2,0,3.5\nebt,width,64,0,3.4\n"
    assert invoke("import", write(tmp_path, mixed), "--sweep", "m", "--db", url).exit_code == 0
    with Store(url) as s:
        assert s.get_sweep("m").axis == "mixed" and {r.axis for r in s.list_runs()} == {"depth", "width"}
    r = invoke("import", write(tmp_path, GOOD), "--sweep", "m", "--db", url)  # into a mixed sweep: fine
    assert r.exit_code == 0, r.output
    other = "family,axis,x,seed,val_loss\nebt,width,2,0,3.5\n"
    r = invoke("import", write(tmp_path, GOOD, "d.csv"), "--sweep", "d", "--db", url)
    r = invoke("import", write(tmp_path, other), "--sweep", "d", "--db", url)
    assert r.exit_code == 1 and "has axis 'depth' but the file has axis width" in r.stderr


def test_export_csv_and_parquet(db_url, tmp_path):
    import pandas as pd

    invoke("import", write(tmp_path, GOOD), "--sweep", "s", "--db", db_url)
    with Store(db_url) as s:
        s.create_sweep("t", "width")
        run = s.plan_runs("t", [PlannedRun("ebt", "width", 64, 0, "h-t", params={"total": 7})])[0]
        s.log_metrics(run.id, [MetricPoint("val_loss", i, 4.0 - i / 10) for i in range(3)])
    r = invoke("export", "--db", db_url)
    df = pd.read_csv(io.StringIO(r.stdout))
    assert r.exit_code == 0 and len(df) == 5 and {"run_id", "final_val_loss", "params_total", "val_acc"} <= set(df)
    out = tmp_path / "runs.parquet"
    r = invoke("export", "--format", "parquet", "--out", str(out), "--sweep", "s", "--db", db_url)
    assert r.exit_code == 0, r.output
    pq = pd.read_parquet(out)
    assert sorted(pq["final_val_loss"]) == [3.05, 3.2, 3.4, 3.5] and set(pq["sweep"]) == {"s"}
    r = invoke("export", "--table", "metrics", "--out", str(tmp_path / "m.csv"), "--db", db_url)
    m = pd.read_csv(tmp_path / "m.csv")
    assert r.exit_code == 0 and list(m["step"]) == [0, 1, 2] and set(m["name"]) == {"val_loss"}
    r = invoke("export", "--table", "fits", "--db", db_url)
    assert r.exit_code == 0 and r.stdout.startswith("fit_id,sweep")
    r = invoke("export", "--format", "parquet", "--db", db_url)
    assert r.exit_code == 2 and "add --out FILE.parquet" in r.stderr
    r = invoke("export", "--out", str(tmp_path / "no" / "x.csv"), "--db", db_url)
    assert r.exit_code == 2 and "does not exist" in r.stderr


def test_db_commands(db_url):
    r = invoke("db", "current", "--db", db_url)
    assert r.exit_code == 0 and ": none (empty: created at head on first use" in r.stdout
    r = invoke("db", "upgrade", "--db", db_url)
    assert r.exit_code == 0 and f"upgraded from empty to {schema.SCHEMA_REVISION}" in r.stdout
    assert "already at revision" in invoke("db", "upgrade", "--db", db_url).stdout
    assert f": {schema.SCHEMA_REVISION} (head)" in invoke("db", "current", "--db", db_url).stdout
    r = invoke("db", "upgrade", "nosuchrev", "--db", db_url)
    assert r.exit_code == 1 and r.stderr.count("\n") == 1 and "known revisions: 0001, 0002" in r.stderr
    r = invoke("db", "downgrade", "0001", "--db", db_url)
    assert r.exit_code == 2 and "--yes" in r.stderr
    assert invoke("db", "downgrade", "0001", "--yes", "--db", db_url).exit_code == 0
    r = invoke("db", "current", "--db", db_url)
    assert "0001 (out of date" in r.stdout and "ebt-scale db upgrade --db" in r.stdout
    r = invoke("runs", "--db", db_url)  # every other command refuses, with the command to run
    assert r.exit_code == 1 and r.stderr.count("\n") == 1
    assert f"run `ebt-scale db upgrade --db {mask_url(db_url)}`" in r.stderr
    assert invoke("db", "upgrade", "--db", db_url).exit_code == 0
    assert invoke("runs", "--db", db_url).exit_code == 0
    assert migrate.current(db_url) == schema.SCHEMA_REVISION


def test_db_url_from_environment_and_default(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert invoke("import", write(tmp_path, GOOD), "--sweep", "s").exit_code == 0
    assert (tmp_path / "ebt_scale.db").exists()  # default: ./ebt_scale.db
    assert invoke("runs").exit_code == 0
    monkeypatch.setenv("EBT_SCALE_DB", f"sqlite:///{tmp_path / 'env.db'}")
    assert invoke("import", write(tmp_path, GOOD), "--sweep", "s").exit_code == 0
    with Store(f"sqlite:///{tmp_path / 'env.db'}") as s:
        assert len(s.list_runs()) == 4


def _cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ebt_scaling", *args], capture_output=True, text=True, cwd=ROOT,
                          env={**os.environ, **(env or {})}, timeout=120)


SECRET = "Wr0ng-S3cret-pw"


def test_password_never_printed_for_unreachable_server():
    url = f"postgresql+psycopg://alice:{SECRET}@127.0.0.1:9/ebt"
    for args, env in ((["db", "upgrade", "--db", url], None), (["runs"], {"EBT_SCALE_DB": url})):
        r = _cli(*args, env=env)
        assert r.returncode == 1, r
        text = r.stdout + r.stderr
        assert SECRET not in text and "alice:***@127.0.0.1:9" in text and "Traceback" not in text, text


@pytest.mark.postgres
def test_wrong_password_is_refused_and_never_printed(pg_db_url):
    db_url = pg_db_url
    from sqlalchemy.engine import make_url

    good = make_url(db_url)
    assert good.password, "the test server must require a password (scripts/pg-temp.sh sets one)"
    wrong = good.set(password=SECRET).render_as_string(hide_password=False)
    for args in (["runs", "--db", wrong], ["db", "upgrade", "--db", wrong]):
        r = _cli(*args)
        text = r.stdout + r.stderr
        assert r.returncode == 1 and SECRET not in text and "Traceback" not in text, text
        assert "password authentication failed" in r.stderr and r.stderr.count("\n") == 1, r.stderr
    # and the right password is never shown either, on success or on errors that quote the URL
    r = _cli("db", "upgrade", "--db", db_url)
    assert r.returncode == 0 and good.password not in r.stdout + r.stderr and "***" in r.stdout
    migrate.downgrade(db_url, "0001")
    r = _cli("runs", "--db", db_url)
    assert r.returncode == 1 and good.password not in r.stdout + r.stderr
    assert re.search(r"ebt-scale db upgrade --db postgresql\+psycopg://postgres:\*\*\*@", r.stderr)


@pytest.mark.parametrize("cmd", [["runs"], ["export", "--table", "runs"], ["think", "--sweep", "x"], ["fit"],
                                 ["report", "--out", "r.pdf"], ["status"], ["sweeps"], ["cancel", "--sweep", "x"]])
def test_read_only_commands_never_create_a_database(tmp_path, cmd):
    """A mistyped --db on a read-only command says the file does not exist, exits non-zero, creates nothing."""
    db = tmp_path / "typo.db"
    r = invoke(*cmd, "--db", f"sqlite:///{db}")
    assert r.exit_code == 1, r.output
    assert f"database {db} does not exist" in r.output and r.output.count("\n") == 1
    assert not db.exists() and list(tmp_path.iterdir()) == []


def test_read_only_commands_refuse_an_empty_database(db_url):
    """An existing but empty database (a new PostgreSQL database, an empty SQLite file) is not given a schema."""
    from sqlalchemy import create_engine, inspect

    from ebt_scaling.db.engine import parse_url, sqlite_path

    path = sqlite_path(parse_url(db_url))
    if path is not None:
        path.touch()
    r = invoke("runs", "--db", db_url)
    assert r.exit_code == 1 and "holds no ebt-scaling results" in r.output, r.output
    eng = create_engine(parse_url(db_url))
    try:
        assert inspect(eng).get_table_names() == []
    finally:
        eng.dispose()


def test_import_streams_in_chunks_all_or_nothing(tmp_path, monkeypatch, db_url):
    """A file is validated in one streaming pass, then written in chunks in one transaction: many chunks give
    the same runs as one, and a bad row at the end writes nothing at all."""
    from ebt_scaling.db import importer

    monkeypatch.setattr(importer, "CHUNK_ROWS", 7)
    lines = ["family,axis,x,seed,val_loss,acc"] + [f"ebt,depth,{x},{s},{3 + x / 10:.3f},{s / 10}"
                                                   for x in range(1, 11) for s in range(3)]
    good = write(tmp_path, "\n".join(lines) + "\n", "big.csv")
    f = importer.scan_import_csv(good)
    assert f.rows == 30 and f.axes == ("depth",) and [len(c) for c in f.chunks()] == [7, 7, 7, 7, 2]
    r = invoke("import", good, "--sweep", "big", "--db", db_url)
    assert r.exit_code == 0 and "imported 30 run(s)" in r.output and "30 new" in r.output, r.output
    with Store(db_url) as st:
        runs = st.list_runs(sweep="big")
        assert len(runs) == 30 and {(r.x, r.seed) for r in runs} == {(x, s) for x in range(1, 11) for s in range(3)}
    bad = write(tmp_path, "\n".join(lines).replace("depth", "width") + "\nebt,width,99,0,oops,1\n", "bad.csv")
    r = invoke("import", bad, "--sweep", "big2", "--db", db_url)
    assert r.exit_code == 2 and "line 32" in r.output, r.output
    with Store(db_url) as st:
        assert st.list_runs(sweep="big2") == [] and [s.name for s in st.list_sweeps()] == ["big"]
