"""The PDF report: pages, determinism, page hook, empty data."""

from __future__ import annotations

import re
import shutil
import subprocess
from datetime import datetime, timezone

import numpy as np
import pytest

from ebt_scaling.fit import FitSettings, fit_axes, group_runs
from ebt_scaling.records import RunRecord
from ebt_scaling.report.pdf import ReportData, build_report

FAST = FitSettings(resamples=200, permutations=99)


def count_pages(path) -> int:
    if shutil.which("pdfinfo"):
        out = subprocess.run(["pdfinfo", str(path)], capture_output=True, text=True, check=True).stdout
        return int(re.search(r"^Pages:\s+(\d+)", out, re.M).group(1))
    return len(re.findall(rb"/Type\s*/Page[^s]", path.read_bytes()))


def synthetic_runs(axes=("data", "flops"), seeds=2):
    rng = np.random.default_rng(0)
    runs, i = [], 0
    for ax in axes:
        for fam, A in (("transformer_pp", 2.2), ("ebt", 2.5)):
            for xi in np.geomspace(1e6, 3e7, 5):
                for s in range(seeds):
                    i += 1
                    x = xi * (6.67 if (fam == "ebt" and ax == "flops") else 1.0)
                    y = 1.8 + A * (xi / 1e6) ** -0.3 + rng.normal(0, 0.01)
                    runs.append(RunRecord(id=i, sweep="synth", family=fam, axis=ax, x=float(x), seed=s,
                                          config_hash=f"{i:016x}", status="completed", final_val_loss=float(y),
                                          fit_eligible=True, source="imported"))
    runs.append(RunRecord(id=i + 1, sweep="synth", family="ebt", axis=axes[0], x=1e6, seed=7, config_hash="f" * 16,
                          status="diverged", reason="loss was NaN at step 120"))
    return runs


def report_data(runs):
    fits = fit_axes(list(group_runs(runs).values()), FAST)
    return ReportData("EBT vs Transformer++ scaling - synth", fits, runs,
                      {"code version": "test", "database": "postgresql://u:***@h/db"},
                      datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone.utc))


def test_report_has_summary_axis_crossover_runs_and_provenance_pages(tmp_path):
    runs = synthetic_runs()
    out = tmp_path / "r.pdf"
    n = build_report(report_data(runs), out)
    # summary + 2 axes + crossover + 2 runs pages (41 runs) + provenance
    assert n == 7
    assert count_pages(out) == 7
    assert not (tmp_path / "r.pdf.part").exists()


def test_same_data_gives_identical_bytes(tmp_path):
    runs = synthetic_runs(axes=("params",), seeds=1)
    a, b = tmp_path / "a.pdf", tmp_path / "b.pdf"
    build_report(report_data(runs), a)
    build_report(report_data(runs), b)
    assert a.read_bytes() == b.read_bytes()
    assert b"D:20260102030405" in a.read_bytes()  # the data's date, not the wall clock


def test_extra_page_builders_are_appended(tmp_path):
    seen = []

    def extra(data, new_page):
        fig = new_page()
        fig.text(0.5, 0.5, "thinking results")
        seen.append(len(data.fits))

    out = tmp_path / "x.pdf"
    n = build_report(report_data(synthetic_runs(axes=("depth",), seeds=1)), out, extra_pages=[extra])
    assert seen == [1]
    assert count_pages(out) == n == 5  # summary, depth, runs, provenance, extra: no FLOPs page without that axis


def test_empty_report_still_renders(tmp_path):
    out = tmp_path / "empty.pdf"
    n = build_report(ReportData("empty", [], [], {"database": "sqlite:///x.db"}, None, ["no runs"]), out)
    assert n == 3 and count_pages(out) == 3  # summary, runs, provenance


def test_loss_curves_page_follows_each_axis_whose_runs_have_series(tmp_path):
    runs = synthetic_runs(axes=("data", "flops"), seeds=1)
    data = report_data(runs)
    plain = build_report(data, tmp_path / "a.pdf")
    # series for the data-axis runs only (the flops axis holds imported results without curves)
    data.curves = {r.id: {"train_loss": ([1e4 * k for k in range(1, 6)], [6.0 - 0.3 * k for k in range(1, 6)]),
                          "val_loss": ([2e4, 5e4], [5.2, 4.6])}
                   for r in runs if r.axis == "data" and r.status == "completed"}
    out = tmp_path / "b.pdf"
    assert build_report(data, out) == count_pages(out) == plain + 1


@pytest.mark.skipif(not shutil.which("pdftoppm"), reason="pdftoppm (poppler-utils) not installed")
def test_pages_render_to_png(tmp_path):
    out = tmp_path / "r.pdf"
    build_report(report_data(synthetic_runs(axes=("flops",), seeds=1)), out)
    subprocess.run(["pdftoppm", "-png", "-r", "30", str(out), str(tmp_path / "p")], check=True)
    pngs = sorted(tmp_path.glob("p-*.png"))
    assert len(pngs) == count_pages(out)
    assert all(p.stat().st_size > 1000 for p in pngs)


def _guarded_report(tmp_path, unigram):
    from ebt_scaling.fit import axis_data_from_arrays

    rng = np.random.default_rng(14)
    x = np.repeat(np.geomspace(1e7, 10**8.5, 6), 3)
    fam = ["transformer_pp"] * x.size + ["ebt"] * x.size
    y = np.concatenate([4.0 - 0.08 * np.log(x / 1e7), 4.0 - 0.12 * np.log(x / 1e7)]) + rng.normal(0, 0.01, 2 * x.size)
    data = axis_data_from_arrays(fam, np.concatenate([x, x]), y, list(range(3)) * 12, axis="data",
                                 unigram_loss=unigram)
    fits = fit_axes([data], FAST)
    out = tmp_path / f"g{unigram}.pdf"
    n = build_report(ReportData("guards", fits), out)
    return fits[0], out, n


@pytest.mark.skipif(not shutil.which("pdftotext"), reason="pdftotext (poppler-utils) not installed")
def test_guard_rails_show_on_every_page_and_the_baseline_on_the_axis_page(tmp_path):
    fit, out, n = _guarded_report(tmp_path, unigram=4.2)  # losses within 0.5 nats of the unigram loss
    assert fit.comparison.unreliable
    for page in range(1, n + 1):
        text = subprocess.run(["pdftotext", "-f", str(page), "-l", str(page), str(out), "-"], capture_output=True,
                              text=True, check=True).stdout
        assert "Warning: guard-rails fired on 1 of 1 axes (data)" in text, (page, text[-300:])
    axis_page = subprocess.run(["pdftotext", "-f", "2", "-l", "2", "-layout", str(out), "-"], capture_output=True,
                               text=True, check=True).stdout
    assert "unigram baseline: ppl 67 (4.200 nats)" in axis_page
    assert "within 0.5 nats of the unigram baseline" in axis_page.replace("\n", " ")
    assert "lack-of-fit p" in axis_page and "corr(E, alpha)" in axis_page and "starts at best" in axis_page
    assert "Holm family (1 tests): synthetic/data" in axis_page
    summary = subprocess.run(["pdftotext", "-f", "1", "-l", "1", str(out), "-"], capture_output=True, text=True,
                             check=True).stdout
    assert "withheld: unreliable" in summary and "near baseline" in summary
    # far from the baseline no rate guard fires: no footer on the pages, the verdict stands
    assert summary.split("\n")[1].startswith("data: the EBT's loss falls faster with more training tokens than the "
                                             "Transformer++'s: its rate line is")  # the first line says it in words
    assert "not a verdict: guard-rails fire (near baseline" in " ".join(summary.split())
    fit, out, n = _guarded_report(tmp_path, unigram=7.0)
    assert not fit.comparison.unreliable and fit.comparison.verdict == "EBT faster"
    text = subprocess.run(["pdftotext", "-f", "3", "-l", "3", str(out), "-"], capture_output=True, text=True,
                          check=True).stdout
    assert ("Warning: guard-rails" in text) == bool(fit.guards)  # exponent-view guards still warn, nothing else


@pytest.mark.skipif(not shutil.which("pdftotext"), reason="pdftotext (poppler-utils) not installed")
def test_no_text_beyond_the_page_box(tmp_path):
    """Every word of every page lies inside the page (pdftotext -bbox), with long guard-rail messages, a
    crossover, loss curves and a runs table with long reasons."""
    runs = synthetic_runs(axes=("data", "flops", "depth"), seeds=1)
    import dataclasses

    runs[-1] = dataclasses.replace(runs[-1], reason="loss was NaN at step 120 after the learning rate warm-up; " * 4)
    data = report_data(runs)
    data.curves = {r.id: {"train_loss": ([1e3 * k for k in range(1, 40)], [6.0 - 0.02 * k for k in range(1, 40)]),
                          "val_loss": ([1e4, 3e4], [5.4, 5.1])} for r in runs if r.axis == "data"}
    out = tmp_path / "r.pdf"
    n = build_report(data, out)
    html = subprocess.run(["pdftotext", "-bbox", str(out), "-"], capture_output=True, text=True, check=True).stdout
    pages = re.findall(r'<page width="([\d.]+)" height="([\d.]+)">(.*?)</page>', html, re.S)
    assert len(pages) == n
    for k, (w, h, body) in enumerate(pages, 1):
        words = re.findall(r'xMin="([\d.-]+)" yMin="([\d.-]+)" xMax="([\d.-]+)" yMax="([\d.-]+)">([^<]*)<', body)
        assert words, k
        for x0, y0, x1, y1, word in words:
            assert 0 <= float(x0) and float(x1) <= float(w) + 0.5, (k, word, x1, w)
            assert 0 <= float(y0) and float(y1) <= float(h) + 0.5, (k, word, y1, h)
    assert sum(">curves:<" in body for _, _, body in pages) == 1  # the data axis has series: one curves page


@pytest.mark.skipif(not shutil.which("pdftotext"), reason="pdftotext (poppler-utils) not installed")
def test_families_trained_with_different_optimizer_settings_are_named_on_the_summary(tmp_path):
    """A spec's [train.ebt] table gives the EBT its own LR: the summary says so, per axis; equal settings say
    nothing."""
    import dataclasses

    from ebt_scaling.report.pdf import family_settings_notes

    def with_lr(runs, ebt_lr):
        return [dataclasses.replace(r, config={"train": {"lr": ebt_lr if r.family == "ebt" else 0.01,
                                                         "warmup_steps": 40, "steps": 600}}) for r in runs]

    assert family_settings_notes(with_lr(synthetic_runs(axes=("depth",), seeds=1), 0.01)) == []
    runs = with_lr(synthetic_runs(axes=("depth",), seeds=1), 0.02)
    (note,) = family_settings_notes(runs)
    assert note.startswith("depth (synth): the families train with different optimizer settings (lr EBT 0.02, "
                           "T++ 0.01)"), note
    out = tmp_path / "r.pdf"
    build_report(report_data(runs), out)
    summary = subprocess.run(["pdftotext", "-f", "1", "-l", "1", str(out), "-"], capture_output=True, text=True,
                             check=True).stdout.replace("\n", " ")
    assert "different optimizer settings (lr EBT 0.02, T++ 0.01)" in summary


@pytest.mark.skipif(not shutil.which("pdftotext"), reason="pdftotext (poppler-utils) not installed")
def test_every_warning_line_is_in_the_pdf_however_many(tmp_path):
    """An archival PDF holds every guard-rail line: what does not fit under the axis plot goes to continuation
    pages (named on the truncated page), never to 'see ebt-scale fit --json'; their text stays in the page box."""
    import dataclasses

    from ebt_scaling.fit.results import Guard

    fits = fit_axes(list(group_runs(synthetic_runs(axes=("data",), seeds=1)).values()), FAST)
    many = [Guard(code="not_falling", family="ebt", scope="both",
                  message=f"marker{k:03d} " + "a long warning text " * 6) for k in range(150)]
    fits = [dataclasses.replace(fits[0], guards=list(fits[0].guards) + many)]
    out = tmp_path / "w.pdf"
    n = build_report(ReportData("warnings", fits), out)
    text = subprocess.run(["pdftotext", str(out), "-"], capture_output=True, text=True, check=True).stdout
    for k in range(150):
        assert f"marker{k:03d}" in text, k
    assert "fit --json" not in text
    assert "more lines: on the next page (Warnings, continued)" in text and "Warnings, continued: " in text
    html = subprocess.run(["pdftotext", "-bbox", str(out), "-"], capture_output=True, text=True, check=True).stdout
    pages = re.findall(r'<page width="([\d.]+)" height="([\d.]+)">(.*?)</page>', html, re.S)
    assert len(pages) == n
    for k, (w, h, body) in enumerate(pages, 1):
        for x0, y0, x1, y1 in re.findall(r'xMin="([\d.-]+)" yMin="([\d.-]+)" xMax="([\d.-]+)" yMax="([\d.-]+)"', body):
            assert 0 <= float(x0) and float(x1) <= float(w) + 0.5, k
            assert 0 <= float(y0) and float(y1) <= float(h) + 0.5, k


def test_runs_table_stays_inside_its_columns_and_left_out_runs_show_their_errors():
    """Issue 30.4: no cell text runs past its column (measured with the renderer); a failed run shows its stored
    error (not 'status failed'), in full under the table; forgotten runs are listed with who, when, why."""
    import dataclasses

    import matplotlib
    from matplotlib.figure import Figure

    from ebt_scaling.report.pdf import PAGE_SIZE, runs_pages

    runs = synthetic_runs(axes=("data",), seeds=1)
    err = "DataError: store /tmp/s: no window outside the validation documents found in 64 draws; " * 3
    runs.append(dataclasses.replace(runs[0], id=99, status="failed", reason=err.strip(), final_val_loss=None,
                                    fit_eligible=False, config_hash="e" * 16))
    data = report_data(runs)
    data.forgotten = [{"sweep": "synth", "run_id": 7, "status": "failed", "reason": "ConfigError: bad lr",
                       "why": "typo", "by": "u@h", "at": "2026-01-01T00:00:00"}]
    figs: list = []

    def new_page():
        figs.append(Figure(figsize=PAGE_SIZE))
        return figs[-1]

    with matplotlib.rc_context({"font.size": 9}):
        runs_pages(data, new_page)
    cells = 0
    for fig in figs:
        renderer = fig.canvas.get_renderer()
        for ax in fig.axes:
            for table in ax.tables:
                for cell in table.get_celld().values():
                    cells += 1
                    assert cell.get_text().get_window_extent(renderer).x1 <= cell.get_window_extent(renderer).x1, \
                        cell.get_text().get_text()
    assert cells > 10 * len(runs)
    notes = [c.get_text().get_text() for fig in figs for ax in fig.axes for t in ax.tables
             for (r, k), c in t.get_celld().items() if k == 9 and r > 0]  # the reason / note column
    assert any(n.startswith("failed: DataError: store /tmp/s") and n.endswith("\u2026") for n in notes)
    assert not any(n.startswith("status ") for n in notes)
    text = " ".join(" ".join(t.get_text() for fig in figs for t in fig.texts).split())
    assert "run 99 (data x = 1e+06, T++, seed 0): failed: " + " ".join(err.split()) in text
    assert "run 7 of sweep synth (failed), forgotten 2026-01-01T00:00:00 by u@h (typo): ConfigError: bad lr" in text


def test_crossover_in_plain_numbers_and_words():
    from ebt_scaling.fit.results import Crossover
    from ebt_scaling.fit.words import crossover_words

    cr = Crossover(x=None, x_ci=(None, None), log10_x=-3.97, in_range=False, range=(1.0, 4.0), ebt_better_above=False,
                   fraction_resamples_same_direction=0.93, log10_x_ci=(-5.1, None),
                   message="no crossover in range; lines cross at x = 10^-3.97 (...)")
    w = crossover_words(cr, "depth")
    assert "10^" not in w
    assert w.startswith("the fitted rate lines would cross at about 1.1e-4 layers, far below the measured 1 to 4 "
                        "layers (4.0 decades away): no crossover in range; the Transformer++'s line is lower "
                        "throughout the measured range")
    assert "95% interval from 7.9e-6 up to never crossing; in 7% of bootstrap resamples the slope order flips" in w
    cr = Crossover(x=None, x_ci=(None, None), log10_x=7.77, in_range=True, range=(1e6, 1e8), ebt_better_above=True,
                   fraction_resamples_same_direction=1.0, log10_x_ci=(7.73, 7.82))
    assert crossover_words(cr, "data") == (
        "the fitted rate lines cross at about 5.9e7 training tokens, inside the measured 1e6 to 1e8 training tokens: "
        "the EBT's line is lower above it, the Transformer++'s below (95% interval 5.4e7 to 6.6e7).")


def test_a_warning_is_never_split_between_pages():
    """The axis page keeps whole warnings (its last line left for the 'more lines' note); the rest continue on the
    next page starting with a warning's first line, never with the tail of a wrapped one."""
    from ebt_scaling.report.pdf import _whole_warnings

    groups = [["- a1", "  a2"], ["- b1", "  b2", "  b3"], ["- c1"]]
    assert _whole_warnings(groups, 10) == (["- a1", "  a2", "- b1", "  b2", "  b3", "- c1"], [])
    shown, rest = _whole_warnings(groups, 4)  # 6 lines in 4: a (2) fits with a line to spare, b (3) does not
    assert shown == ["- a1", "  a2"] and rest == ["- b1", "  b2", "  b3", "- c1"]
    shown, rest = _whole_warnings(groups, 6)  # 6 lines fit exactly: no note needed
    assert rest == [] and len(shown) == 6
    shown, rest = _whole_warnings([["- x1", "  x2", "  x3"], ["- y1"]], 2)  # the first shown whole even if too long
    assert shown == ["- x1", "  x2", "  x3"] and rest == ["- y1"]
