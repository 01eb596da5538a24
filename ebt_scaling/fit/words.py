"""Fit results in plain words and plain numbers, for the report and ``ebt-scale fit``: no ``10^-3.97``.

Built from the typed results' numbers at display time (also for fits stored by an earlier release, whose
``message`` strings keep their old wording in the JSON). Pure stdlib.
"""

from __future__ import annotations

import math
from typing import Any

# how a value of x reads on each axis: "about 1e-4 layers", "width 96"
X_PHRASE = {"data": "{} training tokens", "batch": "a batch of {} tokens", "depth": "{} layers",
            "width": "width {}", "params": "{} parameters", "flops": "{} training FLOPs"}
RANGE_PHRASE = {"data": "{} to {} training tokens", "batch": "batches of {} to {} tokens", "depth": "{} to {} layers",
                "width": "widths {} to {}", "params": "{} to {} parameters", "flops": "{} to {} training FLOPs"}


def plain(v: float) -> str:
    """A number as people write it: 0.25, 3.5, 96, 2,048 up to a million; else 1.2e-4 or 3.1e9 (never 10^x)."""
    if v == 0 or not math.isfinite(v):
        return f"{v:g}"
    if 0.01 <= abs(v) < 999.5:
        return f"{v:.3g}"
    if 999.5 <= abs(v) < 1e6:
        return f"{v:,.0f}"
    mant, _, exp = f"{v:.1e}".partition("e")
    return f"{mant.rstrip('0').rstrip('.')}e{int(exp)}"


def _pow10(log10_x: float) -> str:
    """10**log10_x in plain numbers, also where the float would overflow."""
    return plain(10 ** log10_x) if abs(log10_x) < 300 else f"1e{round(log10_x)}"


def x_words(axis: str, log10_x: float) -> str:
    return X_PHRASE.get(axis, "x = {}").format(_pow10(log10_x))


def crossover_words(cr: Any, axis: str) -> str:
    """Where the two fitted rate lines cross, in words: the point, its 95% interval and whether it lies in the
    measured range ("the lines would cross at about 1e-4 layers, 4.0 decades below the measured 1 to 4: no
    crossover in range"). ``cr`` is a ``fit.results.Crossover``."""
    if cr.log10_x is None or not math.isfinite(cr.log10_x):
        return cr.message or "no crossover: the fitted lines are parallel"
    lo_x, hi_x = (float(v) for v in cr.range)
    measured = "the measured " + RANGE_PHRASE.get(axis, "x = {} to {}").format(plain(lo_x), plain(hi_x))
    at = x_words(axis, cr.log10_x)
    better = {True: "EBT", False: "Transformer++"}.get(cr.ebt_better_above)
    other = {True: "Transformer++", False: "EBT"}.get(cr.ebt_better_above)
    lo, hi = cr.log10_x_ci if cr.log10_x_ci else (None, None)
    if lo is None:
        ci = ""
    elif hi is None or not math.isfinite(hi):
        ci = f"95% interval from {_pow10(lo)} up to never crossing"
    else:
        ci = f"95% interval {_pow10(lo)} to {_pow10(hi)}"
    flips = 1.0 - float(cr.fraction_resamples_same_direction or 0.0)
    if flips > 0:
        ci += (("; " if ci else "") + f"in {flips:.0%} of bootstrap resamples the slope order flips and the lines "
               "never cross")
    if cr.in_range:
        text = f"the fitted rate lines cross at about {at}, inside {measured}"
        text += f": the {better}'s line is lower above it, the {other}'s below" if better else ""
    else:
        below = cr.log10_x < math.log10(lo_x)
        decades = math.log10(lo_x) - cr.log10_x if below else cr.log10_x - math.log10(hi_x)
        far = "far " if decades >= 1 else ""
        text = (f"the fitted rate lines would cross at about {at}, {far}{'below' if below else 'above'} {measured} "
                f"({decades:.1f} decades away): no crossover in range")
        lower = better if below else other  # the side of the crossover the measured range lies on
        text += f"; the {lower}'s line is lower throughout the measured range" if better else ""
    return text + (f" ({ci})" if ci else "") + "."
