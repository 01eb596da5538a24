"""Which runs a fit may use, grouped per (sweep, axis) and family, and how the bootstrap resamples them.

Pure numpy. A *point* is one fit-eligible run: (family, x, seed, y = the fitted transform of its final validation
loss). Everything else is counted as an exclusion with a reason, so the output can say what was left out.

The modality of an axis is read here, once, from its runs (``run_modality``: a run is video when its config's
``model.frame_dim`` is set) and carried as ``AxisData.measure`` (``fit/results.py``, ``Measure``): text fits the
loss in nats (= ln perplexity), video ln(SmoothL1), so the M1 slope is the paper's log-log slope either way. An axis
mixing the two is refused: there is no one measure to fit.
"""

from __future__ import annotations

import math
import warnings
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ebt_scaling.config import FAMILIES
from ebt_scaling.errors import ConfigError
from ebt_scaling.fit.results import LABELS, TEXT, TEXT_MEASURE, VIDEO, Measure, measure_of
from ebt_scaling.fit.tuning import split_tuned, tuning_messages
from ebt_scaling.records import plausible_loss_bound

EBT = "ebt"
TPP = "transformer_pp"


@dataclass(frozen=True)
class FamilyData:
    """The fit-eligible points of one family on one axis, sorted by (x, seed, run id)."""

    family: str
    x: np.ndarray  # (n,) > 0
    y: np.ndarray  # (n,) the fitted y: validation loss in nats (text), ln of the validation SmoothL1 (video)
    seed: np.ndarray  # (n,)
    run_id: np.ndarray  # (n,)
    measure: Measure = TEXT_MEASURE

    @property
    def loss(self) -> np.ndarray:
        """The validation loss itself (nats, or SmoothL1): what the saturating law and the baselines are in."""
        return np.exp(self.y) if self.measure.log_loss else self.y

    @property
    def n(self) -> int:
        return int(self.x.size)

    @property
    def levels(self) -> np.ndarray:
        return np.unique(self.x)

    @property
    def n_levels(self) -> int:
        return int(self.levels.size)

    def cells(self) -> list[np.ndarray]:
        """Index arrays of the points sharing one x value (one cell = the seeds of one level)."""
        _, inverse = np.unique(self.x, return_inverse=True)
        return [np.flatnonzero(inverse == k) for k in range(int(inverse.max()) + 1)] if self.n else []


@dataclass(frozen=True)
class AxisData:
    sweep: str
    axis: str
    families: dict[str, FamilyData]
    excluded: dict[str, int] = field(default_factory=dict)  # reason -> count
    messages: tuple[str, ...] = ()
    # per family, text: {"unigram": nats or None, "uniform": ln V or None} (the loss of a model that learned nothing
    # beyond token frequencies / nothing at all), from the runs' stored ``unigram_loss`` and vocabulary size;
    # video: {"copy": SmoothL1 of repeating the last frame, "mean": of predicting the mean embedding}, from the runs'
    # stored ``copy_loss`` and ``mean_loss``
    baselines: dict[str, dict[str, float | None]] = field(default_factory=dict)
    # identities of the runs behind the points (config hashes: a run shared by two sweeps or axes is one row,
    # linked to each), used to tell which axes share runs (params and flops) and so are one test in a Holm family
    run_keys: frozenset[str] = frozenset()
    # a [tune] sweep's axis: per family its grid per level and the chosen points (fit/tuning.py); the families'
    # points are then the chosen runs only (the LR envelope). Empty for untuned runs.
    tuning: dict[str, tuple[Any, ...]] = field(default_factory=dict)
    measure: Measure = TEXT_MEASURE  # what is fitted: text (nats) or video (ln SmoothL1), from the runs' configs

    @property
    def n_runs(self) -> int:
        return sum(f.n for f in self.families.values())

    @property
    def n_excluded(self) -> int:
        return sum(self.excluded.values())

    def run_ids(self) -> tuple[int, ...]:
        return tuple(sorted(int(i) for f in self.families.values() for i in f.run_id))


# nats per token (text) or SmoothL1 of standardised embeddings (video, where the copy baseline is of order 1):
# squares of larger residuals overflow; no run, even diverging, is useful there
MAX_FIT_LOSS = 1e6


def run_modality(run: Any) -> str:
    """``video`` when the run's config sets ``model.frame_dim`` (the per-frame embedding size), else ``text``."""
    cfg = getattr(run, "config", None)
    model = cfg.get("model") if isinstance(cfg, dict) else None
    return VIDEO if isinstance(model, dict) and model.get("frame_dim") is not None else TEXT


def exclusion_reason(run: Any) -> str | None:
    """Why a stored run cannot enter a fit, or None when it can. ``run`` is a RunRecord (duck-typed). The
    imported-loss plausibility bound (ln V + 2 nats) is a text rule: a SmoothL1 has no vocabulary."""
    if run.status != "completed":
        return f"status {run.status}"
    if not getattr(run, "fit_eligible", False):
        return f"not fit-eligible ({run.reason})" if getattr(run, "reason", None) else "not fit-eligible"
    if run.family not in FAMILIES:
        return f"unknown family {run.family}"
    y = run.final_val_loss
    if y is None or not math.isfinite(y):
        return "no finite final validation loss"
    if y <= 0:
        return "non-positive validation loss"
    video = run_modality(run) == VIDEO
    if y > MAX_FIT_LOSS:
        unit = "SmoothL1" if video else "nats per token"
        return f"validation loss above {MAX_FIT_LOSS:.0e} {unit} (numerically unusable)"
    if not video and getattr(run, "source", None) == "imported" and y > plausible_loss_bound(_run_vocab(run)):
        return ("implausible imported validation loss (above ln(vocab_size) + 2 nats, or 20 without a vocabulary; "
                "imported with --allow-outliers)")
    if run.x is None or not math.isfinite(run.x):
        return "x missing or not finite"
    if run.x <= 0:
        return "non-positive x (log undefined)"
    return None


def group_runs(runs: Iterable[Any]) -> dict[tuple[str, str], AxisData]:
    """Group stored runs by (sweep, axis); keep fit-eligible ones as points and count the rest."""
    buckets: dict[tuple[str, str], list[Any]] = {}
    for r in runs:
        buckets.setdefault((r.sweep, r.axis), []).append(r)
    out: dict[tuple[str, str], AxisData] = {}
    for key in sorted(buckets):
        out[key] = axis_data_from_runs(key[0], key[1], buckets[key])
    return out


def axis_modality(sweep: str, axis: str, runs: list[Any]) -> Measure:
    """The one measure of an axis's runs; a mix of text and video runs is refused (ConfigError, one line)."""
    kinds = Counter(run_modality(r) for r in runs)
    if len(kinds) > 1:
        raise ConfigError(f"sweep {sweep!r}, axis {axis!r} mixes {kinds[TEXT]} text and {kinds[VIDEO]} video runs: a "
                          "fit compares one loss; run (or import) them into separate sweeps")
    return measure_of(next(iter(kinds), TEXT))


def axis_data_from_runs(sweep: str, axis: str, runs: Iterable[Any]) -> AxisData:
    keep: dict[str, list[tuple[float, int, int, float]]] = {}
    unigram: dict[str, list[float]] = {}
    vocab: dict[str, list[int]] = {}
    video_base: dict[str, dict[str, list[float]]] = {}
    keys: set[str] = set()
    excluded: Counter[str] = Counter()
    runs = list(runs)
    measure = axis_modality(sweep, axis, runs)
    eligible = {int(r.id) for r in runs if exclusion_reason(r) is None}
    fitted, tuning = split_tuned(runs, eligible)
    chosen = {id(r) for r in fitted}
    for r in runs:
        why = exclusion_reason(r)
        if why is not None:
            excluded[why] += 1
            continue
        if id(r) not in chosen:  # a grid point not chosen for its (family, level): in the tuning block only
            continue
        loss = float(r.final_val_loss)
        keep.setdefault(r.family, []).append((float(r.x), int(r.seed), int(r.id),
                                              math.log(loss) if measure.log_loss else loss))
        extra = getattr(r, "extra_metrics", None) or {}
        if getattr(r, "config_hash", None):
            keys.add(f"config:{r.config_hash}")
        if measure.modality == VIDEO:
            for key in measure.baselines:
                b = extra.get(f"{key}_loss")
                if b is not None and math.isfinite(b) and b > 0:
                    video_base.setdefault(r.family, {}).setdefault(key, []).append(float(b))
            continue
        u = extra.get("unigram_loss")
        if u is not None and math.isfinite(u) and u > 0:
            unigram.setdefault(r.family, []).append(float(u))
        v = _vocab_size(r)
        if v:
            vocab.setdefault(r.family, []).append(v)
    families = {fam: _family(fam, rows, measure) for fam, rows in sorted(keep.items())}
    if measure.modality == VIDEO:
        baselines = {fam: {k: float(np.median(video_base[fam][k])) if k in video_base.get(fam, {}) else None
                           for k in measure.baselines} for fam in families}
    else:
        baselines = {fam: {"unigram": float(np.median(unigram[fam])) if fam in unigram else None,
                           "uniform": math.log(float(np.median(vocab[fam]))) if fam in vocab else None}
                     for fam in families}
    messages = []
    if excluded.get("non-positive x (log undefined)"):
        messages.append(f"{excluded['non-positive x (log undefined)']} run(s) with x <= 0 left out: "
                        "a log-log fit needs positive x")
    if tuning:
        messages += tuning_messages(tuning, LABELS)
    return AxisData(sweep, axis, families, dict(sorted(excluded.items())), tuple(messages), baselines,
                    frozenset(keys), tuning, measure)


def _run_vocab(run: Any) -> float | None:
    """The run's vocabulary: its config's, else an imported ``vocab_size`` column."""
    v = _vocab_size(run)
    if v is None:
        u = (getattr(run, "extra_metrics", None) or {}).get("vocab_size")
        v = u if isinstance(u, (int, float)) and math.isfinite(u) and u >= 2 else None
    return v


def _vocab_size(run: Any) -> int | None:
    cfg = getattr(run, "config", None) or {}
    model = cfg.get("model") if isinstance(cfg, dict) else None
    v = model.get("vocab_size") if isinstance(model, dict) else None
    return int(v) if isinstance(v, int) and v >= 2 else None


def axis_data_from_arrays(family: Iterable[str], x: Iterable[float], y: Iterable[float],
                          seed: Iterable[int] | None = None, *, sweep: str = "synthetic",
                          axis: str = "axis", unigram_loss: float | None = None, modality: str = TEXT,
                          copy_loss: float | None = None, mean_loss: float | None = None) -> AxisData:
    """Build AxisData from plain arrays (tests, benchmarks, analysis recipes). Non-positive x or y are
    counted as exclusions exactly as for stored runs. ``unigram_loss`` (nats) is the corpus's unigram
    baseline, stored with every run as trained runs store it. ``modality="video"``: ``y`` is the validation
    SmoothL1, with the copy-last-frame and mean-embedding baselines ``copy_loss`` and ``mean_loss``."""
    fam = list(family)
    xs = [float(v) for v in x]
    ys = [float(v) for v in y]
    sd = list(seed) if seed is not None else [0] * len(xs)
    if not (len(fam) == len(xs) == len(ys) == len(sd)):
        raise ValueError("family, x, y and seed must have the same length")

    @dataclass
    class _Run:
        id: int
        family: str
        x: float
        y: float
        seed: int
        status: str = "completed"
        fit_eligible: bool = True
        reason: str | None = None
        extra_metrics: dict[str, float] = field(default_factory=dict)
        config: dict[str, Any] = field(default_factory=dict)

        @property
        def final_val_loss(self) -> float:
            return self.y

    measure_of(modality)  # an unknown modality is a KeyError here, not a text fit
    extra = {k: float(v) for k, v in (("unigram_loss", unigram_loss), ("copy_loss", copy_loss),
                                      ("mean_loss", mean_loss)) if v is not None}
    config: dict[str, Any] = {"model": {"frame_dim": 1}} if modality == VIDEO else {}
    runs = [_Run(i + 1, f, xv, yv, int(s), extra_metrics=extra, config=config)
            for i, (f, xv, yv, s) in enumerate(zip(fam, xs, ys, sd, strict=True))]
    return axis_data_from_runs(sweep, axis, runs)


def _family(fam: str, rows: list[tuple[float, int, int, float]], measure: Measure = TEXT_MEASURE) -> FamilyData:
    rows.sort()
    arr = np.array(rows, dtype=float).reshape(-1, 4)
    return FamilyData(fam, arr[:, 0].copy(), arr[:, 3].copy(), arr[:, 1].astype(int), arr[:, 2].astype(int), measure)


# ---------------------------------------------------------------------------------------------------------
# Bootstrap designs
# ---------------------------------------------------------------------------------------------------------

STRATIFIED = "stratified seed bootstrap"
PARAMETRIC = "parametric bootstrap (one seed per level: Gaussian noise, sigma^2 drawn from its inverse chi-square law)"
MIXED = "stratified seed bootstrap + parametric noise for single-seed levels"


def bootstrap_kind(fd: FamilyData) -> str:
    """Stratified when every level has >= 2 seeds; parametric when every level has one seed; else mixed."""
    sizes = [c.size for c in fd.cells()]
    if all(s >= 2 for s in sizes):
        return STRATIFIED
    if all(s == 1 for s in sizes):
        return PARAMETRIC
    return MIXED


def stratified_resample(fd: FamilyData, values: np.ndarray, B: int, rng: np.random.Generator) -> np.ndarray:
    """Resample seeds with replacement inside each level; returns (B, n) resampled ``values``.

    Two small-sample corrections, both about the seed noise sigma being estimated from few seeds:
    - a plain within-cell bootstrap shrinks the variance of a cell with k seeds by (k-1)/k, so resampled
      deviations from the cell mean are scaled by sqrt(k/(k-1));
    - sigma is known only to df = sum(k - 1) degrees of freedom, so each resample's deviations are scaled by a
      common factor sqrt(df / chi2_df) (the scaled inverse chi-square law of sigma^2 given its estimate). For a
      straight-line slope this turns the normal-like percentile interval into a Student-t-like one, as the
      parametric bootstrap does for single-seed designs.
    Single-seed levels (mixed designs) get Gaussian noise with the family's pooled within-level sd times the
    same factor.
    """
    out = np.empty((B, fd.n))
    cells = fd.cells()
    pooled_ss, pooled_df = 0.0, 0
    for c in cells:
        if c.size >= 2:
            v = values[c]
            pooled_ss += float(((v - v.mean()) ** 2).sum())
            pooled_df += c.size - 1
    pooled_sd = math.sqrt(pooled_ss / pooled_df) if pooled_df else 0.0
    df = max(pooled_df, 1)
    factor = np.sqrt(df / rng.chisquare(df, size=(B, 1)))
    for c in cells:
        v = values[c]
        k = c.size
        if k == 1:
            out[:, c] = v[0] + pooled_sd * factor * rng.standard_normal((B, 1))
            continue
        idx = rng.integers(0, k, size=(B, k))
        m = v.mean()
        out[:, c] = m + math.sqrt(k / (k - 1)) * factor * (v[idx] - m)
    return out


def parametric_resample(fitted: np.ndarray, resid: np.ndarray, n_params: float, B: int,
                        rng: np.random.Generator) -> np.ndarray:
    """Parametric bootstrap for one seed per level: fitted + N(0, sigma*^2) with sigma*^2 = s^2 df / chi2_df
    (s^2 = residual variance, df = n - p; the scaled inverse chi-square law of sigma^2 given s^2). Then
    slope* - slope = s Z / sqrt(chi2_df / df) / sqrt(Sxx) is exactly Student-t, so the percentile interval of a
    straight-line slope is the t interval; a plain residual bootstrap is too narrow with 4-6 points.
    ``fitted`` may have more points than ``resid`` (the fit's own residuals), e.g. a held-out level to
    predict. Returns (B, fitted.size)."""
    df = max(resid.size - n_params, 1.0)
    s2 = float((resid**2).sum()) / df
    sigma = np.sqrt(s2 * df / rng.chisquare(df, size=(B, 1)))
    return fitted[None, :] + sigma * rng.standard_normal((B, fitted.size))


def percentile_ci(samples: np.ndarray, level: float = 0.95, axis: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Percentile interval ignoring non-finite resamples."""
    q = (1.0 - level) / 2.0
    samples = np.asarray(samples, dtype=float)
    if samples.size == 0:
        nan = np.full(np.delete(samples.shape, axis), np.nan) if samples.ndim > 1 else np.float64(np.nan)
        return nan, nan
    if np.isfinite(samples).all():
        lo, hi = np.quantile(samples, [q, 1.0 - q], axis=axis)
        return lo, hi
    clean = np.where(np.isfinite(samples), samples, np.nan)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN slices -> NaN
        lo = np.nanquantile(clean, q, axis=axis)
        hi = np.nanquantile(clean, 1.0 - q, axis=axis)
    return lo, hi
