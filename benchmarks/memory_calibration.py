"""Calibrate the memory plan (``ebt_scaling/sweeps/memory.py``) against exact CPU measurements.

For every shape below (Transformer++, EBT with every step's graph (S1-like), EBT truncated with a chain and a
replay buffer (S2-like); fp32 and bf16 autocast) this builds the model, runs one warm-up training step (so AdamW's
state and the replay buffer exist) and then measures one more step as the trainer runs it (forward under
autocast, backward, gradient clipping, fused AdamW, ``zero_grad(set_to_none=True)``):

* ``peak``: the highest total of bytes allocated during that step above what was allocated before it (the CPU
  allocator's events under ``torch.profiler(profile_memory=True)``; the counterpart of
  ``torch.cuda.max_memory_allocated`` minus the weights and AdamW state), gradients included;
* ``saved``: the bytes of the tensors autograd saved that are still held when the forward ends, parameters'
  own storages left out (``saved_memory.count_saved``).

Both are exact and device-independent up to the kernels' own workspaces. It then fits, per (variant,
precision), the estimator's bytes-per-element coefficients to ``saved`` and to ``peak - 4P`` (gradients are
counted apart) by non-negative least squares over the ``FIT`` shapes, and reports predicted against measured for
every shape, the ``CHECK`` shapes (never used in the fit) apart.

    python benchmarks/memory_calibration.py --out mem_cal.json            # measure, fit, compare (~5 min, 1 core)
    python benchmarks/memory_calibration.py --write                       # also rewrite the shipped coefficients
    python benchmarks/memory_calibration.py --check-only --paper-shapes   # the shipped coefficients vs paper shapes
    python benchmarks/memory_calibration.py --check-only --cuda           # on a GPU: measured CUDA peaks vs estimate

Prints one JSON object (also written to --out if given).
"""

from __future__ import annotations

import argparse
import pprint
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import emit_json  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
COEF_FILE = ROOT / "ebt_scaling" / "sweeps" / "memory_coefficients.py"

# Activations outweigh the weights here, as they do at paper scale (where the peak of a step sits at the start of
# the backward); at shapes where they do not, the plan overestimates (it takes every gradient as live at that peak).
BASE: dict[str, Any] = dict(n_layer=2, n_embd=64, n_head=2, vocab_size=512, sequence_len=64, batch=8)
# One-at-a-time variations around BASE (plus the EBT's step structure), per variant.
_COMMON = [{}, {"batch": 4}, {"batch": 16}, {"sequence_len": 32}, {"sequence_len": 128}, {"vocab_size": 256},
           {"vocab_size": 1024}, {"n_embd": 32}, {"n_embd": 128, "n_head": 4}, {"n_layer": 1}, {"n_layer": 3},
           {"n_head": 4}, {"ffn_hidden": 128}]
FIT: dict[str, list[dict[str, Any]]] = {
    "transformer_pp": _COMMON,
    "ebt_full": _COMMON + [{"mcmc_num_steps": 1}, {"mcmc_num_steps": 3}, {"randomize_num_steps": 1},
                           {"mcmc_num_steps": 1, "randomize_num_steps": 2}],
    "ebt_truncated": _COMMON + [{"randomize_num_steps": 1}, {"replay_buffer_size": 0},
                                {"randomize_num_steps": 1, "replay_buffer_size": 0}],
}
CHECK: dict[str, list[dict[str, Any]]] = {
    "transformer_pp": [dict(n_layer=3, n_embd=96, n_head=3, vocab_size=768, sequence_len=48, batch=6),
                       dict(n_layer=1, n_embd=128, n_head=4, vocab_size=2048, sequence_len=64, batch=2),
                       dict(n_layer=4, n_embd=256, n_head=4, vocab_size=8192, sequence_len=256, batch=8)],
    "ebt_full": [dict(n_layer=3, n_embd=96, n_head=3, vocab_size=768, sequence_len=48, batch=3),
                 dict(n_layer=1, n_embd=128, n_head=4, vocab_size=1024, sequence_len=64, batch=2,
                      mcmc_num_steps=3),
                 dict(n_layer=2, n_embd=128, n_head=4, vocab_size=2048, sequence_len=256, batch=4)],
    "ebt_truncated": [dict(n_layer=3, n_embd=96, n_head=3, vocab_size=768, sequence_len=48, batch=4,
                           randomize_num_steps=2),
                      dict(n_layer=1, n_embd=128, n_head=4, vocab_size=1024, sequence_len=24, batch=2,
                           randomize_num_steps=1, replay_buffer_size=0),
                      dict(n_layer=2, n_embd=128, n_head=4, vocab_size=2048, sequence_len=256, batch=4,
                           randomize_num_steps=2)],
}
# Paper shapes (T 256, V 50,277): the CPU-affordable end of what the plan is used for. --paper-shapes.
PAPER: dict[str, list[dict[str, Any]]] = {
    "transformer_pp": [dict(n_layer=6, n_embd=384, n_head=6, vocab_size=50277, sequence_len=256, batch=2)],
    "ebt_full": [dict(n_layer=6, n_embd=384, n_head=6, vocab_size=50277, sequence_len=256, batch=1)],
    "ebt_truncated": [dict(n_layer=6, n_embd=384, n_head=6, vocab_size=50277, sequence_len=256, batch=2)],
}

# The CUDA peaks we have (benchmarks/RESULTS.md, "GPU figures (H200)": torch.cuda.max_memory_allocated over
# warm-up and timed steps of benchmarks/throughput.py, S1, T 256, V 50,277, bf16 autocast, fused AdamW), in GiB.
# They were measured on the model code of that time (before issue 17), which kept less for the EBT's backward
# (fused S1 cross-entropy, gains folded into shared weights) and padded V to 50,304 on CUDA.
CUDA_MEASURED = [("ebt", "xxs", 16, 10.5), ("transformer_pp", "xxs", 16, 3.3), ("ebt", "small", 16, 23.0),
                 ("transformer_pp", "small", 16, 5.4), ("ebt", "small", 64, 86.3),
                 ("transformer_pp", "small", 64, 16.6)]


def measure_cuda(family: str, size: str, batch: int) -> float:
    """``torch.cuda.max_memory_allocated`` (GiB) over three training steps of (family, size) at ``batch``, T 256,
    V 50,277, S1, bf16 autocast, fused AdamW: what throughput.py measured for CUDA_MEASURED, on today's code."""
    import torch

    from ebt_scaling.config import model_config as preset_config
    from ebt_scaling.models import build_model

    dev = torch.device("cuda")
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats(dev)
    cfg = preset_config(family, size, vocab_size=50277, sequence_len=256,
                        recipe="ebt_s1" if family == "ebt" else None)
    model = build_model(cfg).to(dev).train()
    opt = torch.optim.AdamW(model.optim_groups(0.01), lr=1e-5, fused=True)
    params = [p for g in opt.param_groups for p in g["params"]]
    idx = torch.randint(0, cfg.vocab_size, (batch, 257), device=dev)
    for _ in range(3):
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss, _ = model.loss(idx[:, :-1], idx[:, 1:])
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
    torch.cuda.synchronize(dev)
    peak = torch.cuda.max_memory_allocated(dev) / 2**30
    del model, opt, params, idx, loss
    torch.cuda.empty_cache()
    return round(peak, 2)


def cuda_comparison(measure_now: bool = False) -> list[dict[str, Any]]:
    """The estimate before the margin (comparable to ``max_memory_allocated``) for each CUDA_MEASURED shape."""
    from ebt_scaling.config import DataConfig, RunSpec, TrainConfig
    from ebt_scaling.config import model_config as preset_config
    from ebt_scaling.sweeps.memory import GIB, estimate_memory

    out = []
    for family, size, batch, measured in CUDA_MEASURED:
        recipe = "ebt_s1" if family == "ebt" else None
        spec = RunSpec(model=preset_config(family, size, vocab_size=50277, sequence_len=256, recipe=recipe),
                       train=TrainConfig(batch_size=batch, precision="bf16"), data=DataConfig(), recipe=recipe)
        est = estimate_memory(spec, batch)
        if measure_now:  # on this machine's GPU, today's code
            measured = measure_cuda(family, size, batch)
        out.append({"family": family, "size": size, "batch": batch, "measured_gib": measured,
                    "measured_on": "this GPU now" if measure_now else "RESULTS.md (H200, pre-issue-17 code)",
                    "predicted_gib": round(est.estimate_bytes / GIB, 2),
                    "predicted_with_margin_gib": round(est.total_gib, 2),
                    "rel_err": round(est.estimate_bytes / GIB / measured - 1, 3)})
    return out


def model_config(variant: str, shape: dict[str, Any]):
    """The ModelConfig of a shape. The random step count is pinned at its maximum (its minimum set to k + 1), so
    that every measured forward takes ``train_steps_max`` steps; a replay buffer as large as the batch is full
    after the warm-up step, as a long run's is."""
    from ebt_scaling.config import RECIPE_OVERRIDES, ModelConfig

    kw = {k: v for k, v in shape.items() if k != "batch"}
    if variant == "transformer_pp":
        return ModelConfig(family="transformer_pp", **kw)
    recipe = dict(RECIPE_OVERRIDES["ebt_s1" if variant == "ebt_full" else "ebt_s2"])
    recipe["step_size"] = 1.0  # the value only: a stable descent at random init
    if variant == "ebt_truncated":
        recipe["replay_buffer_size"] = shape["batch"]
    recipe.update(kw)
    recipe["randomize_num_steps_min"] = recipe["randomize_num_steps"] + 1 if recipe["randomize_num_steps"] else 0
    return ModelConfig(family="ebt", **recipe)


def _alloc_peak(prof) -> int:
    """Highest running sum of the allocation events (bytes) recorded by ``prof``."""
    from torch.profiler._memory_profiler import _EventType

    events = []
    stack = list(prof.profiler.kineto_results.experimental_event_tree())
    while stack:
        node = stack.pop()
        stack.extend(node.children)
        if node.tag == _EventType.Allocation:
            events.append((node.start_time_ns, node.extra_fields.alloc_size))
    cur = peak = 0
    for _, size in sorted(events):
        cur += size
        peak = max(peak, cur)
    return peak


def measure(variant: str, shape: dict[str, Any], precision: str, *, peak: bool = True) -> dict[str, Any]:
    """Measure one shape: ``saved`` and (with ``peak``) ``peak`` bytes as the module docstring defines them."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    from benchmarks.saved_memory import count_saved
    from ebt_scaling.models import build_model
    from ebt_scaling.models.flops import param_counts

    cfg = model_config(variant, shape)
    b = shape["batch"]
    amp = precision == "bf16"
    torch.manual_seed(0)
    model = build_model(cfg).train()
    batch = torch.randint(0, cfg.vocab_size, (b, cfg.sequence_len + 1))
    idx, tgt = batch[:, :-1], batch[:, 1:]
    n_params = param_counts(cfg)["total"]
    out: dict[str, Any] = {"variant": variant, "precision": precision, "shape": dict(shape), "params": n_params}
    t0 = time.perf_counter()
    if peak:
        groups = model.optim_groups(0.01)
        opt = torch.optim.AdamW(groups, lr=1e-5, fused=True)
        params = [p for g in opt.param_groups for p in g["params"]]

        def step() -> None:
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
                loss, _ = model.loss(idx, tgt)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)

        step()  # AdamW state and the replay buffer now exist, as in a running job
        with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            step()
        out["peak_bytes"] = _alloc_peak(prof)
    counted = count_saved(model, idx, tgt, amp=amp)
    counted["loss"].backward()
    model.zero_grad(set_to_none=True)
    out["saved_bytes"] = counted["alive_activation_bytes"]
    out["saved_at_save_bytes"] = sum(counted["storages"].values())  # saved_memory.py's saved_bytes
    out["seconds"] = round(time.perf_counter() - t0, 2)
    return out


def _targets(row: dict[str, Any]) -> dict[str, float]:
    """What the coefficients price: saved activations, and the transient rest of the step peak above them and
    the gradients (4P)."""
    return {"saved": float(row["saved_bytes"]),
            "transient": float(row["peak_bytes"]) - row["saved_bytes"] - 4.0 * row["params"]}


def fit(rows: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Non-negative least squares of each target on the variant's features (columns scaled to unit max),
    minimising the relative error (each row weighted by 1 / its target)."""
    import numpy as np
    from scipy.optimize import nnls

    from ebt_scaling.sweeps.memory import features

    names = list(features(model_config(rows[0]["variant"], rows[0]["shape"]), rows[0]["shape"]["batch"]))
    x = np.array([[features(model_config(r["variant"], r["shape"]), r["shape"]["batch"])[k] for k in names]
                  for r in rows], dtype=float)
    out: dict[str, dict[str, float]] = {}
    for part in ("saved", "transient"):
        y = np.array([_targets(r)[part] for r in rows])
        w = 1.0 / np.array([r["saved_bytes" if part == "saved" else "peak_bytes"] for r in rows], dtype=float)
        scale = x.max(axis=0)
        scale[scale == 0] = 1.0
        coef, _ = nnls((x / scale) * w[:, None], y * w)
        out[part] = {k: round(float(c / s), 4) for k, c, s in zip(names, coef, scale, strict=True)}
    return out


def _with(coefficients: dict, cfg, row: dict[str, Any]) -> tuple[float, float]:
    from ebt_scaling.sweeps import memory

    old = dict(memory.COEFFICIENTS)
    memory.COEFFICIENTS.clear()
    memory.COEFFICIENTS.update(coefficients)
    try:
        return memory.activation_bytes(cfg, row["shape"]["batch"], row["precision"])
    finally:
        memory.COEFFICIENTS.clear()
        memory.COEFFICIENTS.update(old)


def write_coefficients(coefficients: dict) -> None:
    COEF_FILE.write_text(
        '"""Bytes-per-element coefficients of the memory plan (``memory.py``), per variant, precision and part.\n\n'
        "Generated by ``python benchmarks/memory_calibration.py --write`` (the shapes, measurements and fit are\n"
        'described there; dated results in benchmarks/RESULTS.md). Do not edit by hand."""\n\n'
        "COEFFICIENTS: dict[str, dict[str, dict[str, dict[str, float]]]] = "
        + pprint.pformat(coefficients, width=110, sort_dicts=True) + "\n")


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--variants", default="transformer_pp,ebt_full,ebt_truncated")
    ap.add_argument("--precisions", default="fp32,bf16")
    ap.add_argument("--check-only", action="store_true", help="measure the CHECK shapes against the shipped "
                    "coefficients; no fit")
    ap.add_argument("--paper-shapes", action="store_true", help="also measure the PAPER shapes (slow: minutes)")
    ap.add_argument("--write", action="store_true", help=f"rewrite {COEF_FILE.relative_to(ROOT)} with the fit")
    ap.add_argument("--cuda", action="store_true", help="also measure the CUDA_MEASURED shapes on this machine's "
                    "GPU (torch.cuda.max_memory_allocated) against the shipped estimate")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=None, help="also write the JSON here")
    args = ap.parse_args(argv)

    import torch

    from ebt_scaling.sweeps import memory

    torch.set_num_threads(args.threads)
    variants = args.variants.split(",")
    precisions = args.precisions.split(",")
    coefficients: dict = {v: {} for v in variants} if not args.check_only else dict(memory.COEFFICIENTS)
    rows: list[dict[str, Any]] = []
    for v in variants:
        for prec in precisions:
            fit_rows = [] if args.check_only else [measure(v, {**BASE, **s}, prec) | {"role": "fit"}
                                                   for s in FIT[v]]
            if fit_rows:
                coefficients[v][prec] = fit(fit_rows)
            check = [measure(v, s, prec) | {"role": "check"} for s in CHECK[v]]
            paper = ([measure(v, s, prec) | {"role": "paper"} for s in PAPER[v]] if args.paper_shapes else [])
            for r in fit_rows + check + paper:
                pred = _with(coefficients, model_config(v, r["shape"]), r)
                meas = _targets(r)
                r["predicted_saved_bytes"], r["predicted_peak_bytes"] = pred[0], pred[1] + 4.0 * r["params"]
                r["saved_rel_err"] = round(pred[0] / meas["saved"] - 1, 4)
                r["peak_rel_err"] = round(r["predicted_peak_bytes"] / r["peak_bytes"] - 1, 4)
                rows.append(r)
                print(f"{v:15s} {prec} {r['role']:5s} {r['shape']} saved {r['saved_rel_err']:+.3f} "
                      f"peak {r['peak_rel_err']:+.3f} ({r['seconds']} s)", file=sys.stderr)
    if args.write and not args.check_only:
        write_coefficients(coefficients)

    def worst(role: str, key: str) -> float | None:
        errs = [abs(r[key]) for r in rows if r["role"] == role]
        return max(errs) if errs else None

    result = {
        "benchmark": "memory_calibration", "torch": torch.__version__, "threads": args.threads,
        "coefficients": coefficients,
        "cuda_comparison": cuda_comparison(measure_now=args.cuda) if (args.write or args.check_only) else None,
        "max_abs_rel_err": {role: {"saved": worst(role, "saved_rel_err"), "peak": worst(role, "peak_rel_err")}
                            for role in ("fit", "check", "paper")},
        "rows": rows,
    }
    return emit_json(result, args.out)


if __name__ == "__main__":
    main()
