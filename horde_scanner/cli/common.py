"""What the command modules share: running a coroutine, the settings, labels,
sha256 prefixes, `--since`, `--output`, reading and importing a list FILE, exit codes."""

from __future__ import annotations

import asyncio
import io
import sys
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path
from typing import IO, TextIO, TypeVar

import click

from horde_scanner.config import ConfigError, Settings
from horde_scanner.hashlists.format import ListFormatError, ParseReport
from horde_scanner.judging.policy import PolicyError
from horde_scanner.media.hashing import is_sha256_hex
from horde_scanner.store.factory import StoreError
from horde_scanner.store.interfaces import VerdictStore
from horde_scanner.verdict import Label

T = TypeVar("T")

# `check` and `scan` exit codes (docs/cli.md). ClickException's own 1 would read as
# "positive".
EXIT_CLEAN, EXIT_POSITIVE, EXIT_ERROR, EXIT_NOT_JUDGED = 0, 1, 2, 3


def run(coro_fn: Callable[[], Awaitable[T]]) -> T:
    from horde_scanner.sweep.source import ItemError, SourceError

    try:
        return asyncio.run(coro_fn())  # type: ignore[arg-type]
    except (ConfigError, PolicyError, StoreError, SourceError, ItemError) as exc:
        raise click.ClickException(str(exc)) from None


def settings_of(ctx: click.Context) -> Settings:
    settings: Settings = ctx.obj["settings"]
    return settings


async def resolve_sha256(store: VerdictStore, value: str) -> str:
    """A full sha256, or the one known sha256 that a shorter hex prefix names."""
    value = value.lower()
    if is_sha256_hex(value):
        return value
    if len(value) < 6 or any(c not in "0123456789abcdef" for c in value):
        raise click.BadParameter(
            "expected a sha256 (64 hex characters) or a unique prefix of at least 6",
            param_hint="SHA256",
        )
    found = await store.sha256_by_prefix(value, limit=3)
    if not found:
        raise click.ClickException(f"no known sha256 starts with {value}")
    if len(found) > 1:
        listed = ", ".join(found[:2]) + (", ..." if len(found) > 2 else "")
        raise click.ClickException(
            f"sha256 prefix {value} is ambiguous ({listed}); give more characters"
        )
    return found[0]


def labels_of(values: tuple[str, ...]) -> list[Label]:
    return [Label(v) for v in values]


LABEL_CHOICE = click.Choice([label.value for label in Label])

OUTPUT_OPTION = click.option(
    "--output",
    "-o",
    type=click.Path(path_type=Path),
    default=None,
    help="File to write (default: standard output).",
)


def write_output(output: Path | None, text: str, what: str) -> None:
    """`--output`: standard output, or the file named, and then `wrote WHAT to FILE` on
    standard error."""
    if output is None:
        click.echo(text, nl=False)
        return
    try:
        output.write_text(text)
    except OSError as exc:
        raise click.ClickException(f"cannot write {output}: {exc.strerror}") from None
    click.echo(f"wrote {what} to {output}", err=True)


def open_input(file: Path) -> IO[bytes]:
    """FILE's bytes, or standard input's for `-` (read whole first: it is not seekable)."""
    try:
        return io.BytesIO(sys.stdin.buffer.read()) if str(file) == "-" else file.open("rb")
    except OSError as exc:
        raise click.ClickException(f"{file}: {exc.strerror}") from None


def read_list(file: Path, raw: IO[bytes], read: Callable[[TextIO], Iterable[T]]) -> list[T]:
    """The entries `read` finds in `raw` (FILE's bytes, UTF-8), read as a stream; a read
    error or a document that is not a list is a message naming FILE. Closes `raw`."""
    try:
        with raw, io.TextIOWrapper(raw, encoding="utf-8-sig", newline="") as text:
            return list(read(text))
    except OSError as exc:
        raise click.ClickException(f"{file}: {exc.strerror}") from None
    except ListFormatError as exc:
        raise click.ClickException(f"{file}: {exc}") from None


def import_list(file: Path, report: ParseReport, write: Callable[[], Awaitable[int]]) -> None:
    """The end of `hashes import` and `embeddings import`: the skipped rows listed (the first
    ones), the good ones written (`write` returns how many), a summary; exit 1 when any row
    was skipped."""
    for error in report.errors:
        click.echo(f"{file}: {error} (skipped)", err=True)
    if report.unlisted:
        click.echo(f"{file}: {report.unlisted} more bad rows (not listed)", err=True)
    written = run(write)
    click.echo(f"imported {written} entries from {file}; skipped {report.skipped} rows")
    if report.skipped:
        sys.exit(1)


def since_of(value: str | None) -> float | None:
    """`--since` (2024-05-01, ISO time, 12h, 30d) as Unix seconds."""
    from horde_scanner.sweep.app import parse_since

    try:
        return parse_since(value) if value else None
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--since") from None
