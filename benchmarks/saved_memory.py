"""What one training forward keeps for its backward: the bytes of every tensor autograd saves, by source line.

Runs one ``model.loss`` (for the EBT the whole inner loop with its double-backward graph) of (family, size)
at the paper's context and vocabulary under ``torch.autograd.graph.saved_tensors_hooks`` and adds up the
distinct storages that autograd saves, attributed to the line of ``ebt_scaling`` that created the saving
op (``saved_bytes``, counted as each tensor is saved). ``alive_bytes`` counts only the saved storages still
held when the forward ends: a first-order inner step's graph (S2's truncated early steps) is freed before the
backward, so it is in ``saved_bytes`` but not in ``alive_bytes``; ``alive_activation_bytes`` leaves out the
parameters' own storages (fp32 weights saved by a linear layer). The alive tensors are most of a training
step's peak memory at large batch (the peak also holds transient buffers, gradients and optimizer state, which
this does not count; ``memory_calibration.py`` measures the step's peak and ``throughput.py`` reports the
device peak). The counts are exact and the same on every
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
import weakref
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

    counted = count_saved(model, x, y, amp=args.amp == "bf16", package=package)
    loss, storages, by_site = counted["loss"], counted["storages"], counted["by_site"]
    loss.backward()  # the graph the hooks saw is a real one: it must run
    total = sum(storages.values())
    result = {
        "benchmark": "saved_memory",
        "family": args.family, "size": args.size, "recipe": recipe, "batch": args.batch, "seq": args.seq,
        "vocab": args.vocab, "amp": args.amp, "torch": torch.__version__,
        "saved_bytes": total, "saved_gib": round(total / 2**30, 4), "saved_storages": len(storages),
        "alive_bytes": counted["alive_bytes"], "alive_activation_bytes": counted["alive_activation_bytes"],
        "top": [{"site": site, "shape": list(shape), "dtype": dtype, "mib": round(nbytes / 2**20, 2)}
                for (site, shape, dtype), nbytes in by_site.most_common(args.top)],
    }
    return emit_json(result, args.out)


def count_saved(model, x, y, *, amp: bool, package: str | None = None) -> dict:
    """Run ``model.loss(x, y)`` (CPU bf16 autocast when ``amp``) under ``saved_tensors_hooks`` and count what
    autograd saves. Returns the loss (its backward still to run) and:

    ``storages``: {storage address: bytes} of every distinct storage saved, counted when it is saved (this
    script's ``saved_bytes``); ``by_site``: bytes per (source line, shape, dtype) when ``package`` is given;
    ``alive_bytes``: the saved storages still held when the forward ends, i.e. when the backward starts (a
    first-order inner step's graph, S2's truncated steps, is freed before: it is counted in ``saved_bytes``
    but not here); ``alive_activation_bytes``: the same without the parameters' own storages (fp32 weights
    saved by a linear layer are the weights, not extra memory).
    """
    import torch

    storages: dict[int, int] = {}
    by_site: Counter = Counter()
    refs: list = []

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        refs.append(weakref.ref(t))
        if storage.data_ptr() not in storages:  # a storage saved by several ops counts once
            storages[storage.data_ptr()] = storage.nbytes()
            if package is not None:
                ours = [f for f in traceback.extract_stack()[:-1] if f.filename.startswith(package)]
                site = (f"{os.path.relpath(ours[-1].filename, Path(package).parent)}:{ours[-1].lineno}"
                        if ours else "(outside ebt_scaling)")
                by_site[(site, tuple(t.shape), str(t.dtype).removeprefix("torch."))] += storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
            loss, _ = model.loss(x, y)
    alive: dict[int, int] = {}
    for r in refs:
        t = r()
        if t is not None:
            alive[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    return {"loss": loss, "storages": storages, "by_site": by_site, "alive_bytes": sum(alive.values()),
            "alive_activation_bytes": sum(n for ptr, n in alive.items() if ptr not in params)}


if __name__ == "__main__":
    main()
