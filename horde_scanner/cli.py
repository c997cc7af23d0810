"""`horde-scanner`: serve, check, verdicts, allow/deny."""

from __future__ import annotations

import asyncio
import json
import logging
import sys
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import click

from horde_scanner import __version__
from horde_scanner.config import ConfigError, Settings, load_settings
from horde_scanner.hashing import is_sha256_hex, sha256_hex
from horde_scanner.policy import PolicyError
from horde_scanner.store import Store, StoredVerdict, StoreError
from horde_scanner.verdict import Label

T = TypeVar("T")


def _run(coro_fn: Callable[[], Awaitable[T]]) -> T:
    try:
        return asyncio.run(coro_fn())  # type: ignore[arg-type]
    except (ConfigError, PolicyError, StoreError) as exc:
        raise click.ClickException(str(exc)) from None


def _settings(ctx: click.Context) -> Settings:
    settings: Settings = ctx.obj["settings"]
    return settings


@click.group()
@click.version_option(__version__, prog_name="horde-scanner")
@click.option(
    "--config",
    "config_file",
    type=click.Path(path_type=Path),
    default=None,
    envvar="HORDE_SCANNER_CONFIG",
    help="TOML configuration file (env HORDE_SCANNER_CONFIG).",
)
@click.option(
    "--db",
    type=click.Path(path_type=Path),
    default=None,
    help="SQLite store (overrides store.path).",
)
@click.pass_context
def main(ctx: click.Context, config_file: Path | None, db: Path | None) -> None:
    """Keep CSAM (and optionally NSFW media) out of pict-rs storage, without a GPU."""
    try:
        settings = load_settings(config_file)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None
    if db is not None:
        settings.store.path = db
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    ctx.obj = {"settings": settings}


@main.command()
@click.option("--host", default=None, help="Bind address (server.host).")
@click.option("--port", type=int, default=None, help="Port (server.port, default 14051).")
@click.pass_context
def serve(ctx: click.Context, host: str | None, port: int | None) -> None:
    """Run the validation service for pict-rs."""
    from aiohttp import web

    from horde_scanner.service.app import build_app

    settings = _settings(ctx)
    host = host or settings.server.host
    port = port or settings.server.port
    try:
        app = build_app(settings)
        web.run_app(app, host=host, port=port, print=None, access_log=None)
    except (ConfigError, PolicyError, StoreError) as exc:
        raise click.ClickException(str(exc)) from None
    except OSError as exc:
        raise click.ClickException(f"cannot listen on {host}:{port}: {exc.strerror}") from None


@main.command()
@click.argument("files", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="One JSON object per file.")
@click.option(
    "--wait",
    type=float,
    default=None,
    help="Seconds to wait per file for a backend (default: as long as it takes).",
)
@click.pass_context
def check(ctx: click.Context, files: tuple[Path, ...], as_json: bool, wait: float | None) -> None:
    """Judge FILES and print their verdicts (cached verdicts are reused)."""
    from horde_scanner.service.context import open_services

    settings = _settings(ctx)

    async def go() -> int:
        worst = 0
        async with open_services(settings) as svc:
            for path in files:
                try:
                    data = path.read_bytes()
                except OSError as exc:
                    _print_check(as_json, {"file": str(path), "error": exc.strerror or str(exc)})
                    worst = max(worst, 2)
                    continue
                outcome = await svc.judge.evaluate(data, source=f"check:{path}", within_s=wait)
                verdict = outcome.verdict
                row: dict[str, Any] = {
                    "file": str(path),
                    "sha256": outcome.sha256,
                    "label": verdict.label.value if verdict else "pending",
                    "route": outcome.route.value,
                    "reasons": verdict.reasons if verdict else ["still being judged"],
                }
                if verdict and verdict.is_positive:
                    worst = max(worst, 1)
                _print_check(as_json, row)
        return worst

    code = _run(go)
    sys.exit(code)


def _print_check(as_json: bool, row: dict[str, Any]) -> None:
    if as_json:
        click.echo(json.dumps(row))
    elif "error" in row:
        click.echo(f"{row['file']}: error: {row['error']}", err=True)
    else:
        reasons = "; ".join(row["reasons"])
        click.echo(f"{row['label']:<10} {row['sha256'][:16]}  {row['file']}  {reasons}")


# -- verdicts ----------------------------------------------------------------------------------


@main.group()
def verdicts() -> None:
    """Look at and export stored verdicts."""


def _labels(values: tuple[str, ...]) -> list[Label]:
    return [Label(v) for v in values]


_LABEL_CHOICE = click.Choice([label.value for label in Label])


@verdicts.command("list")
@click.option("--label", "labels", multiple=True, type=_LABEL_CHOICE, help="Filter by label.")
@click.option("--limit", type=int, default=50, show_default=True)
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def verdicts_list(ctx: click.Context, labels: tuple[str, ...], limit: int, as_json: bool) -> None:
    """Newest verdicts first."""

    async def go() -> list[StoredVerdict]:
        async with await Store.open(_settings(ctx).store.path) as store:
            return [v async for v in store.iter_verdicts(labels=_labels(labels), limit=limit)]

    rows = _run(go)
    if as_json:
        click.echo(json.dumps([_verdict_record(r) for r in rows], indent=2))
        return
    if not rows:
        click.echo("no verdicts")
    for r in rows:
        when = _iso(r.verdict.judged_at)
        click.echo(f"{when}  {r.verdict.label.value:<10} {r.sha256}  {r.source or ''}")


@verdicts.command("show")
@click.argument("sha256")
@click.pass_context
def verdicts_show(ctx: click.Context, sha256: str) -> None:
    """One verdict with its signals and audit trail."""
    sha256 = sha256.lower()
    if not is_sha256_hex(sha256):
        raise click.BadParameter("expected 64 hex characters", param_hint="SHA256")

    async def go() -> dict[str, Any] | None:
        async with await Store.open(_settings(ctx).store.path) as store:
            stored = await store.get_verdict(sha256)
            trail = await store.audit_trail(sha256)
            listed = await store.list_kind(sha256)
        if stored is None and not trail and listed is None:
            return None
        record: dict[str, Any] = _verdict_record(stored) if stored else {"sha256": sha256}
        record["list"] = listed
        record["audit"] = [
            {
                "ts": _iso(a.ts),
                "event": a.event,
                "label": a.label,
                "action": a.action,
                "source": a.source,
                "detail": a.detail,
            }
            for a in trail
        ]
        return record

    record = _run(go)
    if record is None:
        raise click.ClickException(f"no verdict or record for {sha256}")
    click.echo(json.dumps(record, indent=2))


@verdicts.command("export")
@click.option(
    "--label",
    "labels",
    multiple=True,
    type=_LABEL_CHOICE,
    help="Labels to export (default: csam and nsfw).",
)
@click.option(
    "--format", "fmt", type=click.Choice(["csv", "json"]), default="csv", show_default=True
)
@click.option(
    "--output",
    "-o",
    type=click.Path(path_type=Path),
    default=None,
    help="File to write (default: standard output).",
)
@click.pass_context
def verdicts_export(
    ctx: click.Context, labels: tuple[str, ...], fmt: str, output: Path | None
) -> None:
    """Evidence records for follow-up: hashes (sha256, PDQ), where found, first seen, source
    instance, decisions and who made them. Never image bytes."""
    from horde_scanner import evidence

    wanted = _labels(labels) or [Label.CSAM, Label.NSFW]

    async def go() -> list[dict[str, Any]]:
        async with await Store.open(_settings(ctx).store.path) as store:
            return await evidence.records(store, wanted)

    records = _run(go)
    text = json.dumps(records, indent=2) + "\n" if fmt == "json" else evidence.to_csv(records)
    if output is None:
        click.echo(text, nl=False)
        return
    try:
        output.write_text(text)
    except OSError as exc:
        raise click.ClickException(f"cannot write {output}: {exc.strerror}") from None
    click.echo(f"wrote {len(records)} records to {output}", err=True)


def _verdict_record(stored: StoredVerdict) -> dict[str, Any]:
    v = stored.verdict
    return {
        "sha256": stored.sha256,
        "label": v.label.value,
        "reasons": v.reasons,
        "backend": v.backend,
        "policy_version": v.policy_version,
        "media_type": stored.media_type,
        "size": stored.size,
        "source": stored.source,
        "first_seen": _iso(stored.first_seen),
        "judged_at": _iso(v.judged_at),
        "signals": v.signals.model_dump() if v.signals else None,
    }


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds")


# -- allow / deny ------------------------------------------------------------------------------


def _hash_of(target: str) -> str:
    candidate = target.lower()
    if is_sha256_hex(candidate):
        return candidate
    path = Path(target)
    if path.is_file():
        try:
            return sha256_hex(path.read_bytes())
        except OSError as exc:
            raise click.ClickException(f"{target}: {exc.strerror}") from None
    raise click.BadParameter(
        f"{target!r} is neither a sha256 (64 hex characters) nor a readable file",
        param_hint="TARGET",
    )


def _list_command(kind: str, help_text: str) -> click.Command:
    @click.command(kind, help=help_text)
    @click.argument("targets", nargs=-1, required=True)
    @click.option("--note", default="", help="Why (kept in the audit log).")
    @click.option("--remove", is_flag=True, help=f"Take the hashes off the {kind} list.")
    @click.pass_context
    def command(ctx: click.Context, targets: tuple[str, ...], note: str, remove: bool) -> None:
        hashes = [_hash_of(t) for t in targets]

        async def go() -> list[str]:
            done = []
            async with await Store.open(_settings(ctx).store.path) as store:
                for sha in hashes:
                    if remove:
                        if await store.list_kind(sha) == kind and await store.remove_list(sha):
                            await store.audit(
                                f"un{kind}",
                                sha256=sha,
                                action=f"un{kind}",
                                source="cli",
                                detail={"note": note},
                            )
                            done.append(f"removed from {kind} list: {sha}")
                        else:
                            done.append(f"not on the {kind} list: {sha}")
                        continue
                    await store.set_list(sha, kind, note=note, by="cli")
                    await store.audit(
                        kind, sha256=sha, action=kind, source="cli", detail={"note": note}
                    )
                    done.append(f"{kind}ed {sha}")
            return done

        for line in _run(go):
            click.echo(line)

    return command


main.add_command(_list_command("allow", "Allow-list SHA256 hashes or FILES (always accepted)."))
main.add_command(
    _list_command("deny", "Deny-list SHA256 hashes or FILES (always rejected as csam).")
)


if __name__ == "__main__":
    main()
