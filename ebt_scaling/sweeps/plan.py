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
from ebt_scaling.sweeps.calibration import DeviceCalibrations, calibrated_source, trial_flops_per_s
from ebt_scaling.sweeps.expand import ExpandedRun
from ebt_scaling.sweeps.memory import (
    DEFAULT_GPU_MEMORY_GIB,
    MARGIN_FIXED_GIB,
    MARGIN_FRACTION,
    VIDEO_NOTE,
    MemoryPlan,
    estimate_memory,
    plan_micro_batch,
    refusal,
)
from ebt_scaling.sweeps.tables import SweepSpec

# Default throughput assumptions (overridable in a spec's [cost] section or on the command line).
# GPU: an A100 running the paper's fp32/TF32 recipe at ~40% of its 156 TFLOP/s TF32 peak.
DEFAULT_GPU_FLOPS_PER_S = 6.0e13
# CPU: one core of our 2-core build machines on the tiny presets (measured, see docs/sweeps.md).
DEFAULT_CPU_FLOPS_PER_S = 1.0e10


def gpu_request_problem(gpus_per_trial: float, workers_per_trial: int = 1) -> str | None:
    """Why a GPU request is refused, or None: a trial trains on one GPU per worker, so a request above 1 GPU per
    trial (per worker) would reserve devices the run never uses."""
    g = gpus_per_trial
    if g > 1:
        n = f"{g:g}" if g == int(g) else "N"
        return (f"resources: gpus_per_trial {g:g} trains on 1 GPU but reserves {g:g}; use --gpus-per-trial 1 "
                f"(fractions allowed) and --workers-per-trial {n} for a run on {n} GPUs (one per data-parallel "
                "worker)")
    if workers_per_trial > 1 and 0 < g < 1:
        return (f"resources: gpus_per_trial {g:g} with workers_per_trial {workers_per_trial}: each data-parallel "
                "worker trains on one whole GPU (NCCL ranks cannot share one); use --gpus-per-trial 1, or 0 for "
                "CPU workers")
    return None


@dataclass(frozen=True)
class Resources:
    """Per-trial requests and what is available to run them. ``gpus_per_trial`` is per worker and at most 1
    (fractions share a GPU, with one worker only); ``workers_per_trial`` data-parallel workers per run
    (``sched/ddp.py``), each on ``batch_size / workers_per_trial`` sequences."""

    gpus_per_trial: float = 0.0
    cpus_per_trial: float = 1.0
    max_concurrent: int | None = None
    total_gpus: float = 0.0
    total_cpus: float = 1.0
    workers_per_trial: int = 1

    def __post_init__(self) -> None:
        if self.gpus_per_trial < 0 or self.cpus_per_trial < 0:
            raise ConfigError("resources: per-trial GPUs/CPUs must be >= 0; use e.g. --gpus-per-trial 0.5")
        if (why := gpu_request_problem(self.gpus_per_trial, self.workers_per_trial)) is not None:
            raise ConfigError(why)
        if isinstance(self.workers_per_trial, bool) or not isinstance(self.workers_per_trial, int) \
                or self.workers_per_trial < 1:
            raise ConfigError(f"resources: workers_per_trial must be an integer >= 1, got {self.workers_per_trial!r}")
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
        w = self.workers_per_trial
        if self.gpus_per_trial > 0:
            caps.append(math.floor(self.total_gpus / (self.gpus_per_trial * w) + 1e-9))
        if self.cpus_per_trial > 0 and not math.isinf(self.total_cpus):
            caps.append(math.floor(self.total_cpus / (self.cpus_per_trial * w) + 1e-9))
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
    memory: MemoryPlan | None = None
    flops_per_s: float = 0.0  # of the whole trial (per-device x share x workers x efficiency)
    flops_per_s_per_device: float = 0.0  # per GPU, per CPU core (spec/default) or per trial's threads (calibrated)
    throughput_source: str = "default"  # "calibrated <device> <date>", "spec [cost]", "default", "command line"


@dataclass(frozen=True)
class MemorySetting:
    """The device memory a plan fits runs into: per GPU (``gpu_memory_gib``, given or assumed), times the
    trial's GPU share when several trials share one GPU (``gpus_per_trial`` < 1)."""

    gpu_memory_gib: float | None = None  # None: assume DEFAULT_GPU_MEMORY_GIB

    @property
    def assumed(self) -> bool:
        return self.gpu_memory_gib is None

    @property
    def per_gpu_gib(self) -> float:
        return DEFAULT_GPU_MEMORY_GIB if self.gpu_memory_gib is None else float(self.gpu_memory_gib)

    def per_trial_gib(self, gpus_per_trial: float) -> float:
        return self.per_gpu_gib * min(1.0, gpus_per_trial)


def plan_memory(runs: list[ExpandedRun], resources: Resources, setting: MemorySetting) -> list[MemoryPlan]:
    """The memory plan of every run: on GPUs the largest micro-batch that fits the trial's share of a GPU
    (``MemoryPlan.fits`` False when not even micro-batch 1 does); on CPUs the host memory of the whole batch
    (nothing is refused: there is no device limit to hold it to). With ``resources.workers_per_trial`` = N each
    device holds ``batch_size / N`` sequences."""
    if not resources.uses_gpu:
        out = []
        for r in runs:
            est = estimate_memory(r.spec, r.spec.train.batch_size, device="cpu")
            out.append(MemoryPlan(memory_gib=round(est.total_gib, 4), micro_batch_size=r.spec.train.batch_size,
                                  fits=True, memory_gib_available=math.inf, estimate=est))
        return out
    avail = setting.per_trial_gib(resources.gpus_per_trial)
    w = resources.workers_per_trial
    return [plan_micro_batch(r.spec, avail, device="gpu", batch_size=max(1, r.spec.train.batch_size // w))
            for r in runs]


def check_memory(runs: list[ExpandedRun], plans: list[MemoryPlan]) -> None:
    """Refuse (one ``ConfigError`` line, exit 2) the first GPU run that does not fit even at micro-batch 1."""
    for r, mp in zip(runs, plans, strict=True):
        if not mp.fits:
            raise ConfigError(refusal(f"{r.planned.family} {r.label} (seed {r.planned.seed})", mp))


@dataclass(frozen=True)
class CostPlan:
    spec: SweepSpec
    resources: Resources
    device: str  # "gpu" | "cpu"
    flops_per_s: float  # per device
    throughput_note: str
    runs: list[RunCost] = field(default_factory=list)
    memory: MemorySetting | None = None
    calibrations_note: str = "calibrations: not read"
    scaling_efficiency: float = 1.0

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
                "frame_dim": m.frame_dim,
                "batch_size": t.batch_size, "steps": t.steps, "lr": t.lr, "recipe": r.spec.recipe,
                "tune": r.planned.config.get("tune"),
                "params": r.planned.params, "tokens": r.planned.tokens,
                "flops_per_token": r.planned.flops_per_token, "flops": rc.flops,
                "device_hours": rc.device_hours, "duration_s": rc.duration_s,
                "throughput_source": rc.throughput_source, "flops_per_s": rc.flops_per_s,
                "flops_per_s_per_device": rc.flops_per_s_per_device,
                **_memory_fields(rc.memory),
            })
        return {
            "sweep": self.spec.name, "axis": self.spec.axis, "spec_file": self.spec.source,
            "families": list(self.spec.families), "seeds": list(self.spec.seeds), "recipe": self.spec.recipe,
            # video: a run's "tokens" are its predicted frames (batch x context frames per step)
            "modality": self.spec.modality, "unit": "frames" if self.spec.modality == "video" else "tokens",
            "tune": {f: g for f, g in self.spec.tune.items() if f in self.spec.families},
            "device": self.device, "flops_per_s_per_device": self.flops_per_s,
            "throughput_note": self.throughput_note, "time_convention": "exact",
            "calibrations_note": self.calibrations_note, "scaling_efficiency": self.scaling_efficiency,
            "resources": {
                "gpus_per_trial": self.resources.gpus_per_trial, "cpus_per_trial": self.resources.cpus_per_trial,
                "workers_per_trial": self.resources.workers_per_trial,
                "max_concurrent": self.resources.max_concurrent, "total_gpus": self.resources.total_gpus,
                "total_cpus": None if math.isinf(self.resources.total_cpus) else self.resources.total_cpus,
                "slots": self.slots,
            },
            "memory": self._memory_dict(),
            "runs": rows,
            "total": {
                "runs": len(rows), "steps": sum(r["steps"] for r in rows),
                "tokens": sum(r.planned.tokens or 0 for r in (x.run for x in self.runs)),
                "flops": {c: sum(rc.flops[c] for rc in self.runs) for c in ("paper", "exact")},
                "device_hours": self.device_hours, "makespan_s": self.makespan_s,
            },
        }


    def _memory_dict(self) -> dict[str, Any] | None:
        if self.memory is None:
            return None
        gpu = self.device == "gpu"
        return {"device": self.device, "per": "GPU" if gpu else "trial (host memory)",
                "gpu_memory_gib": self.memory.per_gpu_gib if gpu else None,
                "gpu_memory_assumed": self.memory.assumed if gpu else None,
                "available_per_trial_gib": self.memory.per_trial_gib(self.resources.gpus_per_trial) if gpu else None,
                "margin_fraction": MARGIN_FRACTION, "margin_fixed_gib": MARGIN_FIXED_GIB if gpu else 0.0}

    def memory_note(self) -> str:
        """One header line: what memory the plan fits runs into, and whether it was assumed."""
        if self.memory is None:
            return ""
        video = f"; {VIDEO_NOTE}" if self.spec.modality == "video" else ""
        if self.device != "gpu":
            return (f"memory: host memory of the tensors per trial at the whole batch (CPU runs; not checked against "
                    f"a limit); margin +{MARGIN_FRACTION:.0%} included{video}")
        margin = f"margin +{MARGIN_FRACTION:.0%} + {MARGIN_FIXED_GIB:g} GiB included"
        m = self.memory
        src = (f"assumed {m.per_gpu_gib:g} GiB per GPU (--gpu-memory not given)" if m.assumed
               else f"{m.per_gpu_gib:g} GiB per GPU (--gpu-memory)")
        share = self.resources.gpus_per_trial
        avail = f"; {m.per_trial_gib(share):g} GiB per trial at {share:g} GPU per trial" if share < 1 else ""
        return (f"memory: per device, {src}{avail}; micro-batch = the largest divisor of the batch that fits; "
                f"{margin}{video}")


def _memory_fields(mp: MemoryPlan | None) -> dict[str, Any]:
    if mp is None:
        return {}
    return {"memory_gib": mp.memory_gib, "micro_batch_size": mp.micro_batch_size, "memory_fits": mp.fits,
            "memory_precision": mp.estimate.precision, "memory_parts_gib": mp.estimate.parts_gib()}


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
              *, flops_per_s: float | None = None, memory: MemorySetting | None = None,
              calibrations: DeviceCalibrations | None = None) -> CostPlan:
    """Estimate the cost of ``runs``: time = exact training FLOPs / the trial's FLOP/s, where the trial's FLOP/s =
    per-device FLOP/s x its share of the device x workers x ``[cost] scaling_efficiency``
    (``calibration.trial_flops_per_s``). Per-device FLOP/s, in this order: ``flops_per_s`` (``--throughput``),
    the run's exact calibration among ``calibrations`` (``ebt-scale calibrate``; on a CPU measured at the trial's
    thread count, so it stands for the whole trial), the spec's ``[cost]``, the default; every run says which
    (``RunCost.throughput_source``). With ``memory``, also each run's memory per device and micro-batch."""
    if resources.uses_gpu:
        device, share = "gpu", min(1.0, resources.gpus_per_trial)
        default, key = DEFAULT_GPU_FLOPS_PER_S, "gpu_flops_per_s"
    else:
        device, share = "cpu", resources.cpus_per_trial  # spec/default throughput is per core
        default, key = DEFAULT_CPU_FLOPS_PER_S, "cpu_flops_per_s"
    tp = float(flops_per_s or spec.cost.get(key, default))
    if tp <= 0:
        raise ConfigError("--throughput must be > 0 FLOP/s; e.g. 6e13 for an A100")
    src = "command line" if flops_per_s else (spec.source if key in spec.cost else "default")
    fallback_source = "command line" if flops_per_s else ("spec [cost]" if key in spec.cost else "default")
    note = spec.cost.get("note", "") if key in spec.cost and not flops_per_s else ""
    note = f"{tp:.3g} FLOP/s per {device.upper()} ({src}{': ' + note if note else ''})"
    eff = float(spec.cost.get("scaling_efficiency", 1.0))
    workers = resources.workers_per_trial
    threads = max(1, int(resources.cpus_per_trial))  # what the sweep's trainer uses (sched/service.py)
    cals = calibrations if calibrations is not None and not flops_per_s else None
    mem = plan_memory(runs, resources, memory) if memory is not None else [None] * len(runs)
    out = []
    for r, mp in zip(runs, mem, strict=True):
        tokens = r.planned.tokens or 0
        fl = {c: r.planned.flops_per_token[c] * tokens for c in ("paper", "exact")}
        cal = cals.find(r.spec, "cuda" if device == "gpu" else "cpu", threads) if cals is not None else None
        if cal is not None:
            per_dev, source = cal.flops_per_s, calibrated_source(cal)
            run_share = share if device == "gpu" else 1.0  # a CPU calibration already ran the trial's threads
        else:
            per_dev, source, run_share = tp, fallback_source, share
        trial = trial_flops_per_s(per_dev, share=run_share, workers=workers, scaling_efficiency=eff)
        dur = fl["exact"] / trial
        devices = (share if device == "gpu" else resources.cpus_per_trial) * workers
        out.append(RunCost(run=r, flops=fl, device_hours=dur * devices / 3600.0, duration_s=dur, memory=mp,
                           flops_per_s=trial, flops_per_s_per_device=per_dev, throughput_source=source))
    cal_note = "calibrations: not used (--throughput given)" if flops_per_s else (
        calibrations.note if calibrations is not None else "calibrations: not read")
    return CostPlan(spec=spec, resources=resources, device=device, flops_per_s=tp, throughput_note=note, runs=out,
                    memory=memory, calibrations_note=cal_note, scaling_efficiency=eff)


def _short_source(source: str) -> str:
    """The table's ``source`` column: calib, spec, default or cli (the header spells them out)."""
    return {"spec [cost]": "spec", "command line": "cli"}.get(source, "calib" if source.startswith("calibrated")
                                                               else source)


def _source_counts(plan: CostPlan) -> str:
    """``3 calibrated NVIDIA H200 2026-12-02, 1 spec [cost]``: how many runs assumed which throughput."""
    counts: dict[str, int] = {}
    for rc in plan.runs:
        counts[rc.throughput_source] = counts.get(rc.throughput_source, 0) + 1
    return ", ".join(f"{n} {src}" for src, n in counts.items()) or "no runs"


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


def tune_lines(d: dict[str, Any]) -> list[str]:
    """The ``[tune]`` grid of a plan's dict (``CostPlan.to_dict``) and what it costs: per family the grid and its
    points, the runs x steps of the tuned sweep and its device time (issue 28). Empty for an untuned sweep."""
    if not d["tune"]:
        return []
    lines = []
    for fam in d["families"]:
        grid = d["tune"].get(fam)
        rows = [r for r in d["runs"] if r["family"] == fam]
        if not grid:
            lines.append(f"tune: {fam}: no grid (one point per level and seed)")
            continue
        points = math.prod(len(v) for v in grid.values())
        keys = "; ".join(f"{k} = [{', '.join(format(v, 'g') for v in vals)}]" for k, vals in grid.items())
        trial_s = sum(r["duration_s"] for r in rows)
        lines.append(f"tune: {fam}: {keys}: {points} point(s) x {len(d['seeds'])} seed(s) per level; "
                     f"{len(rows)} runs, {sum(r['steps'] for r in rows):,} steps, {_h(trial_s)} of trial time")
    lines.append("tune: every run is scored on the selection set (val_select_loss: picks the LR) and on the "
                 "evaluation set (val_loss: fitted), disjoint and fixed for the sweep")
    return lines


def format_plan(plan: CostPlan) -> str:
    """A plain-text plan: one line per run, then totals."""
    d = plan.to_dict()
    unit = d["unit"]
    lines = [
        f"sweep: {d['sweep']}  axis: {d['axis']}  spec: {d['spec_file']}",
        f"families: {', '.join(d['families'])}  seeds: {list(d['seeds'])}  EBT recipe: {d['recipe']}",
        f"throughput assumption: {plan.throughput_note}; time from the exact FLOPs count",
        f"{plan.calibrations_note}; per run: {_source_counts(plan)}"
        + (f"; scaling efficiency {plan.scaling_efficiency:g}" if plan.scaling_efficiency != 1.0 else ""),
    ]
    if d["modality"] == "video":
        dims = sorted({r["frame_dim"] for r in d["runs"]})
        lines.append(f"modality: video: next-frame prediction over frame embeddings of {', '.join(map(str, dims))} "
                     "values; ctx = context frames, frames = predicted frames (batch x ctx per step), params and "
                     "FLOPs per frame from models/video_flops.py")
    lines += tune_lines(d)
    if plan.memory is not None:
        lines.append(plan.memory_note())
    lines.append("")
    mem = plan.memory is not None
    hdr = (f"{'family':<15}{'value':>11}{'x':>11}{'L':>4}{'D':>6}{'H':>4}{'ctx':>5}{'batch':>6}{'steps':>8}"
           f"{'lr':>9}{'params(non-emb)':>17}{unit:>11}{'FLOPs paper':>13}{'FLOPs exact':>13}"
           f"{plan.device.upper() + '-h':>9}" + (f"{'mem GiB':>9}{'micro':>6}" if mem else "")
           + f"{'FLOP/s':>10}{'source':>9}" + "  hash")
    lines.append(hdr)
    for r in d["runs"]:
        lines.append(
            f"{r['family']:<15}{r['value']:>11}{_n(r['x']):>11}{r['n_layer']:>4}{r['n_embd']:>6}{r['n_head']:>4}"
            f"{r['sequence_len']:>5}{r['batch_size']:>6}{r['steps']:>8}{r['lr']:>9.3g}"
            f"{r['params'].get('non_embedding', 0):>17,}{r['tokens']:>11.3g}{r['flops']['paper']:>13.3e}"
            f"{r['flops']['exact']:>13.3e}{r['device_hours']:>9.3g}"
            + (f"{r['memory_gib']:>9.3g}{r['micro_batch_size']:>6}" if mem else "")
            + f"{r['flops_per_s']:>10.3g}{_short_source(r['throughput_source']):>9}" + f"  {r['config_hash'][:10]}"
            + ("  seed " + str(r['seed']) if len(d['seeds']) > 1 else "")
        )
    t, res = d["total"], d["resources"]
    per = (f"{res['gpus_per_trial']:g} GPU + {res['cpus_per_trial']:g} CPU" if plan.device == "gpu"
           else f"{res['cpus_per_trial']:g} CPU")
    lines += [
        "",
        f"total: {t['runs']} runs, {t['steps']:,} steps, {t['tokens']:.3g} {unit}, "
        f"FLOPs paper {t['flops']['paper']:.3e}, exact {t['flops']['exact']:.3e}; "
        f"estimated {t['device_hours']:.3g} {plan.device.upper()}-hours",
        f"resources: {per} per trial on {res['total_gpus']:g} GPU / "
        f"{'unlimited' if res['total_cpus'] is None else format(res['total_cpus'], 'g')} CPU "
        f"-> {res['slots']} trial(s) at once; estimated makespan {_h(t['makespan_s'])}",
    ]
    return "\n".join(lines)
