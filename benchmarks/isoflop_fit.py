"""Speed of the compute-optimal fits (issue 29): approaches 2 and 3 with their bootstraps for two families.

    OMP_NUM_THREADS=1 taskset -c 0 python benchmarks/isoflop_fit.py [--resamples 2000] [--resamples-law 2000]
        [--budgets 8] [--sizes 9] [--seeds 1] [--simulations 40] [--repeats 1] [--out FILE]

The design is paper-like: a ladder of shapes at the paper's vocabulary (50,277) and context (256) whose exact
training FLOPs per token come from ``ebt_scaling.models.flops`` (EBT S1 vs Transformer++), ``--budgets`` budgets
a factor 2 apart, ``--sizes`` sizes per budget centred on each family's own optimum, ``--seeds`` seeds, losses
from known laws plus 0.01 nats of noise. One ``fit_isoflop`` call per repeat: approach 2 with ``--resamples``,
approach 3 with ``--resamples-law`` bootstrap refits per family, the comparison, and the guard-rails (including
``--simulations`` parametric re-simulations per family). Prints one JSON object: CPU seconds of the process
(robust to other jobs on the machine), wall seconds, the design, and the goal (30 CPU-s on one core). BLAS
threads are limited to --threads before numpy loads.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time

LADDER = [(4, 256), (4, 320), (6, 384), (6, 448), (8, 512), (8, 576), (10, 640), (12, 768), (12, 896), (14, 1024),
          (16, 1152), (18, 1280), (20, 1536), (24, 1792), (24, 2048), (28, 2304), (32, 2560)]
LAWS = {"transformer_pp": dict(E=1.8, A=400.0, B=2000.0, alpha=0.34, beta=0.36),
        "ebt": dict(E=1.8, A=500.0, B=1800.0, alpha=0.30, beta=0.38)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--resamples", type=int, default=2000, help="approach-2 bootstrap resamples")
    ap.add_argument("--resamples-law", type=int, default=2000, help="approach-3 bootstrap refits per family")
    ap.add_argument("--budgets", type=int, default=8)
    ap.add_argument("--sizes", type=int, default=9)
    ap.add_argument("--seeds", type=int, default=1)
    ap.add_argument("--simulations", type=int, default=40)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=None, help="also write the JSON here")
    args = ap.parse_args()
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(args.threads)
    here = os.path.dirname(os.path.abspath(__file__))
    sys.path.insert(0, os.path.join(here, ".."))
    sys.path.insert(0, here)

    import numpy as np
    from _common import emit_json

    from ebt_scaling.config import ModelConfig
    from ebt_scaling.fit.isoflop import IsoflopSettings, IsoRow, fit_isoflop
    from ebt_scaling.models.flops import flops_per_token, param_counts

    rng = np.random.default_rng(0)
    rows: list[IsoRow] = []
    budgets = [2e17 * 2.0**k for k in range(args.budgets)]
    for fam, p in LAWS.items():
        cfgs = [ModelConfig(family=fam, n_layer=n, n_embd=d, n_head=d // 64, vocab_size=50277, sequence_len=256)
                for n, d in LADDER]
        N = np.array([param_counts(c)["non_embedding"] for c in cfgs], float)
        F = np.array([flops_per_token(c, "exact") for c in cfgs], float)
        for C in budgets:
            L = p["E"] + p["A"] * N ** -p["alpha"] + p["B"] * (C / F) ** -p["beta"]
            j = min(max(int(np.argmin(L)) - args.sizes // 2, 0), len(N) - args.sizes)
            for k in range(j, j + args.sizes):
                for s in range(args.seeds):
                    rows.append(IsoRow(fam, s, float(N[k]), float(C / F[k]), C, float(L[k] + rng.normal(0, 0.01))))
    settings = IsoflopSettings(resamples=args.resamples, resamples_law=args.resamples_law,
                               simulations=args.simulations)
    wall, cpu = [], []
    fit = None
    for _ in range(args.repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        fit = fit_isoflop(rows, settings)
        wall.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    assert fit is not None and fit.comparison is not None
    comp = fit.comparison
    first = comp.points[0]
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    emit_json({
        "benchmark": "isoflop_fit", "families": 2, "budgets": args.budgets, "sizes_per_budget": args.sizes,
        "seeds": args.seeds, "runs": len(rows), "resamples_approach2": args.resamples,
        "resamples_approach3": args.resamples_law, "simulations": args.simulations, "threads": args.threads,
        "cpu_seconds_best": round(min(cpu), 2), "cpu_seconds_all": [round(c, 2) for c in cpu],
        "wall_seconds_best": round(min(wall), 2), "goal_cpu_seconds": 30.0, "within_goal": min(cpu) <= 30.0,
        "boot_unconverged": {f: a.boot_unconverged for f, a in fit.approach3.items()},
        "multiplier_first": {"loss": round(first.loss, 4), "m": round(first.m, 3),
                             "ci": [round(x, 3) if math.isfinite(x) else None for x in first.m_ci],
                             "source": first.source},
        "verdict": comp.verdict, "guards": sorted({g["code"] for g in fit.guards}),
        "cpu_count": os.cpu_count(), "load_avg_1min": load,
    }, args.out)


if __name__ == "__main__":
    main()
