"""`horde-scanner policy ...`: check a policy file, and dry-run it against the stored verdicts."""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path
from typing import TextIO

import click

from horde_scanner.cli.common import LABEL_CHOICE, settings_of, since_of
from horde_scanner.judging.policy_diff import DiffReport, format_text, run_diff
from horde_scanner.policy.rules import Policy
from horde_scanner.store.factory import open_store


def _load(path: Path) -> Policy:
    return Policy.load(path)


@click.group()
def policy() -> None:
    """Check a policy file; see what it would change before switching to it."""


@policy.command("check")
@click.argument("file", type=click.Path(path_type=Path, dir_okay=False))
def check(file: Path) -> None:
    """Validate a policy FILE (the same checks as at start-up)."""
    loaded = _load(file)
    horde = loaded.raw.get("horde", {})

    def count(key: str) -> int:
        return len(horde.get(key, []))

    click.echo(
        f"{file}: policy {loaded.version} is valid ({count('underage_words')} strong and "
        f"{count('weak_underage_words')} weak underage words, {count('sexual_words')} sexual "
        f"words, {len(loaded.clip.phrases)} CLIP phrases)"
    )


class _Bar:
    """One redrawn line on a terminal's stderr; silent when stderr is not a terminal."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.tty = stream.isatty()
        self.started = time.monotonic()
        self._last = float("-inf")
        self._drawn = False

    def __call__(self, done: int, total: int) -> None:
        if not self.tty:
            return
        now = time.monotonic()
        if now - self._last < 0.1 and done < total:
            return
        self._last = now
        filled = int(30 * done / total) if total else 30
        rate = done / max(1e-6, now - self.started)
        self.stream.write(
            f"\r\x1b[K[{'#' * filled}{'.' * (30 - filled)}] {done:,}/{total:,} verdicts"
            f"  {rate:,.0f}/s"
        )
        self.stream.flush()
        self._drawn = True

    def close(self) -> None:
        if self._drawn:
            self.stream.write("\n")
            self.stream.flush()


@policy.command("diff")
@click.argument("file", type=click.Path(path_type=Path, dir_okay=False))
@click.option(
    "--since", default=None, help="Only verdicts judged since: 2024-05-01, ISO time, 12h, 30d."
)
@click.option(
    "--label",
    "labels",
    multiple=True,
    type=LABEL_CHOICE,
    help="Only verdicts that are, or would become, this label (repeatable).",
)
@click.option(
    "--against",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="Compare with this policy file applied to the same signals, instead of the verdicts "
    "as stored.",
)
@click.option(
    "--samples",
    type=click.IntRange(0, 1000),
    default=5,
    show_default=True,
    help="Examples shown per kind of change.",
)
@click.option("--json", "as_json", is_flag=True, help="The report as one JSON object.")
@click.pass_context
def diff(
    ctx: click.Context,
    file: Path,
    since: str | None,
    labels: tuple[str, ...],
    against: Path | None,
    samples: int,
    as_json: bool,
) -> None:
    """Re-judge every stored verdict's signals under policy FILE, offline; change nothing."""
    since_ts = since_of(since)
    candidate = _load(file)
    baseline = _load(against) if against is not None else None
    settings = settings_of(ctx)
    if settings.store.url is None and not Path(settings.store.path).exists():
        raise click.ClickException(f"no store at {settings.store.path} (store.path or --db)")
    bar = _Bar(sys.stderr)

    async def go() -> DiffReport:
        async with await open_store(settings.store) as store:
            return await run_diff(
                store,
                candidate,
                baseline=baseline,
                since=since_ts,
                labels=labels,
                reject_labels=[label.value for label in settings.validation.reject_labels],
                sample_size=samples,
                progress=bar,
            )

    try:
        report = asyncio.run(go())
    finally:
        bar.close()
    if as_json:
        click.echo(json.dumps(report.as_dict(), indent=2))
    else:
        click.echo(format_text(report))
