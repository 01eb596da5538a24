"""Every CSV the tool writes escapes formula-leading cells, headers included (issue 27 item 5, OWASP's rule)."""

from __future__ import annotations

import csv
import io
import pathlib
import re

import pytest
from typer.testing import CliRunner

from ebt_scaling.cli.main import app
from ebt_scaling.names import csv_row, csv_safe

HOSTILE_HEADERS = ["=cmd|' /C calc'!A0", "+SUM(A1)", "-2+3", "@evil"]  # (import strips a leading tab or CR)
SWEEP = '=HYPERLINK("http://x")'
PLAIN_NUMBER = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?")


def test_csv_safe_escapes_formulas_but_not_numbers():
    hostile = [*HOSTILE_HEADERS, "\tx", "\rx", "-", "+", "-1e", "+.", "--1", "-1;2"]
    assert [csv_safe(c) for c in hostile] == ["'" + c for c in hostile]
    for kept in ("-3.5", "+1e-3", "-7", ".5", "12", "plain", "", -3.5, 7, None, "a=b"):
        assert csv_safe(kept) == kept
    assert csv_row(["-1", "-1-1", "=1"]) == ["-1", "'-1-1", "'=1"]


def _check(text: str, *, expect_header: bool = True) -> list[list[str]]:
    rows = list(csv.reader(io.StringIO(text)))
    assert rows, text
    for row in rows:
        for cell in row:
            assert cell[:1] not in ("=", "+", "-", "@", "\t", "\r") or PLAIN_NUMBER.fullmatch(cell), (cell, row)
    if expect_header:
        for h in HOSTILE_HEADERS:
            assert "'" + h in rows[0], rows[0]
    return rows


@pytest.fixture
def db(tmp_path: pathlib.Path) -> str:
    url = f"sqlite:///{tmp_path / 'x.db'}"
    f = tmp_path / "r.csv"
    with open(f, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["family", "axis", "x", "seed", "val_loss", *HOSTILE_HEADERS])
        for fam in ("ebt", "transformer_pp"):
            for x in (2, 4, 8):
                w.writerow([fam, "depth", x, 0, 3.5 - x / 10, *(["-0.5"] * len(HOSTILE_HEADERS))])
    r = CliRunner().invoke(app, ["import", str(f), "--sweep", SWEEP, "--db", url])
    assert r.exit_code == 0, r.output
    from ebt_scaling.db.store import Store
    from ebt_scaling.records import MetricPoint

    with Store(url) as st:  # metric series named like formulas (the metrics table)
        st.log_metrics(st.list_runs()[0].id, [MetricPoint(h, 1, -0.5) for h in HOSTILE_HEADERS])
    return url


def test_runs_csv_escapes_headers_and_sweep_names(db):
    r = CliRunner().invoke(app, ["runs", "--format", "csv", "--db", db])
    assert r.exit_code == 0, r.output
    rows = _check(r.stdout)
    sweep_col = rows[0].index("sweep")
    assert {row[sweep_col] for row in rows[1:]} == {"'" + SWEEP}
    col = rows[0].index("'" + HOSTILE_HEADERS[0])
    assert {row[col] for row in rows[1:]} == {"-0.5"}  # a negative number stays a number


@pytest.mark.parametrize("table", ["runs", "metrics", "fits"])
def test_export_csv_escapes_headers_and_values(db, table, tmp_path):
    if table == "fits":
        assert CliRunner().invoke(app, ["fit", "--db", db, "--json"]).exit_code == 0  # stores the fits
    r = CliRunner().invoke(app, ["export", "--format", "csv", "--table", table, "--db", db])
    assert r.exit_code == 0, r.output
    rows = _check(r.stdout, expect_header=table == "runs")
    assert len(rows) > 1
    flat = {c for row in rows[1:] for c in row}
    assert "'" + SWEEP in flat and SWEEP not in flat
    if table == "metrics":
        assert {"'" + h for h in HOSTILE_HEADERS} <= flat  # metric names are values here
    out = tmp_path / "e.csv"
    assert CliRunner().invoke(app, ["export", "--format", "csv", "--table", table, "--db", db, "--out",
                                    str(out)]).exit_code == 0
    assert out.read_text() == r.stdout
