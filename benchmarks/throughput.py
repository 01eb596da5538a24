"""Training throughput, MFU and peak memory of both families at paper sizes, plus the cost of a thinking step.

For each (family, size preset) one child process builds the model at the paper's context (256) and
vocabulary (50,277, GPT-NeoX), runs ``--warmup`` then ``--reps`` optimizer steps (zero_grad, loss,
backward, clip, AdamW) and reports:

- ``tokens_per_s``: batch * seq / median step time;
- ``mfu``: exact-convention FLOPs per token (``ebt_scaling.models.flops``, matmul level, the passes our
  implementation really runs) * tokens/s / the device peak. The peak is the datasheet dense figure for
  known GPUs (bf16) or ``--peak-tflops``; ``mfu_vs_measured_matmul`` divides by the throughput of one
  large matmul measured on the same device and dtype instead (on CPU that is the only peak reported);
- ``peak_memory_bytes``: ``torch.cuda.max_memory_allocated`` on CUDA; on CPU the child's peak resident set
  during the step loop minus its resident set before it (Linux resets the peak through
  /proc/self/clear_refs), i.e. activations, gradients and optimizer state;
- EBT only: ``think``: the time of ``think(steps=k+1)`` minus ``think(steps=k)`` (one extra thinking step,
  observed stream reused) next to one training inner step (step time / inner steps per training step).

Precision: bf16 autocast on CUDA (as ``ebt-scale train`` does), fp32 on CPU. The EBT runs its explicit
prediction-stream attention (double backward) and SDPA in its observed stream; the Transformer++ runs SDPA.

``--compile``: each job also runs under ``torch.compile`` (as ``ebt-scale train --compile``; for the EBT its
descent and CEs with the inner gradient by ``torch.func.grad``), next to its eager job in the same run;
``first_step_s`` holds the compile time (minutes on a CPU with a cold Inductor cache).

``--cuda-graph`` (CUDA, experimental; ``ebt-scale train --cuda-graph`` replays all of it but the optimizer
step, docs/training.md): the whole optimizer step
(forward, the EBT's inner loop and double backward, clipping, capturable fused AdamW) is captured once as
a CUDA graph and replayed, which removes the per-kernel CPU launch cost. It needs a recipe without
host-side randomness in the step (S1; S2's random step count and replay buffer are refused).

    python benchmarks/throughput.py                                  # CPU: xxs and small, batch 1
    python benchmarks/throughput.py --device cuda --batch 16 --reps 10 --out gpu.json
    python benchmarks/throughput.py --sizes xxs --families ebt --recipe ebt_s2
    python benchmarks/throughput.py --device cuda --batch 16 --train-graph    # as ebt-scale train --cuda-graph
    python benchmarks/throughput.py --device cuda --batch 16 --compile        # both families eager and compiled

Prints one JSON object (also written to --out if given).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

# Dense bf16 tensor-core peaks from the vendors' datasheets (FLOP/s), matched against the device name.
DATASHEET_BF16 = (
    ("H200", 989.4e12),
    ("H100 PCIe", 756.0e12),
    ("H100", 989.4e12),  # SXM / HBM3
    ("A100", 312.0e12),
    ("L40S", 362.05e12),
    ("A10G", 70.0e12),
)


def datasheet_peak(name: str) -> float | None:
    for key, peak in DATASHEET_BF16:
        if key in name:
            return peak
    return None


def measured_matmul_peak(torch, dev, dtype, n: int) -> float:
    """FLOP/s of an n x n x n matmul on this device and dtype (median of 5 after 2 warm-ups)."""
    a = torch.randn(n, n, device=dev, dtype=dtype)
    b = torch.randn(n, n, device=dev, dtype=dtype)
    ts = []
    for i in range(7):
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        t0 = time.perf_counter()
        a @ b  # synchronous on CPU; CUDA is synchronised around it
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        if i >= 2:
            ts.append(time.perf_counter() - t0)
    return 2 * n**3 / statistics.median(ts)


def _status_kb(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def cpu_peak_reset() -> int:
    """Reset the process's peak resident set (Linux: writing 5 to /proc/self/clear_refs) and return the
    current resident set in bytes; elsewhere the baseline is the lifetime maximum (``ru_maxrss``)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        rss = _status_kb("VmRSS")
        if rss is not None:
            return rss * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def cpu_peak() -> int:
    hwm = _status_kb("VmHWM")
    return hwm * 1024 if hwm is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def run_one(job: dict) -> dict:
    """One (family, size) measurement in this process."""
    import torch

    from ebt_scaling.config import draws_on_host_per_step, model_config
    from ebt_scaling.models import build_model
    from ebt_scaling.models.flops import flops_per_token, param_counts
    from ebt_scaling.train.runtime import compiled_loss

    if job["threads"]:
        torch.set_num_threads(job["threads"])
    torch.manual_seed(0)
    dev = torch.device(job["device"])
    recipe = job["recipe"] if job["family"] == "ebt" else None
    cfg = model_config(job["family"], job["size"], vocab_size=job["vocab"], sequence_len=job["seq"], recipe=recipe)
    model = build_model(cfg).to(dev).train()
    lr = 1e-4
    graphed = bool(job.get("cuda_graph"))
    train_graph = bool(job.get("train_graph"))
    compiled = bool(job.get("compile"))
    loss_fn = compiled_loss(model) if compiled else model.loss  # compiles at the first (untimed) step
    opt = torch.optim.AdamW([{"params": g["params"], "weight_decay": g["weight_decay"], "lr": lr * g["lr_mult"]}
                             for g in model.optim_groups(0.01)], betas=(0.9, 0.999),
                            fused=True, capturable=graphed)  # fused as ebt-scale train does
    idx = torch.randint(0, cfg.vocab_size, (job["batch"], job["seq"] + 1), device=dev)
    x, y = idx[:, :-1], idx[:, 1:]
    amp = dev.type == "cuda"

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)

    def step():
        opt.zero_grad(set_to_none=True)
        with torch.autocast(device_type=dev.type, dtype=torch.bfloat16, enabled=amp):
            loss, _ = loss_fn(x, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()

    rss0 = cpu_peak_reset()
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    run = step
    flag = "--cuda-graph" if graphed else "--train-graph" if train_graph else None
    if flag and dev.type != "cuda":
        raise SystemExit(f"{flag} needs --device cuda")
    if flag and draws_on_host_per_step(cfg):
        raise SystemExit(f"{flag}: the recipe draws its step count / replays on the host; use ebt_s1")
    if graphed:
        side = torch.cuda.Stream(dev)
        side.wait_stream(torch.cuda.current_stream(dev))
        with torch.cuda.stream(side):  # warm-up on a side stream, as torch.cuda.graph requires
            for _ in range(3):
                step()
        torch.cuda.current_stream(dev).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        opt.zero_grad(set_to_none=True)
        with torch.cuda.graph(graph):
            step()
        run = graph.replay
    elif train_graph:  # as ebt-scale train --cuda-graph: GraphedStep, AdamW eager, one host sync per step
        from ebt_scaling.train.graphed import WARMUP_STEPS, GraphedStep

        params = [p for g in opt.param_groups for p in g["params"]]

        def fwd_bwd(idx, tgt):
            with torch.autocast(device_type="cuda", dtype=torch.bfloat16, cache_enabled=False):
                loss, _ = model.loss(idx, tgt)
            loss.backward()
            return loss, {}, torch.nn.utils.clip_grad_norm_(params, 1.0)

        graphed_step = GraphedStep(fwd_bwd, params, dev)

        def run():
            loss, _, norm = graphed_step(x, y)
            float(norm), float(loss)  # the loop reads both before the optimizer step
            opt.step()
            if not graphed_step.captured:
                opt.zero_grad(set_to_none=True)

        for _ in range(WARMUP_STEPS + 1):  # eager warm-up and the capture, before any timed step
            run()
    times, first_step_s = [], None
    for r in range(job["warmup"] + job["reps"]):
        sync()
        t0 = time.perf_counter()
        run()
        sync()
        if r == 0:
            first_step_s = time.perf_counter() - t0  # with --compile: includes the compilation
        if r >= job["warmup"]:
            times.append(time.perf_counter() - t0)
    if dev.type == "cuda":
        peak_mem = torch.cuda.max_memory_allocated(dev)
    else:
        peak_mem = cpu_peak() - rss0
    med = statistics.median(times)
    tokens = job["batch"] * job["seq"]
    tps = tokens / med
    fpt = flops_per_token(cfg, "exact")
    out = {"family": job["family"], "size": job["size"], "recipe": recipe, "cuda_graph": graphed,
           "train_graph": train_graph, "compile": compiled, "first_step_s": first_step_s,
           "params": param_counts(cfg), "step_s": times, "median_step_s": med, "tokens_per_s": tps,
           "exact_flops_per_token": fpt, "paper_flops_per_token": flops_per_token(cfg, "paper"),
           "achieved_flops_per_s": fpt * tps, "peak_memory_bytes": int(peak_mem)}
    if job["family"] == "ebt" and job["think_steps"] and not (graphed or train_graph or compiled):
        out["think"] = think_cost(torch, model, x, job, sync, amp, med)
    return out


def think_cost(torch, model, x, job, sync, amp, train_step_s) -> dict:
    from ebt_scaling.models.flops import expected_train_steps

    model.eval()
    k = job["think_steps"]
    gen = torch.Generator(device=x.device)
    t = {k: [], k + 1: []}
    for r in range(1 + job["reps"]):
        for n in (k, k + 1):
            gen.manual_seed(r)
            sync()
            t0 = time.perf_counter()
            with torch.autocast(device_type=x.device.type, dtype=torch.bfloat16, enabled=amp):
                model.think(x, steps=n, generator=gen)
            sync()
            if r:
                t[n].append(time.perf_counter() - t0)
    model.train()
    extra = statistics.median(b - a for a, b in zip(t[k], t[k + 1], strict=True))
    inner = train_step_s / expected_train_steps(model.cfg)
    return {"steps": [k, k + 1], "median_s": {str(n): statistics.median(v) for n, v in t.items()},
            "extra_step_s": extra, "train_inner_step_s": inner, "extra_vs_train_inner_step": extra / inner}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    ap.add_argument("--sizes", default="xxs,small", help="comma-separated size presets")
    ap.add_argument("--families", default="transformer_pp,ebt")
    ap.add_argument("--recipe", default="ebt_s1", choices=["ebt_s1", "ebt_s2"])
    ap.add_argument("--batch", type=int, default=None, help="sequences per step (default: 1 on CPU, 16 on CUDA)")
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--vocab", type=int, default=50277)
    ap.add_argument("--reps", type=int, default=None, help="timed steps (default: 3 on CPU, 10 on CUDA)")
    ap.add_argument("--warmup", type=int, default=None, help="untimed steps first (default: 1 on CPU, 3 on CUDA)")
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads (0 = torch's default)")
    ap.add_argument("--think-steps", type=int, default=2, help="EBT thinking-step cost at k vs k+1 steps (0 = skip)")
    ap.add_argument("--peak-tflops", type=float, default=None, help="device peak for MFU (default: datasheet)")
    ap.add_argument("--matmul-n", type=int, default=None,
                    help="size of the peak-matmul probe (default: 2048 CPU, 8192 CUDA)")
    ap.add_argument("--cuda-graph", action="store_true",
                    help="capture the whole step as a CUDA graph and replay it (experimental; see above)")
    ap.add_argument("--train-graph", action="store_true",
                    help="replay as ebt-scale train --cuda-graph does (forward, backward and clipping captured; "
                         "AdamW eager; one host sync per step)")
    ap.add_argument("--compile", action="store_true",
                    help="also time every step under torch.compile, next to its eager step (as ebt-scale train "
                         "--compile)")
    ap.add_argument("--one", default=None, help=argparse.SUPPRESS)  # internal: run one job (JSON) and print it
    ap.add_argument("--out", default=None, help="also write the JSON here")
    args = ap.parse_args(argv)
    if args.one is not None:
        print(json.dumps(run_one(json.loads(args.one))))
        return {}
    if args.cuda_graph and args.train_graph:
        ap.error("--cuda-graph and --train-graph are two ways to replay a step; pick one")
    if args.compile and (args.cuda_graph or args.train_graph):
        ap.error("--compile times compiled eager steps; drop --cuda-graph/--train-graph to use it")
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # see docs/models.md (Benchmarks)

    import torch

    dev = torch.device(args.device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        ap.error("--device cuda: no CUDA device is visible to torch; use --device cpu")
    cuda = dev.type == "cuda"
    batch = args.batch or (16 if cuda else 1)
    reps = args.reps or (10 if cuda else 3)
    warmup = args.warmup if args.warmup is not None else (3 if cuda else 1)
    if args.threads:
        torch.set_num_threads(args.threads)
    name = torch.cuda.get_device_name(dev) if cuda else cpu_name()
    dtype = torch.bfloat16 if cuda else torch.float32
    measured = measured_matmul_peak(torch, dev, dtype, args.matmul_n or (8192 if cuda else 2048))
    sheet = args.peak_tflops * 1e12 if args.peak_tflops else (datasheet_peak(name) if cuda else None)

    results = []
    for size in [s for s in args.sizes.split(",") if s]:
        for family, compiled in [(f, c) for f in args.families.split(",") if f
                                 for c in ((False, True) if args.compile else (False,))]:
            job = {"family": family, "size": size, "recipe": args.recipe, "device": args.device, "batch": batch,
                   "seq": args.seq, "vocab": args.vocab, "reps": reps, "warmup": warmup, "threads": args.threads,
                   "think_steps": args.think_steps, "cuda_graph": args.cuda_graph,
                   "train_graph": args.train_graph, "compile": compiled}
            what = f"{family}{' compiled' if compiled else ''} {size}"
            print(f"throughput: {what} (batch {batch}, seq {args.seq}) ...", file=sys.stderr)
            proc = subprocess.run([sys.executable, __file__, "--one", json.dumps(job)], capture_output=True,
                                  text=True)
            if proc.returncode != 0:
                tail = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
                results.append({"family": family, "size": size, "compile": compiled, "error": tail})
                print(f"throughput: {what} failed: {tail}", file=sys.stderr)
                continue
            r = json.loads(proc.stdout.strip().splitlines()[-1])
            r["mfu"] = r["achieved_flops_per_s"] / sheet if sheet else None
            r["mfu_vs_measured_matmul"] = r["achieved_flops_per_s"] / measured
            results.append(r)
            sheet_s = f"MFU {r['mfu']:.3f} (datasheet peak), " if r["mfu"] is not None else ""
            print(f"throughput: {what}: {r['tokens_per_s']:,.0f} tok/s, {sheet_s}"
                  f"{r['mfu_vs_measured_matmul']:.3f} of the measured matmul peak", file=sys.stderr)
    out = {"benchmark": "throughput", "device": name, "device_type": dev.type,
           "precision": "bf16 autocast" if cuda else "fp32", "batch": batch, "seq": args.seq, "vocab": args.vocab,
           "recipe": args.recipe, "reps": reps, "warmup": warmup, "cuda_graph": args.cuda_graph,
           "train_graph": args.train_graph, "compile": args.compile,
           "threads": args.threads if not cuda else None, "torch": torch.__version__, "platform": platform.platform(),
           "peak_flops_datasheet": sheet, "peak_flops_measured_matmul": measured,
           "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
           "results": results}
    from benchmarks._common import emit_json

    return emit_json(out, args.out)


if __name__ == "__main__":
    main()
