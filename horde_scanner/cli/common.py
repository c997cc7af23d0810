"""What the command modules share: the exit codes and the one place errors become them,
running a coroutine, the settings, labels, sha256 prefixes, `--since`, `--output`, reading and
importing a list FILE."""

from __future__ import annotations

import asyncio
import io
import logging
import sys
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path
from typing import IO, TextIO, TypeVar

import click

from horde_scanner.config import Settings
from horde_scanner.errors import HordeScannerError, InvalidInput
from horde_scanner.media.hashing import is_sha256_hex
from horde_scanner.signals.hash_list import ListFormatError, ParseReport
from horde_scanner.store.interfaces import VerdictStore
from horde_scanner.verdict import Label

T = TypeVar("T")
log = logging.getLogger(__name__)

# Exit statuses, for scripts (docs/cli.md has the table):
EXIT_CLEAN = 0
# `check` and `scan`: a positive was found. Elsewhere: the command did not do all it was asked
# and says why (click's own failures; a row skipped on import; Lemmy refused a call).
EXIT_POSITIVE = 1
# Bad input: an argument, the configuration, the policy, a file or a list (click's usage
# errors are 2 too). `check`: a file or the configuration could not be read.
EXIT_ERROR = EXIT_INVALID = 2
# `check` and `scan`: something was not judged (still queued, error, unreadable, stopped).
EXIT_NOT_JUDGED = 3
# Failed for good: retrying as asked will not help (a store that is not ours or newer, a
# source that cannot be used, a refused action, a model that cannot load).
EXIT_FAILED = 4
# Not possible now: try again later (a backend, the store or a peer is unavailable).
EXIT_RETRY_LATER = 5
# A bug: one line says so (the traceback is logged at DEBUG).
EXIT_INTERNAL = 70


def exit_code(exc: HordeScannerError) -> int:
    """The exit status of an error, by the branch of errors.py it is on."""
    if exc.retry_later:
        return EXIT_RETRY_LATER
    # FinalError, and an error of the root whose instance says it is not worth retrying.
    return EXIT_INVALID if isinstance(exc, InvalidInput) else EXIT_FAILED


def _shown(code: int) -> type[click.ClickException]:
    # click shows a ClickException as `Error: MESSAGE` and exits with its class's exit_code.
    return type(f"Exit{code}", (click.ClickException,), {"exit_code": code})


_SHOWN = {
    code: _shown(code) for code in (EXIT_INVALID, EXIT_FAILED, EXIT_RETRY_LATER, EXIT_INTERNAL)
}


class ErrorsToExitCodes(click.Group):
    """The one place errors become exit codes: every error of ours, raised anywhere below
    the entry point, is one message and its exit status; a bug is one line, not a
    traceback."""

    def invoke(self, ctx: click.Context) -> object:
        try:
            return super().invoke(ctx)
        except (click.ClickException, click.exceptions.Exit, click.Abort):
            raise
        except HordeScannerError as exc:
            raise _SHOWN[exit_code(exc)](str(exc) or type(exc).__name__) from None
        except Exception as exc:
            log.debug("internal error", exc_info=True)
            what = f"{type(exc).__name__}: {exc}"
            raise _SHOWN[EXIT_INTERNAL](
                f"internal error (a bug; log_level=DEBUG shows where): {what}"
            ) from None


def run(coro_fn: Callable[[], Awaitable[T]]) -> T:
    """Run a command's coroutine; its errors reach the entry point (ErrorsToExitCodes)."""
    return asyncio.run(coro_fn())  # type: ignore[arg-type]


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
        raise type(exc)(f"{file}: {exc}") from None


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
    from horde_scanner.timefmt import parse_since

    try:
        return parse_since(value) if value else None
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--since") from None
