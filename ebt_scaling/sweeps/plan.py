"""Cost planning of a sweep (pure Python): parameters, tokens, FLOPs per convention, device-hours at a
stated throughput, and the makespan of the runs on the available trial slots."""

from __future__ import annotations

import heapq
import math
import os
import shutil
import subprocess
from dataclasses import dataclass, field
from typing import Any

from ebt_scaling.errors import ConfigError
from ebt_scaling.sweeps.expand import ExpandedRun
from ebt_scaling.sweeps.spec import SweepSpec

# Default throughput assumptions (overridable in a spec's [cost] section or on the command line).
# GPU: an A100 running the paper's fp32/TF32 recipe at ~40% of its 156 TFLOP/s TF32 peak.
DEFAULT_GPU_FLOPS_PER_S = 6.0e13
# CPU: one core of our 2-core build machines on the tiny presets (measured, see docs/sweeps.md).
DEFAULT_CPU_FLOPS_PER_S = 1.0e10


@dataclass(frozen=True)
class Resources:
    """Per-trial requests and what is available to run them."""

    gpus_per_trial: float = 0.0
    cpus_per_trial: float = 1.0
    max_concurrent: int | None = None
    total_gpus: float = 0.0
    total_cpus: float = 1.0

    def __post_init__(self) -> None:
        if self.gpus_per_trial < 0 or self.cpus_per_trial < 0:
            raise ConfigError("resources: per-trial GPUs/CPUs must be >= 0; use e.g. --gpus-per-trial 0.5")
        if self.gpus_per_trial == 0 and self.cpus_per_trial == 0:
            raise ConfigError("resources: a trial needs at least some CPU or GPU; set --cpus-per-trial 1")
        if self.max_concurrent is not None and self.max_concurrent < 1:
            raise ConfigError("resources: --max-concurrent must be >= 1; leave it out for as many as fit")

    @property
    def uses_gpu(self) -> bool:
        return self.gpus_per_trial > 0

    def slots(self) -> int:
        """How many trials can run at once."""
        caps = []
        if self.gpus_per_trial > 0:
            caps.append(math.floor(self.total_gpus / self.gpus_per_trial + 1e-9))
        if self.cpus_per_trial > 0 and not math.isinf(self.total_cpus):
            caps.append(math.floor(self.total_cpus / self.cpus_per_trial + 1e-9))
        n = min(caps) if caps else (self.max_concurrent or 1)
        if self.max_concurrent is not None:
            n = min(n, self.max_concurrent)
        return n


def local_resources() -> tuple[int, int]:
    """(CPUs, GPUs) of this machine, without importing torch or ray."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    gpus = 0
    cvd = os.environ.get("CUDA_VISIBLE_DEVICES")
    if cvd is not None and cvd.strip() in ("", "-1"):
        return cpus, 0
    exe = shutil.which("nvidia-smi")
    if exe:
        try:
            out = subprocess.run([exe, "-L"], capture_output=True, text=True, timeout=10).stdout
            gpus = sum(1 for line in out.splitlines() if line.startswith("GPU "))
        except (OSError, subprocess.SubprocessError):
            gpus = 0
        if cvd:
            gpus = min(gpus, len([c for c in cvd.split(",") if c.strip()]))
    return cpus, gpus


@dataclass(frozen=True)
class RunCost:
    run: ExpandedRun
    flops: dict[str, float]  # training FLOPs per convention
    device_hours: float
    duration_s: float


@dataclass(frozen=True)
class CostPlan:
    spec: SweepSpec
    resources: Resources
    device: str  # "gpu" | "cpu"
    flops_per_s: float  # per device
    throughput_note: str
    runs: list[RunCost] = field(default_factory=list)

    @property
    def device_hours(self) -> float:
        return sum(r.device_hours for r in self.runs)

    @property
    def slots(self) -> int:
        return self.resources.slots()

    @property
    def makespan_s(self) -> float:
        return makespan([r.duration_s for r in self.runs], self.slots)

    def to_dict(self) -> dict[str, Any]:
        rows = []
        for rc in self.runs:
            r = rc.run
            m, t = r.spec.model, r.spec.train
            rows.append({
                "family": r.planned.family, "axis": r.planned.axis, "value": r.label, "x": r.planned.x,
                "seed": r.planned.seed, "config_hash": r.config_hash, "n_layer": m.n_layer, "n_embd": m.n_embd,
                "n_head": m.n_head, "sequence_len": m.sequence_len, "vocab_size": m.vocab_size,
                "batch_size": t.batch_size, "steps": t.steps, "lr": t.lr, "recipe": r.spec.recipe,
                "params": r.planned.params, "tokens": r.planned.tokens,
                "flops_per_token": r.planned.flops_per_token, "flops": rc.flops,
                "device_hours": rc.device_hours, "duration_s": rc.duration_s,
            })
        return {
            "sweep": self.spec.name, "axis": self.spec.axis, "spec_file": self.spec.source,
            "families": list(self.spec.families), "seeds": list(self.spec.seeds), "recipe": self.spec.recipe,
            "device": self.device, "flops_per_s_per_device": self.flops_per_s,
            "throughput_note": self.throughput_note, "time_convention": "exact",
            "resources": {
                "gpus_per_trial": self.resources.gpus_per_trial, "cpus_per_trial": self.resources.cpus_per_trial,
                "max_concurrent": self.resources.max_concurrent, "total_gpus": self.resources.total_gpus,
                "total_cpus": None if math.isinf(self.resources.total_cpus) else self.resources.total_cpus,
                "slots": self.slots,
            },
            "runs": rows,
            "total": {
                "runs": len(rows), "tokens": sum(r.planned.tokens or 0 for r in (x.run for x in self.runs)),
                "flops": {c: sum(rc.flops[c] for rc in self.runs) for c in ("paper", "exact")},
                "device_hours": self.device_hours, "makespan_s": self.makespan_s,
            },
        }


def makespan(durations: list[float], slots: int) -> float:
    """Longest-processing-time-first list schedule of ``durations`` on ``slots`` identical slots."""
    if not durations:
        return 0.0
    if slots < 1:
        return math.inf
    loads = [0.0] * min(slots, len(durations))
    heapq.heapify(loads)
    for d in sorted(durations, reverse=True):
        heapq.heappush(loads, heapq.heappop(loads) + d)
    return max(loads)


def plan_cost(spec: SweepSpec, runs: list[ExpandedRun], resources: Resources,
              *, flops_per_s: float | None = None) -> CostPlan:
    """Estimate the cost of ``runs``: time = exact training FLOPs / (throughput x devices per trial)."""
    if resources.uses_gpu:
        device, per_dev = "gpu", resources.gpus_per_trial
        default, key = DEFAULT_GPU_FLOPS_PER_S, "gpu_flops_per_s"
    else:
        device, per_dev = "cpu", resources.cpus_per_trial
        default, key = DEFAULT_CPU_FLOPS_PER_S, "cpu_flops_per_s"
    tp = float(flops_per_s or spec.cost.get(key, default))
    if tp <= 0:
        raise ConfigError("--throughput must be > 0 FLOP/s; e.g. 6e13 for an A100")
    src = "command line" if flops_per_s else (spec.source if key in spec.cost else "default")
    note = spec.cost.get("note", "") if key in spec.cost and not flops_per_s else ""
    note = f"{tp:.3g} FLOP/s per {device.upper()} ({src}{': ' + note if note else ''})"
    out = []
    for r in runs:
        tokens = r.planned.tokens or 0
        fl = {c: r.planned.flops_per_token[c] * tokens for c in ("paper", "exact")}
        dur = fl["exact"] / (tp * per_dev)
        out.append(RunCost(run=r, flops=fl, device_hours=fl["exact"] / tp / 3600.0, duration_s=dur))
    return CostPlan(spec=spec, resources=resources, device=device, flops_per_s=tp, throughput_note=note, runs=out)


def _h(seconds: float) -> str:
    if math.isinf(seconds):
        return "never (no slot fits a trial)"
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    if seconds < 172800:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"


def _n(v: float) -> str:
    return f"{v:.3g}" if v < 1e4 else f"{v:.3e}"


def format_plan(plan: CostPlan) -> str:
    """A plain-text plan: one line per run, then totals."""
    d = plan.to_dict()
    lines = [
        f"sweep: {d['sweep']}  axis: {d['axis']}  spec: {d['spec_file']}",
        f"families: {', '.join(d['families'])}  seeds: {list(d['seeds'])}  EBT recipe: {d['recipe']}",
        f"throughput assumption: {plan.throughput_note}; time from the exact FLOPs count",
        "",
    ]
    hdr = (f"{'family':<15}{'value':>11}{'x':>11}{'L':>4}{'D':>6}{'H':>4}{'ctx':>5}{'batch':>6}{'steps':>8}"
           f"{'lr':>9}{'params(non-emb)':>17}{'tokens':>11}{'FLOPs paper':>13}{'FLOPs exact':>13}"
           f"{plan.device.upper() + '-h':>9}  hash")
    lines.append(hdr)
    for r in d["runs"]:
        lines.append(
            f"{r['family']:<15}{r['value']:>11}{_n(r['x']):>11}{r['n_layer']:>4}{r['n_embd']:>6}{r['n_head']:>4}"
            f"{r['sequence_len']:>5}{r['batch_size']:>6}{r['steps']:>8}{r['lr']:>9.3g}"
            f"{r['params'].get('non_embedding', 0):>17,}{r['tokens']:>11.3g}{r['flops']['paper']:>13.3e}"
            f"{r['flops']['exact']:>13.3e}{r['device_hours']:>9.3g}  {r['config_hash'][:10]}"
            + ("  seed " + str(r['seed']) if len(d['seeds']) > 1 else "")
        )
    t, res = d["total"], d["resources"]
    per = (f"{res['gpus_per_trial']:g} GPU + {res['cpus_per_trial']:g} CPU" if plan.device == "gpu"
           else f"{res['cpus_per_trial']:g} CPU")
    lines += [
        "",
        f"total: {t['runs']} runs, {t['tokens']:.3g} tokens, FLOPs paper {t['flops']['paper']:.3e}, "
        f"exact {t['flops']['exact']:.3e}; estimated {t['device_hours']:.3g} {plan.device.upper()}-hours",
        f"resources: {per} per trial on {res['total_gpus']:g} GPU / "
        f"{'unlimited' if res['total_cpus'] is None else format(res['total_cpus'], 'g')} CPU "
        f"-> {res['slots']} trial(s) at once; estimated makespan {_h(t['makespan_s'])}",
    ]
    return "\n".join(lines)
