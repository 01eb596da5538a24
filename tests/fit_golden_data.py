"""The fixed data set behind tests/golden/fit_json.json: six axes that between them reach every optional part of
a fit's JSON (a family without a slope, one without a law, one family alone, an empty axis, parametric, mixed and
stratified bootstraps, guard-rails, the hold-out checks with the law's, an excluded run).

The golden was written by the dict-based fit code of d86f286 (before the typed results) with
``python tests/fit_golden_data.py tests/golden/fit_json.json``; a test asserts that today's JSON is the same.
Plot arrays are kept as digests (length, sum, ends) to keep the file small."""

from __future__ import annotations

import json
import math
import sys
from typing import Any

import numpy as np

SETTINGS = {"resamples": 200, "permutations": 99, "holdout_law": True}


def golden_datas(axis_data_from_arrays: Any, AxisData: Any) -> list[Any]:
    rng = np.random.default_rng(20261206)
    out = []
    pts: list[tuple[str, float, int, float]] = []

    def axis(**kw: Any) -> None:
        fam, xs, sd, ys = (list(c) for c in zip(*pts, strict=True))
        out.append(axis_data_from_arrays(fam, xs, ys, sd, **kw))
        pts.clear()

    def law(x: float, E: float, A: float, a: float) -> float:
        return E + A * (x / 1e6) ** -a

    # 1. data: 6 levels x 2 seeds, saturating truth, unigram far away; one run excluded (x <= 0)
    for f, A, a in (("transformer_pp", 2.2, 0.30), ("ebt", 2.6, 0.34)):
        for x in np.geomspace(1e6, 1e8, 6):
            for s in range(2):
                pts.append((f, float(x), s, float(law(x, 1.8, A, a) + rng.normal(0, 0.01))))
    pts.append(("ebt", 0.0, 5, 3.0))
    axis(sweep="g-data", axis="data", unigram_loss=9.0)
    # 2. depth: 4 levels x 1 seed (parametric bootstrap), unigram close (near_baseline)
    for f, b in (("transformer_pp", -0.05), ("ebt", -0.08)):
        for x in (2, 4, 8, 16):
            pts.append((f, float(x), 0, float(4.0 + b * np.log(x) + rng.normal(0, 0.005))))
    axis(sweep="g-depth", axis="depth", unigram_loss=4.1)
    # 3. width: T++ 5 levels x 2 seeds, EBT 2 levels (no slope, so no comparison)
    for x in np.geomspace(64, 1024, 5):
        for s in range(2):
            pts.append(("transformer_pp", float(x), s, float(3.5 - 0.1 * np.log(x) + rng.normal(0, 0.01))))
    for x in (64.0, 128.0):
        pts.append(("ebt", x, 0, float(3.4 - 0.1 * np.log(x))))
    axis(sweep="g-width", axis="width")
    # 4. batch: one family, 3 levels (a slope, no law)
    for x in (1e4, 1e5, 1e6):
        for s in range(2):
            pts.append(("ebt", x, s, float(3.0 - 0.02 * np.log(x) + rng.normal(0, 0.01))))
    axis(sweep="g-batch", axis="batch")
    # 5. flops: mixed seeds, the EBT's loss rising (not_falling), a bump at the middle level
    for f, b in (("transformer_pp", -0.06), ("ebt", 0.02)):
        for i, x in enumerate(np.geomspace(1e12, 1e15, 5)):
            for s in range(1 if i % 2 else 2):
                y = 4.0 + b * np.log(x / 1e12) + rng.normal(0, 0.02) + (0.1 if i == 2 else 0)
                pts.append((f, float(x), s, float(y)))
    axis(sweep="g-flops", axis="flops")
    # 6. an axis without runs
    out.append(AxisData("g-empty", "params", {}))
    return out


def digest(v: Any) -> Any:
    """A list of numbers as {n, sum, first, last, nulls}; dicts and other lists recursively."""
    if isinstance(v, dict):
        return {k: digest(x) for k, x in v.items()}
    if isinstance(v, list) and v and all(x is None or isinstance(x, (int, float)) for x in v):
        vals = [float(x) for x in v if x is not None]
        return {"n": len(v), "sum": math.fsum(vals), "first": v[0], "last": v[-1], "nulls": len(v) - len(vals)}
    if isinstance(v, list):
        return [digest(x) for x in v]
    return v


def with_plot_digests(axis_fit: dict[str, Any]) -> dict[str, Any]:
    return {k: digest(v) if k == "plot" else v for k, v in axis_fit.items()}


def stored_params(method: str, params: dict[str, Any], axis_json: list[dict[str, Any]]) -> Any:
    """A stored row's params; the ``axis_fit`` snapshot, being an axis's JSON with ``reused`` false, as the index
    of that axis (or the params themselves when it is not)."""
    if method == "axis_fit":
        same = [i for i, a in enumerate(axis_json) if params == {**a, "reused": False}]
        if same:
            return {"axis_fit_json_of": same[0]}
    return with_plot_digests(params)


def main(out: str) -> None:  # run against the code to freeze (see the module docstring)
    from ebt_scaling.fit import AxisData, FitSettings, axis_data_from_arrays, fit_axes
    from ebt_scaling.fit.service import SweepFits

    datas = golden_datas(axis_data_from_arrays, AxisData)
    fits = fit_axes(datas, FitSettings(**SETTINGS))
    try:
        from ebt_scaling.fit.service import fit_records

        rows = [r for d, f in zip(datas, fits, strict=True) if d.families for r in fit_records(d, f)]
        axis_json = [f.to_json() for f in fits]
    except ImportError:  # the dict-based code of d86f286
        from ebt_scaling.fit.service import _jsonable, _save

        class Rows(list):
            save_fit = list.append

        rows = Rows()
        for d, f in zip(datas, fits, strict=True):
            if d.families:
                _save(rows, d, f)
        axis_json = [_jsonable(f.to_dict()) for f in fits]
    golden = {
        "axis_fits": [with_plot_digests(a) for a in axis_json],
        "cli": SweepFits(None, sorted({f.sweep for f in fits}), fits).to_json(holdout=True),
        "stored": [{"sweep": r.sweep, "axis": r.axis, "family": r.family, "method": r.method,
                    "params": stored_params(r.method, r.params, axis_json), "run_ids": list(r.run_ids),
                    "fingerprint": r.fingerprint} for r in rows],
    }
    with open(out, "w", encoding="utf-8") as f:  # one line per axis / row, so a change shows as a short diff
        f.write("{\n" + ",\n".join(
            json.dumps(k) + ": [\n" + ",\n".join(json.dumps(v, separators=(",", ":"), allow_nan=False) for v in vs)
            + "\n]" if isinstance(vs, list) else json.dumps(k) + ": " + json.dumps(vs, allow_nan=False)
            for k, vs in golden.items()) + "\n}\n")


if __name__ == "__main__":
    main(sys.argv[1])
