"""Entry point of ``ebt-scale``. Each command lives in its own module with a ``register(app)``."""

from __future__ import annotations

import importlib
import os
import sys
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
    except KeyboardInterrupt:  # Ctrl-C while the commands are imported: exit 130 (not death by SIGINT, -2)
        typer.echo("interrupted", err=True)
        raise SystemExit(130) from None
    _mod.register(app)


class CtrlC:
    """The CLI's SIGINT handler: Python's own (KeyboardInterrupt), but it remembers that the signal came
    (``seen``), so a KeyboardInterrupt swallowed where it landed (a finaliser, a library's catch-all) is raised
    again at the sweep runner's next check (``sched.runner.raise_lost_interrupt``): exit 130, not a sweep that
    runs on."""

    seen = False

    def __call__(self, signum: int, frame: object) -> None:
        self.seen = True
        raise KeyboardInterrupt


def _exit_interrupted() -> None:
    """Exit 130 without the interpreter's teardown, once Ray has been shut down (``sched.runner.stop_ray``).

    At teardown Ray's C++ core worker can be destroyed while its I/O thread still runs a periodic metrics task
    (``CoreWorker::RecordMetrics`` -> ``TaskManager::RecordMetrics`` on a half-destroyed task manager): about one
    Ctrl-C in six that landed just as the trials started ended in a segmentation fault after "interrupted" (exit
    139; found with gdb, issue 27.6). Everything worth keeping is written and committed by then; the streams and
    log handlers are flushed here."""
    import logging

    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    logging.shutdown()
    os._exit(130)


def main() -> None:
    import signal
    import threading

    if threading.current_thread() is threading.main_thread() and \
            signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        signal.signal(signal.SIGINT, CtrlC())
    try:
        app()
    except SystemExit as exc:
        if exc.code == 130 and "ray" in sys.modules:
            _exit_interrupted()
        raise
    except KeyboardInterrupt:  # a Ctrl-C outside a command's own handling (typer parsing the arguments)
        typer.echo("interrupted", err=True)
        if "ray" in sys.modules:
            _exit_interrupted()
        raise SystemExit(130) from None
    except Exception as exc:  # last line of defence: never print a URL password
        typer.echo(f"error: {scrub(f'{type(exc).__name__}: {exc}')}", err=True)
        raise SystemExit(1) from None


if __name__ == "__main__":
    main()
