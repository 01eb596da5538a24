"""Training-data loader throughput (``StoreData.sample_batch``) against what a training step consumes.

Builds (or reuses) a token store of generated JSON-lines text with ``ebt-scale data prepare`` semantics
(byte tokenizer, small shards so that samples hit many of them), then times the loader alone: batches of
``--batch`` rows of ``--seq + 1`` tokens in ``packed`` and ``document`` mode, cold (first touch of each
shard) and warm. Optionally it times one training step of a model (``--family``/``--size``, CPU) on the
same batches, so the JSON says how many steps per second the loader could feed and how that compares with
the step's own rate (``loader_over_step``: > 1 means the loader is not the bottleneck, single-threaded, in
the training process).

    python benchmarks/loader.py --mb 50 --batch 32 --seq 256 --step-family transformer_pp --step-size tiny \\
        --out /tmp/loader.json
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))
from _common import emit_json  # noqa: E402


def memory_mb() -> dict:
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            key, _, val = line.partition(":")
            if key in ("VmRSS", "RssAnon", "RssFile"):
                out[key] = round(int(val.split()[0]) / 1024, 1)
    return out


def make_store(work: pathlib.Path, mb: int, shard_tokens: int) -> pathlib.Path:
    from ebt_scaling.data.store import prepare
    from ebt_scaling.data.streams import parse_source

    src = work / f"docs-{mb}mb.jsonl"
    out = work / f"store-{mb}mb-{shard_tokens}"
    if (out / "manifest.json").exists() and json.loads((out / "manifest.json").read_text()).get("complete"):
        return out
    rng = np.random.default_rng(0)
    words = ["".join(rng.choice(list("etaoinshrdlcumwfgypb"), int(rng.integers(1, 9)))) for _ in range(5000)]
    with open(src, "w", encoding="utf-8") as f:
        size = 0
        while size < mb * 1_000_000:
            n = int(rng.integers(20, 800))  # words per document: about 100 B to 5 kB
            line = json.dumps({"text": " ".join(rng.choice(words, n))}) + "\n"
            f.write(line)
            size += len(line)
    prepare(parse_source(f"jsonl:{src}"), "byte", out, shard_tokens=shard_tokens)
    return out


def time_loader(store_dir: pathlib.Path, sampling: str, batch: int, seq: int, steps: int) -> dict:
    from ebt_scaling.data.sampler import PAD, StoreData
    from ebt_scaling.data.store import TokenStore

    data = StoreData(TokenStore(store_dir), seq_len=seq, sampling=sampling, val_fraction=0.05, split_seed=33)
    out = {}
    for phase in ("cold", "warm"):  # warm: the same steps again, shards and indexes already open
        t0 = time.perf_counter()
        real = 0
        for s in range(steps):
            real += int((data.sample_batch(s, range(batch))[:, 1:] != PAD).sum())
        dt = time.perf_counter() - t0
        out[phase] = {"seconds": round(dt, 4), "batches_per_s": round(steps / dt, 1),
                      "token_slots_per_s": round(steps * batch * seq / dt), "real_tokens_per_s": round(real / dt)}
    out["memory_mb_while_open"] = memory_mb()  # the sampler and its mapped shards still alive
    out["shards_opened"] = len(data.store._bins)
    out["shards"] = len(data.store.manifest["shards"])
    return out


def time_step(family: str, size: str, batch: int, seq: int, steps: int, threads: int) -> dict:
    import torch

    from ebt_scaling.config import model_config
    from ebt_scaling.models import build_model

    torch.set_num_threads(threads)
    recipe = "ebt_s1" if family == "ebt" else None
    model = build_model(model_config(family, size, vocab_size=256, sequence_len=seq, recipe=recipe))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x = torch.randint(0, 256, (batch, seq + 1))
    times = []
    for i in range(steps + 1):
        t0 = time.perf_counter()
        loss, _ = model.loss(x[:, :-1], x[:, 1:])
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if i:  # the first step warms up allocators
            times.append(time.perf_counter() - t0)
    dt = float(np.median(times))
    return {"family": family, "size": size, "threads": threads, "median_step_s": round(dt, 4),
            "steps_per_s": round(1 / dt, 3), "token_slots_per_s": round(batch * seq / dt)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mb", type=int, default=50, help="size of the generated corpus in MB")
    ap.add_argument("--shard-tokens", type=int, default=1 << 20)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--steps", type=int, default=200, help="loader batches per phase")
    ap.add_argument("--step-family", default=None, choices=["ebt", "transformer_pp"],
                    help="also time a training step of this family (CPU)")
    ap.add_argument("--step-size", default="tiny")
    ap.add_argument("--step-threads", type=int, default=1)
    ap.add_argument("--work", default=None, help="folder for the corpus and store (default: a temporary one)")
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    work = pathlib.Path(a.work or tempfile.mkdtemp(prefix="ebt-loader-"))
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    store = make_store(work, a.mb, a.shard_tokens)
    manifest = json.loads((store / "manifest.json").read_text())
    result: dict = {"store": {"path": str(store), "tokens": manifest["tokens"], "documents": manifest["documents"],
                              "shards": len(manifest["shards"]), "prepare_s": round(time.perf_counter() - t0, 1)},
                    "batch": a.batch, "seq": a.seq, "loader": {}}
    mem0 = memory_mb()
    for mode in ("packed", "document"):
        result["loader"][mode] = time_loader(store, mode, a.batch, a.seq, a.steps)
    # Resident memory before and after sampling (MB, /proc/self/status): anonymous (the loader's own arrays,
    # what must not grow with the corpus) and file-backed (mapped shard pages that samples touched; page
    # cache the kernel drops under pressure).
    result["memory_mb"] = {"before_loader": mem0, "after_loader": memory_mb()}
    if a.step_family:
        step = time_step(a.step_family, a.step_size, a.batch, a.seq, 5, a.step_threads)
        result["step"] = step
        result["loader_over_step"] = {m: round(v["warm"]["batches_per_s"] / step["steps_per_s"], 1)
                                      for m, v in result["loader"].items()}
    emit_json(result, a.out)


if __name__ == "__main__":
    main()
