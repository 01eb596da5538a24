"""``ebt-scale sweep``: run (or plan, with --dry-run) a single-axis scaling sweep."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Annotated, Any

import typer

from ebt_scaling.cli.common import (
    DbOption,
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
from ebt_scaling.security import mask_url


def register(app: typer.Typer) -> None:
    app.command("sweep")(sweep)


@handle_errors
def sweep(
    axis: SpecAxisOption = None,
    spec: SpecFileOption = None,
    scale: SpecScaleOption = "tiny",
    preset: SpecPresetOption = None,
    modality: Annotated[str | None, typer.Option("--modality", help="With --axis: text (default) or video, the "
                                                 "shipped video spec of that axis (video-AXIS.toml: width, "
                                                 "params).", show_default=False)] = None,
    families: Annotated[str | None, typer.Option("--families", help="Comma list, e.g. ebt,transformer_pp "
                                                 "(default: the spec's).", show_default=False)] = None,
    seeds: Annotated[int | None, typer.Option("--seeds", help="Number of seeds, counting up from the spec's "
                                              "first seed.", show_default=False)] = None,
    name: Annotated[str | None, typer.Option("--name", help="Sweep name (default: the spec's).",
                                             show_default=False)] = None,
    recipe: Annotated[str | None, typer.Option("--recipe", help="EBT recipe: ebt_s1 or ebt_s2; for a video "
                                               "sweep ebt_vid_s1 or ebt_vid_s2 (default: the spec's).",
                                               show_default=False)] = None,
    db: DbOption = None,
    address: Annotated[str | None, typer.Option("--address", envvar="RAY_ADDRESS", help="Ray cluster address "
                                                "(default: $RAY_ADDRESS, else a local Ray instance).",
                                                show_default=False)] = None,
    gpus_per_trial: Annotated[float | None, typer.Option("--gpus-per-trial", help="GPUs per run, fractions "
                                                         "allowed (default: the spec's).",
                                                         show_default=False)] = None,
    cpus_per_trial: Annotated[float | None, typer.Option("--cpus-per-trial", help="CPUs per run (default: "
                                                         "the spec's).", show_default=False)] = None,
    workers_per_trial: Annotated[int | None, typer.Option("--workers-per-trial", help="Data-parallel workers "
                                                          "per run on Ray Train (default: the spec's, else 1); "
                                                          "--gpus-per-trial and --cpus-per-trial are then per "
                                                          "worker.", min=1, show_default=False)] = None,
    max_concurrent: Annotated[int | None, typer.Option("--max-concurrent", help="At most K runs at once "
                                                       "(default: as many as the resources allow).",
                                                       show_default=False)] = None,
    max_retries: Annotated[int | None, typer.Option("--max-retries", help="Retries of a run that raises or "
                                                    "diverges (default: the spec's, else 2).",
                                                    show_default=False)] = None,
    retry_failed: Annotated[bool, typer.Option("--retry-failed", help="Also rerun runs that failed or "
                                               "diverged in an earlier invocation.")] = False,
    storage: Annotated[str | None, typer.Option("--storage", help="Ray storage for trial checkpoints (shared "
                                                "storage on a cluster; default: $EBT_SCALE_STORAGE, else next "
                                                "to a SQLite DB, else ~/.cache/ebt-scaling/runs).",
                                                show_default=False)] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the plan (configs, parameters, tokens, "
                                          "FLOPs, cost, makespan) and run nothing.")] = False,
    fmt: Annotated[OutputFormat, typer.Option("--format", help="With --dry-run: the plan as a table or json.")
                   ] = OutputFormat.table,
    as_json: Annotated[bool, typer.Option("--json", help="Alias of --format json.")] = False,
    throughput: Annotated[float | None, typer.Option("--throughput", help="Assumed FLOP/s per GPU (or per CPU "
                                                     "core) for the cost plan.", show_default=False)] = None,
    total_gpus: Annotated[float | None, typer.Option("--total-gpus", help="GPUs available, for the makespan "
                                                     "of a dry run (default: this machine's).",
                                                     show_default=False)] = None,
    total_cpus: Annotated[float | None, typer.Option("--total-cpus", help="CPUs available, for the makespan "
                                                     "of a dry run (default: this machine's).",
                                                     show_default=False)] = None,
    gpu_memory: Annotated[float | None, typer.Option("--gpu-memory", help="Memory per GPU in GiB for the memory "
                                                     "plan: each GPU run gets the largest micro-batch that fits, "
                                                     "and a run that does not fit at micro-batch 1 is refused "
                                                     "(default: 80 GiB assumed, said in the plan).",
                                                     show_default=False)] = None,
    device_name: Annotated[str | None, typer.Option("--device-name", help="With --dry-run on GPUs: use the "
                                                    "calibrations (ebt-scale calibrate) of this GPU model, e.g. "
                                                    "'NVIDIA H200' (default: the only GPU model the database "
                                                    "holds).", show_default=False)] = None,
    progress: Annotated[str, typer.Option("--progress", help="auto, rich, plain or off.")] = "auto",
    no_db_check: Annotated[bool, typer.Option("--no-db-check", help="With --dry-run: do not check that the "
                                              "database is valid and reachable.")] = False,
    tracker: Annotated[list[str] | None, typer.Option("--tracker", help="Also log to mlflow, tensorboard or "
                                                      "wandb (repeatable; adds to the spec's [tracking]).",
                                                      show_default=False)] = None,
    extend_edges: Annotated[bool, typer.Option("--extend-edges", help="isoflop sweeps: add the next shape out at "
                                               "every (family, budget) whose minimum the stored fit found at a "
                                               "window edge (run `ebt-scale fit` first).")] = False,
) -> None:
    """Run a single-axis scaling sweep for EBT and Transformer++ on Ray Tune; results go to the database.

    Rerunning the same command continues a crashed or interrupted sweep: completed runs are skipped,
    interrupted ones resume from their last checkpoint.
    """
    from ebt_scaling.errors import ConfigError
    from ebt_scaling.sweeps import Resources, expand, format_plan, local_resources, plan_cost
    from ebt_scaling.sweeps.expand import with_micro_batch
    from ebt_scaling.sweeps.locate import load_chosen_spec
    from ebt_scaling.sweeps.plan import MemorySetting, check_memory, plan_memory

    path, sw = load_chosen_spec("sweep", axis, spec, spec_scale(scale, preset), modality)
    fam_list = families.split(",") if families is not None else None
    sw = sw.select(families=fam_list, seeds=seeds, name=name, recipe=recipe)
    from ebt_scaling.sched.trackers import check_trackers
    from ebt_scaling.sched.trackers import locations as tracker_locations

    trackers = tuple(dict.fromkeys([*sw.tracking.get("trackers", []), *(tracker or [])]))
    check_trackers(trackers)  # known and installed, before anything is written
    if progress not in ("auto", "rich", "plain", "off"):
        raise ConfigError(f"--progress: unknown value {progress!r}; use auto, rich, plain or off")
    res = sw.resources
    gpt = float(gpus_per_trial if gpus_per_trial is not None else res.get("gpus_per_trial", 0))
    cpt = float(cpus_per_trial if cpus_per_trial is not None else res.get("cpus_per_trial", 1))
    wpt = int(workers_per_trial if workers_per_trial is not None else res.get("workers_per_trial", 1))
    from ebt_scaling.sweeps.plan import gpu_request_problem

    if (why := gpu_request_problem(gpt, wpt)) is not None:  # before anything is planned, scheduled or written
        raise ConfigError(why)
    mc = max_concurrent if max_concurrent is not None else res.get("max_concurrent")
    retries = max_retries if max_retries is not None else int(res.get("max_retries", 2))
    if not 0 <= retries <= 1000:
        raise ConfigError(f"--max-retries must be between 0 and 1000, got {retries}; use 0 to never retry a failed run")
    if extend_edges:  # the stored isoflop fit's edge_minimum guards widen those windows (sweeps/isoflop.py)
        sw = sw.with_(isoflop={**sw.isoflop, "extend": _stored_extensions(sw, resolve_db(db))})
    runs = expand(sw)
    odd = [r for r in runs if r.spec.train.batch_size % wpt]
    if odd:
        raise ConfigError(f"{path}: batch size {odd[0].spec.train.batch_size} ({odd[0].label}) is not divisible by "
                          f"workers_per_trial = {wpt}; use batch sizes that are multiples of {wpt}")
    if wpt > 1 and any(r.spec.train.cuda_graph for r in runs):
        raise ConfigError(f"{path}: train.cuda_graph is not supported with workers_per_trial > 1; drop one of them")
    if gpt == 0 and any(r.spec.train.cuda_graph for r in runs):
        raise ConfigError(f"{path}: train.cuda_graph needs CUDA but the trials get no GPU; pass --gpus-per-trial "
                          "(or resources.gpus_per_trial) or drop cuda_graph")
    if gpu_memory is not None and not gpu_memory > 0:
        raise ConfigError(f"--gpu-memory must be > 0 GiB, got {gpu_memory:g}; e.g. 80 for an 80 GB GPU")
    mem_setting = MemorySetting(gpu_memory)
    # Before anything is planned, scheduled or written: a GPU run that cannot fit even at micro-batch 1.
    mem_plans = plan_memory(runs, Resources(gpus_per_trial=gpt, cpus_per_trial=cpt, workers_per_trial=wpt),
                            mem_setting)
    check_memory(runs, mem_plans)
    if sw.micro_batch_auto:  # micro_batch_size = "auto": the plan's micro-batch per run (not hashed)
        runs = [with_micro_batch(r, mp.micro_batch_size) for r, mp in zip(runs, mem_plans, strict=True)]

    if dry_run:
        src = str(sw.data.get("source", ""))
        if src.startswith("store:") and (Path(src[len("store:"):]) / "manifest.json").is_file():
            if sw.modality != "video":  # a video store is verified when it is opened, just below
                check_local_source(path, src, sw.data.get("cache_dir"))  # a store here is verified before planning
            check_store_windows(path, runs)  # and each run can draw a training and a validation window from it
        elif src.startswith("store:"):  # not here (a placeholder, or a cluster's path): the plan does not read it
            typer.echo(missing_store_note(src[len("store:"):], sw.modality), err=True)
        ncpu, ngpu = local_resources()
        resources = Resources(gpus_per_trial=gpt, cpus_per_trial=cpt, max_concurrent=mc, workers_per_trial=wpt,
                              total_gpus=float(total_gpus if total_gpus is not None else ngpu),
                              total_cpus=float(total_cpus if total_cpus is not None
                                               else ("inf" if total_gpus is not None else ncpu)))
        db_line = None
        calibrations = None
        if not no_db_check:
            from ebt_scaling.db.engine import check_database

            db_line = check_database(resolve_db(db))  # valid and reachable; nothing written
            calibrations = _calibrations(resolve_db(db), "gpu" if resources.uses_gpu else "cpu", device_name)
        plan = plan_cost(sw, runs, resources, flops_per_s=throughput, memory=mem_setting, calibrations=calibrations)
        if wants_json(fmt, as_json):
            typer.echo(json.dumps(plan.to_dict(), indent=1))
        else:
            typer.echo(format_plan(plan))
            if sw.axis == "isoflop":  # per budget and family: the shapes, steps and realised C (sweeps/isoflop.py)
                from ebt_scaling.sweeps.expand import isoflop_plan
                from ebt_scaling.sweeps.isoflop import plan_lines

                for line in plan_lines(sw, runs) + [f"note: {n}" for n in isoflop_plan(sw).notes]:
                    typer.echo(line)
            if plan.slots == 0:
                typer.echo(f"note: no trial fits on {resources.total_gpus:g} GPU / {resources.total_cpus:g} CPU "
                           "here; pass --total-gpus/--total-cpus to plan for a cluster")
        if no_db_check:
            typer.echo("database: not checked (--no-db-check)", err=True)
            return
        typer.echo(f"database: {db_line}", err=True)
        return

    from ebt_scaling.db import Store
    from ebt_scaling.sched.runner import RayOptions
    from ebt_scaling.sched.service import default_storage, run_sweep

    url = resolve_db(db)
    Resources(gpus_per_trial=gpt, cpus_per_trial=cpt, max_concurrent=mc, workers_per_trial=wpt)  # validates
    opts = RayOptions(address=address, gpus_per_trial=gpt, cpus_per_trial=cpt, workers_per_trial=wpt,
                      max_concurrent=mc,
                      max_retries=retries, storage_path=storage or default_storage(url), progress=progress,
                      trackers=trackers, tracking=dict(sw.tracking))
    tracker_lines = tracker_locations(trackers, sw.name, opts.storage_path, opts.tracking)  # fails before writing
    log = logging.getLogger("ebt_scaling.cli.sweep")
    log.debug("spec %s: %d run(s); database %s; checkpoints %s; Ray %s; per trial %g GPU, %g CPU", path,
              len(expand(sw)), mask_url(url), opts.storage_path,
              address or os.environ.get("RAY_ADDRESS") or "local", gpt, cpt)
    if address or os.environ.get("RAY_ADDRESS"):
        from ebt_scaling.sched.runner import check_reachable

        check_reachable(address or os.environ["RAY_ADDRESS"])  # before anything is written
    else:  # a local sweep reads its data here; a cluster's paths live on its nodes
        check_local_source(path, str(sw.data.get("source", "")), sw.data.get("cache_dir"), sw.modality)
    for line in tracker_lines:  # where to look while the sweep runs; repeated in the summary
        typer.echo(line, err=True)
    store = Store(url)
    outcome = run_sweep(sw, store, opts, retry_failed=retry_failed, echo=lambda s: typer.echo(s, err=True),
                        runs=runs)
    counts = ", ".join(f"{n} {st}" for st, n in sorted(outcome.statuses.items()))
    typer.echo(f"sweep {sw.name}: {counts}")
    typer.echo(f"database: {mask_url(url)}")
    typer.echo(f"checkpoints: {opts.storage_path}")
    for line in tracker_lines:
        typer.echo(line)
    if outcome.runner is not None:
        typer.echo(f"wall time: {outcome.runner.wall_s:.1f} s")
    if outcome.interrupted:
        typer.echo("interrupted: unfinished runs are marked cancelled; rerun the same command to continue",
                   err=True)
        raise typer.Exit(130)
    bad = {k: v for k, v in outcome.statuses.items() if k != "completed"}
    if bad:
        typer.echo(f"not all runs completed ({', '.join(f'{v} {k}' for k, v in bad.items())}); see "
                   f"`ebt-scale runs --sweep {sw.name}`", err=True)
        ran = outcome.runner.finished if outcome.runner is not None else {}
        for n, why in failure_causes(store, [rid for rid, st in ran.items() if st != "completed"]):
            typer.echo(f"  {n} run(s): {why}", err=True)
        raise typer.Exit(1)


def failure_causes(store: object, run_ids: list[int]) -> list[tuple[int, str]]:
    """(count, reason) per distinct cause of the runs ``run_ids`` that did not complete, most frequent first: the
    sweep's closing lines (one per cause, not one traceback per run and retry)."""
    counts: dict[str, int] = {}
    for rid in run_ids:
        run = store.get_run(rid)  # type: ignore[attr-defined]
        why = (run.reason or run.status or "unknown").strip().splitlines()[0][:300]
        counts[why] = counts.get(why, 0) + 1
    return sorted(((n, w) for w, n in counts.items()), key=lambda t: (-t[0], t[1]))


def check_store_windows(path: object, runs: list) -> None:
    """Open every token or video store the runs read, as each run's trial will (its split, sampling, sequence length
    and, for video, frame_dim), and draw one training and one validation window: a store that cannot give them (too
    few documents or clips for the split, documents or clips too short) stops the dry run in one line instead of
    failing every run."""
    from ebt_scaling.data import open_data
    from ebt_scaling.errors import ConfigError, DataError

    seen: set[tuple] = set()
    for r in runs:
        d, T, frame_dim = r.spec.data, r.spec.model.sequence_len, r.spec.model.frame_dim
        key = (d.source, d.sampling, d.val_fraction, d.split_seed, T, frame_dim)
        if not d.source.startswith("store:") or key in seen:
            continue
        seen.add(key)
        try:  # a video store (frame_dim set): clips of T + 1 frames, the split's training and validation clips
            data = open_data(d, T, seed=r.spec.train.seed, progress=lambda _: None, frame_dim=frame_dim)
            data.sample_batch(0, range(1))
            data.val_batches(1, 1, T)
        except DataError as exc:
            raise ConfigError(f"{path}: data.source (run {r.spec.model.family} {r.label}): {exc}") from None


def missing_store_note(loc: str, modality: str, what: str = "note: no") -> str:
    """The line for a ``store:DIR`` that is not there: which kind of store, and the command that writes it."""
    if modality == "video":
        return (f"{what} video store at {loc} (no manifest.json); write one with `ebt-scale data prepare --modality "
                f"video --source ... --out {loc}` (docs/video.md) or fix data.source")
    return (f"{what} token store at {loc} (no manifest.json); write one with `ebt-scale data prepare --source ... "
            f"--out {loc}` or fix the path")


def check_local_source(path: object, source: str, cache_dir: str | None = None, modality: str = "text") -> None:
    """A ``store:DIR`` or ``text:PATH`` source (already absolute: sweeps.spec.absolute_source) must exist before
    a local sweep writes anything, and a store (token or video) must pass its checksums."""
    from ebt_scaling.errors import ConfigError
    from ebt_scaling.sweeps.tables import source_modality

    kind, _, loc = source.partition(":")
    if kind == "store" and not (Path(loc) / "manifest.json").is_file():
        raise ConfigError(f"{path}: data.source: {missing_store_note(loc, modality, what='no')}")
    if kind == "store" and source_modality(source) == "video":  # every shard's size and sha256
        from ebt_scaling.data.video import verify_video_store

        verify_video_store(loc)
    elif kind == "store":  # its manifest's schema and every shard's checksum (hashed once per store and machine)
        from ebt_scaling.data.verify import verify_store

        verify_store(loc, cache_dir=cache_dir)
    if kind == "text" and not Path(loc).exists():
        raise ConfigError(f"{path}: data.source: {loc} does not exist; give an existing .txt file or folder")


def _calibrations(url: str, device: str, device_name: str | None) -> Any:
    """The stored calibrations of the plan's device (``sweeps.calibration.device_calibrations``), read without
    writing anything; a database that does not exist yet, holds no schema or is at an older revision has none,
    and the plan's header says why."""
    from ebt_scaling.db import Store
    from ebt_scaling.errors import SchemaOutOfDate, StoreError
    from ebt_scaling.sweeps.calibration import DeviceCalibrations, device_calibrations

    try:
        with Store(url, create=False) as store:
            cals = store.list_calibrations()
    except SchemaOutOfDate:
        return DeviceCalibrations(None, {}, "calibrations: not read (database schema out of date; run ebt-scale db "
                                            "upgrade)")
    except StoreError:
        return DeviceCalibrations(None, {}, "calibrations: none (no ebt-scaling database yet)")
    return device_calibrations(cals, device, device_name=device_name)


def _stored_extensions(spec: Any, db_url: str) -> list[list[Any]]:
    """``--extend-edges``: the extensions the sweep's latest stored isoflop fit asks for (its edge_minimum guards)."""
    from ebt_scaling.db import Store
    from ebt_scaling.errors import SpecError
    from ebt_scaling.sweeps.isoflop import extensions_from_guards

    if spec.axis != "isoflop":
        raise SpecError(f"{spec.source}: --extend-edges applies to isoflop sweeps; this one's axis is {spec.axis}")
    store = Store(db_url, create=False)
    try:
        fits = [f for f in store.list_fits(sweep=spec.name, axis="isoflop") if f.method == "isoflop_fit"]
    finally:
        store.close()
    if not fits:
        raise SpecError(f"--extend-edges: sweep {spec.name} has no stored isoflop fit; run `ebt-scale fit --sweep "
                        f"{spec.name}` first")
    return extensions_from_guards(list(fits[-1].params.get("guards", [])))
