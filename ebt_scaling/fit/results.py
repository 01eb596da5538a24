"""Typed fit results: what ``ebt_scaling.fit`` returns and ``ebt_scaling.report`` and the CLI read.

Frozen dataclasses, one per part of an axis's fit: a family's line and saturating law (``FamilyFit``,
``LawFit``), the EBT-vs-Transformer++ comparison (``Comparison``), the crossover of the two lines
(``Crossover``), the hold-out-largest checks (``LineHoldout``, ``LawHoldout``), the guard-rails that fired
(``Guard``), the plot data (``FamilyPlot``, ``Band``) and the axis that holds them (``AxisFit``).

JSON happens once, at the boundary: ``to_json()`` for the snapshot stored in the database and for
``ebt-scale fit --json``, ``from_json()`` for a stored snapshot. The keys, their order and which keys are
left out when a part was not fitted are the documented shape (``docs/fits.md``), unchanged from the dict
results of earlier releases, so stored fits and users' scripts keep working.

Also here, because the report reads them with the results: the paper's published gains, the family labels,
the guard explanations, the baseline rule and the hold-out lines. Pure stdlib: no numpy.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields, is_dataclass, replace
from typing import Any

Interval = tuple[float | None, float | None]
NO_INTERVAL: Interval = (None, None)

PAPER_V1 = {"data": 0.3598, "batch": 0.2846, "depth": 0.0529, "params": 0.0291, "flops": 0.0292, "width": 0.0002}
PAPER_ICLR = {"params": 0.0897, "flops": 0.0897}
# video (Something-Something V2, log-log slope of the validation SmoothL1; ebt-paper.md 15.2, Figs. 9a/b of arXiv v1)
PAPER_V1_VIDEO = {"width": 0.3366, "params": 0.3428}


def paper_gains(axis: str, modality: str = "text") -> tuple[float | None, float | None]:
    """The paper's published rate gains (arXiv v1, ICLR) for an axis of this modality, None where it has none."""
    if modality == "video":
        return PAPER_V1_VIDEO.get(axis), None
    return PAPER_V1.get(axis), PAPER_ICLR.get(axis)
LABELS = {"transformer_pp": "Transformer++", "ebt": "EBT"}

TEXT, VIDEO = "text", "video"


@dataclass(frozen=True)
class Measure:
    """What an axis fits, fixed by the modality of its runs (read once from the runs, ``fit/design.py``).

    The fitted y is always the natural log of the quantity the paper plots on a log axis, so the M1 slope is the
    paper's log-log slope for both: text plots perplexity, ln(ppl) = the loss in nats, so y is the loss itself;
    video plots the validation SmoothL1, so y = ln(SmoothL1). The saturating law (M2) is fitted to the loss itself
    (nats, or SmoothL1), its floor E in those units."""

    modality: str
    log_loss: bool  # y = ln(loss) (video) rather than the loss (text: nats, already ln perplexity)
    loss_name: str  # the loss in words
    unit: str  # the loss's unit, for messages ("nats", "SmoothL1")
    y_label: str  # the scaling plot's y axis
    rate: str  # what the M1 slope is, in plain words
    baselines: tuple[str, ...]  # the keys of a family's baselines dict, the guard's baseline first


TEXT_MEASURE = Measure(TEXT, False, "loss", "nats", "validation perplexity",
                       "slope of log10(perplexity) on log10(x)", ("unigram", "uniform"))
VIDEO_MEASURE = Measure(VIDEO, True, "validation SmoothL1", "SmoothL1", "validation SmoothL1 (log scale)",
                        "log-log slope of SmoothL1 on x", ("copy", "mean"))
MEASURES = {m.modality: m for m in (TEXT_MEASURE, VIDEO_MEASURE)}


def measure_of(modality: str | None) -> Measure:
    """The measure of a modality (``None``: text, what every run before video was)."""
    return MEASURES[modality or TEXT]


# JSON keys that name text units (nats, perplexity), and the keys video results carry instead; a result leaves out
# the other modality's keys, so text JSON is exactly what it was before video existed
TEXT_KEYS = frozenset({"intercept_log10_ppl", "loss_change_per_decade_nats", "loss_gap_nats", "loss_gap_ci",
                       "error_nats"})
VIDEO_KEYS = frozenset({"intercept_log10_loss", "loss_factor_per_doubling", "loss_ratio", "loss_ratio_ci",
                        "error_log10", "modality"})


def _units_skip(modality: str) -> frozenset[str]:
    """The keys a result of ``modality`` leaves out of its JSON (the other modality's unit-named keys)."""
    return VIDEO_KEYS if modality == TEXT else TEXT_KEYS

# one plain sentence per guard, for pages that list codes rather than the full messages
EXPLAIN = {
    "not_falling": "the loss does not fall with x, so a rate gain against it means nothing",
    "near_baseline": "the loss sits near a trivial baseline (text: the unigram or uniform loss, token frequencies; "
                     "video: the loss of copying the last frame): the model learned little beyond it",
    "at_bound": "the saturating law's exponent or floor sits at a bound: the law is not identified",
    "lack_of_fit": "a straight line in ln x does not fit (p < 0.05): the slope depends on the x range",
    "single_seed": "a level has one seed: seed noise is inferred, not measured",
    "few_levels": "fewer than 4 levels",
    "non_monotone": "the loss falls and rises across levels beyond seed noise",
    "wide_interval": "a 95% interval is wider than the estimate itself",
    "lr_at_edge": "a chosen LR is the smallest or largest of its grid: the LR envelope may be wrong there",
}


# ------------------------------------------------------------------------------------------ JSON helpers


def json_value(v: Any) -> Any:
    """``v`` as plain JSON: dataclasses via their ``to_json``, tuples as lists, NaN/inf as None (JSON has none),
    numpy scalars as Python numbers."""
    if is_dataclass(v) and not isinstance(v, type):
        return v.to_json()  # type: ignore[attr-defined]
    if isinstance(v, dict):
        return {str(k): json_value(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [json_value(x) for x in v]
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if hasattr(v, "item") and not isinstance(v, (str, bytes)):  # numpy scalar
        return json_value(v.item())
    return v


def _frozen(v: Any) -> Any:
    """JSON lists as tuples (recursively, also inside dicts), so a result rebuilt from JSON is immutable."""
    if isinstance(v, list):
        return tuple(_frozen(x) for x in v)
    if isinstance(v, dict):
        return {k: _frozen(x) for k, x in v.items()}
    return v


def _fields_json(obj: Any, skip: frozenset[str] = frozenset()) -> dict[str, Any]:
    return {f.name: json_value(getattr(obj, f.name)) for f in fields(obj) if f.name not in skip}


def _from(cls: Any, d: dict[str, Any], **nested: Any) -> Any:
    """``cls`` from a JSON dict: known keys only (unknown ones are ignored, missing ones take defaults),
    ``nested[name]`` turning a non-null value into its dataclass."""
    kw = {}
    for f in fields(cls):
        if f.name in d:
            v = d[f.name]
            kw[f.name] = nested[f.name](v) if f.name in nested and v is not None else _frozen(v)
    return cls(**kw)


# ------------------------------------------------------------------------------------------ one family


@dataclass(frozen=True)
class LawFit:
    """M2, the saturating law L = E + A x^-alpha (nats) of one family, with bootstrap intervals and diagnostics."""

    E: float | None
    A: float | None
    alpha: float | None
    E_ci: Interval
    A_ci: Interval
    alpha_ci: Interval
    A_scaled: float | None
    x_scale: float
    e_mode: str  # shared | free | single
    shared_with: tuple[str, ...]
    objective: float | None
    n_starts: int
    n_starts_at_best: int
    r2: float | None
    E_alpha_corr: float | None
    alpha_at_bound_frac: float | None
    boot_stopped_early_frac: float | None
    boot_rechecked_frac: float | None
    boot_unconverged_frac: float | None
    bootstrap: str

    def to_json(self) -> dict[str, Any]:
        return _fields_json(self)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> LawFit:
        return _from(cls, d)


LINE_STATS = frozenset({"slope_se", "intercept_log10_ppl", "r2", "lack_of_fit_p", "loss_change_per_decade_nats",
                        "intercept_log10_loss", "loss_factor_per_doubling"})


@dataclass(frozen=True)
class FamilyFit:
    """One family on one axis: M1 (the paper's rate: OLS slope of loss on ln x) and M2 (``law``).

    ``slope`` is None with fewer than 3 levels (``message`` says so), ``law`` None with fewer than 4
    (``law_message``). The line statistics (``slope_se`` ... ``loss_change_per_decade_nats``) exist only when
    the line was fitted, and only then appear in the JSON. ``guards``: codes of the guard-rails that fired.
    Units (``modality``, ``Measure``): text has ``intercept_log10_ppl`` (log10 perplexity at x = 1) and
    ``loss_change_per_decade_nats``; video has ``intercept_log10_loss`` (log10 SmoothL1 at x = 1) and
    ``loss_factor_per_doubling`` (2^slope: what the SmoothL1 is multiplied by when x doubles) instead."""

    n_runs: int
    n_levels: int
    x_range: Interval
    seeds_per_level: tuple[int, int]
    bootstrap: str
    slope: float | None = None
    slope_ci: Interval = NO_INTERVAL
    law: LawFit | None = None
    message: str | None = None
    law_message: str | None = None
    slope_se: float | None = None
    intercept_log10_ppl: float | None = None
    r2: float | None = None
    lack_of_fit_p: float | None = None
    loss_change_per_decade_nats: float | None = None
    guards: tuple[str, ...] = ()
    intercept_log10_loss: float | None = None
    loss_factor_per_doubling: float | None = None
    modality: str = TEXT

    @property
    def line_fitted(self) -> bool:
        return any(getattr(self, k) is not None for k in LINE_STATS)

    def to_json(self) -> dict[str, Any]:
        return _fields_json(self, (frozenset() if self.line_fitted else LINE_STATS) | _units_skip(self.modality))

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> FamilyFit:
        return _from(cls, d, law=LawFit.from_json)


@dataclass(frozen=True)
class Guard:
    """A guard-rail that fired: ``scope`` says which view it makes unreadable (``rate``, ``exponent`` or
    ``both``); ``family`` is None for one about the comparison itself."""

    code: str
    family: str | None
    scope: str
    message: str

    def blocks(self, view: str) -> bool:
        """Whether this guard makes ``view`` (``rate`` or ``exponent``) unreadable."""
        return self.scope in (view, "both")

    def to_json(self) -> dict[str, Any]:
        return _fields_json(self)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Guard:
        return _from(cls, d)


# ------------------------------------------------------------------------------------------ two families


@dataclass(frozen=True)
class Comparison:
    """EBT vs Transformer++ on one axis: rate gain |b_EBT|/|b_T++| - 1, equal-slope test, exponent gain, and the
    guard-rails that withhold a verdict. The Holm fields (``p_value_holm`` ... ``verdict``) are set by
    ``adjust_holm`` and appear in the JSON only then."""

    rate_gain: float | None
    rate_gain_ci: Interval
    p_value: float | None
    p_value_method: str
    p_value_permutation: float | None
    n_permutations: int
    slope_diff: float | None
    t: float | None
    df: float | None
    paper_v1: float | None
    paper_iclr: float | None
    alpha_gain: float | None = None
    alpha_gain_ci: Interval = NO_INTERVAL
    warning: str | None = None
    guards: tuple[str, ...] = ()
    unreliable_verdict: str | None = None
    unreliable: bool = False
    exponent_unreliable_note: str | None = None
    exponent_unreliable: bool = False
    p_value_holm: float | None = None
    holm_axes: int | None = None
    holm_family: tuple[str, ...] | None = None
    holm_note: str | None = None
    verdict: str | None = None  # None until Holm-adjusted ("not testable" in the JSON summary)

    def to_json(self) -> dict[str, Any]:
        holm = frozenset({"p_value_holm", "holm_axes", "holm_family", "holm_note", "verdict"})
        return _fields_json(self, frozenset() if self.verdict is not None else holm)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Comparison:
        return _from(cls, d)


@dataclass(frozen=True)
class Crossover:
    """Where the two M1 lines cross (``log10_x`` None when they are parallel; then only ``message`` explains).
    The gap between the lines at ``gap_at_x``: EBT - T++ in nats (text, ``loss_gap_nats``), or the SmoothL1 ratio
    EBT / T++ (video, ``loss_ratio``)."""

    x: float | None
    x_ci: Interval
    log10_x: float | None
    in_range: bool
    range: tuple[float, float]
    ebt_better_above: bool | None
    fraction_resamples_same_direction: float
    log10_x_ci: Interval = NO_INTERVAL
    message: str | None = None
    gap_at_x: float | None = None
    loss_gap_nats: float | None = None
    loss_gap_ci: Interval = NO_INTERVAL
    loss_ratio: float | None = None
    loss_ratio_ci: Interval = NO_INTERVAL
    modality: str = TEXT

    def to_json(self) -> dict[str, Any]:
        crossing = frozenset({"log10_x_ci", "gap_at_x", "loss_gap_nats", "loss_gap_ci", "loss_ratio",
                              "loss_ratio_ci"})
        return _fields_json(self, (frozenset() if self.log10_x is not None else crossing)
                            | _units_skip(self.modality))

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Crossover:
        return _from(cls, d)


# ------------------------------------------------------------------------------------------ hold-out checks


@dataclass(frozen=True)
class LawHoldout:
    """The saturating law (own E) fitted without the largest level, and its prediction error there: observed -
    predicted in nats (text, ``error_nats``), or log10(observed / predicted) of the SmoothL1 (video,
    ``error_log10``); ``error_ci`` in the same units."""

    x: float
    n_levels_fit: int
    observed: float | None
    predicted: float | None
    error_nats: float | None
    error_ci: Interval
    covered: bool
    alpha: float | None
    E: float | None
    method: str
    error_log10: float | None = None
    modality: str = TEXT

    def to_json(self) -> dict[str, Any]:
        return _fields_json(self, _units_skip(self.modality))

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> LawHoldout:
        return _from(cls, {"error_nats": None, **d})  # video JSON has no error_nats


@dataclass(frozen=True)
class LineHoldout:
    """The M1 line fitted without the largest level, and its prediction error there (the units of ``LawHoldout``;
    for video ``observed`` and ``predicted`` are SmoothL1, the geometric mean of the level's seeds and the line's
    value); ``m2`` the same check for the saturating law (``fit --holdout-largest`` with 5 or more levels)."""

    x: float
    n_levels_fit: int
    observed: float | None
    predicted: float | None
    error_nats: float | None
    error_ci: Interval
    covered: bool
    method: str
    m2: LawHoldout | None = None
    error_log10: float | None = None
    modality: str = TEXT

    def to_json(self) -> dict[str, Any]:
        return _fields_json(self, (frozenset() if self.m2 is not None else frozenset({"m2"}))
                            | _units_skip(self.modality))

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> LineHoldout:
        return _from(cls, {"error_nats": None, **d}, m2=LawHoldout.from_json)  # video JSON has no error_nats


def _fmt(v: float | None, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def holdout_lines(fam: str, h: LineHoldout) -> list[str]:
    """The hold-out-largest check of one family: one line for the M1 line, and one for the M2 law when the
    family has enough levels for it."""

    def line(what: str, c: LineHoldout | LawHoldout, law: str) -> str:
        ci = c.error_ci or NO_INTERVAL
        span = "-" if ci[0] is None or ci[1] is None else f"[{ci[0]:+.4f}, {ci[1]:+.4f}]"
        verdict = (f"the interval includes 0: the {law} predicts the held-out level" if c.covered else
                   f"the interval excludes 0: the {law} does not extrapolate")
        error = (f"error {_fmt(c.error_nats, '+.4f')} nats" if c.modality == TEXT else
                 f"error log10(observed/predicted) {_fmt(c.error_log10, '+.4f')}")
        return (f"Hold-out {LABELS.get(fam, fam)}: {what} on {c.n_levels_fit} levels predicts "
                f"{_fmt(c.predicted, '.4f')} at x = {c.x:.3g}, observed {_fmt(c.observed, '.4f')}: {error} "
                f"{span} ({verdict})")

    return [line("line", h, "line")] + ([line("M2 law", h.m2, "law")] if h.m2 is not None else [])


# ------------------------------------------------------------------------------------------ plot data


@dataclass(frozen=True)
class Band:
    """A fitted curve on a grid of x, with its pointwise bootstrap band: log10 of the plotted quantity
    (perplexity for text, SmoothL1 for video)."""

    x: tuple[float, ...]
    fit: tuple[float, ...]
    lo: tuple[float | None, ...]
    hi: tuple[float | None, ...]

    def to_json(self) -> dict[str, Any]:
        return _fields_json(self)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Band:
        return _from(cls, d)


@dataclass(frozen=True)
class FamilyPlot:
    """What the report draws for one family: every run (x, loss: nats or SmoothL1, seed, run id), the M1 line
    and M2 curve with bands, residuals (M1 in the fitted y: nats, or ln SmoothL1; M2 as ln loss - ln fit), and the
    baselines (text: ``unigram``, ``uniform`` in nats; video: ``copy``, ``mean`` in SmoothL1)."""

    x: tuple[float, ...]
    y: tuple[float, ...]
    seed: tuple[int, ...]
    run_id: tuple[int, ...]
    m1: Band | None = None
    resid_m1: tuple[float, ...] | None = None
    m2: Band | None = None
    resid_m2: tuple[float, ...] | None = None
    baseline: dict[str, float | None] | None = None  # {"unigram", "uniform"} in nats, or {"copy", "mean"}

    def to_json(self) -> dict[str, Any]:
        return {k: v for k, v in _fields_json(self).items()
                if v is not None or k in ("x", "y", "seed", "run_id")}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> FamilyPlot:
        return _from(cls, d, m1=Band.from_json, m2=Band.from_json)


# ------------------------------------------------------------------------------------------ one axis


def baseline_of(baselines: dict[str, float | None] | None) -> tuple[float, str] | None:
    """The baseline a family is compared with: the unigram loss when stored, else ln V (text); the copy-last-frame
    loss, else the mean-embedding loss (video); else None."""
    b = baselines or {}
    for key in ("unigram", "uniform", "copy", "mean"):
        if b.get(key) is not None:
            return float(b[key]), BASELINE_NAMES[key]
    return None


# how each baseline is named on plots and in messages (the loss of a model that learned nothing beyond it)
BASELINE_NAMES = {"unigram": "unigram", "uniform": "uniform (ln V)", "copy": "copy (last frame)",
                  "mean": "mean embedding"}


@dataclass(frozen=True)
class AxisFit:
    """Everything fitted on one axis of one sweep. ``to_json()`` is the snapshot stored in the database
    (``axis_fit`` rows) and read back with ``from_json``."""

    sweep: str
    axis: str
    families: dict[str, FamilyFit]
    comparison: Comparison | None
    crossover: Crossover | None
    n_runs: int
    excluded: dict[str, int]  # reason -> count
    messages: tuple[str, ...]
    settings: dict[str, Any]  # FitSettings.as_dict(): resamples, seed, level, delta, e_mode, ..., fit_code_version
    fingerprint: str
    run_ids: tuple[int, ...]
    plot: dict[str, FamilyPlot] = field(default_factory=dict)
    reused: bool = False  # read back from the database rather than fitted now
    guards: tuple[Guard, ...] = ()  # guard-rails that fired (fit/guards.py)
    holdout: dict[str, LineHoldout] = field(default_factory=dict)  # family -> prediction check at the largest x
    baselines: dict[str, dict[str, float | None]] = field(default_factory=dict)  # family -> {"unigram", "uniform"}
    # family -> its [tune] grid per level and the chosen points (the fitted runs: the LR envelope); empty, and left
    # out of the JSON, when the axis's runs carry no grid coordinates
    tuning: dict[str, tuple[TuneLevel, ...]] = field(default_factory=dict)
    # what was fitted (``Measure``): text (loss in nats, perplexity plotted) or video (ln SmoothL1); left out of the
    # JSON for text, so text snapshots are what they were before video
    modality: str = TEXT

    @property
    def measure(self) -> Measure:
        return measure_of(self.modality)

    @property
    def label(self) -> str:
        return f"{self.sweep}/{self.axis}"

    def family(self, name: str) -> FamilyFit | None:
        return self.families.get(name)

    def with_(self, **changes: Any) -> AxisFit:
        return replace(self, **changes)

    def to_json(self) -> dict[str, Any]:
        return _fields_json(self, (frozenset() if self.tuning else frozenset({"tuning"})) | _units_skip(self.modality))

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> AxisFit:
        return _from(cls, d, tuning=tuning_from_json,
                     families=lambda v: {k: FamilyFit.from_json(x) for k, x in v.items()},
                     comparison=Comparison.from_json, crossover=Crossover.from_json,
                     plot=lambda v: {k: FamilyPlot.from_json(x) for k, x in v.items()},
                     guards=lambda v: tuple(Guard.from_json(g) for g in v),
                     holdout=lambda v: {k: LineHoldout.from_json(x) for k, x in v.items()})

    def summary_json(self, holdout: bool = False) -> dict[str, Any]:
        """The documented JSON of one axis in ``ebt-scale fit --json`` (``holdout`` adds the hold-out check)."""
        c = self.comparison
        out: dict[str, Any] = {
            "axis": self.axis,
            "sweep": self.sweep,
            "families": json_value(self.families),
            "rate_gain": c.rate_gain if c else None,
            "rate_gain_ci": json_value(c.rate_gain_ci) if c else [None, None],
            "p_value": c.p_value if c else None,
            "p_value_holm": c.p_value_holm if c else None,
            "verdict": (c.verdict if c and c.verdict is not None else "not testable"),
            "comparison": json_value(c),
            "crossover": json_value(self.crossover),
            "n_runs": self.n_runs,
            "n_excluded": sum(self.excluded.values()),
            "excluded": json_value(self.excluded),
            "messages": json_value(self.messages),
            "guards": json_value(self.guards),
            "unreliable": bool(c and c.unreliable),
            "baselines": json_value(self.baselines),
            "fingerprint": self.fingerprint,
            "reused": self.reused,
            "settings": json_value(self.settings),
        }
        if holdout:
            out["holdout"] = json_value(self.holdout)
        if self.tuning:
            out["tuning"] = json_value(self.tuning)
        if self.modality != TEXT:  # text JSON unchanged; video says what its slopes and losses are
            out["modality"] = self.modality
            out["measure"] = self.measure.rate
        return out


# ------------------------------------------------------------------------------------------ LR tuning


@dataclass(frozen=True)
class TunePoint:
    """One point of a ``[tune]`` grid at one level of one family: its coordinates (``point``: the run config's
    ``tune``, e.g. ``{"lr": 0.01}`` or ``{"lr_scale": 2, "lr": 0.006}``), the seeds that ran it, each seed's
    selection loss (``val_select_loss``) and evaluation loss (``val_loss``, the fitted one), their means over
    seeds (None when no run of the point is fit-eligible) and the runs."""

    point: dict[str, Any]
    lr: float | None
    seeds: tuple[int, ...]
    select: tuple[float | None, ...]
    eval: tuple[float | None, ...]
    select_mean: float | None
    eval_mean: float | None
    run_ids: tuple[int, ...]

    def to_json(self) -> dict[str, Any]:
        return _fields_json(self)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> TunePoint:
        return _from(cls, d)


@dataclass(frozen=True)
class TuneLevel:
    """The grid of one (family, level) and the point chosen on it: the lowest mean selection loss over seeds
    (``selection``: ``val_select_loss``, or ``val_loss`` for runs without a selection set, with the winner's
    curse that brings). ``at_edge`` is ``smallest``/``largest`` when the chosen LR is the grid's smallest/largest
    LR (or LR multiplier); ``add_lr`` (and ``add_lr_scale`` on a multiplier grid) is the LR to add there, one grid
    step further. ``best_by_seed``: (seed, LR) each seed alone would pick; ``seeds_disagree`` when they differ."""

    x: float
    points: tuple[TunePoint, ...]
    chosen: int | None
    chosen_lr: float | None
    selection: str
    at_edge: str | None = None
    add_lr: float | None = None
    add_lr_scale: float | None = None
    best_by_seed: tuple[tuple[int, float | None], ...] = ()
    seeds_disagree: bool = False

    @property
    def chosen_point(self) -> TunePoint | None:
        return self.points[self.chosen] if self.chosen is not None else None

    def to_json(self) -> dict[str, Any]:
        return _fields_json(self)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> TuneLevel:
        return _from(cls, d, points=lambda v: tuple(TunePoint.from_json(p) for p in v))


def tuning_from_json(v: dict[str, Any]) -> dict[str, tuple[TuneLevel, ...]]:
    return {fam: tuple(TuneLevel.from_json(lv) for lv in levels) for fam, levels in v.items()}


def seeds_advice(fit: AxisFit) -> str | None:
    """How many seeds per level would narrow the rate gain's 95% interval to the gain's size, from the measured
    seed spread (the interval shrinks about as 1/sqrt(seeds)); None when the interval is already that narrow,
    or when seeds were not replicated at every level (then the seed noise is not measured)."""
    c = fit.comparison
    if c is None or c.rate_gain is None or not c.rate_gain_ci or None in c.rate_gain_ci:
        return None
    gain = abs(c.rate_gain)
    width = c.rate_gain_ci[1] - c.rate_gain_ci[0]
    per_level = [f.seeds_per_level[0] for f in fit.families.values() if f.seeds_per_level]
    if gain <= 0 or width <= gain or not per_level or min(per_level) < 2:
        return None
    n = min(per_level)
    need = math.ceil(round(n * (width / gain) ** 2, 6))
    return (f"Seeds: the rate gain's 95% interval ({width:.3g} wide) is wider than the gain ({c.rate_gain:+.3g}); "
            f"about {need} seeds per level (now {n}) would narrow it to the gain's size - an estimate from the "
            "measured seed spread, assuming the interval shrinks as 1/sqrt(seeds)")
