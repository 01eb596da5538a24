"""``think_sweep(store, sweep, ...)``: completed runs of a sweep -> thinking metric series in the store.

Takes a Store object (never opens one) and imports torch only inside ``think_sweep`` through
``evaluate``; the CLI (``ebt-scale think``) opens the store and prints.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ebt_scaling.errors import ConfigError, DataError, NotFound
from ebt_scaling.records import MetricPoint
from ebt_scaling.think import metrics as tm

if TYPE_CHECKING:
    from ebt_scaling.db.store import Store


@dataclass
class RunOutcome:
    run_id: int
    family: str
    label: str
    status: str  # "done" | "skipped"
    message: str | None = None
    summary: dict[str, Any] = field(default_factory=dict)


def run_label(run: Any) -> str:
    recipe = (run.config or {}).get("recipe")
    fam = run.family + (f" {recipe}" if recipe else "")
    return f"run {run.id} ({fam}, {run.axis}={run.x:g}, seed {run.seed})"


def points_for(res: Any) -> list[MetricPoint]:
    """Metric points of one ``RunThinking`` (names in ``metrics``): perplexity series for text runs, SmoothL1
    (``think/loss/...``) and per-frame energies for video runs."""
    pts: list[MetricPoint] = []
    measure = res.val.measure
    splits = [("val", res.val)] + ([(f"ood:{res.ood_source}", res.ood)] if res.ood is not None else [])
    budgets = sorted({tm.passes(k, n) for (k, n) in res.val.values})
    for split, sr in splits:
        if res.family == "ebt":
            for (k, n), v in sr.values.items():
                pts.append(MetricPoint(tm.curve_name(measure, split, n), tm.passes(k, n), v))
        else:  # one pass whatever the budget: the flat baseline, drawn at the EBT budgets
            flat = {v for v in sr.values.values()}
            assert len(flat) == 1, flat
            v = flat.pop()
            pts.extend(MetricPoint(tm.curve_name(measure, split, 1), p, v) for p in budgets)
        for name, v in sr.baselines.items():  # video: copy and mean baselines on the same windows
            pts.append(MetricPoint(tm.summary_name(name, split), 0, v))
    if res.family == "ebt":
        energy_row = tm.token_energy_name if measure == "ppl" else tm.frame_energy_name
        pts.extend(MetricPoint(tm.energy_name("val"), k, e) for k, e in enumerate(res.val.energy_steps))
        for k, row in enumerate(res.val.token_energy):
            pts.extend(MetricPoint(energy_row(k), i, e) for i, e in enumerate(row))
        pts.extend(MetricPoint(tm.TOKEN_TARGET, i, float(t)) for i, t in enumerate(res.val.token_target))
        pts.append(MetricPoint(tm.summary_name("base_steps"), 0, float(res.base_steps)))
        for split, sr in splits:
            g = tm.gains(sr.values, res.base_steps)
            pts.append(MetricPoint(tm.summary_name("gain_longer", split), 0, g.longer))
            pts.append(MetricPoint(tm.summary_name("gain_verify", split), 0, g.verify))
            pts.append(MetricPoint(tm.summary_name("gain_max", split), 0, g.max))
    if res.ood is not None:
        base = (res.base_steps, 1)
        pts.append(MetricPoint(tm.summary_name("ood_magnitude"), 0,
                               tm.ood_magnitude(res.ood.values[base], res.val.values[base])))
    return pts


def summarise(res: Any) -> dict[str, Any]:
    if res.val.measure != "ppl":
        return _summarise_loss(res)
    base = (res.base_steps, 1)
    out: dict[str, Any] = {"base_steps": res.base_steps, "val_ppl_base": res.val.ppl[base],
                           "val_ppl": {f"{k}x{n}": v for (k, n), v in sorted(res.val.ppl.items())},
                           "ood_source": res.ood_source, "tokens_per_split": res.val.tokens}
    if res.family == "ebt":
        g = tm.gains(res.val.ppl, res.base_steps)
        out.update(val_gain_longer=g.longer, val_gain_verify=g.verify, val_gain_max=g.max,
                   val_longer_at=tm.setting_label(g.longer_at), val_verify_at=tm.setting_label(g.verify_at),
                   val_max_at=tm.setting_label(g.max_at), energy_steps=res.val.energy_steps)
    if res.ood is not None:
        out["ood_ppl_base"] = res.ood.ppl[base]
        out["ood_ppl"] = {f"{k}x{n}": v for (k, n), v in sorted(res.ood.ppl.items())}
        out["ood_magnitude"] = tm.ood_magnitude(res.ood.ppl[base], res.val.ppl[base])
        if res.family == "ebt":
            g = tm.gains(res.ood.ppl, res.base_steps)
            out.update(ood_gain_longer=g.longer, ood_gain_verify=g.verify, ood_gain_max=g.max,
                       ood_max_at=tm.setting_label(g.max_at))
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in out.items()}


def _summarise_loss(res: Any) -> dict[str, Any]:
    """The summary of a video run: SmoothL1 (``val_loss*``, ``ood_loss*``; lower is better), the copy and mean
    baselines on the same windows, gains as for text, settings in words (``"4 steps x best-of-8"``)."""
    base = (res.base_steps, 1)
    out: dict[str, Any] = {"measure": res.val.measure, "base_steps": res.base_steps,
                           "val_loss_base": res.val.loss[base],
                           "val_loss": {f"{k}x{n}": v for (k, n), v in sorted(res.val.loss.items())},
                           "ood_source": res.ood_source, "frames_per_split": res.val.tokens,
                           **{f"val_{k}": v for k, v in res.val.baselines.items()}}
    splits = [("val", res.val)] + ([("ood", res.ood)] if res.ood is not None else [])
    for pre, sr in splits:
        if pre == "ood":
            out.update(ood_loss_base=sr.loss[base], ood_loss={f"{k}x{n}": v for (k, n), v in sorted(sr.loss.items())},
                       ood_magnitude=tm.ood_magnitude(sr.loss[base], res.val.loss[base]),
                       **{f"ood_{k}": v for k, v in sr.baselines.items()})
        if res.family == "ebt":
            g = tm.gains(sr.loss, res.base_steps)
            out.update({f"{pre}_gain_longer": g.longer, f"{pre}_gain_verify": g.verify, f"{pre}_gain_max": g.max,
                        f"{pre}_longer_at": tm.setting_words(g.longer_at),
                        f"{pre}_verify_at": tm.setting_words(g.verify_at), f"{pre}_max_at": tm.setting_words(g.max_at)})
    if res.family == "ebt":
        out["energy_steps"] = res.val.energy_steps
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in out.items()}


def think_sweep(store: Store, sweep: str, *, steps: Sequence[int], samples: Sequence[int], ood: str | None,
                n_batches: int, batch_size: int | None = None, seed: int = 0, device: str = "cpu",
                on_message: Callable[[str], None] | None = None,
                on_batch: Callable[[str, str, int], None] | None = None) -> list[RunOutcome]:
    """Evaluate every completed run of ``sweep`` and store its series; runs that cannot be evaluated
    (no checkpoint, missing corpus) are reported and skipped. Raises ``NotFound`` when the sweep has no
    completed run."""
    from ebt_scaling.config import RunSpec
    from ebt_scaling.think.evaluate import ONCE, think_run

    store.get_sweep(sweep)  # NotFound with the store's one-line message
    runs = store.list_runs(sweep=sweep, status="completed")
    if not runs:
        raise NotFound(f"sweep {sweep!r} has no completed runs; train them with `ebt-scale sweep` first")
    say = on_message or (lambda m: None)
    said: set[str] = set()
    out: list[RunOutcome] = []
    for run in runs:
        label = run_label(run)
        ckpt = run.checkpoint_dir or (run.config or {}).get("checkpoint_dir")
        if not run.config or not ckpt:
            msg = f"{label}: no checkpoint stored (imported or trained without checkpoint_dir); skipped"
            say(msg)
            out.append(RunOutcome(run.id, run.family, label, "skipped", msg))
            continue
        try:
            spec = RunSpec.from_dict(run.config)
            res = think_run(spec, ckpt, steps=steps, samples=samples, ood=ood, n_batches=n_batches,
                            batch_size=batch_size, seed=seed, device=device,
                            on_batch=(lambda split, b, lab=label: on_batch(lab, split, b)) if on_batch else None)
        except (DataError, ConfigError) as exc:
            msg = f"{label}: {exc}; skipped"
            say(msg)
            out.append(RunOutcome(run.id, run.family, label, "skipped", msg))
            continue
        for m in res.messages:
            if m not in said:  # a message that is the same for every run (no OOD default) is said once
                said.add(m)
                say(m if m in ONCE else f"{label}: {m}")
        pts = points_for(res)
        if hasattr(store, "delete_metrics"):  # a new grid replaces the previous one entirely
            store.delete_metrics(run.id, tm.PREFIX)
        store.log_metrics(run.id, pts)
        out.append(RunOutcome(run.id, run.family, label, "done", None, summarise(res)))
    return out
