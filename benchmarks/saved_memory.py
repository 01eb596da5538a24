"""What one training forward keeps for its backward: the bytes of every tensor autograd saves, by source line.

Runs one ``model.loss`` (for the EBT the whole inner loop with its double-backward graph) of (family, size)
at the paper's context and vocabulary under ``torch.autograd.graph.saved_tensors_hooks`` and adds up the
distinct storages that autograd saves, attributed to the line of ``ebt_scaling`` that created the saving
op. These tensors are alive together when the backward starts, so they are most of a training step's peak
memory at large batch (the peak also holds transient buffers, gradients and optimizer state, which this
does not count; ``throughput.py`` reports the device peak). The count is exact and the same on every
device, so a change to the models can be judged for memory on a CPU: with ``--amp bf16`` the CPU's bf16
autocast applies the casts CUDA autocast applies to linear layers and matmuls.

    python benchmarks/saved_memory.py --family ebt --size small --batch 1 --amp bf16
    python benchmarks/saved_memory.py --family transformer_pp --size xxs --batch 4 --top 10 --out mem.json

Prints one JSON object (also written to --out if given).
"""

from __future__ import annotations

import argparse
import os
import sys
import traceback
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import add_model_args, emit_json, model_config_from  # noqa: E402


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_args(ap)
    ap.add_argument("--amp", default="bf16", choices=["bf16", "none"], help="CPU autocast dtype (none = fp32)")
    ap.add_argument("--top", type=int, default=20, help="source lines to list")
    ap.add_argument("--out", default=None, help="also write the JSON here")
    args = ap.parse_args(argv)
    if args.top < 0:
        ap.error("--top must be >= 0")

    import torch

    from ebt_scaling.models import build_model

    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    cfg = model_config_from(ap, args)
    recipe = args.recipe if args.family == "ebt" else None  # as model_config_from applied it
    model = build_model(cfg).train()
    idx = torch.randint(0, cfg.vocab_size, (args.batch, args.seq + 1))
    x, y = idx[:, :-1], idx[:, 1:]
    package = str(Path(__file__).resolve().parents[1] / "ebt_scaling")

    storages: dict[int, int] = {}
    by_site: Counter = Counter()

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in storages:  # a storage saved by several ops counts once
            storages[storage.data_ptr()] = storage.nbytes()
            ours = [f for f in traceback.extract_stack()[:-1] if f.filename.startswith(package)]
            site = (f"{os.path.relpath(ours[-1].filename, Path(package).parent)}:{ours[-1].lineno}"
                    if ours else "(outside ebt_scaling)")
            by_site[(site, tuple(t.shape), str(t.dtype).removeprefix("torch."))] += storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.amp == "bf16"):
            loss, _ = model.loss(x, y)
    loss.backward()  # the graph the hooks saw is a real one: it must run
    total = sum(storages.values())
    result = {
        "benchmark": "saved_memory",
        "family": args.family, "size": args.size, "recipe": recipe, "batch": args.batch, "seq": args.seq,
        "vocab": args.vocab, "amp": args.amp, "torch": torch.__version__,
        "saved_bytes": total, "saved_gib": round(total / 2**30, 4), "saved_storages": len(storages),
        "top": [{"site": site, "shape": list(shape), "dtype": dtype, "mib": round(nbytes / 2**20, 2)}
                for (site, shape, dtype), nbytes in by_site.most_common(args.top)],
    }
    return emit_json(result, args.out)


if __name__ == "__main__":
    main()
