"""Pure part of System-2 thinking: metric names, the passes convention and the paper's derived metrics.

Counting convention (the paper's, ebt-paper.md section 16.2): **forward passes per prediction =
inner steps x samples**. Each inner step is one energy evaluation plus its gradient; best-of-N runs N
independent descents; the one extra no-grad energy evaluation per sample that scores the final candidates
is *not* counted. A Transformer++ makes one pass whatever the budget, so its curve is flat; it is stored at
the same budgets as the EBTs for comparison.

Metric series stored per run (``step`` of the MetricPoint in brackets):

* ``think/ppl/split=SPLIT/samples=N``  [passes]  perplexity = exp(token-mean CE of the minimum-energy
  candidate). SPLIT is ``val`` (the run's own validation split) or ``ood:NAME`` (an out-of-distribution
  corpus encoded with the run's tokenizer).
* ``think/energy/split=val``  [k]  mean energy of sample 0 after k inner steps (k = 0: the initial noise
  candidate), at the largest step count of the grid.
* ``think/token_energy/k=K``  [position]  energy of one sample sentence (validation batch 0, row 0) after
  K steps, per predicted position; ``think/token_target`` [position] holds the predicted token id.
* ``think/summary/NAME``  [0]  derived numbers: ``base_steps``, ``gain_longer/split=S``,
  ``gain_verify/split=S``, ``gain_max/split=S``, ``ood_magnitude``.

Video runs (issue 31.5) report SmoothL1, never under a ``ppl`` name: ``think/loss/split=SPLIT/samples=N`` [passes]
holds the frame-mean SmoothL1 of the minimum-energy candidate (OOD splits ``ood:synthetic-video-shift`` or
``ood:store:NAME``), ``think/frame_energy/k=K`` [position] the energies of one validation clip's predicted frames,
``think/summary/copy_loss/split=S`` and ``mean_loss/split=S`` the copy-last-frame and mean-embedding baselines on
the same windows. The gains and the OOD magnitude are the same formulas on SmoothL1 (lower is better in both).

Gains are the paper's "% perplexity improvement" relative to the EBT's own baseline setting, which here is
its trained validation step count (``ModelConfig.eval_steps``; 3 for ebt_s2, 2 for ebt_s1) with one sample:
gain = (ppl_base - ppl) / ppl_base (positive = thinking helped). ``gain_longer``: best over more steps
with one sample; ``gain_verify``: best-of-N (N > 1) at the baseline step count; ``gain_max``: best over
every setting with at least the baseline's passes. OOD magnitude = ppl_ood(base) / ppl_val(base).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from ebt_scaling.errors import ConfigError

PREFIX = "think/"
_PPL = re.compile(r"^think/ppl/split=(?P<split>.+)/samples=(?P<n>\d+)$")
_CURVE = re.compile(r"^think/(?P<q>ppl|loss)/split=(?P<split>.+)/samples=(?P<n>\d+)$")
MEASURES = {"ppl": "perplexity", "smooth_l1": "SmoothL1"}  # think_measure -> its name in words


def ppl_name(split: str, samples: int) -> str:
    return f"think/ppl/split={split}/samples={samples}"


def parse_ppl_name(name: str) -> tuple[str, int] | None:
    m = _PPL.match(name)
    return (m.group("split"), int(m.group("n"))) if m else None


def loss_name(split: str, samples: int) -> str:
    """A video run's SmoothL1 series (the neutral twin of ``ppl_name``: a loss, not a perplexity)."""
    return f"think/loss/split={split}/samples={samples}"


def curve_name(measure: str, split: str, samples: int) -> str:
    """The series of ``measure`` ("ppl" or "smooth_l1", ``Modality.think_measure``) for one split and sample count."""
    return ppl_name(split, samples) if measure == "ppl" else loss_name(split, samples)


def parse_curve_name(name: str) -> tuple[str, str, int] | None:
    """``think/ppl/...`` -> ("ppl", split, N); ``think/loss/...`` -> ("smooth_l1", split, N); else None."""
    m = _CURVE.match(name)
    if not m:
        return None
    return ("ppl" if m.group("q") == "ppl" else "smooth_l1"), m.group("split"), int(m.group("n"))


def frame_energy_name(k: int) -> str:
    return f"think/frame_energy/k={k}"


def energy_name(split: str = "val") -> str:
    return f"think/energy/split={split}"


def token_energy_name(k: int) -> str:
    return f"think/token_energy/k={k}"


TOKEN_TARGET = "think/token_target"


def summary_name(what: str, split: str | None = None) -> str:
    return f"think/summary/{what}" + (f"/split={split}" if split else "")


def passes(steps: int, samples: int) -> int:
    """Forward passes per prediction under the paper's convention (the scoring pass is not counted)."""
    return steps * samples


def parse_int_list(text: str, option: str) -> list[int]:
    """``"1,2,3,6"`` -> [1, 2, 3, 6] (sorted, unique, each >= 1); a bad list raises ConfigError."""
    try:
        vals = sorted({int(t) for t in text.split(",") if t.strip()})
    except ValueError:
        raise ConfigError(f"{option}: {text!r} is not a comma-separated list of integers; use e.g. 1,2,3,6") from None
    if not vals or vals[0] < 1:
        raise ConfigError(f"{option}: {text!r} needs integers >= 1; use e.g. 1,2,3,6")
    if vals[-1] > 64:
        raise ConfigError(f"{option}: {vals[-1]} is too large (at most 64); use a shorter list")
    return vals


def improvement(base: float, value: float) -> float:
    """The paper's % perplexity improvement as a fraction: (base - value) / base (positive = better)."""
    if not (math.isfinite(base) and math.isfinite(value)) or base <= 0:
        return math.nan
    return (base - value) / base


@dataclass(frozen=True)
class Gains:
    base_ppl: float
    longer: float  # best over more inner steps, one sample (nan if the grid has no such setting)
    verify: float  # best-of-N (N > 1) at the baseline step count
    max: float  # best over every setting with passes >= the baseline's
    # the (steps, samples) setting that gave each (None where there is none)
    longer_at: tuple[int, int] | None = None
    verify_at: tuple[int, int] | None = None
    max_at: tuple[int, int] | None = None


def gains(ppl: Mapping[tuple[int, int], float], base_steps: int) -> Gains:
    """``ppl`` maps (steps, samples) -> perplexity of one split; the baseline is (base_steps, 1)."""
    if (base_steps, 1) not in ppl:
        raise ConfigError(f"think: the baseline setting ({base_steps} steps, 1 sample) was not evaluated")
    base = ppl[(base_steps, 1)]

    def best(keys: Iterable[tuple[int, int]]) -> tuple[float, tuple[int, int] | None]:
        vals = sorted((ppl[k], k) for k in keys if math.isfinite(ppl[k]))
        return vals[0] if vals else (math.nan, None)

    longer, l_at = best(k for k in ppl if k[0] > base_steps and k[1] == 1)
    verify, v_at = best(k for k in ppl if k[0] == base_steps and k[1] > 1)
    mx, m_at = best(k for k in ppl if passes(*k) >= base_steps)
    return Gains(base, improvement(base, longer), improvement(base, verify), improvement(base, mx), l_at, v_at, m_at)


def setting_label(at: tuple[int, int] | None) -> str | None:
    """``(steps, samples)`` -> ``"steps=6"``, ``"samples=5"`` at 1 step... : the setting in words."""
    if at is None:
        return None
    k, n = at
    return f"steps={k}" + (f" x samples={n}" if n > 1 else "")


def setting_words(at: tuple[int, int] | None) -> str | None:
    """``(4, 8)`` -> ``"4 steps x best-of-8"``, ``(6, 1)`` -> ``"6 steps"``: a setting for the summary line."""
    if at is None:
        return None
    k, n = at
    return f"{k} step{'s' if k != 1 else ''}" + (f" x best-of-{n}" if n > 1 else "")


def ood_magnitude(ppl_ood_base: float, ppl_val_base: float) -> float:
    """Distribution shift as in the paper: OOD perplexity / in-distribution perplexity (same setting)."""
    if not (math.isfinite(ppl_ood_base) and math.isfinite(ppl_val_base)) or ppl_val_base <= 0:
        return math.nan
    return ppl_ood_base / ppl_val_base


def curve(points: Sequence[tuple[int, float]]) -> tuple[list[int], list[float]]:
    """(passes, ppl) points sorted by passes, for plotting."""
    pts = sorted(points)
    return [p for p, _ in pts], [v for _, v in pts]
