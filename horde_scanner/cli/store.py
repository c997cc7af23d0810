"""`horde-scanner store ...`: bring the schema up to date, move the store to PostgreSQL."""

from __future__ import annotations

import asyncio

import click

from horde_scanner.config import Settings
from horde_scanner.store.migrate import TableCopy, migrate
from horde_scanner.store.postgres import redact
from horde_scanner.store.schema import head
from horde_scanner.store.sqlite import Store, StoreError


@click.group()
def store() -> None:
    """The store: upgrade its schema, copy a SQLite store into PostgreSQL."""


@store.command("upgrade")
@click.pass_context
def upgrade_command(ctx: click.Context) -> None:
    """Bring the store's schema (store.url / --db) to this version's newest revision, as the
    service does when it starts; a store of horde-scanner 0.1 is taken over in place.
    Prints the revisions applied."""
    settings: Settings = ctx.obj["settings"]

    async def go() -> str:
        # Opening upgrades (store/schema.py: each revision applied is logged).
        async with await Store.open(settings.store) as opened:
            await opened.upgrade()
            return opened.where

    try:
        where = asyncio.run(go())
    except StoreError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"store {where} is at schema revision {head()}")


@store.command("migrate")
@click.option("--to", "to", required=True, help="Target: postgresql://user:password@host:port/db")
@click.pass_context
def migrate_command(ctx: click.Context, to: str) -> None:
    """Copy every table of the SQLite store (store.path / --db) into an empty PostgreSQL
    database, check the row counts, and print them. Stop the service first."""
    settings: Settings = ctx.obj["settings"]
    if not to.startswith(("postgresql://", "postgres://")):
        raise click.BadParameter("want postgresql://user:password@host:port/db", param_hint="--to")
    if settings.store.url is not None and not settings.store.url.startswith("sqlite:"):
        raise click.ClickException(
            f"the source must be a SQLite store, not {redact(settings.store.url)}"
        )
    source_where = settings.store.target

    async def go() -> list[TableCopy]:
        from horde_scanner.store.sqlite import sqlite_path

        if not sqlite_path(source_where).exists():
            raise StoreError(f"no SQLite store at {sqlite_path(source_where)}")
        async with await Store.open(source_where) as src, await Store.open(to) as dst:
            last: dict[str, int] = {}

            def progress(table: str, n: int) -> None:
                if n - last.get(table, 0) >= 20_000:
                    last[table] = n
                    click.echo(f"  {table}: {n} rows...", err=True)

            return await migrate(src, dst, progress=progress)

    copies = asyncio.run(go())
    width = max(len(c.table) for c in copies)
    for c in copies:
        click.echo(f"{c.table:<{width}}  {c.target:>9} rows (source {c.source})")
    click.echo(f"copied {sum(c.target for c in copies)} rows into {redact(to)}; counts match")
    click.echo(f"now set store.url = {redact(to)!r} (with its password) and start the service")
