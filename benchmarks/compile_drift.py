"""How far ``ebt-scale train --compile`` drifts from eager, and how far eager drifts from itself.

Trains the nano EBT of tests/test_compile.py (V 32, T 32, batch 4, 20 steps, synthetic data, LR 3e-3) once per
variant and prints, per variant, the largest relative difference of the training losses from the eager
reference (1 thread) over the first k steps, and whether every step left torch's global RNG in the same state
(the same random draws: initial candidates, step sizes, step counts, replay picks, Langevin noise).

Variants: ``eager`` (the reference), ``eager-2t`` (2 threads: another summation order in the BLAS and the
reductions), ``eager-func`` (the inner gradient by torch.func.grad, as the compiled graph computes it),
``eager-noreuse`` (the observed stream recomputed at every step: the same values summed in another order),
``compiled`` (``TrainConfig.compile``, CPU Inductor). ``--dtype fp64`` runs all of them in float64 (the model cast
to double; the training loop is otherwise ``train()``'s).

    python benchmarks/compile_drift.py --recipe ebt_s2 --dtype fp32 --variants eager,eager-2t,compiled
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import time

import torch

from ebt_scaling.config import DataConfig, RunSpec, TrainConfig, model_config
from ebt_scaling.models import build_model
from ebt_scaling.records import ListSink
from ebt_scaling.train import loop


def spec(recipe: str, compile: bool, threads: int = 1, steps: int = 20, **model: object) -> RunSpec:
    """The run of tests/test_compile.py (``model``: ModelConfig fields to override)."""
    m = dataclasses.replace(model_config("ebt", "nano", vocab_size=32, sequence_len=32, recipe=recipe), **model)
    t = TrainConfig(steps=steps, batch_size=4, lr=3e-3, warmup_steps=4, eval_interval=steps, eval_batches=2,
                    log_interval=1, seed=0, threads=threads, compile=compile)
    return RunSpec(model=m, train=t, data=DataConfig(source="synthetic", vocab_size=32), recipe=recipe)


def run(recipe: str, variant: str, dtype: str, steps: int = 20, model: dict | None = None) -> dict:
    """Train one variant; its per-step losses, final validation loss and per-step RNG-state digests."""
    threads = 2 if variant == "eager-2t" else 1
    s = spec(recipe, variant == "compiled", threads, steps, **(model or {}))

    raw: list[float] = []  # the training losses unrounded (train() logs them as float32)

    def build(cfg):
        m = build_model(cfg)
        inner = m.loss

        def loss(idx, tgt):
            out = inner(idx, tgt)
            if m.training:
                raw.append(out[0].item())
            return out

        m.loss = loss
        if variant == "eager-func":
            m.inner_grad = "func"
        if variant == "eager-noreuse":
            m.reuse_observed = False
        return m.double() if dtype == "fp64" else m

    rng: list[str] = []
    sink = ListSink()
    saved = loop.build_model
    loop.build_model = build
    t0 = time.perf_counter()
    try:
        r = loop.train(s, sink, on_step=lambda _: rng.append(
            hashlib.sha1(torch.get_rng_state().numpy().tobytes()).hexdigest()[:12]))
    finally:
        loop.build_model = saved
        torch.set_num_threads(1)
    assert r.status == "completed", r.reason
    assert [float(torch.tensor(x, dtype=torch.float32)) for x in raw] == [v for _, v in sink.series("train_loss")]
    return {"losses": raw, "val": r.final_val_loss, "rng": rng,
            "seconds": time.perf_counter() - t0}


def _value(text: str) -> object:
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return {"true": True, "false": False}.get(text.lower(), text)


def rel(a: list[float], b: list[float]) -> float:
    return max(abs(x - y) / abs(y) for x, y in zip(a, b, strict=True))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--recipe", default="ebt_s2")
    ap.add_argument("--dtype", choices=("fp32", "fp64"), default="fp32")
    ap.add_argument("--variants", default="eager,eager-2t,eager-func,eager-noreuse,compiled")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--model", action="append", default=[], metavar="K=V",
                    help="override a ModelConfig field (a number or a word), e.g. langevin_noise_std=0")
    ap.add_argument("--json", help="also write the raw results here")
    a = ap.parse_args()
    torch.set_num_threads(1)
    variants = a.variants.split(",")
    if variants[0] != "eager":
        variants.insert(0, "eager")
    model = {k: _value(v) for k, v in (kv.split("=", 1) for kv in a.model)}
    res = {v: run(a.recipe, v, a.dtype, a.steps, model) for v in variants}
    ref = res["eager"]
    ks = [k for k in (1, 2, 5, 10, 20) if k <= a.steps]
    print(f"recipe {a.recipe} {' '.join(a.model)}, {a.dtype}, {a.steps} steps; max relative train-loss "
          "difference from eager over the first k steps")
    print(f"{'variant':<14} " + " ".join(f"k={k:<8}" for k in ks) + f" {'val':<9} {'same RNG':<8} seconds")
    for v, r in res.items():
        d = [rel(r["losses"][:k], ref["losses"][:k]) for k in ks]
        dv = abs(r["val"] - ref["val"]) / abs(ref["val"])
        same = r["rng"] == ref["rng"]
        print(f"{v:<14} " + " ".join(f"{x:<10.2e}" for x in d) + f" {dv:<9.2e} {str(same):<8} {r['seconds']:.0f}")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"args": vars(a), "results": res}, f, indent=1)


if __name__ == "__main__":
    main()
