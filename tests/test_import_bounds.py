"""`ebt-scale import` bounds and a fit/report that survive stored outliers (issue 27 items 4 and 6).

Real CSV files and real SQLite databases; ``fit`` and ``report`` run through the CLI.
"""

from __future__ import annotations

import json
import math
import pathlib
import sqlite3

import pytest
from typer.testing import CliRunner

from ebt_scaling.cli.main import app
from ebt_scaling.db import importer
from ebt_scaling.db.store import Store

GOOD_ROWS = ("ebt,depth,2,0,3.5\nebt,depth,4,0,3.2\nebt,depth,8,0,3.0\n"
             "transformer_pp,depth,2,0,3.4\ntransformer_pp,depth,4,0,3.15\ntransformer_pp,depth,8,0,2.8\n")


def invoke(*args: str):
    return CliRunner().invoke(app, list(args))


def write(tmp_path: pathlib.Path, text: str, name: str = "r.csv") -> str:
    p = tmp_path / name
    p.write_text(text)
    return str(p)


def _refused(r, *parts: str) -> str:
    assert r.exit_code == 2, r.output
    assert r.stderr.count("\n") == 1 and r.stderr.startswith("error: r.csv line "), r.stderr
    for p in parts:
        assert p in r.stderr, r.stderr
    return r.stderr


@pytest.mark.parametrize(("row", "parts"), [
    ("transformer_pp,depth,16,0,800", ["line 8:", "val_loss 800 is implausible, above 20 nats per token",
                                       "--allow-outliers"]),
    ("transformer_pp,depth,16,0,1e308", ["line 8:", "val_loss 1e308 is implausible"]),
    ("transformer_pp,depth,16,0,inf", ["line 8:", "val_loss must be a finite non-negative number", "'inf'"]),
    ("transformer_pp,depth,16,1e30,3.0", ["line 8:", "seed 1e30 is outside the 64-bit integer range"]),
    ("transformer_pp,depth,16,9223372036854775808,3.0", ["seed 9223372036854775808 is outside the 64-bit"]),
    ("transformer_pp,depth,16,0.5,3.0", ["seed must be an integer, got '0.5'"]),
])
def test_implausible_losses_and_huge_integers_are_refused_naming_file_line_and_value(tmp_path, row, parts):
    url = f"sqlite:///{tmp_path / 'x.db'}"
    r = invoke("import", write(tmp_path, "family,axis,x,seed,val_loss\n" + GOOD_ROWS + row + "\n"), "--sweep", "s",
               "--db", url)
    _refused(r, *parts)
    assert not (tmp_path / "x.db").exists()  # validated before the database is opened


def test_vocab_size_column_tightens_the_bound_and_other_columns_are_checked(tmp_path):
    url = f"sqlite:///{tmp_path / 'x.db'}"
    bound = math.log(256) + 2  # 7.545
    head = "family,axis,x,seed,val_loss,train_loss,val_ppl,tokens,vocab_size\n"
    ok = head + f"ebt,depth,2,0,{bound - 0.01:.3f},{bound - 0.01:.3f},,9223372036854775807,256\n"
    r = invoke("import", write(tmp_path, ok), "--sweep", "s", "--db", url)
    assert r.exit_code == 0, r.output
    with Store(url) as st:
        (run,) = st.list_runs(sweep="s")
        assert run.final_val_loss == pytest.approx(bound - 0.01, abs=1e-3)
    for row, parts in [
        (f"ebt,depth,4,0,{bound + 0.01:.3f},,,,256", ["val_loss 7.555 is implausible, above ln(vocab_size 256) + 2 "
                                                      "= 7.55 nats per token"]),
        (f"ebt,depth,4,0,3.0,{bound + 0.01:.3f},,,256", ["train_loss 7.555 is implausible"]),
        ("ebt,depth,4,0,3.0,,5000,,256", ["val_ppl 5000 is implausible, above exp(7.55) = 1892"]),
        ("ebt,depth,4,0,3.0,,,1e30,", ["tokens 1e30 is outside the 64-bit integer range"]),
        ("ebt,depth,4,0,3.0,,,12.5,", ["tokens must be an integer, got '12.5'"]),
        ("ebt,depth,4,0,3.0,,,,1.5", ["vocab_size must be an integer >= 2, got '1.5'"]),
    ]:
        _refused(invoke("import", write(tmp_path, head + row + "\n"), "--sweep", "s", "--db", url), "line 2:",
                 *parts)
    r = invoke("import", write(tmp_path, "family,axis,x,seed,val_loss,acc\nebt,depth,2,0,3.0,nan\n"), "--sweep", "s",
               "--db", url)
    _refused(r, "line 2: column 'acc' must be numeric (a finite number), got 'nan'")


def test_a_huge_csv_field_is_read_or_reported_with_file_and_line(tmp_path, monkeypatch):
    url = f"sqlite:///{tmp_path / 'x.db'}"
    big = "x" * (10 << 20)  # 10 MB: over the csv module's default limit of 131072
    r = invoke("import", write(tmp_path, f"family,axis,x,seed,val_loss,note\nebt,depth,2,0,3.0,1\nebt,depth,4,0,3.0,"
                                         f"{big}\n"), "--sweep", "s", "--db", url)
    _refused(r, "line 3: column 'note' must be numeric (a finite number), got 'xxxx")
    assert len(r.stderr) < 500
    import csv

    assert csv.field_size_limit() == 131072  # the limit is raised while reading only
    monkeypatch.setattr(importer, "FIELD_LIMIT", 1 << 20)  # a field over the raised limit: named, not a traceback
    r = invoke("import", write(tmp_path, f"family,axis,x,seed,val_loss,note\nebt,depth,2,0,3.0,1\n"
                                         f"ebt,depth,4,0,3.0,{big}\n"), "--sweep", "s", "--db", url)
    _refused(r, "line 3: not valid CSV (field larger than field limit", "fix the row")


def test_outliers_imported_with_allow_outliers_are_left_out_of_fit_and_report_with_a_reason(tmp_path):
    url = f"sqlite:///{tmp_path / 'x.db'}"
    head = "family,axis,x,seed,val_loss\n"
    for sweep, row in (("a", "transformer_pp,depth,16,0,800"), ("b", "ebt,depth,16,0,1e308")):
        path = write(tmp_path, head + GOOD_ROWS + row + "\n")
        assert invoke("import", path, "--sweep", sweep, "--db", url).exit_code == 2
        r = invoke("import", path, "--sweep", sweep, "--db", url, "--allow-outliers")
        assert r.exit_code == 0 and "7 new" in r.output, r.output
    r = invoke("fit", "--db", url, "--json")
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    why = {"a": "implausible imported validation loss (above ln(vocab_size) + 2 nats, or 20 without a vocabulary; "
                "imported with --allow-outliers)",
           "b": "validation loss above 1e+06 nats per token (numerically unusable)"}
    assert sorted(a["sweep"] for a in out["axes"]) == ["a", "b"]
    for a in out["axes"]:
        assert a["excluded"] == {why[a["sweep"]]: 1}, a
        for fam in ("ebt", "transformer_pp"):
            f = a["families"][fam]
            assert f["n_runs"] == 3 and -1 < f["slope"] < 0, f  # the six plausible points only
    r = invoke("report", "--db", url, "--out", str(tmp_path / "r.pdf"))
    assert r.exit_code == 0, r.output
    assert (tmp_path / "r.pdf").read_bytes()[:5] == b"%PDF-"



def test_a_trained_run_with_a_loss_of_800_nats_stays_in_the_fit_and_the_report_still_draws(tmp_path):
    """A loss beyond ~709 nats has no float perplexity: the axis page leaves it off its limits, no crash."""
    url = f"sqlite:///{tmp_path / 'x.db'}"
    path = write(tmp_path, "family,axis,x,seed,val_loss\n" + GOOD_ROWS + "transformer_pp,depth,16,0,800\n")
    assert invoke("import", path, "--sweep", "a", "--db", url, "--allow-outliers").exit_code == 0
    con = sqlite3.connect(tmp_path / "x.db")
    with con:  # as if trained here (imported rows are the only ones the plausibility rule leaves out)
        con.execute("UPDATE ebt_runs SET source = 'trained'")
    con.close()
    r = invoke("report", "--db", url, "--out", str(tmp_path / "t.pdf"))
    assert r.exit_code == 0, r.output
    assert (tmp_path / "t.pdf").read_bytes()[:5] == b"%PDF-"
