"""Where a training step's time goes: torch.profiler over a few optimizer steps of one model, as JSON.

Builds (family, size) at the paper's context and vocabulary like ``throughput.py``, runs ``--warmup``
untimed steps, then profiles ``--reps`` steps and reports the operators with the most self time on the
device (CUDA kernels' time on a GPU, CPU time on CPU), the number of operator calls per step and the
number of kernel launches per step. Use it to decide what to optimise next; use ``throughput.py`` for the
figures themselves (the profiler adds overhead).

    python benchmarks/profile_step.py --family ebt --size small --device cuda --batch 16 --out prof.json
    python benchmarks/profile_step.py --family transformer_pp --size xxs --batch 1       # CPU, fp32
    python benchmarks/profile_step.py --family ebt --size tiny --vocab 2048 --seq 128 --batch 8 --compile

``--compile`` profiles the step as ``ebt-scale train --compile`` runs it (``train.runtime.compiled_loss``; the
warm-up steps compile). Compiled kernels then replace most aten calls (matmuls stay aten calls). On CUDA every
launch is in ``kernel_launches_per_step`` and ``compiled_kernels_per_step`` counts the profiler's ``triton_*``
events; on CPU Inductor's C++ kernels run inside the ``## Call CompiledFxGraph ...`` events, invisible one by one,
so that count stays 0 there.

Prints one JSON object (also written to --out if given).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import add_model_args, emit_json, model_config_from  # noqa: E402


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_args(ap)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--top", type=int, default=30, help="operators to list")
    ap.add_argument("--compile", action="store_true", help="profile the torch.compile'd step (as ebt-scale train)")
    ap.add_argument("--out", default=None, help="also write the JSON here")
    args = ap.parse_args(argv)

    import torch
    from torch.profiler import ProfilerActivity, profile

    from ebt_scaling.models import build_model
    from ebt_scaling.train.runtime import compiled_loss

    dev = torch.device(args.device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        ap.error("--device cuda: no CUDA device is visible to torch; use --device cpu")
    if args.threads:
        torch.set_num_threads(args.threads)
    cuda = dev.type == "cuda"
    torch.manual_seed(0)
    cfg = model_config_from(ap, args)
    recipe = args.recipe if args.family == "ebt" else None  # as model_config_from applied it
    model = build_model(cfg).to(dev).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)  # as ebt-scale train does
    loss_fn = compiled_loss(model) if args.compile else model.loss
    idx = torch.randint(0, cfg.vocab_size, (args.batch, args.seq + 1), device=dev)
    x, y = idx[:, :-1], idx[:, 1:]

    def step():
        opt.zero_grad(set_to_none=True)
        with torch.autocast(device_type=dev.type, dtype=torch.bfloat16, enabled=cuda):
            loss, _ = loss_fn(x, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()

    for _ in range(args.warmup):
        step()
    if cuda:
        torch.cuda.synchronize(dev)
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=acts) as prof:
        for _ in range(args.reps):
            step()
        if cuda:
            torch.cuda.synchronize(dev)
    events = prof.key_averages()

    def dev_self_us(e) -> float:
        if cuda:
            return float(getattr(e, "self_device_time_total", getattr(e, "self_cuda_time_total", 0.0)))
        return float(e.self_cpu_time_total)

    total = sum(dev_self_us(e) for e in events)
    rows = sorted(events, key=dev_self_us, reverse=True)[: args.top]
    top = [{"name": e.key, "calls_per_step": e.count / args.reps, "self_ms_per_step": dev_self_us(e) / 1e3 / args.reps,
            "share": dev_self_us(e) / total if total else None} for e in rows]
    aten_calls = sum(e.count for e in events if e.key.startswith("aten::")) / args.reps
    launch_keys = ("cudaLaunchKernel", "cuLaunchKernel", "cudaLaunchKernelExC", "cuLaunchKernelEx")
    launches = (sum(e.count for e in events if e.key in launch_keys) / args.reps) if cuda else None
    compiled_kernels = sum(e.count for e in events if e.key.startswith(("cpp_fused", "triton_"))) / args.reps
    out = {"benchmark": "profile_step", "family": args.family, "size": args.size, "recipe": recipe,
           "device": torch.cuda.get_device_name(dev) if cuda else "cpu", "batch": args.batch, "seq": args.seq,
           "vocab": args.vocab, "precision": "bf16 autocast" if cuda else "fp32", "reps": args.reps,
           "torch": torch.__version__, "self_device_ms_per_step": total / 1e3 / args.reps,
           "compile": args.compile, "aten_calls_per_step": aten_calls, "kernel_launches_per_step": launches,
           "compiled_kernels_per_step": compiled_kernels, "top": top}
    return emit_json(out, args.out)


if __name__ == "__main__":
    main()
