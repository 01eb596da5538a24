"""``ebt-scale db upgrade|current|downgrade``: schema migrations of the results database."""

from __future__ import annotations

from typing import Annotated

import typer

from ebt_scaling.cli.common import HELP_MARKUP, DbOption, handle_errors, resolve_db


def register(app: typer.Typer) -> None:
    db_app = typer.Typer(help="Manage the results database schema (Alembic migrations).", no_args_is_help=True,
                         rich_markup_mode=HELP_MARKUP)

    @db_app.command("upgrade")
    @handle_errors
    def upgrade(
        revision: Annotated[str, typer.Argument(help="Target revision.")] = "head",
        db: DbOption = None,
    ) -> None:
        """Migrate the database to the newest schema (creates it if empty). Back up large databases first."""
        from ebt_scaling.db import migrate
        from ebt_scaling.security import mask_url

        url = resolve_db(db)
        before, after = migrate.upgrade(url, revision)
        if before == after:
            typer.echo(f"{mask_url(url)}: already at revision {after}")
        else:
            typer.echo(f"{mask_url(url)}: upgraded from {before or 'empty'} to {after}")

    @db_app.command("current")
    @handle_errors
    def current(db: DbOption = None) -> None:
        """Print the database's schema revision and whether it is the one this ebt-scaling needs."""
        from ebt_scaling.db import migrate, schema
        from ebt_scaling.security import mask_url

        url = resolve_db(db)
        rev = migrate.current(url)
        if rev is None:
            state = "empty: created at head on first use, or by `ebt-scale db upgrade`"
        elif rev == schema.SCHEMA_REVISION:
            state = "head"
        elif rev in schema.KNOWN_REVISIONS:
            state = f"out of date, head is {schema.SCHEMA_REVISION}: run `{migrate.upgrade_hint(url)}`"
        else:
            state = "unknown to this ebt-scaling (written by a newer version?)"
        typer.echo(f"{mask_url(url)}: {rev or 'none'} ({state})")

    @db_app.command("downgrade")
    @handle_errors
    def downgrade(
        revision: Annotated[str, typer.Argument(help="Target revision; 'base' drops every ebt-scaling table.")],
        yes: Annotated[bool, typer.Option("--yes", help="Confirm: downgrading deletes data.")] = False,
        db: DbOption = None,
    ) -> None:
        """Migrate the database back to an older schema (deletes the data of removed tables)."""
        from ebt_scaling.db import migrate
        from ebt_scaling.errors import ConfigError
        from ebt_scaling.security import mask_url

        if not yes:
            raise ConfigError("downgrading deletes data; add --yes to confirm")
        url = resolve_db(db)
        before, after = migrate.downgrade(url, revision)
        typer.echo(f"{mask_url(url)}: downgraded from {before or 'empty'} to {after or 'base'}")

    app.add_typer(db_app, name="db")
