"""``ebt-scale data prepare``: a sharded token store (``--out DIR``) or the training cache of a corpus."""

from __future__ import annotations

import json
import os
import pathlib
from typing import Annotated

import typer

from ebt_scaling.cli.common import HELP_MARKUP, fail, handle_errors

data_app = typer.Typer(name="data", help="Prepare corpora: sharded token stores and the training cache.",
                       no_args_is_help=True, rich_markup_mode=HELP_MARKUP)


def _echo_err(msg: str) -> None:
    typer.echo(f"data: {msg}", err=True)


@data_app.command("prepare")
@handle_errors
def prepare_cmd(
    source: Annotated[str, typer.Option(
        "--source", help="With --out: text:PATH, jsonl:PATH, parquet:PATH, hf:NAME[:CONFIG[:SPLIT]], shakespeare or "
        "kjv. Without: shakespeare, kjv, synthetic, text:PATH or hf:NAME.")] = "shakespeare",
    tokenizer: Annotated[str, typer.Option(
        "--tokenizer", help="With --out: byte, file:PATH (a tokenizer.json) or hf:NAME. Without: bpe, byte or "
        "hf:NAME.")] = "bpe",
    out: Annotated[pathlib.Path | None, typer.Option(
        "--out", help="Write a sharded token store here (docs/data.md); rerun to continue a killed one.")] = None,
    field: Annotated[str, typer.Option("--field", help="JSON key / column holding the text.")] = "text",
    data_files: Annotated[str | None, typer.Option(
        "--data-files", help="hf: data_files for a builder such as hf:json or hf:parquet (local files).")] = None,
    shard_tokens: Annotated[int, typer.Option("--shard-tokens", help="Tokens per shard (the writer holds one "
                                              "in memory).", min=1)] = 1 << 26,  # store.DEFAULT_SHARD_TOKENS
    workers: Annotated[int, typer.Option("--workers", help="Tokenising processes (default: cores, at most 8).",
                                         min=1)] = min(8, os.cpu_count() or 1),
    vocab_size: Annotated[int, typer.Option("--vocab-size", help="Without --out: BPE/synthetic vocabulary size.",
                                            min=2)] = 2048,
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON on stdout.")] = False,
) -> None:
    """Tokenise a corpus into a sharded token store (--out), or prepare a training corpus in the cache."""
    if out is None:
        _prepare_cache(source, tokenizer, vocab_size, as_json)
        return
    from ebt_scaling.data.store import prepare, summary
    from ebt_scaling.data.streams import parse_source

    if tokenizer == "bpe":
        raise fail("--tokenizer bpe: a token store needs a fixed tokenizer; use file:PATH (a tokenizer.json, "
                   "e.g. one trained by `ebt-scale train` under ~/.cache/ebt-scaling/tokenizers), byte or hf:NAME", 2)
    src = parse_source(source, field, data_files)
    m = prepare(src, tokenizer, out, shard_tokens=shard_tokens, workers=workers, progress=_echo_err)
    if as_json:
        typer.echo(json.dumps(summary(m), indent=1, sort_keys=True))
    else:
        typer.echo(f"token store: {out} ({m['documents']:,} documents, {m['tokens']:,} tokens, "
                   f"{len(m['shards'])} shards)")


def _prepare_cache(source: str, tokenizer: str, vocab_size: int, as_json: bool) -> None:
    """The corpus and tokenizer of a training source, prepared into the cache (done on first use too)."""
    from ebt_scaling.cli.train import _check_data_arg, _clean
    from ebt_scaling.config import DataConfig
    from ebt_scaling.data import load_corpus

    _check_data_arg(source)
    corpus = load_corpus(DataConfig(source=source, tokenizer=tokenizer, vocab_size=vocab_size), 1,
                         progress=_echo_err)
    s = corpus.summary()
    if as_json:
        typer.echo(json.dumps(_clean(s), indent=1, sort_keys=True))
        return
    for k, v in s.items():
        typer.echo(f"{k:>14}: {v}")


def register(app: typer.Typer) -> None:
    app.add_typer(data_app, name="data")
