"""Shared CLI plumbing: the --db option, one-line errors, exit codes."""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable
from enum import Enum
from typing import Annotated, Any, TypeVar

import typer

from ebt_scaling.errors import EbtScaleError
from ebt_scaling.security import scrub

DEFAULT_DB_URL = "sqlite:///ebt_scale.db"

# Help as plain text (click's layout): no "<bool>" beside flags, readable at 80 columns.
HELP_MARKUP = None


def setup_logging(verbose: bool = False) -> None:
    """Messages of the library's loggers (``ebt_scaling.*``) on stderr: info by default, debug with
    ``--verbose``. A terminal gets rich's handler; logs and pipes get the bare message, one line each."""
    import logging

    log = logging.getLogger("ebt_scaling")
    log.setLevel(logging.DEBUG if verbose else logging.INFO)
    for h in list(log.handlers):
        log.removeHandler(h)
    if sys.stderr.isatty():
        from rich.logging import RichHandler

        handler: logging.Handler = RichHandler(show_time=False, show_path=verbose, markup=False)
    else:
        handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    log.addHandler(handler)
    log.propagate = False

DbOption = Annotated[
    str | None,
    typer.Option("--db", help="Database URL (default: $EBT_SCALE_DB or sqlite:///ebt_scale.db).",
                 show_default=False),
]


# The options that choose a sweep spec (ebt-scale sweep, calibrate).
SpecAxisOption = Annotated[str | None, typer.Option("--axis", help="data, batch, depth, width, params or flops: "
                                                    "the shipped spec of that axis.")]
SpecFileOption = Annotated[str | None, typer.Option("--spec", help="A sweep spec TOML file (instead of a shipped "
                                                    "one).", show_default=False)]
class OutputFormat(str, Enum):
    """Machine output, one convention across commands (issue 30.5): ``--format json``; ``--json`` is its alias."""

    table = "table"
    json = "json"


FormatOption = Annotated[OutputFormat, typer.Option("--format", help="Output: table (text) or json.")]
JsonAliasOption = Annotated[bool, typer.Option("--json", help="Alias of --format json.")]


def wants_json(fmt: OutputFormat, as_json: bool) -> bool:
    return as_json or fmt is OutputFormat.json


def terminal_width() -> int:
    """The terminal's width ($COLUMNS first); piped output gets a wide table (200)."""
    import shutil

    if os.environ.get("COLUMNS", "").isdigit():
        return int(os.environ["COLUMNS"])
    return shutil.get_terminal_size((200, 24)).columns if sys.stdout.isatty() else 200


SpecScaleOption = Annotated[str, typer.Option("--scale", help="Shipped spec scale: tiny (CPU) or paper.")]
# --preset was the name of --scale (issue 30.5: a preset is a model size, as in `ebt-scale train --preset`)
SpecPresetOption = Annotated[str | None, typer.Option("--preset", hidden=True,
                                                      help="Deprecated alias of --scale.")]


def spec_scale(scale: str, preset: str | None) -> str:
    """The shipped spec scale of ``--scale``, or of the deprecated ``--preset`` (said on stderr)."""
    if preset is None:
        return scale
    typer.echo(f"note: --preset {preset} is deprecated here: use --scale {preset} (--preset names a model size, "
               "as in `ebt-scale train --preset nano`)", err=True)
    return preset


def resolve_db(url: str | None) -> str:
    return url or os.environ.get("EBT_SCALE_DB") or DEFAULT_DB_URL


def fail(message: str, code: int = 1) -> typer.Exit:
    """Print one line on stderr (credentials masked) and return an Exit to raise."""
    typer.echo(f"error: {scrub(message)}", err=True)
    return typer.Exit(code)


F = TypeVar("F", bound=Callable[..., Any])


def handle_errors(fn: F) -> F:
    """Turn the project's exceptions into one masked line on stderr and a non-zero exit code."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except EbtScaleError as exc:
            raise fail(str(exc), exc.exit_code) from None
        except KeyboardInterrupt:
            typer.echo("interrupted", err=True)
            raise typer.Exit(130) from None

    return wrapper  # type: ignore[return-value]


def is_tty() -> bool:
    return sys.stderr.isatty()
