"""`horde-scanner verdicts list|show|export`: stored verdicts and evidence records."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from horde_scanner.cli.common import (
    LABEL_CHOICE,
    OUTPUT_OPTION,
    labels_of,
    resolve_sha256,
    run,
    settings_of,
    write_output,
)
from horde_scanner.store.factory import open_store
from horde_scanner.store.verdicts import StoredVerdict
from horde_scanner.timefmt import iso
from horde_scanner.verdict import Label


@click.group()
def verdicts() -> None:
    """Look at and export stored verdicts."""


@verdicts.command("list")
@click.option("--label", "labels", multiple=True, type=LABEL_CHOICE, help="Filter by label.")
@click.option("--limit", type=click.IntRange(min=0), default=50, show_default=True)
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def verdicts_list(ctx: click.Context, labels: tuple[str, ...], limit: int, as_json: bool) -> None:
    """Newest verdicts first."""

    async def go() -> list[StoredVerdict]:
        async with await open_store(settings_of(ctx).store) as store:
            return [v async for v in store.iter_verdicts(labels=labels_of(labels), limit=limit)]

    rows = run(go)
    if as_json:
        from horde_scanner.review.view import verdict_fields

        click.echo(json.dumps([verdict_fields(r) for r in rows], indent=2))
        return
    if not rows:
        click.echo("no verdicts")
    for r in rows:
        when = iso(r.verdict.judged_at)
        click.echo(f"{when}  {r.verdict.label.value:<10} {r.sha256}  {r.source or ''}")


@verdicts.command("show")
@click.argument("sha256")
@click.pass_context
def verdicts_show(ctx: click.Context, sha256: str) -> None:
    """One verdict with its signals and audit trail (SHA256 may be a unique prefix)."""

    async def go() -> dict[str, Any] | None:
        nonlocal sha256
        from horde_scanner.review import view
        from horde_scanner.sweep.holder import review_for

        settings = settings_of(ctx)
        async with await open_store(settings.store) as store:
            sha256 = await resolve_sha256(store, sha256)
            return await view.detail(store, sha256, review_for(settings, store).holders)

    record = run(go)
    if record is None:
        raise click.ClickException(f"no verdict or record for {sha256}")
    click.echo(json.dumps(record, indent=2))


@verdicts.command("export")
@click.option(
    "--label",
    "labels",
    multiple=True,
    type=LABEL_CHOICE,
    help="Labels to export (default: csam and nsfw).",
)
@click.option(
    "--format", "fmt", type=click.Choice(["csv", "json"]), default="csv", show_default=True
)
@OUTPUT_OPTION
@click.pass_context
def verdicts_export(
    ctx: click.Context, labels: tuple[str, ...], fmt: str, output: Path | None
) -> None:
    """Evidence records for follow-up: hashes (sha256, PDQ), where found, first seen, source
    instance, decisions and who made them. Never image bytes."""
    from horde_scanner.review import evidence

    wanted = labels_of(labels) or [Label.CSAM, Label.NSFW]

    async def go() -> list[dict[str, Any]]:
        async with await open_store(settings_of(ctx).store) as store:
            return await evidence.records(store, wanted)

    records = run(go)
    text = json.dumps(records, indent=2) + "\n" if fmt == "json" else evidence.to_csv(records)
    write_output(output, text, f"{len(records)} records")
