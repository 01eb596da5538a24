"""``ebt-scale calibrate``: time a few training steps of each (family, shape, precision) of a sweep spec on this
machine's device and store the measured FLOP/s in the database, where ``sweep --dry-run`` finds them."""

from __future__ import annotations

import json
import socket
from typing import Annotated, Any

import typer

from ebt_scaling.cli.common import (
    DbOption,
    FormatOption,
    JsonAliasOption,
    OutputFormat,
    SpecAxisOption,
    SpecFileOption,
    SpecPresetOption,
    SpecScaleOption,
    handle_errors,
    resolve_db,
    spec_scale,
    wants_json,
)


def register(app: typer.Typer) -> None:
    app.command("calibrate")(calibrate)


@handle_errors
def calibrate(
    axis: SpecAxisOption = None,
    spec: SpecFileOption = None,
    scale: SpecScaleOption = "tiny",
    preset: SpecPresetOption = None,
    family: Annotated[str | None, typer.Option("--family", help="Only these families (comma list, default: the "
                                               "spec's).", show_default=False)] = None,
    size: Annotated[str | None, typer.Option("--size", help="Only these axis values, as the spec writes them "
                                             "(comma list, e.g. nano,tiny or 2,4; default: all).",
                                             show_default=False)] = None,
    recipe: Annotated[str | None, typer.Option("--recipe", help="EBT recipe: ebt_s1 or ebt_s2 (default: the "
                                               "spec's).", show_default=False)] = None,
    device: Annotated[str, typer.Option("--device", help="auto, cpu, cuda or cuda:N.")] = "auto",
    threads: Annotated[int | None, typer.Option("--threads", help="CPU: torch threads (default: the spec's "
                                                "cpus_per_trial, as a sweep trial trains).", min=1,
                                                show_default=False)] = None,
    steps: Annotated[int, typer.Option("--steps", help="Timed training steps per configuration.", min=1)] = 3,
    warmup: Annotated[int, typer.Option("--warmup", help="Untimed warm-up steps before them.", min=0)] = 2,
    db: DbOption = None,
    fmt: FormatOption = OutputFormat.table,
    as_json: JsonAliasOption = False,
) -> None:
    """Measure training throughput (exact FLOPs per second) of a sweep's shapes on this machine's device, after
    warm-up steps, on synthetic tokens; store it per (device, family, shape, precision, recipe) for the dry run.

    Every distinct (family, shape with its batch, precision) of the spec is timed once; --family and --size narrow
    that. A progress line per configuration goes to stderr.
    """
    from ebt_scaling.errors import ConfigError
    from ebt_scaling.sweeps import expand
    from ebt_scaling.sweeps.calibration import shape_key, trained_precision
    from ebt_scaling.sweeps.locate import load_chosen_spec

    path, sw = load_chosen_spec("calibrate", axis, spec, spec_scale(scale, preset))
    sw = sw.select(families=family.split(",") if family is not None else None, recipe=recipe)
    runs = expand(sw)
    if size is not None:
        want = [v.strip() for v in size.split(",") if v.strip()]
        labels = list(dict.fromkeys(r.label for r in runs))
        unknown = [v for v in want if v not in labels]
        if unknown or not want:
            raise ConfigError(f"--size: {', '.join(unknown) or repr(size)} is not an axis value of {path}; use "
                              f"one of {', '.join(labels)}")
        runs = [r for r in runs if r.label in want]
    import dataclasses

    import torch

    from ebt_scaling.errors import EbtScaleError
    from ebt_scaling.records import CalibrationRecord
    from ebt_scaling.sweeps.calibration import cpu_model_name
    from ebt_scaling.train.calibrate import time_training_steps
    from ebt_scaling.train.loop import resolve_device

    dev = resolve_device(device)  # a device this machine lacks: one line, before the database is touched
    kind = "cuda" if dev.type == "cuda" else "cpu"
    name = torch.cuda.get_device_name(dev) if kind == "cuda" else cpu_model_name()
    n_threads = 0 if kind == "cuda" else (threads or max(1, int(sw.resources.get("cpus_per_trial", 1))))
    configs: dict[tuple[Any, ...], Any] = {}
    for r in runs:  # one per (family, shape with batch, precision as trained here, recipe); seeds do not matter
        prec = trained_precision(r.spec.train.precision, kind)
        key = (r.spec.family, shape_key(r.spec), prec, r.spec.recipe if r.spec.family == "ebt" else None)
        configs.setdefault(key, r)

    from ebt_scaling.db import Store  # opened (and checked) before any minute is spent timing

    store = Store(resolve_db(db))
    out: list[CalibrationRecord] = []
    try:
        for i, ((fam, key, prec, rec), r) in enumerate(configs.items(), 1):
            train = dataclasses.replace(r.spec.train, device=str(dev), threads=n_threads)
            try:
                seconds = time_training_steps(r.spec.with_(train=train), steps=steps, warmup=warmup)
            except torch.OutOfMemoryError:
                raise EbtScaleError(f"calibrate: {fam} {r.label} ({key}, {prec}) does not fit on {name} at batch "
                                    f"{train.batch_size}; the {len(out)} configuration(s) before it are stored; "
                                    "narrow with --size/--family") from None
            flops_per_step = r.planned.flops_per_token["exact"] * train.batch_size * r.spec.model.sequence_len
            cal = store.save_calibration(CalibrationRecord(
                device_kind=kind, device_name=name, family=fam, shape_key=key, precision=prec, recipe=rec,
                threads=n_threads, batch_size=train.batch_size, flops_per_step=flops_per_step,
                seconds_per_step=seconds, steps=steps, warmup=warmup, host=socket.gethostname(),
                torch_version=torch.__version__))
            out.append(cal)
            typer.echo(f"calibrate {i}/{len(configs)}: {fam} {r.label} {key} {prec} on {name}"
                       f"{f' ({n_threads} thread' + ('s)' if n_threads > 1 else ')') if kind == 'cpu' else ''}: "
                       f"{seconds:.4g} s/step, "
                       f"{cal.flops_per_s:.3g} FLOP/s", err=True)
    finally:
        store.close()
    if wants_json(fmt, as_json):
        typer.echo(json.dumps([_as_dict(c) for c in out], indent=1))
    else:
        typer.echo(f"stored {len(out)} calibration(s) of {name} in {store.url}; `ebt-scale sweep --dry-run` uses "
                   "them for runs of these shapes")


def _as_dict(c: Any) -> dict[str, Any]:
    import dataclasses

    d = dataclasses.asdict(c)
    d["measured_at"] = c.measured_at.isoformat() if c.measured_at is not None else None
    d["flops_per_s"] = c.flops_per_s
    return d
