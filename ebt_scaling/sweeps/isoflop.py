"""The ``isoflop`` axis (issue 29): which shapes train for how many steps at each compute budget.

For each budget C (training FLOPs), family and shape of the ladder (``axis.values``, smallest first):

* F = the family's own training FLOPs per token of that shape (``models/flops.py``, ``flops_per_token(cfg,
  convention, mode="train")``; ``exact`` by default, the paper's convention as a sensitivity check), so the EBT,
  whose training step runs its inner descent, pays more per token than Transformer++ of the same shape;
* tokens D = C / F, steps = round(D / (batch x context)); the realised budget F x steps x batch x context must lie
  within ``tolerance`` (2%) of C, else the shape is dropped at that budget and the dry run says so; fewer than 3
  shapes left at a (budget, family) is an error;
* the window: ``sizes_per_budget`` consecutive shapes of the ladder, centred (``centre = "predicted"``) on the
  shape nearest the family's predicted optimum, the N with C = F(N) x tokens_per_param x N (Chinchilla's
  D* = 20 N*, with the family's own F instead of 6N, so the EBT's window sits at smaller sizes), or on the middle
  of the ladder (``centre = "ladder"``, the same window at every budget). A window pushed against an end of the
  ladder is not centred; the dry run flags it.
* its own full LR schedule: warm-up = min([train] warmup_steps, max(1, steps // 10)) (Porian et al. 2024: a short
  warm-up; a tenth of a short run), cosine over the run's own steps.
* its peak LR: ``axis.lrs`` (one per shape), else a preset's own peak LR (paper Table D.1), else [train] lr x
  (N / N_first)^-lr_exponent with N_first the params of the ladder's first custom shape (``lr_exponent = 1/3``
  is lr ~ 1/width for shapes whose depth grows with the width, the muP rule for Adam's hidden-layer LR, Yang et al.
  2021, Tensor Programs V; 0, the default, keeps one LR). A ``[tune]`` grid of ``lr_scale`` multiplies it per
  family, as on the params axis (docs/sweeps.md).

Parameters counted by the fit (``counted_params``): every parameter but the input embedding table, i.e. the
non-embedding blocks plus the output head (Porian et al. 2024 count the head; the EBT's vocab_to_embed is its
counterpart), plus the EBT's energy head and step embedding.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from ebt_scaling.config import ModelConfig, get_preset
from ebt_scaling.errors import SpecError
from ebt_scaling.sweeps.tables import SweepSpec

MIN_SIZES_LEFT = 3
FAMILY_ORDER = ("transformer_pp", "ebt")


def counted_params(params: Mapping[str, Any]) -> float:
    """N of the isoflop fit: all parameters but the input embedding (``counted`` when a row gives it directly)."""
    if "counted" in params:
        return float(params["counted"])
    return float(params["total"]) - float(params.get("embedding", 0))


def budget_label(c: float) -> str:
    return f"{c:.3g}".replace("+", "")


@dataclass(frozen=True)
class Shape:
    label: str
    shape: dict[str, int]
    lr: float | None  # None: [train] lr (scaled by lr_exponent)
    batch_size: int | None


@dataclass(frozen=True)
class IsoPoint:
    """One planned (budget, family, shape)."""

    budget: float
    family: str
    label: str
    shape: dict[str, int]
    params: float  # counted
    per_token: float  # F in the budget's convention
    steps: int
    tokens: int
    realised: float
    lr: float
    warmup_steps: int
    batch_size: int


@dataclass(frozen=True)
class IsoPlan:
    points: tuple[IsoPoint, ...]
    notes: tuple[str, ...]  # dropped shapes, windows at a ladder end


def ladder(spec: SweepSpec) -> list[Shape]:
    out = []
    for i, v in enumerate(spec.values):
        lr = spec.lrs[i] if spec.lrs else None
        bs = spec.batch_sizes[i] if spec.batch_sizes else None
        if isinstance(v, dict):
            out.append(Shape(str(v.get("name") or f"L{v['n_layer']}D{v['n_embd']}"),
                             {k: int(v[k]) for k in ("n_layer", "n_embd", "n_head")}, lr, bs))
        else:
            p = get_preset(v)
            out.append(Shape(v, {"n_layer": p.n_layer, "n_embd": p.n_embd, "n_head": p.n_head},
                             lr if lr is not None else p.peak_lr, bs))
    return out


def plan_isoflop(spec: SweepSpec, model_of: Callable[[str, dict[str, int]], ModelConfig],
                 train_base: Mapping[str, Any], seq: int) -> IsoPlan:
    """The points of an isoflop sweep, ordered by budget, family (T++ first), then size. ``model_of(family,
    shape)`` builds the run's ModelConfig (the expansion's, so F is the trained model's)."""
    from ebt_scaling.models.flops import flops_per_token, param_counts

    assert spec.budgets is not None
    rule = spec.isoflop
    k = int(rule.get("sizes_per_budget", 5))
    tol = float(rule.get("tolerance", 0.02))
    tpp = float(rule.get("tokens_per_param", 20.0))
    lr_exp = float(rule.get("lr_exponent", 0.0))
    shapes = ladder(spec)
    fams = [f for f in FAMILY_ORDER if f in spec.families]
    per_fam: dict[str, list[tuple[float, float]]] = {}
    for fam in fams:
        rows = []
        for s in shapes:
            cfg = model_of(fam, s.shape)
            rows.append((counted_params(param_counts(cfg)), float(flops_per_token(cfg, spec.convention, mode="train"))))
        per_fam[fam] = rows
    n_first = next((per_fam[fams[0]][i][0] for i, s in enumerate(shapes) if s.lr is None), None)
    points: list[IsoPoint] = []
    notes: list[str] = []
    for c in sorted(spec.budgets):
        for fam in fams:
            rows = per_fam[fam]
            if rule.get("centre", "predicted") == "ladder":
                centre = (len(shapes) - 1) / 2
            else:  # the shape whose Chinchilla-rule budget tpp x N x F(N) is nearest C (in log)
                centre = min(range(len(shapes)), key=lambda i: abs(math.log(tpp * rows[i][0] * rows[i][1] / c)))
            lo_centred = int(math.floor(centre - (k - 1) / 2 + 1e-9))
            lo = max(0, min(lo_centred, len(shapes) - k))
            first, last = lo, lo + k
            for e_fam, e_budget, side in rule.get("extend", ()):  # --extend-edges: the next shape out
                if e_fam != fam or abs(math.log(float(e_budget) / c)) > 0.05:
                    continue
                if side == "smallest" and first > 0:
                    first -= 1
                elif side == "largest" and last < len(shapes):
                    last += 1
                else:
                    notes.append(f"budget {budget_label(c)} {fam}: cannot extend the window on its {side} side: no "
                                 f"shape beyond the ladder's end; add a {'smaller' if side == 'smallest' else 'larger'}"
                                 " shape to axis.values")
            window = range(first, last)
            if rule.get("centre", "predicted") == "predicted" and lo != lo_centred:
                end = "smallest" if lo > lo_centred else "largest"
                notes.append(f"budget {budget_label(c)} {fam}: predicted optimum {shapes[int(centre)].label} is near "
                             f"the ladder's {end} end, so the window is not centred on it; add "
                             f"{'smaller' if end == 'smallest' else 'larger'} shapes to axis.values")
            kept = 0
            for i in window:
                s = shapes[i]
                n, f = rows[i]
                bs = int(s.batch_size or train_base["batch_size"])
                per_step = bs * seq
                steps = round(c / (f * per_step))
                realised = f * steps * per_step
                if steps < 1 or abs(realised / c - 1) > tol:
                    notes.append(f"budget {budget_label(c)} {fam}: {s.label} dropped: {steps} steps of {per_step} "
                                 f"tokens realise {realised:.3g} FLOPs, {realised / c - 1:+.1%} off the budget "
                                 f"(tolerance {tol * 100:g}%); raise the budget or lower the batch")
                    continue
                if s.lr is not None:
                    lr = float(s.lr)
                else:
                    lr = float(train_base["lr"])
                    if lr_exp and n_first:
                        lr = float(f"{lr * (n / n_first) ** -lr_exp:.6g}")
                warm = min(int(train_base.get("warmup_steps", 0)), max(1, steps // 10))
                points.append(IsoPoint(float(c), fam, s.label, dict(s.shape), n, f, int(steps), int(steps * per_step),
                                       realised, lr, warm, bs))
                kept += 1
            if kept < MIN_SIZES_LEFT:
                raise SpecError(f"{spec.source}: axis.budgets: budget {budget_label(c)} keeps {kept} shape(s) for "
                                f"{fam} within {tol * 100:g}% of the budget (at least {MIN_SIZES_LEFT}); raise the "
                                "budget or lower [train] batch_size so each run has more steps")
    return IsoPlan(tuple(points), tuple(notes))


def plan_lines(spec: SweepSpec, runs: list[Any]) -> list[str]:
    """The dry run's isoflop table: per budget and family the shapes, steps, tokens and realised C (one line
    per budget and family), then the notes (dropped shapes, windows at a ladder end)."""
    if spec.axis != "isoflop":
        return []
    seen: dict[tuple[float, str], list[str]] = {}
    worst = 0.0
    budgets = sorted(spec.budgets or ())
    for r in runs:
        cfg = r.planned.config
        b = cfg.get("isoflop", {}).get("budget")
        if b is None:
            continue
        key = (float(b), r.planned.family)
        item = f"{r.label.split('@')[0]} {r.spec.train.steps}st {r.planned.x:.3g}"
        if item not in seen.setdefault(key, []):
            seen[key].append(item)
        worst = max(worst, abs(r.planned.x / float(b) - 1))
    lines = [f"isoflop: budgets {', '.join(budget_label(b) for b in budgets)} FLOPs ({spec.convention} convention); "
             "per budget and family: shape steps realised-C"]
    for (b, fam), items in sorted(seen.items()):
        lines.append(f"  C={budget_label(b)} {fam}: " + "; ".join(items))
    lines.append(f"  largest |realised C / budget - 1|: {worst:.2%}")
    return lines


def extensions_from_guards(guards: list[dict[str, Any]]) -> list[list[Any]]:
    """``[family, budget, side]`` for every ``edge_minimum`` guard of a stored isoflop fit (``--extend-edges``)."""
    out = []
    for g in guards:
        if g.get("code") != "edge_minimum" or g.get("budget") is None:
            continue
        side = "smallest" if "smallest" in str(g.get("message", "")) else "largest"
        out.append([g.get("family"), float(g["budget"]), side])
    return out

