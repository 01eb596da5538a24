"""``ebt-scale think``: System-2 thinking of a sweep's trained runs (perplexity vs forward passes, in
distribution and out of distribution; SmoothL1 for video runs), stored as metric series of each run. See
docs/thinking.md."""

from __future__ import annotations

import json
import math
import pathlib
from typing import Annotated, Any

import typer

from ebt_scaling.cli.common import (
    DbOption,
    FormatOption,
    JsonAliasOption,
    OutputFormat,
    fail,
    handle_errors,
    resolve_db,
    wants_json,
)


def _chg(gain: Any, at: Any) -> str:
    """A gain (the paper's improvement: positive = lower perplexity) as the perplexity's change at its setting."""
    if gain is None or (isinstance(gain, float) and not math.isfinite(gain)):
        return "-"
    return f"{-gain * 100 + 0.0:+.2f}%" + (f" at {at}" if at else "")  # + 0.0: no "-0.00%" at the baseline


def _num(v: Any, nd: int = 3) -> str:
    return "-" if v is None else f"{v:.{nd}f}"


def _loss_chg(gain: Any, at: Any) -> str:
    """A video gain as the SmoothL1 change with its setting in words: ``-12.00% with 4 steps x best-of-8``."""
    if gain is None or (isinstance(gain, float) and not math.isfinite(gain)):
        return "-"
    return f"{-gain * 100 + 0.0:+.2f}%" + (f" with {at}" if at else "")  # + 0.0: no "-0.00%" at the baseline


def _summary_line(o: Any) -> str:
    """One run's summary line: perplexity (text) or SmoothL1 (video; ``measure`` smooth_l1), lower is better, each
    gain as the change with the setting that gave it."""
    s = o.summary
    video = s.get("measure") == "smooth_l1"
    name, key, nd, chg = ("SmoothL1", "loss", 4, _loss_chg) if video else ("perplexity", "ppl", 3, _chg)
    if video:
        line = (f"{o.label}: val SmoothL1 {_num(s['val_loss_base'], 4)} "
                f"(copy baseline {_num(s.get('val_copy_loss'), 4)})")
        base = f" at {s['base_steps']} steps;"
    else:
        line = f"{o.label}: val ppl {_num(s['val_ppl_base'])}"
        base = f" (base {s['base_steps']} steps);"
    if o.family == "ebt":
        line += (f"{base} {name} change (lower is better): thinking longer "
                 f"{chg(s.get('val_gain_longer'), s.get('val_longer_at'))}, best-of-N "
                 f"{chg(s.get('val_gain_verify'), s.get('val_verify_at'))}, best setting "
                 f"{chg(s.get('val_gain_max'), s.get('val_max_at'))}")
    if s.get("ood_source"):
        line += f"; OOD {s['ood_source']} {'SmoothL1' if video else 'ppl'} {_num(s.get(f'ood_{key}_base'), nd)} " \
                f"(x{_num(s.get('ood_magnitude'), 2)})"
        if o.family == "ebt":
            line += f", best setting {chg(s.get('ood_gain_max'), s.get('ood_max_at'))}"
    return line


def register(app: typer.Typer) -> None:
    @app.command("think")
    @handle_errors
    def think_cmd(
        sweep: Annotated[str, typer.Option("--sweep", help="Sweep whose completed runs are evaluated.")],
        steps: Annotated[str, typer.Option("--steps", help="Inner-step counts (thinking longer).")] = "1,2,3,6",
        samples: Annotated[str, typer.Option("--samples", help="Best-of-N sample counts (self-verification).")
                           ] = "1,2,5",
        ood: Annotated[str, typer.Option("--ood", help="OOD corpus: auto, none, kjv, shakespeare, "
                                         "synthetic-shift or text:PATH; video runs: synthetic-video-shift or "
                                         "store:DIR (a video store).")] = "auto",
        batches: Annotated[int, typer.Option("--batches", help="Evaluation batches per split.", min=1)] = 4,
        batch_size: Annotated[int | None, typer.Option("--batch-size", help="Sequences per batch "
                                                       "(default: the run's).", min=1)] = None,
        seed: Annotated[int, typer.Option("--seed", help="Seed of the candidate noise.", min=0)] = 0,
        device: Annotated[str, typer.Option("--device", help="auto (cuda when available), cpu or cuda; the same "
                                            "default as train.")] = "auto",
        db: DbOption = None,
        fmt: FormatOption = OutputFormat.table,
        as_json: JsonAliasOption = False,
    ) -> None:
        """Perplexity (video runs: SmoothL1) vs forward passes per prediction (passes = inner steps x samples) for
        every completed run with a checkpoint; Transformer++ runs give the flat baseline. Re-running replaces the
        values."""
        from ebt_scaling.think.metrics import parse_int_list

        steps_l = parse_int_list(steps, "--steps")
        samples_l = parse_int_list(samples, "--samples")
        ood_src: str | None = None if ood == "none" else ood
        if ood_src is not None and ood_src not in ("auto", "kjv", "shakespeare", "synthetic-shift",
                                                   "synthetic-video-shift") \
                and not ood_src.startswith(("text:", "hf:", "store:")):
            raise fail(f"--ood {ood}: unknown corpus; use auto, none, kjv, shakespeare, synthetic-shift or "
                       "text:PATH (video runs: synthetic-video-shift or store:DIR)", 2)
        if ood_src and ood_src.startswith("text:") and not pathlib.Path(ood_src[5:]).expanduser().exists():
            raise fail(f"--ood {ood}: no such file or folder; give an existing .txt file or folder", 2)
        if ood_src and ood_src.startswith("store:") and not pathlib.Path(ood_src[6:]).expanduser().is_dir():
            raise fail(f"--ood {ood}: no such folder; give a video store prepared with `ebt-scale data prepare "
                       "--modality video`", 2)

        from ebt_scaling.db import Store
        from ebt_scaling.think.service import think_sweep

        store = Store(resolve_db(db), create=False)
        try:
            outcomes = think_sweep(store, sweep, steps=steps_l, samples=samples_l, ood=ood_src, n_batches=batches,
                                   batch_size=batch_size, seed=seed, device=device,
                                   on_message=lambda m: typer.echo(m, err=True))
        finally:
            store.close()
        done = [o for o in outcomes if o.status == "done"]
        if wants_json(fmt, as_json):
            typer.echo(json.dumps([{"run_id": o.run_id, "family": o.family, "status": o.status,
                                    "message": o.message, **o.summary} for o in outcomes], indent=1, sort_keys=True))
        else:
            typer.echo(f"passes = inner steps x samples; baseline = the EBT's trained step count, 1 sample; "
                       f"{len(done)}/{len(outcomes)} runs evaluated")
            for o in done:
                typer.echo(_summary_line(o))
        if not done:
            raise fail(f"sweep {sweep!r}: no run could be evaluated (see the lines above)", 1)
