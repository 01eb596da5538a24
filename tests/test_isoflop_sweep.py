"""The isoflop axis end to end (issue 29): spec validation and expansion (realised C within 2% of each budget, the
EBT's fewer tokens at the same (C, shape), windows centred on each family's own predicted optimum, --extend-edges),
compute rows through `ebt-scale import`, and `ebt-scale fit` on them reproducing `fit_isoflop` on the same rows."""

from __future__ import annotations

import copy
import json
import math
import pathlib
import shutil
import subprocess
import sys

import numpy as np
import pytest
from db_backends import db_url_fixture, slow_on_postgresql  # noqa: F401  (``db_url``)
from test_report import count_pages
from typer.testing import CliRunner

from ebt_scaling.cli.main import app
from ebt_scaling.errors import SpecError
from ebt_scaling.fit.isoflop import IsoflopSettings, IsoRow, fit_isoflop
from ebt_scaling.sweeps.expand import expand, isoflop_plan
from ebt_scaling.sweeps.isoflop import budget_label
from ebt_scaling.sweeps.spec import load_spec, parse_spec

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

ROOT = pathlib.Path(__file__).resolve().parents[1]
TINY = ROOT / "experiments" / "tiny" / "isoflop.toml"
PAPER = ROOT / "experiments" / "paper" / "isoflop.toml"
runner = CliRunner()


def raw_tiny() -> dict:
    return tomllib.loads(TINY.read_text())


@pytest.mark.parametrize("path", [TINY, PAPER])
def test_shipped_specs_hit_every_budget_within_2_percent(path):
    spec = load_spec(path)
    runs = expand(spec)
    assert spec.axis == "isoflop" and len(spec.budgets) >= 3 and len(spec.seeds) >= 2
    cells: dict = {}
    for r in runs:
        b = r.planned.config["isoflop"]["budget"]
        assert abs(r.planned.x / b - 1) <= 0.02, (r.label, r.planned.x, b)
        # x is the family's own exact F x the run's tokens
        assert r.planned.x == pytest.approx(r.planned.flops_per_token["exact"] * r.planned.tokens, rel=1e-12)
        assert r.spec.train.warmup_steps < r.spec.train.steps
        cells.setdefault((b, r.planned.family), set()).add(r.label.split("@")[0])
    for (b, fam), shapes in cells.items():
        assert len(shapes) >= 5, (b, fam, shapes)


def test_ebt_gets_fewer_tokens_and_a_window_at_smaller_sizes():
    spec = load_spec(TINY)
    runs = expand(spec)
    tokens = {(r.planned.config["isoflop"]["budget"], r.planned.family, r.label): r.planned.tokens for r in runs}
    shared = [(b, lab) for (b, fam, lab) in tokens if fam == "ebt" and (b, "transformer_pp", lab) in tokens]
    assert shared
    for b, lab in shared:  # the same (C, shape): the EBT's larger F leaves it fewer tokens
        assert tokens[(b, "ebt", lab)] < tokens[(b, "transformer_pp", lab)] / 3
    plan = isoflop_plan(spec)
    ladder_pos = {v["name"]: i for i, v in enumerate(spec.values)}
    for b in spec.budgets:
        mid = {}
        for fam in ("ebt", "transformer_pp"):
            pts = [p for p in plan.points if p.budget == b and p.family == fam]
            idx = sorted(ladder_pos[p.label] for p in pts)
            assert idx == list(range(idx[0], idx[0] + len(idx)))  # consecutive shapes of the ladder
            mid[fam] = idx[len(idx) // 2]
            # the window's middle shape is the one nearest the family's predicted optimum C = 20 N F(N)
            best = min(pts, key=lambda p: abs(math.log(20 * p.params * p.per_token / b)))
            clipped = any(n.startswith(f"budget {budget_label(b)} {fam}: predicted optimum") for n in plan.notes)
            assert (ladder_pos[best.label] == mid[fam]) != clipped, (b, fam, plan.notes)
        assert mid["ebt"] < mid["transformer_pp"]  # centred on its own (smaller) optimum


def test_ladder_centring_and_spec_errors():
    raw = raw_tiny()
    raw["axis"]["centre"] = "ladder"
    spec = parse_spec(raw)
    plan = isoflop_plan(spec)
    assert {p.label for p in plan.points} == {v["name"] for v in spec.values[3:8]}  # the ladder's middle five

    bad = raw_tiny()
    bad["axis"]["sizes_per_budget"] = 40
    with pytest.raises(SpecError, match=r"axis.sizes_per_budget: 40 is more than the ladder's 11 shapes; add"):
        parse_spec(bad)
    bad = raw_tiny()
    bad["axis"]["budgets"] = [1e8, 5e10, 1e11]  # a few steps per run: rounding misses the budget by far
    with pytest.raises(SpecError, match=r"budget 1e\+?08 keeps \d shape\(s\) for \w+ within 2% of the budget"):
        parse_spec(bad)
    bad = raw_tiny()
    bad["axis"]["budgets"] = [5e10, 5e10, 1e11]
    with pytest.raises(SpecError, match="duplicate budgets"):
        parse_spec(bad)
    bad = raw_tiny()
    bad["train"]["ebt"] = {"lr": 0.02}
    with pytest.raises(SpecError, match=r"train.ebt.lr: the isoflop axis gives every level its own peak LR"):
        parse_spec(bad)


def test_dropped_shape_is_reported_not_silently_planned():
    raw = raw_tiny()
    raw["axis"]["tolerance"] = 0.002  # the tiny spec misses by up to 0.26%: a tighter tolerance drops shapes
    spec = parse_spec(raw)
    plan = isoflop_plan(spec)
    dropped = [n for n in plan.notes if " dropped: " in n]
    assert dropped and all("off the budget (tolerance 0.2%)" in n for n in dropped), plan.notes
    assert all(abs(p.realised / p.budget - 1) <= 0.002 for p in plan.points)
    full = isoflop_plan(load_spec(TINY))
    assert len(plan.points) == len(full.points) - len(dropped)
    assert len(expand(spec)) == len(plan.points) * len(spec.seeds)


def test_extend_edges_plans_the_next_shape_out():
    spec = load_spec(TINY)
    base = isoflop_plan(spec)
    b = spec.budgets[1]
    tpp = sorted(p.label for p in base.points if p.budget == b and p.family == "transformer_pp")
    ext = spec.with_(isoflop={**spec.isoflop, "extend": [["transformer_pp", b, "largest"]]})
    got = sorted(p.label for p in isoflop_plan(ext).points if p.budget == b and p.family == "transformer_pp")
    assert len(got) == len(tpp) + 1 and set(tpp) < set(got)
    runs = expand(ext)
    assert len(runs) == len(expand(spec)) + len(spec.seeds)


# ---------------------------------------------------------------------------------------------------------
# compute rows through import, and fit through the CLI
# ---------------------------------------------------------------------------------------------------------

LAWS = {"transformer_pp": dict(E=1.8, A=400.0, B=2000.0, alpha=0.34, beta=0.36),
        "ebt": dict(E=1.8, A=500.0, B=1800.0, alpha=0.30, beta=0.38)}
PER_TOKEN = {"transformer_pp": 6.0, "ebt": 24.0}  # F = k N


def synthetic_rows(seed: int = 3) -> list[IsoRow]:
    rng = np.random.default_rng(seed)
    rows = []
    ladder = np.geomspace(1e7, 3e9, 25).round()
    for fam, p in LAWS.items():
        for C in (1e18, 3e18, 1e19, 3e19):
            n_star = math.sqrt(C / (PER_TOKEN[fam] * 20))
            j = int(np.argmin(np.abs(np.log(ladder) - math.log(n_star))))
            for N in ladder[j - 3:j + 4]:
                D = C / (PER_TOKEN[fam] * N)
                for s in range(2):
                    y = p["E"] + p["A"] * N ** -p["alpha"] + p["B"] * D ** -p["beta"] + rng.normal(0, 0.005)
                    rows.append(IsoRow(fam, s, float(N), float(round(D)), float(C), float(y)))
    return rows


def write_csv(path: pathlib.Path, rows: list[IsoRow], x_column: bool = False) -> str:
    head = "family,axis,seed,params,tokens,flops,val_loss" + (",x" if x_column else "")
    lines = [head] + [f"{r.family},isoflop,{r.seed},{int(r.params)},{int(r.tokens)},{r.flops:.17g},{r.loss:.17g}"
                      + (f",{r.flops:.17g}" if x_column else "") for r in rows]
    path.write_text("\n".join(lines) + "\n")
    return str(path)


@slow_on_postgresql  # isoflop rows on PostgreSQL: test_import_refuses_incomplete_compute_rows below
def test_import_and_fit_cli_reproduce_fit_isoflop(db_url, tmp_path):
    rows = synthetic_rows()
    r = runner.invoke(app, ["import", write_csv(tmp_path / "iso.csv", rows), "--sweep", "iso", "--db", db_url])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["fit", "--sweep", "iso", "--axis", "isoflop", "--json", "--db", db_url,
                            "--resamples", "100"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)["isoflop"][0]
    assert out["sweep"] == "iso" and out["reused"] is False and len(out["rows"]) == len(rows)
    # the same rows (imported values as stored: N rounded to an integer count) straight into fit_isoflop
    direct = fit_isoflop(rows, IsoflopSettings(resamples=100, resamples_law=100, seed=0)).to_json()
    for fam in LAWS:
        for k in ("E", "A", "B", "alpha", "beta"):
            assert out["approach3"][fam]["law"][k] == pytest.approx(direct["approach3"][fam]["law"][k], rel=1e-9)
        assert [b["n_star"] for b in out["approach2"][fam]["budgets"]] == pytest.approx(
            [b["n_star"] for b in direct["approach2"][fam]["budgets"]], rel=1e-9)
    assert [p["m"] for p in out["comparison"]["points"]] == pytest.approx(
        [p["m"] for p in direct["comparison"]["points"]], rel=1e-9)
    assert out["comparison"]["pair"] == ["ebt", "transformer_pp"]
    for fam, p in LAWS.items():  # and near the truth
        assert out["approach3"][fam]["law"]["alpha"] == pytest.approx(p["alpha"], abs=0.05)

    table = runner.invoke(app, ["fit", "--sweep", "iso", "--db", db_url, "--resamples", "100", "--extend-edges"])
    assert table.exit_code == 0, table.output
    assert "compute multiplier m = C_EBT / C_T++" in table.stdout and "reused" in table.stdout
    assert "frontier exponent difference" in table.stdout and "crossover (m = 1)" in table.stdout

    pdf = tmp_path / "iso.pdf"  # the report draws the stored fit: profiles, frontiers, multiplier, diagnostics
    rep = runner.invoke(app, ["report", "--sweep", "iso", "--out", str(pdf), "--db", db_url, "--resamples", "100"])
    assert rep.exit_code == 0, rep.output
    assert count_pages(pdf) >= 4 + 3
    if shutil.which("pdftotext"):  # isoflop only: no empty per-axis rate table; the title names the sweep
        rep = runner.invoke(app, ["report", "--out", str(pdf), "--db", db_url, "--resamples", "100"])
        assert rep.exit_code == 0, rep.output
        first = subprocess.run(["pdftotext", "-f", "1", "-l", "1", str(pdf), "-"], capture_output=True, text=True,
                               check=True).stdout
        assert "scaling - iso" in first and "(empty database)" not in first
        assert "No per-axis scaling fits here (the sweeps are IsoFLOP sweeps)" in first.replace("\n", " ")
        assert "rate gain" not in first and "(none)" not in first


def test_import_refuses_incomplete_compute_rows(db_url, tmp_path):
    p = tmp_path / "bad.csv"
    p.write_text("family,axis,seed,params,tokens,val_loss\nebt,isoflop,0,1000,2000,3.0\n")
    r = runner.invoke(app, ["import", str(p), "--sweep", "bad", "--db", db_url])
    assert r.exit_code != 0 and "missing column 'x'" in r.output
    p.write_text("family,axis,seed,params,tokens,flops,val_loss\nebt,isoflop,0,-5,2000,1e12,3.0\n")
    r = runner.invoke(app, ["import", str(p), "--sweep", "bad", "--db", db_url])
    assert r.exit_code != 0 and "params must be a positive parameter count, got '-5'" in r.output
    p.write_text("family,axis,seed,params,tokens,flops,val_loss\nebt,isoflop,0,1000,,1e12,3.0\n")
    r = runner.invoke(app, ["import", str(p), "--sweep", "bad", "--db", db_url])
    assert r.exit_code != 0 and "tokens is empty; an isoflop row needs params, tokens and flops" in r.output
    p.write_text("family,axis,seed,params,tokens,flops,x,val_loss\nebt,isoflop,0,1000,10,1e12,2e12,3.0\n")
    r = runner.invoke(app, ["import", str(p), "--sweep", "bad", "--db", db_url])
    assert r.exit_code != 0 and "x 2e12 differs from flops 1e12" in r.output
    rows = copy.deepcopy(synthetic_rows())[:4]
    r = runner.invoke(app, ["import", write_csv(tmp_path / "ok.csv", rows, x_column=True), "--sweep", "ok",
                            "--db", db_url])
    assert r.exit_code == 0, r.output


EPOCH = {"E": 1.8172, "A": 482.01, "B": 2085.43, "alpha": 0.3478, "beta": 0.3658}  # Besiroglu et al. 2024


@slow_on_postgresql  # isoflop rows on PostgreSQL: test_import_refuses_incomplete_compute_rows below
def test_chinchilla_points_imported_reproduce_epochs_approach_3(db_url, tmp_path):
    """Epoch AI's extraction of Chinchilla's Figure 4 (tests/data/chinchilla), imported as compute rows (D = C / 6N)
    and fitted through the CLI, gives Epoch's published approach-3 law inside its bootstrap intervals."""
    import csv

    with (ROOT / "tests" / "data" / "chinchilla" / "svg_extracted_data.csv").open() as fh:
        raw = list(csv.DictReader(fh))
    raw = sorted(raw, key=lambda r: float(r["loss"]))[:-5]  # Epoch drop the 5 highest-loss points
    lines = ["family,axis,seed,params,tokens,flops,val_loss"]
    for r in raw:
        n, c = round(float(r["Model Size"])), float(r["Training FLOP"])
        lines.append(f"transformer_pp,isoflop,0,{n},{round(c / (6 * n))},{c!r},{r['loss']}")
    path = tmp_path / "chinchilla.csv"
    path.write_text("\n".join(lines) + "\n")
    r = runner.invoke(app, ["import", str(path), "--sweep", "chinchilla", "--db", db_url])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["fit", "--sweep", "chinchilla", "--json", "--db", db_url, "--resamples", "100"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)["isoflop"][0]
    a3 = out["approach3"]["transformer_pp"]
    assert a3["n_rows"] == 240 and a3["converged"]
    tol = {"E": 0.005, "alpha": 0.01, "beta": 0.01, "A": 0.05, "B": 0.05}
    for k, v in EPOCH.items():
        assert abs(a3["law"][k] / v - 1) < tol[k], (k, a3["law"][k], v)
        assert a3["law_ci"][k][0] <= v <= a3["law_ci"][k][1], (k, v, a3["law_ci"][k])
    assert out["comparison"] is None  # one family: no multiplier


def test_extend_edges_reads_the_stored_fits_edge_guards(db_url, tmp_path):
    from ebt_scaling.sweeps.isoflop import extensions_from_guards

    guards = [{"code": "edge_minimum", "family": "ebt", "budget": 5e10,
               "message": "EBT: at budget 5e+10 FLOPs the minimum sits at the window's smallest size (4.59e+03)"},
              {"code": "few_sizes", "family": "ebt", "budget": 5e10, "message": "..."},
              {"code": "edge_minimum", "family": "transformer_pp", "budget": 1e11,
               "message": "Transformer++: at budget 1e+11 FLOPs the minimum sits at the window's largest size"}]
    assert extensions_from_guards(guards) == [["ebt", 5e10, "smallest"], ["transformer_pp", 1e11, "largest"]]
    spec = load_spec(TINY)
    ext = isoflop_plan(spec.with_(isoflop={**spec.isoflop, "extend": extensions_from_guards(guards)}))
    assert any("cannot extend the window on its smallest side" in n for n in ext.notes)  # L1D8 is the ladder's end
    r = runner.invoke(app, ["import", write_csv(tmp_path / "x.csv", synthetic_rows()[:2]), "--sweep", "other",
                            "--db", db_url])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["fit", "--sweep", "other", "--axis", "isoflop", "--db", db_url])
    assert r.exit_code != 0 and len(r.output.strip().splitlines()) == 1, r.output  # two rows: one line, no trace
    (tmp_path / "y.csv").write_text("family,axis,x,seed,val_loss\nebt,data,1000,0,4.0\n")
    r = runner.invoke(app, ["import", str(tmp_path / "y.csv"), "--sweep", "plain", "--db", db_url])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["fit", "--axis", "isoflop", "--db", db_url, "--sweep", "plain"])
    assert r.exit_code != 0 and "--axis isoflop: no isoflop runs in sweep 'plain'; run an isoflop sweep" in r.output
    r = runner.invoke(app, ["sweep", "--spec", str(TINY), "--dry-run", "--extend-edges", "--db", db_url])
    assert r.exit_code != 0 and "sweep isoflop-tiny has no stored isoflop fit; run `ebt-scale fit" in r.output
