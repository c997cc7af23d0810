"""`horde-scanner hashes ...`: export and import hash lists, look at subscriptions and flags."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import click

from horde_scanner.cli.common import (
    OUTPUT_OPTION,
    import_list,
    open_input,
    read_list,
    run,
    settings_of,
    write_output,
)
from horde_scanner.signals.hash_list import (
    SIGNALS,
    HashEntry,
    ParseReport,
    dump_csv,
    dump_json,
    read_entries,
)
from horde_scanner.signals.hash_publish import entry_of, published
from horde_scanner.store.factory import open_store
from horde_scanner.store.hashes import LOCAL, HashFlag, SubscriptionState
from horde_scanner.timefmt import iso

_FORMAT = click.Choice(["csv", "json"])


@click.group()
def hashes() -> None:
    """Hash lists: export, import, subscriptions, review flags."""


@hashes.command("export")
@click.option("--format", "fmt", type=_FORMAT, default="csv", show_default=True)
@OUTPUT_OPTION
@click.option(
    "--all",
    "everything",
    is_flag=True,
    help="Add the entries of subscribed lists (default: this instance's own, "
    "exactly what GET /api/v1/hashes publishes).",
)
@click.option(
    "--unreviewed",
    is_flag=True,
    help="Add machine positives no admin has confirmed (default: hashes.publish_unreviewed).",
)
@click.pass_context
def export(
    ctx: click.Context, fmt: str, output: Path | None, everything: bool, unreviewed: bool
) -> None:
    """Write the hash list (signal, value, label, source, first seen, note, who confirmed it
    and when; no image bytes)."""
    settings = settings_of(ctx).hashes

    async def go() -> list[HashEntry]:
        async with await open_store(settings_of(ctx).store) as store:
            entries = await published(
                store,
                settings.publish_source,
                settings.pdq_min_quality,
                settings.pdq_max_distance,
                unreviewed=unreviewed or settings.publish_unreviewed,
            )
            if everything:
                seen = {(e.signal, e.value) for e in entries}
                for row in await store.hash_entries():
                    if row.origin != LOCAL and (row.signal, row.value) not in seen:
                        seen.add((row.signal, row.value))
                        entries.append(entry_of(row))
            return entries

    entries = run(go)
    text = dump_json(entries) if fmt == "json" else dump_csv(entries)
    write_output(output, text, f"{len(entries)} entries")


@hashes.command("import")
@click.argument("file", type=click.Path(path_type=Path, dir_okay=False, allow_dash=True))
@click.option(
    "--format",
    "fmt",
    type=_FORMAT,
    default=None,
    help="csv or json (default: told by the content).",
)
@click.option("--source", default="", help="Source for rows that name none.")
@click.pass_context
def import_(ctx: click.Context, file: Path, fmt: str | None, source: str) -> None:
    """Add the entries of FILE to this instance's deny list (origin `local`).

    Bad rows are reported with their line numbers and skipped; the exit status is 1 when any
    row was skipped."""
    settings = settings_of(ctx).hashes
    report = ParseReport(max_errors=settings.max_row_errors)
    entries = read_list(
        file,
        open_input(file),
        lambda text: read_entries(text, fmt, report, max_rows=settings.max_list_rows),
    )
    if source:
        entries = [
            e if e.source else HashEntry(e.signal, e.value, e.label, source, e.first_seen, e.note)
            for e in entries
        ]

    async def go() -> int:
        async with await open_store(settings_of(ctx).store) as store:
            written = await store.add_hash_entries(LOCAL, entries, by="cli:import")
            await store.audit(
                "hashes_imported",
                action="import",
                source="cli",
                detail={"file": str(file), "entries": written, "skipped": report.skipped},
            )
            return written

    import_list(file, report, go)


@hashes.command("remove")
@click.argument("signal", type=click.Choice(SIGNALS))
@click.argument("value")
@click.pass_context
def remove(ctx: click.Context, signal: str, value: str) -> None:
    """Take an imported entry off the list (it leaves the published list too)."""
    value = value.strip().lower()

    async def go() -> bool:
        async with await open_store(settings_of(ctx).store) as store:
            removed = await store.remove_hash_entry(LOCAL, signal, value)
            if removed:
                await store.audit(
                    "hash_removed",
                    action="remove",
                    source="cli",
                    detail={"signal": signal, "value": value},
                )
            return removed

    if not run(go):
        raise click.ClickException(f"no imported {signal} entry {value}")
    click.echo(f"removed {signal}:{value}")


@hashes.command("subscriptions")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def subscriptions(ctx: click.Context, as_json: bool) -> None:
    """State of each subscribed list: entries held, last good copy, last problem."""

    async def go() -> list[SubscriptionState]:
        async with await open_store(settings_of(ctx).store) as store:
            return await store.hash_subscriptions()

    states = run(go)
    if as_json:
        click.echo(json.dumps([dataclasses.asdict(s) for s in states], indent=2))
        return
    if not states:
        click.echo("no subscription has been fetched yet")
    for s in states:
        ok = iso(s.last_ok) if s.last_ok else "never"
        problem = f"  last problem: {s.last_error}" if s.last_error else ""
        click.echo(
            f"{s.name}: {s.entries} entries ({s.skipped} rows skipped), "
            f"last good copy {ok}, last status {s.last_status}{problem}"
        )


@hashes.command("flagged")
@click.option("--limit", type=click.IntRange(min=0), default=100, show_default=True)
@click.pass_context
def flagged(ctx: click.Context, limit: int) -> None:
    """Images that matched a `review` source: accepted, waiting for an admin's look."""

    async def go() -> list[HashFlag]:
        async with await open_store(settings_of(ctx).store) as store:
            return await store.hash_flags(limit)

    flags = run(go)
    if not flags:
        click.echo("nothing flagged")
    for f in flags:
        click.echo(
            f"{iso(f.flagged_at)}  {f.sha256}  {f.signal}:{f.value} "
            f"(distance {f.distance}) from {f.origin}  {f.source or ''}"
        )
