"""Connect a results store to the fits: read runs, reuse or compute fits, store them linked to their runs.

The store is passed in (typed by the ``FitStore`` protocol: ``list_runs``, ``get_sweep``, ``find_fit``, ``save_fit``,
``forgotten_runs``; ``db.Store`` satisfies it), so this module never imports ``ebt_scaling.db``.

Stored rows per (sweep, axis), all with the same fingerprint (sha256 of the exact runs' ids and values plus
the method settings):

* ``axis_fit`` (family ``ebt_vs_transformer_pp``): the complete result, used to reuse an unchanged fit;
* ``ols_log_ppl`` and ``saturating_huber`` per family, linked to that family's runs;
* ``comparison`` and ``crossover`` (family ``ebt_vs_transformer_pp``), linked to all runs of the axis.

The rows hold ``to_json()`` of the typed results (``fit/results.py``): the one place a fit becomes JSON.

Holm adjustment is not stored. Its family of tests is defined by the analysis, never by whatever else the
database holds: by default the axes of each sweep (so importing an unrelated sweep changes no p-value), or
the axes named by ``family_of_tests``; axes of one family that share runs (params and flops) are one test.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from ebt_scaling.config import AXES
from ebt_scaling.errors import ConfigError, DuplicateError
from ebt_scaling.fit.axis import FitSettings, fingerprint, fit_axis, holm_family
from ebt_scaling.fit.design import AxisData, group_runs
from ebt_scaling.fit.results import AxisFit, json_value
from ebt_scaling.records import FitRecord, RunRecord, SweepRecord

PAIR = "ebt_vs_transformer_pp"


class FitStore(Protocol):
    """What the fits read and write in a results store (``db.Store`` has these methods)."""

    def list_runs(self, sweep: str | None = None) -> list[RunRecord]: ...
    def get_sweep(self, name: str) -> SweepRecord: ...
    def find_fit(self, sweep: str, axis: str, family: str, method: str, fingerprint: str) -> FitRecord | None: ...
    def save_fit(self, fit: FitRecord) -> FitRecord: ...
    def forgotten_runs(self, sweep: str) -> dict[str, dict[str, Any]]: ...
AXIS_METHOD = "axis_fit"


@dataclass
class SweepFits:
    sweep: str | None  # the sweep asked for, or None for every sweep in the store
    sweeps: list[str]
    fits: list[AxisFit]
    runs: list[RunRecord] = field(default_factory=list)  # every run considered, for reports
    messages: list[str] = field(default_factory=list)
    # runs the sweeps forgot (``ebt-scale runs --forget``), in no fit: sweep, run_id, status, reason, why, by, at
    forgotten: list[dict[str, Any]] = field(default_factory=list)

    def to_json(self, holdout: bool = False) -> dict[str, Any]:
        """What ``ebt-scale fit --json`` prints (docs/fits.md); ``forgotten`` only when a sweep forgot runs (the
        shape is otherwise the one scripts have always read)."""
        out = {
            "sweep": self.sweep if self.sweep is not None else (self.sweeps[0] if len(self.sweeps) == 1 else None),
            "sweeps": self.sweeps,
            "axes": [f.summary_json(holdout) for f in self.fits],
            "messages": self.messages,
        }
        if self.forgotten:
            out["forgotten"] = self.forgotten
        return out


def forgotten_runs(store: FitStore, sweeps: list[str]) -> list[dict[str, Any]]:
    """The runs each of ``sweeps`` forgot (``ebt-scale runs --forget``, recorded in the sweep's spec), each record
    with its sweep, ordered by sweep and run id: a fit or report lists them, so no removal is silent."""
    out = [{"sweep": sw, **rec} for sw in sweeps for rec in store.forgotten_runs(sw).values()]
    return sorted(out, key=lambda r: (r["sweep"], int(r.get("run_id") or 0)))


def _axis_order(key: tuple[str, str]) -> tuple[str, int, str]:
    sweep, axis = key
    return (sweep, AXES.index(axis) if axis in AXES else len(AXES), axis)


def parse_family_of_tests(spec: str | None) -> list[tuple[str | None, str]] | None:
    """``--family-of-tests``: comma-separated ``axis`` or ``sweep/axis`` entries (a bare axis means that axis
    of every selected sweep). None when not given."""
    if spec is None:
        return None
    out: list[tuple[str | None, str]] = []
    for item in (t.strip() for t in spec.split(",")):
        if not item:
            continue
        sw, _, ax = item.rpartition("/")
        if ax not in AXES:
            raise ConfigError(f"--family-of-tests: {item!r} is not an axis; use a comma list of "
                              f"{', '.join(AXES)} (or SWEEP/AXIS)")
        out.append((sw or None, ax))
    if not out:
        raise ConfigError("--family-of-tests is empty; name the axes tested together, e.g. data,depth,width")
    return out


def _holm_families(groups: dict[tuple[str, str], AxisData],
                   family: list[tuple[str | None, str]] | None) -> list[list[tuple[str, str]]]:
    """The Holm families: the axes of each sweep, or the one family named by ``--family-of-tests``."""
    keys = sorted(groups, key=_axis_order)
    if family is None:
        return [[k for k in keys if k[0] == sw] for sw in dict.fromkeys(k[0] for k in keys)]
    chosen = [k for k in keys if any(ax == k[1] and sw in (None, k[0]) for sw, ax in family)]
    for sw, ax in family:
        if not any(ax == k[1] and sw in (None, k[0]) for k in keys):
            raise ConfigError(f"--family-of-tests: no runs for {sw + '/' if sw else ''}{ax} in the selected "
                              "sweep(s); name only axes that were run")
    return [chosen]


def fit_store(store: FitStore, sweep: str | None = None, axis: str | None = None,
              settings: FitSettings | None = None, *, save: bool = True,
              family_of_tests: str | None = None) -> SweepFits:
    """Fit every (sweep, axis) with runs (optionally one sweep), reusing stored fits whose fingerprint
    matches and saving new ones. p-values are Holm-adjusted within each sweep over all its axes (also when
    ``axis`` restricts what is returned), or over the axes named by ``family_of_tests``, which must then
    include every axis returned."""
    s = settings or FitSettings()
    if axis is not None and axis not in AXES:
        raise ConfigError(f"--axis {axis!r}: unknown axis; use one of {', '.join(AXES)}")
    family = parse_family_of_tests(family_of_tests)
    if sweep is not None:
        store.get_sweep(sweep)  # raises NotFound with the fix when the sweep does not exist
    runs = store.list_runs(sweep=sweep)
    # isoflop runs are fitted by fit/isoflop_store.py (compute-optimal approaches 2 and 3), not as an axis here
    groups = {k: v for k, v in group_runs(runs).items() if k[1] != "isoflop"}
    holm = _holm_families(groups, family)
    if family is not None:
        left = [f"{k[0]}/{k[1]}" for k in groups if (axis is None or k[1] == axis) and k not in holm[0]]
        if left:
            raise ConfigError(f"--family-of-tests leaves out {', '.join(left)}, which would be reported "
                              "uncorrected; add it or restrict the output with --axis/--sweep")
    messages: list[str] = []
    if not runs:
        messages.append("no runs" + (f" in sweep {sweep!r}" if sweep else " in the database")
                        + "; import results with `ebt-scale import FILE.csv --sweep NAME` or run a sweep")
    if axis is not None and not any(k[1] == axis for k in groups):
        groups[(sweep or "-", axis)] = AxisData(sweep or "-", axis, {})
    order = sorted(groups, key=_axis_order)
    fitted = {key: _fit_or_reuse(store, groups[key], s, save) for key in order}
    for fam in holm:
        fitted.update(zip(fam, holm_family([fitted[k] for k in fam], [groups[k] for k in fam]), strict=True))
    fits = [fitted[k] for k in order]
    if axis is not None:
        fits = [f for f in fits if f.axis == axis]
        runs = [r for r in runs if r.axis == axis]
    sweeps = sorted({f.sweep for f in fits if f.sweep != "-"})
    if sweep is not None and sweep not in sweeps:
        sweeps = [sweep]
    every = sorted({str(r.sweep) for r in runs} | {str(x.name) for x in getattr(store, "list_sweeps", list)()})
    forgotten = forgotten_runs(store, [sweep] if sweep is not None else every)
    return SweepFits(sweep, sweeps, fits, runs, messages, forgotten)


def _fit_or_reuse(store: FitStore, data: AxisData, s: FitSettings, save: bool) -> AxisFit:
    if not data.families:
        return fit_axis(data, s)
    fp = fingerprint(data, s)
    found = store.find_fit(data.sweep, data.axis, PAIR, AXIS_METHOD, fp)
    if found is not None:
        return replace(AxisFit.from_json(found.params), reused=True)
    fit = fit_axis(data, s)
    if save:
        _save(store, fit_records(data, fit))
    return fit


def fit_records(data: AxisData, fit: AxisFit) -> list[FitRecord]:
    """The rows that store one axis's fit: the whole result (``axis_fit``, reused while the runs are unchanged),
    then per family its line (``ols_log_ppl``) and law (``saturating_huber``), then the comparison and the
    crossover, each linked to the runs it used."""
    all_ids = tuple(fit.run_ids)
    rows = [FitRecord(None, data.sweep, data.axis, PAIR, AXIS_METHOD, {**fit.to_json(), "reused": False}, all_ids,
                      fit.fingerprint)]
    for name, entry in fit.families.items():
        ids = tuple(sorted(int(i) for i in data.families[name].run_id))
        m1 = {k: v for k, v in entry.to_json().items() if k != "law"}
        rows.append(FitRecord(None, data.sweep, data.axis, name, "ols_log_ppl", m1, ids, fit.fingerprint))
        if entry.law is not None:
            rows.append(FitRecord(None, data.sweep, data.axis, name, "saturating_huber", entry.law.to_json(), ids,
                                  fit.fingerprint))
    if fit.comparison is not None:
        rows.append(FitRecord(None, data.sweep, data.axis, PAIR, "comparison", json_value(fit.comparison), all_ids,
                              fit.fingerprint))
    if fit.crossover is not None:
        rows.append(FitRecord(None, data.sweep, data.axis, PAIR, "crossover", json_value(fit.crossover), all_ids,
                              fit.fingerprint))
    return rows


def _save(store: FitStore, rows: list[FitRecord]) -> None:
    for rec in rows:
        try:
            store.save_fit(rec)
        except DuplicateError:  # a concurrent `fit` stored the same thing first: identical by construction
            continue
