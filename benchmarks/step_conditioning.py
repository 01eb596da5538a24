"""Paper-faithful step conditioning vs the prediction-only option, on tiny real-text EBT runs, side by side.

``step_conditioning="all"`` (the paper's model) lets every observed token row see the step token, so the
observed stream differs between the S1 recipe's two landscapes and is computed twice per training step.
``"prediction"`` (our option, not the paper's model) hides the step token from the observed tokens, so their
keys/values are computed once per step. This script trains both on the same data, seeds and settings as
``ebt-scale train --family ebt --preset tiny`` (offline Shakespeare, byte-level BPE 512, 64-token context,
batch 16, 400 steps) and reports validation loss and speed per seed. The variants alternate per seed, so slow
drift of the machine affects both alike.

    python benchmarks/step_conditioning.py --threads 1             # seeds 0,1; 11.3 min measured (docs/models.md)
    python benchmarks/step_conditioning.py --seeds 0,1,2 --steps 200 --out sc.json

Prints one JSON object (also written to --out if given).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

VARIANTS = ("all", "prediction")


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", default="0,1", help="comma-separated training seeds (>= 2 for a comparison)")
    ap.add_argument("--steps", type=int, default=None, help="training steps (default: the tiny EBT default)")
    ap.add_argument("--recipe", default="ebt_s1", choices=["ebt_s1", "ebt_s2"])
    ap.add_argument("--data", default="shakespeare", help="corpus source (see docs/data.md)")
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    ap.add_argument("--out", default=None, help="also write the JSON here")
    args = ap.parse_args(argv)
    try:
        seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    except ValueError:
        ap.error(f"--seeds: expected comma-separated integers, got {args.seeds!r}")
    if not seeds:
        ap.error("--seeds: give at least one seed")
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # see docs/models.md (step cost benchmark)

    from ebt_scaling.config import DataConfig, RunSpec, TrainConfig, model_config
    from ebt_scaling.data import load_corpus
    from ebt_scaling.records import ListSink
    from ebt_scaling.train import train
    from ebt_scaling.train.defaults import train_defaults

    d = train_defaults("ebt", "tiny")
    steps = args.steps or d.steps
    dcfg = DataConfig(source=args.data, vocab_size=d.vocab_size)
    corpus = load_corpus(dcfg, d.seq_len, progress=lambda m: print(f"data: {m}", file=sys.stderr))
    unigram = corpus.unigram_entropy()
    runs = []
    for seed in seeds:
        for variant in VARIANTS:
            mcfg = model_config("ebt", "tiny", vocab_size=corpus.vocab_size, sequence_len=d.seq_len,
                                recipe=args.recipe, step_conditioning=variant)
            tcfg = TrainConfig(steps=steps, batch_size=d.batch_size, lr=d.lr,
                               warmup_steps=min(steps - 1, d.warmup_steps), eval_interval=d.eval_interval,
                               seed=seed, threads=args.threads)
            spec = RunSpec(model=mcfg, train=tcfg, data=dcfg, recipe=args.recipe)
            t0 = time.perf_counter()
            result = train(spec, ListSink(), data_progress=lambda m: None)
            wall = time.perf_counter() - t0
            row = {"seed": seed, "step_conditioning": variant, "status": result.status,
                   "final_val_loss": result.final_val_loss, "wall_s": wall,
                   "s_per_step": wall / steps, "config_hash": spec.config_hash}
            print(json.dumps(row), file=sys.stderr)
            runs.append(row)

    def of(variant: str, key: str) -> list[float]:
        return [r[key] for r in runs if r["step_conditioning"] == variant]

    per_seed = []
    for seed in seeds:
        a, p = ([r for r in runs if r["seed"] == seed and r["step_conditioning"] == v][0] for v in VARIANTS)
        per_seed.append({"seed": seed, "val_loss_prediction_minus_all": p["final_val_loss"] - a["final_val_loss"],
                         "time_ratio_prediction_vs_all": p["wall_s"] / a["wall_s"]})
    result = {
        "benchmark": "step_conditioning",
        "recipe": args.recipe,
        "steps": steps, "batch_size": d.batch_size, "seq_len": d.seq_len, "vocab_size": corpus.vocab_size,
        "data": args.data, "unigram_val_loss": unigram,
        "threads": args.threads, "torch": __import__("torch").__version__, "platform": platform.platform(),
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "runs": runs,
        "per_seed": per_seed,
        "mean_val_loss": {v: statistics.mean(of(v, "final_val_loss")) for v in VARIANTS},
        "mean_s_per_step": {v: statistics.mean(of(v, "s_per_step")) for v in VARIANTS},
        "time_ratio_prediction_vs_all": (statistics.mean(of("prediction", "wall_s"))
                                         / statistics.mean(of("all", "wall_s"))),
    }
    from benchmarks._common import emit_json

    return emit_json(result, args.out)


if __name__ == "__main__":
    main()
