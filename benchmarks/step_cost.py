"""Cost of one optimizer training step: EBT vs Transformer++ at the same shape, side by side.

One step = zero_grad + loss (forward; for the EBT the whole inner loop) + backward + AdamW step. Variants:
T++ on SDPA and on the explicit math path, the EBT with the recipe as the paper defines it (``ebt``). Then
the cost of one extra
thinking step with and without observed-stream reuse (``think``). The variants are timed interleaved (one
repetition of each per round) and the median per variant is reported, so slow drift of the machine affects
all alike. The T++ is timed on its fast path (SDPA) and on the explicit matmul/softmax path the EBT must
use; both ratios are reported.

    python benchmarks/step_cost.py                       # default shape, 2 CPU threads
    python benchmarks/step_cost.py --device cuda --reps 20 --n-layer 6 --n-embd 384 --n-head 6
    python benchmarks/step_cost.py --compile        # also both families under torch.compile, interleaved

``--compile`` adds ``tpp_sdpa_compiled`` and ``ebt_compiled`` (same weights, ``train.runtime.compiled_loss`` as
``ebt-scale train --compile``); the first warm-up round compiles. ``paired_ratio_median`` then also holds
``ebt_compiled_vs_ebt`` and ``tpp_sdpa_compiled_vs_tpp_sdpa``: the median over rounds of compiled / eager step
time, both measured back to back in the same round.

Prints one JSON object (also written to --out if given).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n-layer", type=int, default=2)
    ap.add_argument("--n-embd", type=int, default=128)
    ap.add_argument("--n-head", type=int, default=4)
    ap.add_argument("--vocab", type=int, default=2048)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--recipe", default="ebt_s1", choices=["ebt_s1", "ebt_s2"])
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads (0 = torch's default)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--reps", type=int, default=7, help="timed rounds (each times every variant once)")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--omp-wait-policy", default="PASSIVE", choices=["PASSIVE", "ACTIVE", "unset"],
                    help="OMP_WAIT_POLICY for torch's OpenMP threads (read when torch loads). PASSIVE (default) "
                         "stops idle threads from spinning, which on a shared, oversubscribed CPU otherwise "
                         "dominates op-heavy steps; 'unset' leaves the environment alone")
    ap.add_argument("--think-steps", type=int, default=4,
                    help="thinking-step cost: time think() with this many steps and one more (0 = skip)")
    ap.add_argument("--compile", action="store_true", help="also time both families under torch.compile")
    ap.add_argument("--out", default=None, help="also write the JSON here")
    args = ap.parse_args(argv)
    if args.omp_wait_policy != "unset":
        if "torch" in sys.modules and os.environ.get("OMP_WAIT_POLICY") != args.omp_wait_policy:
            print("warning: torch already imported; --omp-wait-policy has no effect", file=sys.stderr)
        os.environ["OMP_WAIT_POLICY"] = args.omp_wait_policy

    import torch

    from ebt_scaling.config import RECIPE_OVERRIDES, ModelConfig
    from ebt_scaling.models import build_model
    from ebt_scaling.models.flops import flops_per_token

    if args.threads:
        torch.set_num_threads(args.threads)
    dev = torch.device(args.device)
    torch.manual_seed(args.seed)
    shape = dict(n_layer=args.n_layer, n_embd=args.n_embd, n_head=args.n_head, vocab_size=args.vocab,
                 sequence_len=args.seq)
    cfg_t = ModelConfig(family="transformer_pp", **shape)
    cfg_e = ModelConfig(family="ebt", **shape, **RECIPE_OVERRIDES[args.recipe])

    tpp = build_model(cfg_t).to(dev).train()
    ebt = build_model(cfg_e).to(dev).train()

    def optimizer(model):
        lr = 1e-4  # small: we time the step, not learn; keeps the EBT's alpha-scaled logits tame
        groups = [{"params": g["params"], "weight_decay": g["weight_decay"], "lr": lr * g["lr_mult"]}
                  for g in model.optim_groups(0.01)]
        return torch.optim.AdamW(groups, betas=(0.9, 0.999), fused=True)  # as ebt-scale train

    opt_t, opt_e = optimizer(tpp), optimizer(ebt)
    idx = torch.randint(0, args.vocab, (args.batch, args.seq + 1), device=dev)
    x, y = idx[:, :-1], idx[:, 1:]

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)

    def step(model, opt, impl=None):
        if impl is not None:
            model.attn_impl = impl
        opt.zero_grad(set_to_none=True)
        loss, _ = model.loss(x, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()

    variants = {
        "tpp_sdpa": lambda: step(tpp, opt_t, "sdpa"),
        "tpp_math": lambda: step(tpp, opt_t, "math"),
        "ebt": lambda: step(ebt, opt_e),
    }
    if args.compile:
        import copy

        from ebt_scaling.train.runtime import compiled_loss

        tpp_c, ebt_c = copy.deepcopy(tpp), copy.deepcopy(ebt)
        tpp_c.attn_impl = "sdpa"
        opt_tc, opt_ec = optimizer(tpp_c), optimizer(ebt_c)
        loss_tc, loss_ec = compiled_loss(tpp_c), compiled_loss(ebt_c)

        def step_compiled(model, opt, loss_fn):
            opt.zero_grad(set_to_none=True)
            loss, _ = loss_fn(x, y)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()

        variants["tpp_sdpa_compiled"] = lambda: step_compiled(tpp_c, opt_tc, loss_tc)
        variants["ebt_compiled"] = lambda: step_compiled(ebt_c, opt_ec, loss_ec)
    times: dict[str, list[float]] = {k: [] for k in variants}
    cpu_times: dict[str, list[float]] = {k: [] for k in variants}
    faults: dict[str, list[int]] = {k: [] for k in variants}
    for r in range(args.warmup + args.reps):
        for name, fn in variants.items():
            sync()
            f0, c0, t0 = minor_faults(), time.process_time(), time.perf_counter()
            fn()
            sync()
            if r >= args.warmup:
                times[name].append(time.perf_counter() - t0)
                cpu_times[name].append(time.process_time() - c0)
                faults[name].append(minor_faults() - f0)

    think = think_cost(ebt, x, args, sync) if args.think_steps else None
    med = {k: statistics.median(v) for k, v in times.items()}
    if think is not None:  # against one inner step of a training step (its time / its inner steps)
        from ebt_scaling.models.flops import expected_train_steps

        think["train_inner_step_s"] = med["ebt"] / expected_train_steps(cfg_e)
        think["extra_vs_train_inner_step"] = think["extra_step_s"] / think["train_inner_step_s"]
    med_cpu = {k: statistics.median(v) for k, v in cpu_times.items()}
    ex_t, ex_e = flops_per_token(cfg_t, "exact"), flops_per_token(cfg_e, "exact")
    pa_t, pa_e = flops_per_token(cfg_t, "paper"), flops_per_token(cfg_e, "paper")
    pairs = [("ebt", "tpp_math"), ("ebt", "tpp_sdpa")]
    if args.compile:
        pairs += [("ebt_compiled", "ebt"), ("tpp_sdpa_compiled", "tpp_sdpa"), ("ebt_compiled", "tpp_sdpa_compiled")]
    paired = {f"{e}_vs_{t}": statistics.median(a / b for a, b in zip(times[e], times[t], strict=True))
              for e, t in pairs}
    result = {
        "benchmark": "step_cost",
        "shape": {**shape, "batch": args.batch},
        "recipe": args.recipe,
        "device": args.device if dev.type != "cuda" else torch.cuda.get_device_name(dev),
        "threads": torch.get_num_threads(),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "unset"),
        "torch": torch.__version__,
        "platform": platform.platform(),
        "reps": args.reps,
        "median_s": med,
        "all_s": times,
        # Process CPU time (all threads): less sensitive to other load on a shared machine than wall time.
        "median_cpu_s": med_cpu,
        "time_ratio_ebt_vs_tpp_math": med["ebt"] / med["tpp_math"],
        "time_ratio_ebt_vs_tpp_sdpa": med["ebt"] / med["tpp_sdpa"],
        "paired_ratio_median": paired,
        # Per-round ratios (the variants of one round ran back to back) and the ratio of the fastest
        # repetitions: both less sensitive to other load than the ratio of medians.
        "paired_ratio_median_ebt_vs_tpp_math": statistics.median(
            e / t for e, t in zip(times["ebt"], times["tpp_math"], strict=True)),
        "paired_ratio_median_ebt_vs_tpp_sdpa": statistics.median(
            e / t for e, t in zip(times["ebt"], times["tpp_sdpa"], strict=True)),
        "min_time_ratio_ebt_vs_tpp_math": min(times["ebt"]) / min(times["tpp_math"]),
        "min_time_ratio_ebt_vs_tpp_sdpa": min(times["ebt"]) / min(times["tpp_sdpa"]),
        "cpu_time_ratio_ebt_vs_tpp_math": med_cpu["ebt"] / med_cpu["tpp_math"],
        "cpu_time_ratio_ebt_vs_tpp_sdpa": med_cpu["ebt"] / med_cpu["tpp_sdpa"],
        # Pages the kernel had to map and zero during a step (deterministic, unlike the times).
        "minor_faults_per_step": {k: statistics.median(v) for k, v in faults.items()},
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "exact_flops_per_token": {"tpp": ex_t, "ebt": ex_e},
        "exact_flops_ratio": ex_e / ex_t,
        "think": think,
        "paper_flops_ratio": pa_e / pa_t,
        "tokens_per_s": {k: args.batch * args.seq / v for k, v in med.items()},
    }
    from benchmarks._common import emit_json

    return emit_json(result, args.out)


def minor_faults() -> int:
    """Minor page faults of this process so far (pages the kernel mapped and zeroed)."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def think_cost(ebt, x, args, sync) -> dict:
    """The cost of one extra thinking step (``EBT.think``, no graph), interleaved like the training steps.

    ``extra_step_s`` = median of t(k + 1 steps) - t(k steps) with observed-stream reuse (the default);
    ``full_step_s`` = the same difference on the reference path that recomputes the observed stream at every
    step (``reuse_observed=False``), i.e. what a step costs without the reuse. Both in eval mode, one sample.
    The caller adds the ratio to one inner step of a training step.
    """
    import torch

    ebt.eval()
    k = args.think_steps
    gen = torch.Generator(device=x.device)
    times: dict[str, list[float]] = {f"{mode}_{n}": [] for mode in ("reuse", "full") for n in (k, k + 1)}
    try:
        for r in range(args.warmup + args.reps):
            for name in times:
                mode, n = name.split("_")
                ebt.reuse_observed = mode == "reuse"
                gen.manual_seed(r)
                sync()
                t0 = time.perf_counter()
                ebt.think(x, steps=int(n), generator=gen)
                sync()
                if r >= args.warmup:
                    times[name].append(time.perf_counter() - t0)
    finally:
        ebt.reuse_observed = True
        ebt.train()

    def extra(mode: str) -> float:
        return statistics.median(b - a for a, b in zip(times[f"{mode}_{k}"], times[f"{mode}_{k + 1}"], strict=True))

    med = {name: statistics.median(v) for name, v in times.items()}
    return {"steps": [k, k + 1], "median_s": med, "extra_step_s": extra("reuse"), "full_step_s": extra("full"),
            "extra_vs_full_step": extra("reuse") / extra("full")}


if __name__ == "__main__":
    main()
