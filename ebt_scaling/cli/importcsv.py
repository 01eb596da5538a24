"""``ebt-scale import FILE.csv --sweep NAME``: add runs measured elsewhere (validated first, all or nothing)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ebt_scaling.cli.common import DbOption, fail, handle_errors, resolve_db


def register(app: typer.Typer) -> None:
    @app.command("import")
    @handle_errors
    def import_csv(
        file: Annotated[Path, typer.Argument(help="CSV with columns family, axis, x, seed, val_loss "
                                                  "(nats/token) and optional extra numeric metric columns.")],
        sweep: Annotated[str, typer.Option("--sweep", help="Sweep to import into (created if missing).")],
        db: DbOption = None,
        allow_outliers: Annotated[bool, typer.Option(
            "--allow-outliers", help="Import finite losses above the plausible bound (ln(vocab_size) + 2 nats, or "
            "20 without a vocab_size column); fit and report leave them out and say why.")] = False,
    ) -> None:
        """Import results from a CSV file as completed, fit-eligible runs (re-importing is idempotent)."""
        from ebt_scaling.db.importer import scan_import_csv
        from ebt_scaling.db.store import Store
        from ebt_scaling.names import name_problem

        if (why := name_problem(sweep)) is not None:
            raise fail(f"--sweep {ascii(sweep)[:80]} {why}; pass a name such as --sweep depth-tiny", 2)
        rows = scan_import_csv(file, allow_outliers)  # validates every row (streaming) before the database is opened
        with Store(resolve_db(db)) as store:
            summary = store.import_rows(sweep, rows, source_name=file.name)
        typer.echo(f"imported {summary.total} run(s) into sweep {sweep!r}: {summary.created} new, "
                   f"{summary.updated} already present")
