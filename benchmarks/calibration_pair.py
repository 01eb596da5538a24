"""Does a calibration predict the trainer? ``time_training_steps`` (what ``ebt-scale calibrate`` stores), then
``train()`` of the same run, then ``time_training_steps`` again, in one process so that the shared machine's load
is the same for all three. The trainer's step time is the mean of its logged ``tokens_per_s`` intervals (training
steps only; validation off).

    OMP_NUM_THREADS=1 python benchmarks/calibration_pair.py --family transformer_pp --size tiny --steps 60
    OMP_NUM_THREADS=1 python benchmarks/calibration_pair.py --family ebt --size tiny --steps 30

The run is the ``--size`` row of the shipped ``--axis`` spec (default: params, tiny), on the CPU at 1 thread,
``--steps`` trainer steps and half as many timed calibration steps after 2 warm-up steps. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--axis", default="params")
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--family", default="transformer_pp")
    ap.add_argument("--size", default="tiny", help="the axis value as the spec writes it")
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()

    from benchmarks._common import emit_json
    from ebt_scaling.records import ListSink
    from ebt_scaling.sweeps import expand, load_spec, spec_path
    from ebt_scaling.train import train
    from ebt_scaling.train.calibrate import time_training_steps

    run = next(r for r in expand(load_spec(spec_path(args.axis, args.preset)))
               if r.spec.family == args.family and r.label == args.size)
    tcfg = dataclasses.replace(run.spec.train, device="cpu", threads=args.threads, steps=args.steps,
                               eval_interval=0, checkpoint_interval=0, warmup_steps=min(5, args.steps - 1))
    spec = run.spec.with_(train=tcfg)
    timed = max(1, args.steps // 2)
    before = time_training_steps(spec, steps=timed, warmup=2)
    sink = ListSink()
    t0 = time.perf_counter()
    train(spec, sink)
    wall = time.perf_counter() - t0
    rates = [v for _, v in sink.series("tokens_per_s")]
    trainer = tcfg.batch_size * spec.model.sequence_len / (sum(rates) / len(rates))
    after = time_training_steps(spec, steps=timed, warmup=2)
    emit_json({"family": args.family, "size": args.size, "threads": args.threads, "trainer_steps": args.steps,
               "calibration_steps": timed, "calibrate_s_per_step": before, "train_s_per_step": trainer,
               "calibrate_again_s_per_step": after, "train_wall_s": wall, "load_avg_1min": os.getloadavg()[0]},
              args.out)


if __name__ == "__main__":
    main()
