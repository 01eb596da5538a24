"""Entry point of ``ebt-scale``. Each command lives in its own module with a ``register(app)``."""

from __future__ import annotations

import importlib
from typing import Annotated

import typer

from ebt_scaling.cli.common import HELP_MARKUP, setup_logging
from ebt_scaling.security import scrub

app = typer.Typer(
    name="ebt-scale",
    help="Measure how Energy-Based Transformers scale against Transformer++, one axis at a time.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
    add_completion=False,
    rich_markup_mode=HELP_MARKUP,
)


def _print_version(value: bool) -> None:
    if value:
        from ebt_scaling import __version__

        typer.echo(f"ebt-scale {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Also log details (debug level) on stderr.")]
    = False,
    _version: Annotated[bool, typer.Option("--version", help="Print the version and exit.", is_eager=True,
                                           callback=_print_version)] = False,
) -> None:
    """Measure how Energy-Based Transformers scale against Transformer++, one axis at a time."""
    setup_logging(verbose)


@app.command()
def version() -> None:
    """Print the ebt-scaling version."""
    from ebt_scaling import __version__

    typer.echo(__version__)


# Order = order in --help.
COMMAND_MODULES = ("sweep", "status", "cancel", "train", "calibrate", "data", "runs", "fit", "report", "think",
                   "importcsv", "export", "db")

for _name in COMMAND_MODULES:
    try:
        _mod = importlib.import_module(f"ebt_scaling.cli.{_name}")
    except ModuleNotFoundError as _exc:  # a command still being built: skip only that exact module
        if _exc.name != f"ebt_scaling.cli.{_name}":
            raise
        continue
    _mod.register(app)


def main() -> None:
    try:
        app()
    except Exception as exc:  # last line of defence: never print a URL password
        typer.echo(f"error: {scrub(f'{type(exc).__name__}: {exc}')}", err=True)
        raise SystemExit(1) from None


if __name__ == "__main__":
    main()
