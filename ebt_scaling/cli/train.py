"""``ebt-scale train``: one run with a progress bar and a summary."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import pathlib
import time
from collections.abc import Callable, Iterator
from typing import Annotated, Any

import typer

from ebt_scaling.cli.common import OutputFormat, fail, handle_errors, wants_json


def _clean(obj: Any) -> Any:
    """JSON-safe copy: non-finite floats become null (the status/reason fields say what happened)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_clean(v) for v in obj]
    return obj


def _check_data_arg(data: str) -> None:
    if data.startswith("text:") and not pathlib.Path(data[5:]).expanduser().exists():
        raise fail(f"--data {data}: no such file or folder; give an existing .txt file or a folder of them", 2)


def _micro_batch_size(value: str | None) -> int | str | None:
    if value is None:
        return None
    if value.strip().lower() == "auto":
        return "auto"
    try:
        return int(value)
    except ValueError:
        raise fail(f"--micro-batch-size: expected an integer, got {value!r}", 2) from None


def _auto_micro_batch(spec: Any, device: str, workers: int) -> int | None:
    """``--micro-batch-size auto``: on CUDA the largest divisor of each worker's batch that the memory plan fits
    in the device's memory (sweeps/memory.py); on CPU the whole batch (no device limit to fit)."""
    from rich.console import Console

    from ebt_scaling.train.loop import resolve_device

    dev = resolve_device(device)
    err = Console(stderr=True)
    if dev.type != "cuda":
        err.print("[dim]micro-batch:[/dim] auto on CPU = the whole batch (no device memory to fit)")
        return None
    import torch

    from ebt_scaling.sweeps.memory import plan_micro_batch

    gib = torch.cuda.get_device_properties(dev).total_memory / 2**30
    plan = plan_micro_batch(spec, gib, device="gpu", batch_size=spec.train.batch_size // workers)
    if not plan.fits:
        raise fail(f"--micro-batch-size auto: this run needs {plan.memory_gib:.1f} GiB per device at micro-batch 1, "
                   f"more than this GPU's {gib:.0f} GiB; use a smaller model/sequence or a bigger GPU", 2)
    err.print(f"[dim]micro-batch:[/dim] auto = {plan.micro_batch_size} of {spec.train.batch_size // workers} "
              f"sequences per worker ({plan.memory_gib:.1f} of {gib:.0f} GiB by the memory plan)")
    return plan.micro_batch_size


VIDEO_CONTEXT_FRAMES = 16  # the paper's context frames: `ebt-scale train`'s default --seq-len for a video model
SYNTHETIC_VIDEO_FRAME_DIM = 32  # the default --frame-dim of synthetic-video (docs/video.md's measured store)


def _frame_dim(data: str, given: int | None) -> int | None:
    """The run's frame_dim: ``--frame-dim``, else a video store's own, else 32 for synthetic-video, else None (a
    text model). A text --data with --frame-dim is refused later, by ``check_modality``."""
    from ebt_scaling.config import is_synthetic_video

    if given is not None or not (is_synthetic_video(data) or data.startswith("store:")):
        return given
    if is_synthetic_video(data):
        return SYNTHETIC_VIDEO_FRAME_DIM
    from ebt_scaling.data.video_data import store_frame_dim

    return store_frame_dim(data)


def _video_ebt_options(recipe: str | None, cpu: bool) -> dict[str, Any]:
    """A video EBT's ModelConfig overrides: the video recipe's, then on the CPU presets alpha 30 with an alpha LR
    multiplier of 100 (``config.CPU_VIDEO_EBT_S1``; the paper's 30,000 overshoots at these sizes)."""
    from ebt_scaling.config import CPU_VIDEO_EBT_S1, VIDEO_RECIPE_OVERRIDES

    if recipe is None:
        return {}
    if recipe not in VIDEO_RECIPE_OVERRIDES:
        raise fail(f"--recipe {recipe}: unknown video recipe; use {' or '.join(VIDEO_RECIPE_OVERRIDES)}", 2)
    return {**VIDEO_RECIPE_OVERRIDES[recipe], **(CPU_VIDEO_EBT_S1 if cpu else {})}


@handle_errors
def train_cmd(
    family: Annotated[str, typer.Option("--family", "-f", help="transformer_pp or ebt.")] = "ebt",
    preset: Annotated[str, typer.Option("--preset", "-p", help="Size preset (nano, tiny, xxs, ... xl).")] = "tiny",
    recipe: Annotated[str | None, typer.Option("--recipe", help="EBT recipe: ebt_s1 (default) or ebt_s2; for video "
                                               "ebt_vid_s1 (default) or ebt_vid_s2.")] = None,
    steps: Annotated[int | None, typer.Option("--steps", help="Optimizer steps.", min=1)] = None,
    batch_size: Annotated[int | None, typer.Option("--batch-size", "-b", help="Sequences per step.", min=1)] = None,
    micro_batch_size: Annotated[str | None, typer.Option("--micro-batch-size", help="Gradient accumulation: "
                                                         "sequences per forward + backward (an integer <= the "
                                                         "batch size, or auto: the memory plan's largest that fits "
                                                         "the GPU; default: the whole batch). Same result up to "
                                                         "rounding (docs/training.md).")] = None,
    schedule_steps: Annotated[int | None, typer.Option("--schedule-steps", help="Length of the LR schedule "
                                                       "(warm-up + cosine) when the run stops earlier at --steps "
                                                       "(default: --steps).", min=1)] = None,
    seq_len: Annotated[int | None, typer.Option("--seq-len", help="Context length in tokens (video: context "
                                                "frames, default 16).", min=1)] = None,
    frame_dim: Annotated[int | None, typer.Option("--frame-dim", help="Video: train a video model on frame "
                                                  "embeddings of this size (default for a video --data: the "
                                                  "store's, or 32 for synthetic-video; docs/video.md).", min=1)
                         ] = None,
    lr: Annotated[float | None, typer.Option("--lr", help="Peak learning rate.")] = None,
    warmup: Annotated[int | None, typer.Option("--warmup", help="Warm-up steps.", min=0)] = None,
    step_size: Annotated[float | None, typer.Option("--step-size", help="EBT: initial step size alpha of the "
                                                    "energy descent (default: the recipe's or CPU preset's).")
                         ] = None,
    step_size_lr_mult: Annotated[float | None, typer.Option("--step-size-lr-mult", help="EBT: LR multiplier of a "
                                                            "learnable alpha (default: the recipe's or CPU "
                                                            "preset's).")] = None,
    data: Annotated[str, typer.Option("--data", help="shakespeare, kjv, synthetic, text:PATH, hf:NAME or "
                                      "store:DIR (a token store from `ebt-scale data prepare --out DIR`); video: "
                                      "synthetic-video[:CLIPS] or store:DIR of a video store.")
                    ] = "shakespeare",
    sampling: Annotated[str, typer.Option("--sampling", help="packed (windows across documents) or document "
                                          "(one padded document per sample; docs/data.md).")] = "packed",
    tokenizer: Annotated[str, typer.Option("--tokenizer", help="bpe, byte or hf:NAME.")] = "bpe",
    vocab_size: Annotated[int | None, typer.Option("--vocab-size", help="BPE/synthetic vocabulary size.",
                                                   min=2)] = None,
    seed: Annotated[int, typer.Option("--seed", help="Seed of init, data order and noise.", min=0)] = 0,
    device: Annotated[str, typer.Option("--device", help="auto, cpu, cuda or cuda:N.")] = "auto",
    precision: Annotated[str, typer.Option("--precision", help="auto (bf16 autocast on CUDA, fp32 on CPU), fp32, "
                                           "tf32 (fp32 with TF32 matmuls on CUDA; fp32 on CPU) or bf16.")
                         ] = "auto",
    threads: Annotated[int, typer.Option("--threads", help="Torch CPU threads (0 = torch default).", min=0)] = 0,
    cuda_graph: Annotated[bool, typer.Option("--cuda-graph", help="CUDA: replay forward + backward from a "
                                             "captured CUDA graph (T++ and ebt_s1; docs/training.md).")] = False,
    compile_: Annotated[bool, typer.Option("--compile", help="torch.compile the training step (the first "
                                           "step compiles; docs/training.md).")] = False,
    eval_interval: Annotated[int | None, typer.Option("--eval-interval", help="Validate every N steps.",
                                                      min=0)] = None,
    eval_batches: Annotated[int | None, typer.Option("--eval-batches", help="Validation batches (default: "
                                                     "TrainConfig's).", min=1, show_default=False)] = None,
    log_interval: Annotated[int | None, typer.Option("--log-interval", help="Metric points every N steps (default: "
                                                     "TrainConfig's).", min=1, show_default=False)] = None,
    checkpoint_dir: Annotated[str | None, typer.Option("--checkpoint-dir", help="Write checkpoints here.")
                              ] = None,
    checkpoint_interval: Annotated[int, typer.Option("--checkpoint-interval", help="Checkpoint every N steps "
                                                     "(0 = only at the end).", min=0)] = 0,
    resume: Annotated[str | None, typer.Option("--resume", help="Resume from a checkpoint folder.")] = None,
    workers: Annotated[int, typer.Option("--workers", help="Data-parallel worker processes on this machine "
                                         "(torch.distributed: gloo on CPU, NCCL on CUDA with one GPU each); "
                                         "the batch size must be a multiple. Same result up to rounding "
                                         "(docs/training.md).", min=1)] = 1,
    fmt: Annotated[OutputFormat, typer.Option("--format", help="The result as a table or json (the RunResult).")
                   ] = OutputFormat.table,
    as_json: Annotated[bool, typer.Option("--json", help="Alias of --format json.")] = False,
    progress_mode: Annotated[str, typer.Option("--progress", help="auto (a bar on a terminal, plain lines "
                                               "otherwise), rich, plain or off.")] = "auto",
) -> None:
    """Train one model and print a summary (final losses vs. the unigram baseline, tokens, params, time; video:
    validation SmoothL1 vs. the copy-last-frame and mean-embedding baselines)."""
    from ebt_scaling.config import DataConfig, RunSpec, TrainConfig, get_preset, model_config, tokenizer_vocab_size

    _check_data_arg(data)
    frame_dim = _frame_dim(data, frame_dim)
    if progress_mode not in ("auto", "rich", "plain", "off"):
        raise fail(f"--progress: unknown value {progress_mode!r}; use auto, rich, plain or off", 2)
    if family not in ("transformer_pp", "ebt"):
        raise fail(f"--family: unknown family {family!r}; use transformer_pp or ebt", 2)
    if recipe is not None and family != "ebt":
        raise fail("--recipe applies to --family ebt only; drop it for transformer_pp", 2)
    video = frame_dim is not None
    if recipe is not None and recipe.startswith("ebt_vid_") != video:
        raise fail(f"--recipe {recipe}: a {'text' if video else 'video'} recipe for a {'video' if video else 'text'} "
                   f"model; use {'ebt_vid_s1 or ebt_vid_s2' if video else 'ebt_s1 or ebt_s2'}", 2)
    if family != "ebt" and (step_size is not None or step_size_lr_mult is not None):
        raise fail("--step-size and --step-size-lr-mult apply to --family ebt only; drop them for transformer_pp", 2)
    micro_arg = _micro_batch_size(micro_batch_size)
    micro = None if micro_arg == "auto" else micro_arg
    p = get_preset(preset)  # the one source of defaults (config.PRESETS)
    d = p.train_defaults("transformer_pp" if video else family)  # video: the measured CPU recipe (docs/video.md)
    steps = steps or d["steps"]
    seq_len = seq_len or (VIDEO_CONTEXT_FRAMES if video else p.sequence_len)
    batch_size = batch_size or d["batch_size"]
    given = {k: v for k, v in (("eval_batches", eval_batches), ("log_interval", log_interval)) if v is not None}
    tcfg = TrainConfig(steps=steps, batch_size=batch_size, lr=lr if lr is not None else d["lr"],
                       warmup_steps=min(steps - 1, warmup if warmup is not None else d["warmup_steps"]),
                       eval_interval=d["eval_interval"] if eval_interval is None else eval_interval, **given,
                       checkpoint_interval=checkpoint_interval, seed=seed, device=device, threads=threads,
                       cuda_graph=cuda_graph, compile=compile_, micro_batch_size=micro, schedule_steps=schedule_steps,
                       precision=precision, lr_schedule=d["lr_schedule"])
    from ebt_scaling.sweeps.expand import store_vocab_size

    # a token store's own vocabulary unless --vocab-size is given (a smaller one is refused in one line)
    data_opts = {"source": data, "tokenizer": tokenizer, **({"vocab_size": vocab_size} if vocab_size else {})}
    dcfg = DataConfig(source=data, tokenizer=tokenizer, sampling=sampling,
                      vocab_size=store_vocab_size(data_opts, p.vocab_size))
    vocab = 2 if video else tokenizer_vocab_size(dcfg)  # a video model has no vocabulary
    recipe_name = (recipe or ("ebt_vid_s1" if video else "ebt_s1")) if family == "ebt" else None
    # EBT settings: the recipe's, then the preset's tuned S1 options (config.PRESETS), then the options given
    model_kw: dict[str, Any] = _video_ebt_options(recipe_name, p.cpu) if video else p.ebt_options(recipe_name)
    if step_size is not None:
        model_kw["step_size"] = step_size
    if step_size_lr_mult is not None:
        model_kw["step_size_lr_multiplier"] = step_size_lr_mult
    # Validate the model shape (and what it allows) before any data is prepared (bad input writes nothing).
    spec0 = RunSpec(model=model_config(family, preset, vocab_size=vocab, sequence_len=seq_len, frame_dim=frame_dim,
                                       recipe=None if video else recipe_name, **model_kw),
                    train=tcfg)  # refuses cuda_graph with S2
    if video:  # a text source for a video model (or a store of another frame size): one line, before any data
        from ebt_scaling.data.video_data import check_modality

        check_modality(dcfg, frame_dim)
    if micro_arg == "auto":
        spec0 = spec0.with_(train=dataclasses.replace(tcfg, micro_batch_size=_auto_micro_batch(spec0, device,
                                                                                                 workers)))
        tcfg = spec0.train
    if workers > 1:
        if batch_size % workers:
            raise fail(f"--workers {workers}: the batch size {batch_size} is not divisible by {workers}; use a "
                       f"batch size that is a multiple of {workers}", 2)
        if cuda_graph:
            raise fail("--cuda-graph: not supported with --workers > 1 (the gradient all-reduce runs between "
                       "capture and step); drop one of them", 2)
        from ebt_scaling.train.launch import check_local

        check_local(spec0, workers)
    if cuda_graph or compile_:
        from ebt_scaling.train.graphed import check_cuda_graph
        from ebt_scaling.train.loop import check_compile, resolve_device

        check_cuda_graph(spec0, resolve_device(device))
        check_compile(spec0, resolve_device(device))

    from rich.console import Console

    err = Console(stderr=True)
    from ebt_scaling.data import open_data

    corpus = open_data(dcfg, seq_len, seed=seed, progress=lambda m: err.print(f"[dim]data:[/dim] {m}"),
                       frame_dim=frame_dim)
    spec = spec0.with_(data=dcfg, checkpoint_dir=checkpoint_dir, recipe=recipe_name)

    from ebt_scaling.records import ListSink
    from ebt_scaling.train.launch import launch_local

    sink = ListSink()
    with _train_progress(progress_mode, err, f"{family} {preset}{' video' if video else ''}", steps,
                         "frames" if video else "tok") as on_step:
        if compile_:
            err.print("[dim]compile:[/dim] torch.compile builds the training step first "
                      "(the first step takes a minute or more)")
        result = launch_local(spec, workers, sink, resume_from=resume, on_step=on_step,
                              data_progress=lambda m: None)

    if wants_json(fmt, as_json):
        out = dataclasses.asdict(result)
        out["config_hash"] = spec.config_hash
        out["spec"] = spec.to_dict()
        typer.echo(json.dumps(_clean(out), indent=1, sort_keys=True))
    elif video:
        _video_summary(result)
    else:
        _summary(result, corpus.unigram_entropy(), corpus.entropy_rate)
    if result.status != "completed":
        raise typer.Exit(1)


@contextlib.contextmanager
def _train_progress(mode: str, err: Any, label: str, total: int, unit: str = "tok"
                    ) -> Iterator[Callable[[dict[str, Any]], None]]:
    """Yields the ``on_step`` callback: a rich bar (``rich``; ``auto`` on a terminal), one plain line per
    validation and at most every 30 s otherwise (``plain``; ``auto`` in logs and pipes), or nothing."""
    if mode == "auto":
        mode = "rich" if err.is_terminal else "plain"
    if mode == "off":
        yield lambda info: None
        return
    if mode == "plain":
        t0 = time.monotonic()
        state: dict[str, Any] = {"printed": t0, "val": None, "first": None}

        def plain(info: dict[str, Any]) -> None:
            now, step, val = time.monotonic(), info["step"], info.get("val_loss")
            if state["first"] is None:  # a resumed run starts mid-way: the ETA uses this process's steps
                state["first"] = step - 1
            new_val = val is not None and val != state["val"]
            if not new_val and step != total and now - state["printed"] < 30:
                return
            state["printed"], state["val"] = now, val
            elapsed, done = now - t0, step - state["first"]
            eta = elapsed / done * (total - step) if done > 0 else float("nan")
            val_s = f" val {val:.4f}" if val is not None else ""
            err.print(f"train {label}: step {step}/{total} loss {info['loss']:.4f}{val_s} "
                      f"{info['tokens_per_s']:,.0f} {unit}/s, {elapsed:.0f} s elapsed, ETA {eta:.0f} s",
                      highlight=False, soft_wrap=True)

        yield plain
        return
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    with Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TextColumn("loss {task.fields[loss]}"), TextColumn("val {task.fields[val]}"),
                  TextColumn("{task.fields[tps]} " + unit + "/s"), TimeElapsedColumn(), TextColumn("ETA"),
                  TimeRemainingColumn(), console=err, transient=False) as progress:
        task = progress.add_task(label, total=total, loss="-", val="-", tps="-")

        def bar(info: dict[str, Any]) -> None:
            val = info.get("val_loss")
            progress.update(task, completed=info["step"], loss=f"{info['loss']:.3f}",
                            val=f"{val:.3f}" if val is not None else "-", tps=f"{info['tokens_per_s']:,.0f}")

        yield bar


def _fmt(v: float | None, nd: int = 4) -> str:
    return "-" if v is None else (f"{v:.{nd}f}" if math.isfinite(v) else str(v))


def _summary_table(r: Any) -> Any:
    from rich.table import Table

    t = Table(title=f"run {r.status}" + (f": {r.reason}" if r.reason else ""), show_header=False)
    t.add_column("metric", style="bold")
    t.add_column("value", justify="right")
    return t


def _print_summary(t: Any, r: Any, unit: str, steps_row: str) -> None:
    """The rows every run's summary ends with (``unit``: "token" or "frame"), then print the table."""
    from rich.console import Console

    t.add_row(steps_row, f"{r.steps} / {r.tokens:,}")
    t.add_row("params (total / non-embedding)",
              f"{r.params.get('total', 0):,} / {r.params.get('non_embedding', 0):,}")
    t.add_row(f"FLOPs/{unit} (paper / exact)",
              f"{r.flops_per_token.get('paper', 0):.4g} / {r.flops_per_token.get('exact', 0):.4g}")
    rate = r.extra.get("tokens_per_s")  # units per second: tokens, or frames for video
    t.add_row(f"{unit}s/s (training)", f"{rate:,.0f}" if rate else "-")
    t.add_row("wall time", f"{r.wall_time_s:.1f} s")
    t.add_row("device", str(r.device))
    if r.checkpoint_dir:
        t.add_row("checkpoint", r.checkpoint_dir)
    Console().print(t)


def _summary(r: Any, unigram: float, entropy_rate: float | None) -> None:
    t = _summary_table(r)
    t.add_row("final train loss (nats/token)", _fmt(r.final_train_loss))
    t.add_row("final val loss (nats/token)", _fmt(r.final_val_loss))
    t.add_row("val perplexity", _fmt(r.final_val_ppl, 2))
    t.add_row("unigram val loss (baseline)", _fmt(unigram))
    if r.final_val_loss is not None and math.isfinite(r.final_val_loss):
        t.add_row("val loss - unigram", f"{r.final_val_loss - unigram:+.4f}")
    if entropy_rate is not None:
        t.add_row("entropy rate of the source", _fmt(entropy_rate))
    _print_summary(t, r, "token", "steps / tokens")


def _video_summary(r: Any) -> None:
    copy, mean = r.extra.get("copy_loss"), r.extra.get("mean_loss")
    t = _summary_table(r)
    t.add_row("final train loss (SmoothL1)", _fmt(r.final_train_loss))
    t.add_row("final val loss (SmoothL1)", _fmt(r.final_val_loss))
    t.add_row("copy last frame (baseline)", _fmt(copy))
    t.add_row("mean embedding (baseline)", _fmt(mean))
    if r.final_val_loss is not None and math.isfinite(r.final_val_loss) and copy:
        t.add_row("val loss / copy baseline", f"{r.final_val_loss / copy:.3f}")
    _print_summary(t, r, "frame", "steps / frames predicted")


def register(app: typer.Typer) -> None:
    app.command("train")(train_cmd)
