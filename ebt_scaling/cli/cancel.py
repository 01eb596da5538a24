"""``ebt-scale cancel --sweep X``: ask the live driver of a sweep to stop, through the database."""

from __future__ import annotations

import time
from typing import Annotated

import typer

from ebt_scaling.cli.common import DbOption, fail, handle_errors, resolve_db


def register(app: typer.Typer) -> None:
    @app.command("cancel")
    @handle_errors
    def cancel(
        sweep: Annotated[str, typer.Option("--sweep", help="The sweep whose driver should stop.")],
        wait: Annotated[float, typer.Option("--wait", help="Seconds to wait for the driver to stop (0: do not "
                                                           "wait).", min=0)] = 120.0,
        db: DbOption = None,
    ) -> None:
        """Stop a running sweep from any terminal: its unfinished runs are marked cancelled, their checkpoints
        kept, and the same `ebt-scale sweep` command resumes them."""
        from ebt_scaling.db.store import Store

        with Store(resolve_db(db), create=False) as store:
            store.get_sweep(sweep)  # NotFound names the closest sweeps
            holder = store.lease_holder(sweep)
            if holder is None:
                raise fail(f"sweep {sweep!r} has no live driver, so there is nothing to stop; its unfinished runs "
                           "resume with the next `ebt-scale sweep` of it", 1)
            store.request_cancel(sweep)
            who = f"pid {holder.get('pid', '?')} on {holder.get('host', '?')}"
            typer.echo(f"asked the driver of {sweep!r} ({who}) to stop", err=True)
            deadline = time.monotonic() + wait
            while wait and store.lease_holder(sweep) is not None:
                if time.monotonic() > deadline:
                    raise fail(f"the driver ({who}) has not stopped after {wait:g} s; it stops at its next check "
                               "(every 2 s) once Ray has stopped its trials - wait, or stop that process", 1)
                time.sleep(0.5)
            if wait:
                counts: dict[str, int] = {}
                for r in store.list_runs(sweep=sweep):
                    counts[r.status] = counts.get(r.status, 0) + 1
                typer.echo(f"sweep {sweep!r} stopped: " + ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
                           + "; rerun the same `ebt-scale sweep` command to resume")
