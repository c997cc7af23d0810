"""`horde-scanner check FILE...`: judge files and print their verdicts."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click

from horde_scanner.cli.common import (
    EXIT_CLEAN,
    EXIT_ERROR,
    EXIT_NOT_JUDGED,
    EXIT_POSITIVE,
    run,
    settings_of,
)
from horde_scanner.errors import InvalidInput
from horde_scanner.verdict import Label

_NOT_JUDGED = ("pending", Label.ERROR.value, Label.UNREADABLE.value)


class _CheckError(InvalidInput):
    """What keeps `check` from reading its files: exit status 2 (EXIT_ERROR)."""


@click.command()
@click.argument("files", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="One JSON object per file.")
@click.option(
    "--wait",
    type=click.FloatRange(min=0),
    default=60.0,
    show_default=True,
    help="Seconds to wait per file for a backend; then `pending` (exit 3), judged later.",
)
@click.pass_context
def check(ctx: click.Context, files: tuple[Path, ...], as_json: bool, wait: float) -> None:
    """Judge FILES and print their verdicts (cached verdicts are reused).

    Exit status: 1 a positive; else 2 a file or the configuration could not be read; else 3
    a file not judged (pending, error or unreadable); 0 every file clean."""
    from horde_scanner.runtime import open_runtime

    settings = settings_of(ctx)

    async def go() -> int:
        positive = not_judged = failed = False
        async with open_runtime(settings) as rt:
            judge = await rt.judge()
            for path in files:
                try:
                    data = path.read_bytes()
                except OSError as exc:
                    _print_check(as_json, {"file": str(path), "error": exc.strerror or str(exc)})
                    failed = True
                    continue
                outcome = await judge.evaluate(data, source=f"check:{path}", within_s=wait)
                verdict = outcome.verdict
                why = (
                    "no judging path is live (see /readyz); kept as a job"
                    if outcome.route.value == "unavailable"
                    else f"not judged within {wait:g} s; kept as a job"
                )
                row: dict[str, Any] = {
                    "file": str(path),
                    "sha256": outcome.sha256,
                    "label": verdict.label.value if verdict else "pending",
                    "route": outcome.route.value,
                    "reasons": verdict.reasons if verdict else [why],
                }
                if verdict and verdict.is_positive:
                    positive = True
                elif row["label"] in _NOT_JUDGED:
                    not_judged = True
                _print_check(as_json, row)
        if positive:
            return EXIT_POSITIVE
        if failed:
            return EXIT_ERROR
        return EXIT_NOT_JUDGED if not_judged else EXIT_CLEAN

    try:
        code = run(go)
    except click.ClickException as exc:
        raise _CheckError(exc.message) from None
    sys.exit(code)


def _print_check(as_json: bool, row: dict[str, Any]) -> None:
    if as_json:
        click.echo(json.dumps(row))
    elif "error" in row:
        click.echo(f"{row['file']}: error: {row['error']}", err=True)
    else:
        reasons = "; ".join(row["reasons"])
        click.echo(f"{row['label']:<10} {row['sha256']}  {row['file']}  {reasons}")
