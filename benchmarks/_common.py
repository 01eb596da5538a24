"""Shared by the benchmark scripts: the one-model arguments, building that model's config, and how a result
leaves the process."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def emit_json(result: dict, out: str | None, indent: int = 2) -> dict:
    """Print ``result`` as JSON and, when ``out`` is given, also write it there; returns ``result``."""
    text = json.dumps(result, indent=indent)
    print(text)
    if out:
        Path(out).write_text(text + "\n")
    return result


def add_model_args(ap: argparse.ArgumentParser) -> None:
    """The arguments that pick one model at the paper's context and vocabulary: family, size preset, EBT recipe,
    batch, sequence length, vocabulary, CPU threads."""
    ap.add_argument("--family", default="ebt", choices=["ebt", "transformer_pp"])
    ap.add_argument("--size", default="xxs")
    ap.add_argument("--recipe", default="ebt_s1", choices=["ebt_s1", "ebt_s2"])
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--vocab", type=int, default=50277)
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads (0 = torch's default)")


def model_config_from(ap: argparse.ArgumentParser, args: argparse.Namespace):
    """The ``ModelConfig`` of ``add_model_args``' choices (the recipe applies to the EBT only); a bad choice
    (unknown preset, sizes that do not fit) ends the run with the config's one-line message."""
    from ebt_scaling.config import model_config
    from ebt_scaling.errors import ConfigError

    if args.batch < 1 or args.seq < 1:
        ap.error("--batch and --seq must be >= 1")
    recipe = args.recipe if args.family == "ebt" else None
    try:
        return model_config(args.family, args.size, vocab_size=args.vocab, sequence_len=args.seq, recipe=recipe)
    except ConfigError as e:
        ap.error(str(e))
