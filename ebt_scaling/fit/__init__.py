"""Scaling-law fits (pure numpy/scipy): M1 paper-compatible rate, M2 saturating law, comparisons.

Entry points: ``fit_axes`` / ``fit_axis`` on ``AxisData`` (built with ``group_runs`` from stored runs or
``axis_data_from_arrays`` from plain arrays), and ``service.fit_store`` which connects a Store. Results are
the frozen dataclasses of ``fit.results`` (``AxisFit`` and its parts), turned into JSON only by their
``to_json`` (database rows, ``ebt-scale fit --json``).
"""

from ebt_scaling.fit.axis import FitSettings, adjust_holm, fingerprint, fit_axes, fit_axis
from ebt_scaling.fit.design import (
    AxisData,
    FamilyData,
    axis_data_from_arrays,
    exclusion_reason,
    group_runs,
    run_modality,
)
from ebt_scaling.fit.results import (
    AxisFit,
    Band,
    Comparison,
    Crossover,
    FamilyFit,
    FamilyPlot,
    Guard,
    LawFit,
    LawHoldout,
    LineHoldout,
)
from ebt_scaling.fit.words import crossover_words, plain

__all__ = ["AxisData", "AxisFit", "Band", "Comparison", "Crossover", "FamilyData", "FamilyFit", "FamilyPlot",
           "FitSettings", "Guard", "LawFit", "LawHoldout", "LineHoldout", "adjust_holm", "axis_data_from_arrays",
           "crossover_words", "exclusion_reason", "fingerprint", "fit_axes", "fit_axis", "group_runs", "plain",
           "run_modality"]
