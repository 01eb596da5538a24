"""One training run of a tiny-sweep shape with chosen EBT/optimizer settings, as one JSON line (the preset search
of benchmarks/RESULTS.md, "Tiny presets: making the EBT learn").

The base is the shipped tiny sweeps' run (experiments/tiny/depth.toml: Shakespeare, BPE 512, context 64,
batch 16, width 64 with 2 heads, 2 blocks, 200 steps, LR 3e-3, warm-up 20, 4 validation batches). Every
option overrides one setting; ``--model KEY=VALUE`` sets any ModelConfig field (EBT options apply to the EBT
only, as in a sweep spec).

    python benchmarks/preset_search.py --family ebt --model step_size=50 --model step_size_lr_multiplier=150
"""

from __future__ import annotations

import argparse
import json
import os
import time


def _value(text: str):
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return {"true": True, "false": False}.get(text.lower(), text)


def _median(xs: list[float]) -> float | None:
    xs = sorted(xs)
    return round(xs[len(xs) // 2], 3) if xs else None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--family", default="ebt", choices=["ebt", "transformer_pp"])
    ap.add_argument("--recipe", default="ebt_s1")
    ap.add_argument("--n-layer", type=int, default=2)
    ap.add_argument("--n-embd", type=int, default=64)
    ap.add_argument("--head-size", type=int, default=32)
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--eval-tokens", type=int, default=None,
                    help="validation tokens (the tiny sweep specs: 2048); default 4 batches of --batch-size")
    ap.add_argument("--model", action="append", default=[], metavar="KEY=VALUE", help="a ModelConfig field")
    ap.add_argument("--train", action="append", default=[], metavar="KEY=VALUE", help="a TrainConfig field")
    ap.add_argument("--tag", default="")
    a = ap.parse_args()

    from ebt_scaling.config import RECIPE_OVERRIDES, DataConfig, ModelConfig, RunSpec, TrainConfig
    from ebt_scaling.records import ListSink
    from ebt_scaling.train import train

    over = dict(kv.split("=", 1) for kv in a.model)
    mkw = dict(n_layer=a.n_layer, n_embd=a.n_embd, n_head=a.n_embd // a.head_size, vocab_size=512, sequence_len=64)
    if a.family == "ebt":
        mkw.update(RECIPE_OVERRIDES[a.recipe])
        mkw.update({k: _value(v) for k, v in over.items()})
    model = ModelConfig(family=a.family, **mkw)
    tcfg = TrainConfig(steps=a.steps, batch_size=a.batch_size, lr=a.lr, warmup_steps=a.warmup, eval_interval=50,
                       eval_batches=4, eval_tokens=a.eval_tokens, log_interval=10, seed=a.seed, threads=a.threads,
                       **{k: _value(v) for k, v in (kv.split("=", 1) for kv in a.train)})
    spec = RunSpec(model=model, train=tcfg, data=DataConfig(source="shakespeare", tokenizer="bpe", vocab_size=512),
                   recipe=a.recipe if a.family == "ebt" else None)
    sink = ListSink()
    t0 = time.time()
    r = train(spec, sink, data_progress=lambda m: None)
    vals = [round(v, 4) for _, v in sink.series("val_loss")]
    out = {"tag": a.tag, "family": a.family, "recipe": a.recipe if a.family == "ebt" else None,
           "n_layer": a.n_layer, "n_embd": a.n_embd, "steps": a.steps, "batch": a.batch_size, "lr": a.lr,
           "warmup": a.warmup, "seed": a.seed, "model": over, "train": a.train, "status": r.status,
           "val_loss": r.final_val_loss, "unigram": r.extra["unigram_loss"], "val_series": vals,
           "grad_norm_median": _median([v for _, v in sink.series("grad_norm")]),
           "alpha_end": (sink.series("alpha") or [(0, None)])[-1][1], "wall_s": round(time.time() - t0, 1),
           "load1": round(os.getloadavg()[0], 2), "config_hash": spec.config_hash[:12]}
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
