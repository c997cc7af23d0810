"""`horde-scanner scan|apply|release`: storage sweeps and what they quarantined."""

from __future__ import annotations

import asyncio
import sys
from typing import Any

import click

from horde_scanner.cli.common import EXIT_NOT_JUDGED, EXIT_POSITIVE, run, settings_of, since_of
from horde_scanner.media.hashing import is_sha256_hex

_ACTIONS = ["report", "quarantine", "delete"]


def _stop_on_signals(stop: asyncio.Event) -> None:
    import signal

    from horde_scanner.sweep.runner import STOP_GRACE_S

    def on_signal(name: str) -> None:
        if not stop.is_set():
            click.echo(
                f"\n{name}: stopping (files being judged get {STOP_GRACE_S:g} s; the rest "
                "stay queued as jobs)",
                err=True,
            )
        stop.set()

    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(sig, on_signal, sig.name)
        except (NotImplementedError, RuntimeError, ValueError):  # not the main thread, Windows
            pass


def _print_report(report: Any, *, title: str) -> None:
    from horde_scanner.sweep.progress import summary_table

    click.echo(summary_table(report.counts, title=title))
    if report.positives:
        shown = report.positives[:100]
        click.echo(f"\npositives ({len(report.positives)}):")
        for identifier, label, sha in shown:
            click.echo(f"  {label:<10} {sha}  {report.source.rstrip('/')}/{identifier}")
        if len(report.positives) > len(shown):
            click.echo(
                f"  ... and {len(report.positives) - len(shown)} more "
                "(horde-scanner verdicts export)"
            )
    for note in report.notes:
        click.echo(f"\nnote: {note}", err=True)


@click.command()
@click.argument("source")
@click.option(
    "--action",
    type=click.Choice(_ACTIONS),
    default="report",
    show_default=True,
    help="report: record and list (dry run); quarantine: move aside (restorable); delete.",
)
@click.option("--follow", is_flag=True, help="Keep running and judge new files as they come.")
@click.option(
    "--interval",
    type=click.FloatRange(min=0.1),
    default=None,
    help="Seconds between --follow cycles (scan.follow_interval_s, default 60).",
)
@click.option("--concurrency", type=click.IntRange(1, 256), default=None, help="scan.concurrency.")
@click.pass_context
def scan(
    ctx: click.Context,
    source: str,
    action: str,
    follow: bool,
    interval: float | None,
    concurrency: int | None,
) -> None:
    """Sweep SOURCE (a directory, s3://bucket/prefix or ssh://user@host:port/path)."""
    from horde_scanner.runtime.sweeps import run_scan
    from horde_scanner.sweep.actions import Action
    from horde_scanner.sweep.progress import Progress

    settings = settings_of(ctx)
    if concurrency is not None:
        settings.scan.concurrency = concurrency

    async def go() -> Any:
        stop = asyncio.Event()
        _stop_on_signals(stop)
        return await run_scan(
            settings,
            source,
            action=Action(action),
            follow=follow,
            interval_s=interval,
            progress=Progress(),
            stop=stop,
        )

    report = run(go)
    title = f"{report.source}: {report.action}"
    if report.resumed_from:
        title += f" (resumed after {report.resumed_from})"
    if report.stopped:
        title += " (stopped)"
    _print_report(report, title=title)
    if report.stopped:
        click.echo(
            f"stopped before the end: {report.interrupted} file(s) still waiting on the backend "
            "are kept as jobs and the checkpoint is saved; run the same command again to "
            "resume",
            err=True,
        )
    # Like `check`: 1 when positives were found, 3 when stopped before judging everything.
    sys.exit(EXIT_POSITIVE if report.positives else EXIT_NOT_JUDGED if report.stopped else 0)


@click.command()
@click.option(
    "--action",
    type=click.Choice(["quarantine", "delete"]),
    required=True,
    help="What to do with the positives earlier dry runs recorded.",
)
@click.option(
    "--since", default=None, help="Only positives recorded since: 2024-05-01, ISO time, 12h, 7d."
)
@click.option("--source", "address", default=None, help="Only this source.")
@click.option("--yes", is_flag=True, help="Delete without asking (needed without a terminal).")
@click.pass_context
def apply(
    ctx: click.Context, action: str, since: str | None, address: str | None, yes: bool
) -> None:
    """Act on positives recorded by earlier `scan` dry runs, without judging again."""
    from horde_scanner.runtime.sweeps import plan_apply, run_apply
    from horde_scanner.sweep.actions import Action
    from horde_scanner.sweep.progress import Progress

    since_ts = since_of(since)
    settings = settings_of(ctx)
    if action == "delete" and not yes:
        plan = run(lambda: plan_apply(settings, since=since_ts, address=address))
        if not plan:
            click.echo("nothing to apply: no recorded positive without an action")
            return
        _confirm_delete(plan)

    async def go() -> Any:
        return await run_apply(
            settings, action=Action(action), since=since_ts, address=address, progress=Progress()
        )

    reports = run(go)
    if not reports:
        click.echo("nothing to apply: no recorded positive without an action")
    for report in reports:
        _print_report(report, title=f"{report.source}: apply {report.action}")


def _confirm_delete(plan: dict[str, dict[str, int]]) -> None:
    """Deleting cannot be undone: say what goes, and ask (or refuse without a terminal)."""
    total = sum(sum(by_label.values()) for by_label in plan.values())
    lines = [f"apply --action delete will delete {total} file(s):"]
    for source, by_label in plan.items():
        labels = ", ".join(f"{n} {label}" for label, n in sorted(by_label.items()))
        lines.append(f"  {source}: {labels}")
    summary = "\n".join(lines)
    if not (sys.stdin.isatty() and sys.stdout.isatty()):
        raise click.ClickException(
            f"{summary}\nrefusing without a terminal to confirm: add --yes to delete them"
        )
    click.echo(summary)
    if not click.confirm("Delete them? This cannot be undone", default=False):
        raise click.ClickException("nothing deleted")


@click.command()
@click.argument("target")
@click.option("--note", default="", help="Why (kept with the allow-list entry and audit).")
@click.pass_context
def release(ctx: click.Context, target: str, note: str) -> None:
    """Restore a quarantined file (action ID, or every one with a SHA256) and allow-list it.

    This is the allow decision: every quarantined copy of those bytes goes back."""
    from horde_scanner.runtime.sweeps import run_release

    if not target.isdigit() and not is_sha256_hex(target.lower()):
        raise click.BadParameter(
            "expected an action id (a number) or a sha256 (64 hex characters)",
            param_hint="TARGET",
        )
    settings = settings_of(ctx)

    async def go() -> list[str]:
        return await run_release(settings, target, note=note)

    for where in run(go):
        click.echo(f"restored {where}; its sha256 is on the allow list")
