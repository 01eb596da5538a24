"""Scheduling overhead of a sweep on a local Ray instance (real training loop, real SQLite database).

    RAY_AUTH_MODE=disabled python benchmarks/sweep_overhead.py [--trials 8] [--steps 800] [--out FILE]

Runs ``--trials`` Transformer++ runs (the depth-tiny shape at 2 blocks, one seed each, 1 CPU per trial, as
many trials at once as the machine has cores) through the product path (``run_sweep`` -> Ray Tune ->
``train`` -> driver callback -> SQLite) and reports, as JSON:

* ``ratio``: sweep wall time / (sum of the trials' training times / parallel slots); goal <= 1.10.
  The sweep wall time covers everything the user waits for: planning, Ray start, Tune, shutdown.
  ``ratio_fit`` is the same with only ``Tuner.fit`` in the numerator (Ray start and stop excluded).
* ``per_trial_overhead_s``: (wall - sum/slots) x slots / trials, the scheduling cost each trial adds;
  goal <= 3 s. A trial's training time is the ``wall_time_s`` the training loop reports (from its start
  to its return: steps, evaluations, checkpoints).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--trials", type=int, default=8)
    ap.add_argument("--steps", type=int, default=800, help="optimizer steps per trial")
    ap.add_argument("--slots", type=int, default=None, help="trials at once (default: CPU cores)")
    ap.add_argument("--address", default=None, help="an existing Ray cluster (default: a fresh local instance)")
    ap.add_argument("--out", default=None, help="also write the JSON here")
    args = ap.parse_args()
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")

    from ebt_scaling.db import Store
    from ebt_scaling.sched.runner import RayOptions
    from ebt_scaling.sched.service import run_sweep
    from ebt_scaling.sweeps import load_spec, spec_path
    from ebt_scaling.sweeps.plan import local_resources

    cpus, _ = local_resources()
    slots = args.slots or cpus
    base = load_spec(spec_path("depth", "tiny"))
    spec = base.with_(name=f"bench-overhead-{os.getpid()}", families=("transformer_pp",), values=(2,),
                      seeds=tuple(range(args.trials)), train={**base.train, "steps": args.steps,
                                                               "checkpoint_interval": max(1, args.steps // 4)})
    with tempfile.TemporaryDirectory(prefix="ebt-bench-") as d:
        store = Store(f"sqlite:///{d}/bench.db")
        opts = RayOptions(address=args.address, cpus_per_trial=1, max_concurrent=slots, num_cpus=slots,
                          storage_path=f"{d}/runs", progress="off")
        t0 = time.monotonic()
        out = run_sweep(spec, store, opts)
        wall = time.monotonic() - t0
        runs = store.list_runs(sweep=spec.name)
        train_s = [r.extra_metrics.get("wall_time_s", float("nan")) for r in runs]
    assert out.statuses == {"completed": args.trials}, out.statuses
    ideal = sum(train_s) / slots
    fit_s = out.runner.fit_s if out.runner else float("nan")
    res = {
        "benchmark": "sweep_overhead",
        "ray": args.address or "local", "trials": args.trials, "steps_per_trial": args.steps, "slots": slots,
        "cpus": cpus,
        "trial_train_s": [round(x, 2) for x in train_s],
        "sum_trial_train_s": round(sum(train_s), 2),
        "ideal_s": round(ideal, 2),
        "sweep_wall_s": round(wall, 2),
        "ray_import_s": round(out.runner.import_s, 2) if out.runner else None,
        "ray_init_s": round(out.runner.ray_init_s, 2) if out.runner else None,
        "ray_shutdown_s": round(out.runner.shutdown_s, 2) if out.runner else None,
        "tune_fit_s": round(fit_s, 2),
        "ratio": round(wall / ideal, 4),
        "ratio_fit": round(fit_s / ideal, 4),
        "per_trial_overhead_s": round((wall - ideal) * slots / args.trials, 3),
        "per_trial_overhead_fit_s": round((fit_s - ideal) * slots / args.trials, 3),
        "goals": {"ratio": 1.10, "per_trial_overhead_s": 3.0},
        "load_average_1min_at_end": round(os.getloadavg()[0], 2),
    }
    res["meets_goals"] = res["ratio"] <= 1.10 and res["per_trial_overhead_s"] <= 3.0
    text = json.dumps(res, indent=1)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
