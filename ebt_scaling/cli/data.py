"""``ebt-scale data prepare``: a sharded token store (``--out DIR``) or the training cache of a corpus."""

from __future__ import annotations

import json
import os
import pathlib
from typing import Annotated

import typer

from ebt_scaling.cli.common import (
    HELP_MARKUP,
    FormatOption,
    JsonAliasOption,
    OutputFormat,
    fail,
    handle_errors,
    wants_json,
)

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
        "--tokenizer", help="bpe (trained on the source; with --out kept in the store), byte, hf:NAME, or with "
        "--out file:PATH (a tokenizer.json).")] = "bpe",
    out: Annotated[pathlib.Path | None, typer.Option(
        "--out", help="Write a sharded token store here (docs/data.md); rerun to continue a killed one.")] = None,
    field: Annotated[str, typer.Option("--field", help="JSON key / column holding the text.")] = "text",
    data_files: Annotated[str | None, typer.Option(
        "--data-files", help="hf: data_files for a builder such as hf:json or hf:parquet (local files).")] = None,
    shard_tokens: Annotated[int, typer.Option("--shard-tokens", help="Tokens per shard (the writer holds one "
                                              "in memory).", min=1)] = 1 << 26,  # store.DEFAULT_SHARD_TOKENS
    workers: Annotated[int, typer.Option("--workers", help="Tokenising processes (default: cores, at most 8).",
                                         min=1)] = min(8, os.cpu_count() or 1),
    vocab_size: Annotated[int, typer.Option("--vocab-size", help="Vocabulary of a trained BPE (and of the "
                                            "synthetic source).", min=2)] = 2048,
    modality: Annotated[str, typer.Option(
        "--modality", help="text (tokens) or video (frame embeddings; --source synthetic, frames:DIR or videos:DIR; "
        "docs/video.md).")] = "text",
    frame_dim: Annotated[int | None, typer.Option(
        "--frame-dim", help="Video: values per frame embedding (patch: default 64; sdvae: the VAE's latent size, "
        "e.g. 3136 at 224 px).", min=1)] = None,
    clip_frames: Annotated[int, typer.Option("--clip-frames", help="Video: frames per clip (context + the next).",
                                             min=2)] = 17,
    clips: Annotated[int, typer.Option("--clips", help="Video, synthetic source: clips to generate.", min=1)] = 1024,
    encoder: Annotated[str, typer.Option(
        "--encoder", help="Video: patch (dependency-free) or sdvae:DIR (a local diffusers AutoencoderKL folder; "
        "pip install 'ebt-scaling[video]').")] = "patch",
    size: Annotated[int, typer.Option("--size", help="Video: frames are resized to SIZE x SIZE pixels (the paper: "
                                      "224 with sdvae).", min=8)] = 32,
    device: Annotated[str, typer.Option("--device", help="Video, sdvae: torch device of the VAE (cpu, cuda).")] = "cpu",
    encode_batch: Annotated[int, typer.Option("--encode-batch", help="Video, sdvae: frames per VAE batch.",
                                              min=1)] = 32,
    fmt: FormatOption = OutputFormat.table,
    as_json: JsonAliasOption = False,
) -> None:
    """Tokenise a corpus into a sharded token store (--out), or prepare a training corpus in the cache."""
    as_json = wants_json(fmt, as_json)
    if modality not in ("text", "video"):
        raise fail(f"--modality {modality!r}: use text or video", 2)
    if modality == "video":
        if out is None:
            raise fail("--modality video needs --out DIR (the folder of the frame-embedding store)", 2)
        from ebt_scaling.data.video import prepare_video

        vm = prepare_video(source, out, frame_dim=frame_dim, clip_frames=clip_frames, synthetic_clips=clips,
                           encoder=encoder, size=size, device=device, batch_frames=encode_batch, progress=_echo_err)
        if as_json:
            typer.echo(json.dumps({"folder": str(out.resolve()), "clips": vm["clips"], "skipped": vm["skipped"],
                                   "shards": len(vm["shards"]), "params": vm["params"]}, indent=1, sort_keys=True))
        else:
            p = vm["params"]
            typer.echo(f"video store: {out.resolve()} ({vm['clips']:,} clips of {clip_frames} frames x "
                       f"{p['frame_dim']} ({p['encoder']} at {size} px), {len(vm['shards'])} shards, {vm['skipped']} "
                       "unreadable video(s) skipped)")
        return
    if out is None:
        _prepare_cache(source, tokenizer, vocab_size, as_json)
        return
    from ebt_scaling.data.sampler import split_summary
    from ebt_scaling.data.store import TokenStore, prepare, summary
    from ebt_scaling.data.streams import parse_source

    if tokenizer == "bpe" and vocab_size < 256:
        raise fail(f"--vocab-size {vocab_size}: a byte-level BPE needs at least 256 entries; use 256 or more, or "
                   "--tokenizer byte", 2)
    src = parse_source(source, field, data_files)
    m = prepare(src, tokenizer, out, shard_tokens=shard_tokens, workers=workers, progress=_echo_err,
                vocab_size=vocab_size)
    split = split_summary(TokenStore(out))
    warn = _split_warning(split)
    if warn:
        _echo_err(warn)
    if as_json:
        typer.echo(json.dumps({**summary(m), "folder": str(out.resolve()), "validation": split}, indent=1,
                              sort_keys=True))
        return
    p = m["params"]
    typer.echo(f"token store: {out.resolve()} ({m['documents']:,} documents, {m['tokens']:,} tokens, "
               f"{len(m['shards'])} shards); train on it with --data store:{out}")
    kept = f", kept in {(out / m['tokenizer_file']).resolve()}" if m.get("tokenizer_file") else ""
    typer.echo(f"tokenizer: {p['tokenizer']} (vocabulary {p['vocab_size']:,}){kept}")
    typer.echo(_split_line(split))


def _split_line(s: dict) -> str:
    """The validation split of a store in words (DataConfig's default val_fraction and split_seed)."""
    how = []
    if s["long_documents"]:
        how.append(f"{s['long_documents']:,} long document(s) (>= {s['long_doc_tokens']:,} tokens) split by position: "
                   f"the last {s['val_fraction']:.0%} of each is validation (a tail split)")
    if s["hashed_documents"]:
        how.append(f"{s['val_documents_whole']:,} of {s['hashed_documents']:,} shorter document(s) held out whole "
                   "(document hash)")
    return (f"validation (val_fraction {s['val_fraction']:g}, split_seed {s['split_seed']}): {s['val_share']:.1%} "
            f"of the tokens; " + "; ".join(how))


def _split_warning(s: dict) -> str | None:
    if not s["far_from_requested"]:
        return None
    long = f"; documents of {s['long_doc_tokens']:,}+ tokens would be split by position" if s["long_doc_tokens"] \
        else ""
    return (f"warning: the validation split holds {s['val_share']:.1%} of the tokens, far from the requested "
            f"{s['val_fraction']:.0%}: {s['hashed_documents']:,} document(s) go to one side whole by the document "
            f"hash{long}; add documents, or set [data] val_fraction or split_seed in the sweep spec")


def _prepare_cache(source: str, tokenizer: str, vocab_size: int, as_json: bool) -> None:
    """The corpus and tokenizer of a training source, prepared into the cache (done on first use too)."""
    from ebt_scaling.cli.train import _check_data_arg, _clean
    from ebt_scaling.config import DataConfig
    from ebt_scaling.data import load_corpus

    _check_data_arg(source)
    corpus = load_corpus(DataConfig(source=source, tokenizer=tokenizer, vocab_size=vocab_size), 1,
                         progress=_echo_err)
    s = corpus.summary()
    tok_file = getattr(corpus.tokenizer, "path", None)
    s["tokenizer_file"] = str(tok_file) if tok_file else None
    if as_json:
        typer.echo(json.dumps(_clean(s), indent=1, sort_keys=True))
        return
    for k, v in s.items():
        if v is not None:
            typer.echo(f"{k:>14}: {v}")


def register(app: typer.Typer) -> None:
    app.add_typer(data_app, name="data")
