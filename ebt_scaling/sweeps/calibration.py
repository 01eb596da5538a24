"""Measured throughput in the cost plan (pure Python): which calibration (``ebt-scale calibrate``, stored as
``CalibrationRecord``) a planned run matches, and the FLOP/s of one trial.

A calibration matches a run exactly or not at all: same device, family, shape key (the model shape and the batch a
step runs), precision as trained on that device, recipe and, on a CPU, thread count. A run without one falls back to
the spec's ``[cost]`` or the default, and the plan says so per run (``throughput_source``): throughput depends on
the shape far more than FLOPs suggest (small matmuls, the EBT's (B, T, V) tensors), so a neighbour's number is
not silently reused.

Trial throughput = per-device FLOP/s x the trial's share of the device (``gpus_per_trial`` < 1) x workers x
scaling efficiency. Workers are 1 until data-parallel trials land (``workers_per_trial``); the efficiency is
``[cost] scaling_efficiency`` (default 1.0, exact for one worker; a multi-worker run should state or measure it).
"""

from __future__ import annotations

import platform
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ebt_scaling.config import RunSpec
from ebt_scaling.records import CalibrationRecord


def shape_key(spec: RunSpec, batch_size: int | None = None) -> str:
    """The shape one training step runs: layers, width, heads, SwiGLU width, context, vocabulary, batch
    (``batch_size``, default the run's) and micro-batch (``-M``, when smaller than the batch), and for an EBT what
    changes its step's work beyond the recipe: landscapes S, random extra steps K, replay buffer R, truncation and
    an undetached chain."""
    m = spec.model
    b = spec.train.batch_size if batch_size is None else batch_size
    micro = spec.train.micro_batch_size
    key = f"L{m.n_layer}-D{m.n_embd}-H{m.n_head}-F{m.ffn_dim}-T{m.sequence_len}-V{m.vocab_size}-B{b}"
    if micro is not None and micro < b:
        key += f"-M{micro}"  # micro-batches of M rows: the forward's shape, and B / M backwards per step
    if m.family == "ebt":
        key += f"-S{m.mcmc_num_steps}-K{m.randomize_num_steps}-R{m.replay_buffer_size}"
        key += ("-trunc" if m.truncate_steps else "") + ("" if m.detach_between_steps else "-chain")
    return key


def trained_precision(precision: str, device_kind: str) -> str:
    """What a run of ``precision`` computes in on ``device_kind`` (``cpu``/``cuda``, or the plan's ``gpu``):
    ``auto`` is bf16 on a GPU and fp32 on a CPU; ``tf32`` is fp32 on a CPU (TF32 is a CUDA matmul mode)."""
    gpu = device_kind in ("cuda", "gpu")
    if precision == "auto":
        return "bf16" if gpu else "fp32"
    if precision == "tf32" and not gpu:
        return "fp32"
    return precision


def cpu_model_name() -> str:
    """This machine's CPU model (``/proc/cpuinfo``'s model name, else ``platform.processor()``)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith(("model name", "hardware", "cpu model")) and ":" in line:
                name = " ".join(line.split(":", 1)[1].split())
                if name:
                    return name
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def calibration_key(family: str, key: str, precision: str, recipe: str | None, threads: int) -> tuple[Any, ...]:
    return family, key, precision, recipe or "", int(threads)


def run_key(spec: RunSpec, device_kind: str, threads: int) -> tuple[Any, ...]:
    """The key a run's calibration must have on ``device_kind`` (threads count on a CPU only)."""
    return calibration_key(spec.model.family, shape_key(spec), trained_precision(spec.train.precision, device_kind),
                           spec.recipe if spec.model.family == "ebt" else None,
                           threads if device_kind == "cpu" else 0)


def record_key(c: CalibrationRecord) -> tuple[Any, ...]:
    return calibration_key(c.family, c.shape_key, c.precision, c.recipe, c.threads if c.device_kind == "cpu" else 0)


@dataclass(frozen=True)
class DeviceCalibrations:
    """The calibrations of the device the runs will use, by key; ``device_name`` None when none applies, with
    ``note`` saying why."""

    device_name: str | None
    by_key: dict[tuple[Any, ...], CalibrationRecord]
    note: str

    def find(self, spec: RunSpec, device_kind: str, threads: int) -> CalibrationRecord | None:
        return self.by_key.get(run_key(spec, device_kind, threads))


NO_CALIBRATIONS = DeviceCalibrations(None, {}, "calibrations: none read")


def device_calibrations(cals: Sequence[CalibrationRecord], device: str, *, device_name: str | None = None,
                        cpu_name: str | None = None) -> DeviceCalibrations:
    """Pick the stored calibrations of the plan's device. GPU runs (``device`` "gpu"): those of ``device_name``
    (``--device-name``), or, without it, of the only GPU model the database holds. CPU runs: this machine's CPU
    (``cpu_name``, default ``cpu_model_name()``)."""
    if device == "gpu":
        gpus = [c for c in cals if c.device_kind == "cuda"]
        names = sorted({c.device_name for c in gpus})
        if device_name is not None:
            name = device_name
            if name not in names:
                held = f" (it holds {', '.join(names)})" if names else ""
                return DeviceCalibrations(None, {}, f"calibrations: none of {name} in the database{held}")
        elif len(names) == 1:
            name = names[0]
        elif not names:
            return DeviceCalibrations(None, {}, "calibrations: none of a GPU in the database")
        else:
            return DeviceCalibrations(None, {}, f"calibrations: {len(names)} GPU models in the database "
                                                f"({', '.join(names)}); pass --device-name to use one")
        chosen = [c for c in gpus if c.device_name == name]
    else:
        name = cpu_name or cpu_model_name()
        chosen = [c for c in cals if c.device_kind == "cpu" and c.device_name == name]
        if not chosen:
            return DeviceCalibrations(None, {}, f"calibrations: none of this machine's CPU ({name}) in the database")
    by_key = {record_key(c): c for c in chosen}
    return DeviceCalibrations(name, by_key, f"calibrations: {len(by_key)} of {name} in the database, used for the "
                                            "runs of exactly their shape, batch, precision and threads")


def calibrated_source(c: CalibrationRecord) -> str:
    date = c.measured_at.strftime("%Y-%m-%d") if c.measured_at is not None else "undated"
    return f"calibrated {c.device_name} {date}"


def trial_flops_per_s(per_device: float, *, share: float = 1.0, workers: int = 1,
                      scaling_efficiency: float = 1.0) -> float:
    """FLOP/s of one trial: per-device FLOP/s x its share of the device x workers x scaling efficiency."""
    return per_device * share * workers * scaling_efficiency
