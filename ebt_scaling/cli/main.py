"""Entry point of ``ebt-scale``. Each command lives in its own module with a ``register(app)``."""

from __future__ import annotations

import importlib

import typer

from ebt_scaling.security import scrub

app = typer.Typer(
    name="ebt-scale",
    help="Measure how Energy-Based Transformers scale against Transformer++, one axis at a time.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
    add_completion=False,
)

@app.callback()
def _root() -> None:
    """Measure how Energy-Based Transformers scale against Transformer++, one axis at a time."""


@app.command()
def version() -> None:
    """Print the ebt-scaling version."""
    from ebt_scaling import __version__

    typer.echo(__version__)


# Order = order in --help.
COMMAND_MODULES = ("sweep", "status", "cancel", "train", "data", "runs", "fit", "report", "think", "importcsv",
                   "export", "db")

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
