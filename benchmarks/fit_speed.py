"""Speed of the scaling fits: 6 axes x 2 families, M1 + M2 + comparison with N bootstrap resamples.

    python benchmarks/fit_speed.py [--resamples 2000] [--seeds 1] [--levels 5] [--repeats 3] [--threads 2]

Prints one JSON object: wall-clock seconds per full fit of all axes (best and median of the repeats), the
process CPU seconds (all threads; robust to other jobs competing for the cores), the design, the 1-minute
load average, and the budget (10 s on 2 cores). BLAS threads are limited to --threads before numpy loads.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--resamples", type=int, default=2000)
    ap.add_argument("--permutations", type=int, default=2000)
    ap.add_argument("--seeds", type=int, default=1, help="seeds per (family, level)")
    ap.add_argument("--levels", type=int, default=5)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(args.threads)
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

    import numpy as np

    from ebt_scaling.fit import FitSettings, axis_data_from_arrays, fit_axes

    rng = np.random.default_rng(0)
    datas = []
    for axis in ("data", "batch", "depth", "width", "params", "flops"):
        fam, xs, ys, sd = [], [], [], []
        for f, A in (("transformer_pp", 2.2), ("ebt", 2.5)):
            for xi in np.geomspace(1e6, 3e7, args.levels):
                for s in range(args.seeds):
                    fam.append(f)
                    xs.append(float(xi * (6.67 if (f == "ebt" and axis == "flops") else 1.0)))
                    ys.append(float(1.8 + A * (xi / 1e6) ** -0.3 + rng.normal(0, 0.01)))
                    sd.append(s)
        datas.append(axis_data_from_arrays(fam, xs, ys, sd, axis=axis))
    settings = FitSettings(resamples=args.resamples, permutations=args.permutations)
    times, cpu = [], []
    for _ in range(args.repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        fits = fit_axes(datas, settings)
        times.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    assert all(f.comparison is not None for f in fits)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    print(json.dumps({
        "benchmark": "fit_speed", "axes": len(datas), "families": 2, "levels": args.levels,
        "seeds_per_level": args.seeds, "runs_per_axis": 2 * args.levels * args.seeds,
        "resamples": args.resamples, "permutations": args.permutations, "threads": args.threads,
        "seconds_best": round(min(times), 3), "seconds_median": round(sorted(times)[len(times) // 2], 3),
        "seconds_all": [round(t, 3) for t in times],
        "cpu_seconds_best": round(min(cpu), 3), "cpu_seconds_all": [round(c, 3) for c in cpu],
        "budget_seconds": 10.0, "within_budget": min(times) <= 10.0, "cpu_count": os.cpu_count(), "load_avg_1min": load,
    }, indent=2))


if __name__ == "__main__":
    main()
