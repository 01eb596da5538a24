"""Scaling-law fits (pure numpy/scipy): M1 paper-compatible rate, M2 saturating law, comparisons.

Entry points: ``fit_axes`` / ``fit_axis`` on ``AxisData`` (built with ``group_runs`` from stored runs or
``axis_data_from_arrays`` from plain arrays), and ``service.fit_store`` which connects a Store.
"""

from ebt_scaling.fit.axis import AxisFit, FitSettings, adjust_holm, fingerprint, fit_axes, fit_axis
from ebt_scaling.fit.design import AxisData, FamilyData, axis_data_from_arrays, group_runs

__all__ = ["AxisData", "AxisFit", "FamilyData", "FitSettings", "adjust_holm", "axis_data_from_arrays",
           "fingerprint", "fit_axes", "fit_axis", "group_runs"]
