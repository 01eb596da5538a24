"""End to end: CSV import of synthetic data with known truth -> `fit --json` -> stored fits reused ->
`report` -> a PDF of >= 3 pages; plus bad input on the fit/report commands."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from db_backends import db_url_fixture, slow_on_postgresql  # noqa: F401  (``db_url``)
from test_report import count_pages
from typer.testing import CliRunner

from ebt_scaling.cli.main import app
from ebt_scaling.db.store import Store

runner = CliRunner()
SLOPES = {"transformer_pp": -0.080, "ebt": -0.100}  # known log10-log10 slopes; gain +25%


def invoke(*args: str):
    return runner.invoke(app, list(args))


def write_csv(path, axes=("data", "flops"), seeds=3):
    rng = np.random.default_rng(7)
    lines = ["family,axis,x,seed,val_loss"]
    for ax in axes:
        for fam, b in SLOPES.items():
            for xi in np.geomspace(1e7, 10**8.5, 6):
                for s in range(seeds):
                    y = 4.0 + b * math.log(xi / 1e7) + rng.normal(0, 0.01)
                    x = xi * (6.67 if (fam == "ebt" and ax == "flops") else 1.0)
                    lines.append(f"{fam},{ax},{x:.10g},{s},{y:.8f}")
    path.write_text("\n".join(lines) + "\n")
    return str(path)


@slow_on_postgresql  # the fits' storage on PostgreSQL: test_db_store.py::test_fits_link_exact_runs
def test_import_fit_json_reuse_and_report(db_url, tmp_path):
    r = invoke("import", write_csv(tmp_path / "runs.csv"), "--sweep", "synth", "--db", db_url)
    assert r.exit_code == 0, r.output
    r = invoke("fit", "--sweep", "synth", "--json", "--db", db_url, "--resamples", "200")
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert out["sweep"] == "synth"
    assert [a["axis"] for a in out["axes"]] == ["data", "flops"]
    for a in out["axes"]:
        assert set(a["families"]) == {"ebt", "transformer_pp"}
        for fam, truth in SLOPES.items():
            e = a["families"][fam]
            assert e["n_runs"] == 18
            assert abs(e["slope"] - truth) < 0.05
            assert e["slope_ci"][0] <= truth <= e["slope_ci"][1]
            assert set(e["law"]) >= {"E", "A", "alpha", "E_ci", "alpha_ci"}
        assert abs(a["rate_gain"] - 0.25) < 0.05
        assert a["rate_gain_ci"][0] <= 0.25 <= a["rate_gain_ci"][1]
        assert 0.0 <= a["p_value"] < 0.001 and a["p_value_holm"] >= a["p_value"]
        assert a["reused"] is False
    assert "crossover" in out["axes"][1] and out["axes"][1]["crossover"]["log10_x"] is not None

    with Store(db_url) as store:
        fits = store.list_fits(sweep="synth", axis="data")
        runs = {r.id for r in store.list_runs(sweep="synth", axis="data")}
    methods = sorted((f.method, f.family) for f in fits)
    assert ("axis_fit", "ebt_vs_transformer_pp") in methods and ("ols_log_ppl", "ebt") in methods
    assert ("saturating_huber", "transformer_pp") in methods and ("comparison", "ebt_vs_transformer_pp") in methods
    assert all(set(f.run_ids) <= runs for f in fits)
    assert {len(f.run_ids) for f in fits if f.family == "ebt"} == {18}

    again = invoke("fit", "--sweep", "synth", "--json", "--db", db_url, "--resamples", "200")
    assert again.exit_code == 0, again.output
    out2 = json.loads(again.stdout)
    assert all(a["reused"] for a in out2["axes"])
    assert [a["rate_gain"] for a in out2["axes"]] == [a["rate_gain"] for a in out["axes"]]
    with Store(db_url) as store:
        assert len(store.list_fits(sweep="synth")) == 2 * len(fits)  # nothing new stored

    table = invoke("fit", "--sweep", "synth", "--db", db_url, "--resamples", "200", "--axis", "flops")
    assert table.exit_code == 0, table.output
    assert "flops" in table.stdout and "reused" in table.stdout and "crossover" in table.stdout
    one = json.loads(invoke("fit", "--sweep", "synth", "--db", db_url, "--resamples", "200", "--axis", "flops",
                            "--json").stdout)
    assert [a["axis"] for a in one["axes"]] == ["flops"]
    assert one["axes"][0]["p_value_holm"] == out2["axes"][1]["p_value_holm"]  # Holm over the sweep's axes
    assert one["axes"][0]["comparison"]["holm_axes"] == 2

    pdf = tmp_path / "report.pdf"
    r = invoke("report", "--sweep", "synth", "--out", str(pdf), "--db", db_url, "--resamples", "200")
    assert r.exit_code == 0, r.output
    assert count_pages(pdf) >= 3
    assert "pages" in r.stdout
    first = pdf.read_bytes()
    r = invoke("report", "--sweep", "synth", "--out", str(pdf), "--db", db_url, "--resamples", "200")
    assert r.exit_code == 0 and pdf.read_bytes() == first


def test_changed_run_gives_a_new_fit(tmp_path):
    url = f"sqlite:///{tmp_path / 'c.db'}"
    path = tmp_path / "runs.csv"
    write_csv(path, axes=("depth",), seeds=1)
    assert invoke("import", str(path), "--sweep", "s", "--db", url).exit_code == 0
    a = json.loads(invoke("fit", "--json", "--db", url, "--resamples", "200").stdout)["axes"][0]
    text = path.read_text().splitlines()
    text[1] = text[1].rsplit(",", 1)[0] + ",4.5"  # one loss changes
    path.write_text("\n".join(text) + "\n")
    assert invoke("import", str(path), "--sweep", "s", "--db", url).exit_code == 0
    b = json.loads(invoke("fit", "--json", "--db", url, "--resamples", "200").stdout)["axes"][0]
    assert b["reused"] is False and b["fingerprint"] != a["fingerprint"]
    assert b["families"]["ebt"]["bootstrap"].startswith("parametric bootstrap")


def test_awkward_sweep_reports_per_axis_messages(tmp_path):
    url = f"sqlite:///{tmp_path / 'a.db'}"
    csv = ("family,axis,x,seed,val_loss\n"
           "ebt,width,64,0,4.0\nebt,width,128,0,3.8\n"  # only 2 levels, one family
           "transformer_pp,depth,2,0,4.1\ntransformer_pp,depth,4,0,3.9\ntransformer_pp,depth,8,0,3.7\n"
           "transformer_pp,depth,16,0,3.6\n")
    (tmp_path / "a.csv").write_text(csv)
    assert invoke("import", str(tmp_path / "a.csv"), "--sweep", "odd", "--db", url).exit_code == 0
    r = invoke("fit", "--sweep", "odd", "--json", "--db", url, "--resamples", "200")
    assert r.exit_code == 0, r.output
    axes = {a["axis"]: a for a in json.loads(r.stdout)["axes"]}
    assert axes["depth"]["families"]["transformer_pp"]["slope"] is not None
    assert axes["depth"]["rate_gain"] is None and axes["depth"]["verdict"] == "not testable"
    assert any("only one family" in m for m in axes["depth"]["messages"])
    assert any("2 distinct x value(s)" in m for m in axes["width"]["messages"])
    r = invoke("fit", "--sweep", "odd", "--axis", "batch", "--json", "--db", url, "--resamples", "200")
    assert r.exit_code == 0
    assert "no fit-eligible runs" in json.loads(r.stdout)["axes"][0]["messages"][0]
    pdf = tmp_path / "odd.pdf"
    r = invoke("report", "--sweep", "odd", "--out", str(pdf), "--db", url, "--resamples", "200")
    assert r.exit_code == 0, r.output
    assert count_pages(pdf) >= 3


def _empty_db(url: str) -> str:
    from ebt_scaling.db.store import Store

    Store(url).close()  # fit and report never create a database (read-only commands)
    return url


def test_empty_database(tmp_path):
    url = _empty_db(f"sqlite:///{tmp_path / 'e.db'}")
    r = invoke("fit", "--json", "--db", url)
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert out["axes"] == [] and "no runs" in out["messages"][0]


@pytest.mark.parametrize("args, code, text", [
    (["fit", "--sweep", "nope"], 1, "nope"),
    (["fit", "--resamples", "5"], 2, "--resamples 5"),
    (["fit", "--e-mode", "wobbly"], 2, "e_mode"),
    (["fit", "--axis", "dta"], 2, "unknown axis"),
    (["report", "--sweep", "nope", "--out", "r.pdf"], 1, "nope"),
])
def test_bad_input_is_one_line_and_writes_nothing(tmp_path, args, code, text):
    url = _empty_db(f"sqlite:///{tmp_path / 'b.db'}")
    r = invoke(*args, "--db", url)
    assert r.exit_code == code, r.output
    err = r.stderr.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and text in err[0]
    assert not (tmp_path / "r.pdf").exists()


def test_report_out_is_a_directory(tmp_path):
    url = _empty_db(f"sqlite:///{tmp_path / 'd.db'}")
    r = invoke("report", "--out", str(tmp_path), "--db", url)
    assert r.exit_code == 2 and "is a directory" in r.stderr


def test_family_of_tests_and_holdout_options(tmp_path):
    url = f"sqlite:///{tmp_path / 'h.db'}"
    assert invoke("import", write_csv(tmp_path / "runs.csv"), "--sweep", "synth", "--db", url).exit_code == 0
    # a family that leaves out a reported axis: one line naming the fix, exit 2, no fit stored
    r = invoke("fit", "--sweep", "synth", "--family-of-tests", "data", "--db", url)
    assert r.exit_code == 2, r.output
    err = r.stderr.strip().splitlines()
    assert len(err) == 1 and "leaves out synth/flops" in err[0] and "--axis" in err[0]
    r = invoke("fit", "--sweep", "synth", "--family-of-tests", "data,widht", "--db", url)
    assert r.exit_code == 2 and "'widht' is not an axis" in r.stderr
    store = Store(url)
    try:
        assert store.list_fits() == []
    finally:
        store.close()
    r = invoke("fit", "--sweep", "synth", "--axis", "data", "--family-of-tests", "data", "--json", "--resamples",
               "200", "--holdout-largest", "--db", url)
    assert r.exit_code == 0, r.output
    (a,) = json.loads(r.stdout)["axes"]
    assert a["comparison"]["holm_axes"] == 1 and a["p_value_holm"] == a["p_value"]
    for fam in ("ebt", "transformer_pp"):
        h = a["holdout"][fam]
        assert h["n_levels_fit"] == 5 and h["error_ci"][0] <= 0 <= h["error_ci"][1]
        assert h["m2"]["n_levels_fit"] == 5 and h["m2"]["x"] == h["x"]  # 5 levels to fit: the law's check too
    r = invoke("fit", "--sweep", "synth", "--resamples", "200", "--holdout-largest", "--db", url)
    assert r.exit_code == 0 and "Hold-out EBT: line on 5 levels predicts" in r.stdout
    assert "Hold-out EBT: M2 law on 5 levels predicts" in r.stdout
    r = invoke("fit", "--sweep", "synth", "--resamples", "200", "--db", url)
    assert "Hold-out" not in r.stdout and "warning" in r.stdout  # the law at its bound on log-linear data


def test_fit_table_reads_at_80_columns(tmp_path, monkeypatch):
    """In an 80-column terminal the table keeps its words whole ("verdict", not "verdi ct") and no line is
    wider than the terminal; the slopes and exponents move to lines under it."""
    url = f"sqlite:///{tmp_path / 'n.db'}"
    assert invoke("import", write_csv(tmp_path / "runs.csv"), "--sweep", "synth", "--db", url).exit_code == 0
    monkeypatch.setenv("COLUMNS", "80")
    r = invoke("fit", "--sweep", "synth", "--resamples", "200", "--db", url)
    assert r.exit_code == 0, r.output
    lines = r.stdout.splitlines()
    assert max(len(line) for line in lines) <= 80
    header = next(line for line in lines if "rate gain" in line)
    assert "verdict" in header and "p (Holm)" in header
    assert any(line.strip().startswith("data: EBT slope -0.") for line in lines)
    monkeypatch.setenv("COLUMNS", "200")  # a wide terminal keeps the one-row-per-axis table
    r = invoke("fit", "--sweep", "synth", "--resamples", "200", "--db", url)
    assert "slope T++ [95% CI]" in r.stdout
