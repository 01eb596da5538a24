"""The LR envelope of a ``[tune]`` sweep: per (family, level), the grid point with the lowest mean selection loss.

Every run of a ``[tune]`` sweep records its grid point in its config (``config["tune"]``, docs/sweeps.md) and is
scored on two disjoint validation sets: the selection set (``val_select_loss``) picks the point, the evaluation
set (``val_loss``) gives the loss that is fitted. Choosing on one set and reporting the other avoids the winner's
curse (the minimum of noisy losses is biased low). The choice is per (family, level) over the mean of the seeds,
so every seed of a level is fitted at one point; the other grid runs stay in the database and in the tuning
block of the fit (``TuneLevel``), not in the fit.

Runs without a grid point (an untuned sweep, an imported run) pass through unchanged.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from typing import Any

from ebt_scaling.fit.results import TuneLevel, TunePoint

SELECT_METRIC = "val_select_loss"
EVAL_METRIC = "val_loss"


def tune_point(run: Any) -> dict[str, Any] | None:
    """The run's grid point (its config's ``tune``), or None for a run outside any grid."""
    cfg = getattr(run, "config", None)
    point = cfg.get("tune") if isinstance(cfg, dict) else None
    return dict(point) if isinstance(point, dict) and point else None


def _finite(v: Any) -> float | None:
    return float(v) if isinstance(v, (int, float)) and math.isfinite(v) else None


def _lr_key(point: dict[str, Any]) -> str:
    return "lr_scale" if "lr_scale" in point else "lr"


def _mean(vals: Sequence[float | None]) -> float | None:
    v = [x for x in vals if x is not None]
    return sum(v) / len(v) if v else None


def select_level(x: float, runs: Sequence[Any], eligible: set[int]) -> TuneLevel:
    """Choose the grid point of one (family, level). ``runs``: every run of the level with a grid point (failed
    ones too: their points belong to the grid); ``eligible``: ids of the fit-eligible ones (only those are scored)."""
    by_point: dict[str, list[Any]] = {}
    for r in runs:
        by_point.setdefault(json.dumps(tune_point(r), sort_keys=True), []).append(r)
    ok = [r for r in runs if int(r.id) in eligible]
    has_select = bool(ok) and all(_finite((r.extra_metrics or {}).get(SELECT_METRIC)) is not None for r in ok)
    metric = SELECT_METRIC if has_select else EVAL_METRIC

    def score(r: Any) -> float | None:
        if int(r.id) not in eligible:
            return None
        return _finite((r.extra_metrics or {}).get(SELECT_METRIC)) if has_select else _finite(r.final_val_loss)

    points: list[TunePoint] = []
    for key in sorted(by_point, key=lambda k: (_coords(json.loads(k)), k)):
        rs = sorted(by_point[key], key=lambda r: (int(r.seed), int(r.id)))
        point = json.loads(key)
        sel = tuple(score(r) for r in rs)
        ev = tuple(_finite(r.final_val_loss) if int(r.id) in eligible else None for r in rs)
        points.append(TunePoint(point, _finite(point.get("lr")), tuple(int(r.seed) for r in rs), sel, ev,
                                _mean(sel), _mean(ev), tuple(int(r.id) for r in rs)))
    scored = [i for i, p in enumerate(points) if p.select_mean is not None]
    chosen = min(scored, key=lambda i: (points[i].select_mean, i)) if scored else None
    level = TuneLevel(float(x), tuple(points), chosen, points[chosen].lr if chosen is not None else None, metric)
    if chosen is None:
        return level
    # each seed's own pick, over the points it ran
    best: dict[int, tuple[float, int]] = {}
    for i, p in enumerate(points):
        for s, v in zip(p.seeds, p.select, strict=True):
            if v is not None and (s not in best or v < best[s][0]):
                best[s] = (v, i)
    by_seed = tuple((s, points[i].lr) for s, (_, i) in sorted(best.items()))
    disagree = len({i for _, i in best.values()}) > 1
    edge, add_lr, add_scale = _edge(points, chosen)
    return TuneLevel(level.x, level.points, chosen, level.chosen_lr, metric, edge, add_lr, add_scale, by_seed,
                     disagree)


def _coords(point: dict[str, Any]) -> tuple[Any, ...]:
    return tuple((k, point[k]) for k in sorted(point) if isinstance(point[k], (int, float)))


def _edge(points: Sequence[TunePoint], chosen: int) -> tuple[str | None, float | None, float | None]:
    """Whether the chosen point's LR (or LR multiplier) is the grid's smallest or largest, and the LR one grid
    step beyond it (the grid's own ratio between its two outermost values on that side)."""
    c = points[chosen].point
    key = _lr_key(c)
    values = sorted({float(p.point[key]) for p in points if isinstance(p.point.get(key), (int, float))})
    v = c.get(key)
    if len(values) < 2 or not isinstance(v, (int, float)) or values[0] <= 0:
        return None, None, None
    lr = points[chosen].lr
    if v == values[0]:
        side, ratio = "smallest", values[0] / values[1]
    elif v == values[-1]:
        side, ratio = "largest", values[-1] / values[-2]
    else:
        return None, None, None
    add_lr = _round(lr * ratio) if lr is not None else None
    add_scale = _round(float(v) * ratio) if key == "lr_scale" else None
    return side, add_lr, add_scale


def _round(v: float) -> float:
    return float(f"{v:.3g}")


def split_tuned(runs: Sequence[Any], eligible: set[int]) -> tuple[list[Any], dict[str, tuple[TuneLevel, ...]]]:
    """The runs a fit uses (untuned runs, and on a tuned axis the chosen point's runs of every (family, level)),
    and the tuning block per family. ``eligible``: ids of the fit-eligible runs."""
    tuned: dict[str, dict[float, list[Any]]] = {}
    keep: list[Any] = []
    for r in runs:
        if tune_point(r) is None or r.x is None:
            keep.append(r)
        else:
            tuned.setdefault(r.family, {}).setdefault(float(r.x), []).append(r)
    tuning: dict[str, tuple[TuneLevel, ...]] = {}
    for fam in sorted(tuned):
        levels = []
        for x in sorted(tuned[fam]):
            lv = select_level(x, tuned[fam][x], eligible)
            levels.append(lv)
            if lv.chosen_point is not None:
                ids = set(lv.chosen_point.run_ids)
                keep += [r for r in tuned[fam][x] if int(r.id) in ids]
        tuning[fam] = tuple(levels)
    return keep, tuning


def tuning_messages(tuning: dict[str, tuple[TuneLevel, ...]], labels: dict[str, str]) -> list[str]:
    """One line per family on a tuned axis: what was fitted, and the levels whose seeds would pick another LR."""
    out = []
    for fam, levels in tuning.items():
        who = labels.get(fam, fam)
        picks = ", ".join(f"x = {lv.x:g}: {lv.chosen_lr:.3g}" for lv in levels if lv.chosen_lr is not None)
        n = sum(len(p.run_ids) for lv in levels for p in lv.points)
        sel = {lv.selection for lv in levels}
        how = ("lowest mean selection loss (val_select_loss) over seeds" if sel == {SELECT_METRIC} else
               "lowest mean val_loss over seeds: these runs have no selection set, so the fitted losses carry the "
               "winner's curse (biased low)")
        out.append(f"{who}: tuned LR envelope - per level the grid point with the {how}; fitted at LR {picks} "
                   f"({n} grid runs in all)")
        for lv in levels:
            if lv.seeds_disagree:
                each = ", ".join(f"seed {s}: {lr:.3g}" for s, lr in lv.best_by_seed if lr is not None)
                out.append(f"{who} at x = {lv.x:g}: the seeds disagree on the best LR ({each}); the mean over seeds "
                           f"picks {lv.chosen_lr:.3g}")
    return out
