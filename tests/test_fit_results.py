"""The typed fit results (``fit/results.py``): the JSON of a fit, stored and printed, keeps the documented shape
of the dict results it replaced (tests/golden/fit_json.json, written by the dict-based code of d86f286 on the data
set of ``fit_golden_data``), a stored snapshot reads back equal, and the results are immutable."""

from __future__ import annotations

import dataclasses
import json
import math
import pathlib

import pytest
from fit_golden_data import SETTINGS, golden_datas, stored_params, with_plot_digests

from ebt_scaling.fit import AxisData, AxisFit, FitSettings, axis_data_from_arrays, fit_axes
from ebt_scaling.fit.service import SweepFits, fit_records

GOLDEN = json.loads((pathlib.Path(__file__).parent / "golden" / "fit_json.json").read_text())


def same(new, old, path="$"):
    """Equal JSON: the same keys in the same order, the same strings, ints, bools and nulls, floats equal to 1e-6
    (bootstrap numbers may move in the last digits with another BLAS)."""
    if isinstance(old, dict):
        assert isinstance(new, dict) and list(new) == list(old), f"{path}: keys {list(new)} != {list(old)}"
        for k in old:
            same(new[k], old[k], f"{path}.{k}")
    elif isinstance(old, list):
        assert isinstance(new, list) and len(new) == len(old), f"{path}: {new!r} != {old!r}"
        for i, (a, b) in enumerate(zip(new, old, strict=True)):
            same(a, b, f"{path}[{i}]")
    elif isinstance(old, float):
        assert isinstance(new, (int, float)) and not isinstance(new, bool), f"{path}: {new!r} != {old!r}"
        assert math.isclose(new, old, rel_tol=1e-6, abs_tol=1e-9), f"{path}: {new!r} != {old!r}"
    else:
        assert type(new) is type(old) and new == old, f"{path}: {new!r} != {old!r}"


@pytest.fixture(scope="module")
def golden_fits():
    datas = golden_datas(axis_data_from_arrays, AxisData)
    return datas, fit_axes(datas, FitSettings(**SETTINGS))


def test_the_json_of_each_axis_is_unchanged(golden_fits):
    _, fits = golden_fits
    assert len(fits) == len(GOLDEN["axis_fits"])
    for fit, old in zip(fits, GOLDEN["axis_fits"], strict=True):
        new = json.loads(json.dumps(fit.to_json(), allow_nan=False))
        same(with_plot_digests(new), old, f"{fit.sweep}/{fit.axis}")


def test_fit_json_output_is_unchanged(golden_fits):
    _, fits = golden_fits
    out = SweepFits(None, sorted({f.sweep for f in fits}), fits).to_json(holdout=True)
    same(json.loads(json.dumps(out, allow_nan=False)), GOLDEN["cli"])


def test_stored_rows_are_unchanged(golden_fits):
    datas, fits = golden_fits
    axis_json = [f.to_json() for f in fits]
    rows = [r for d, f in zip(datas, fits, strict=True) if d.families for r in fit_records(d, f)]
    new = [{"sweep": r.sweep, "axis": r.axis, "family": r.family, "method": r.method,
            "params": stored_params(r.method, json.loads(json.dumps(r.params, allow_nan=False)), axis_json),
            "run_ids": list(r.run_ids), "fingerprint": r.fingerprint} for r in rows]
    same(new, GOLDEN["stored"])


def test_a_stored_snapshot_reads_back_equal(golden_fits):
    _, fits = golden_fits
    for fit in fits:
        snapshot = json.loads(json.dumps(fit.to_json(), allow_nan=False))
        back = AxisFit.from_json(snapshot)
        assert back == fit, fit.axis
        assert back.to_json() == snapshot
        reused = dataclasses.replace(back, reused=True).summary_json(holdout=True)
        assert {**reused, "reused": False} == fit.summary_json(holdout=True)


def test_an_older_snapshot_without_the_later_keys_still_reads():
    """Snapshots stored before hold-out checks, guard-rails and baselines existed lack those keys."""
    data = axis_data_from_arrays(["ebt"] * 4 + ["transformer_pp"] * 4, [1e6, 1e7, 1e8, 1e9] * 2,
                                 [4.0, 3.8, 3.6, 3.4, 4.0, 3.85, 3.7, 3.55], sweep="s", axis="data")
    (fit,) = fit_axes([data], FitSettings(resamples=100, permutations=99))
    old = {k: v for k, v in fit.to_json().items() if k not in ("holdout", "guards", "baselines", "plot")}
    back = AxisFit.from_json(old)
    assert back.holdout == {} and back.guards == () and back.plot == {}
    assert back.families == fit.families and back.comparison == fit.comparison


def test_results_are_frozen(golden_fits):
    _, fits = golden_fits
    fit = fits[0]
    with pytest.raises(dataclasses.FrozenInstanceError):
        fit.reused = True  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        fit.families["ebt"].slope = 0.0  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        fit.comparison.verdict = "EBT faster"  # type: ignore[misc, union-attr]
    assert isinstance(fit.families["ebt"].slope_ci, tuple) and isinstance(fit.messages, tuple)
