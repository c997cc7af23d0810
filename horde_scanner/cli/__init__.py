"""`horde-scanner`: serve, check, scan, apply, release, verdicts, allow/deny, hashes, worker."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import sys
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import click

from horde_scanner import __version__
from horde_scanner.cli.hashes import hashes as hashes_group
from horde_scanner.cli.policy import policy as policy_group
from horde_scanner.config import ConfigError, Settings, load_settings
from horde_scanner.hashlists.store import HashStore
from horde_scanner.judging.policy import PolicyError
from horde_scanner.media.hashing import is_sha256_hex, sha256_hex
from horde_scanner.store.sqlite import Store, StoredVerdict, StoreError
from horde_scanner.verdict import Label

T = TypeVar("T")


def _run(coro_fn: Callable[[], Awaitable[T]]) -> T:
    from horde_scanner.sweep.source import ItemError, SourceError

    try:
        return asyncio.run(coro_fn())  # type: ignore[arg-type]
    except (ConfigError, PolicyError, StoreError, SourceError, ItemError) as exc:
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
    from horde_scanner.service.serve import ListenError
    from horde_scanner.service.serve import serve as serve_forever

    settings = _settings(ctx)
    _return_big_buffers_to_the_os()
    host = host if host is not None else settings.server.host
    port = port if port is not None else settings.server.port
    loop = _new_event_loop()
    try:
        loop.run_until_complete(serve_forever(settings, host, port))
    except (ConfigError, PolicyError, StoreError, ListenError) as exc:
        raise click.ClickException(str(exc)) from None
    finally:
        with contextlib.suppress(Exception):
            loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()


def _return_big_buffers_to_the_os() -> None:
    """Upload bodies are large and short-lived. glibc raises its mmap threshold after the first
    such buffer is freed and then serves them from a heap that never shrinks; pinning the
    threshold keeps RSS near what is really in use after a burst."""
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    if name and sys.platform.startswith("linux"):
        m_mmap_threshold = -3
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(name).mallopt(m_mmap_threshold, 128 * 1024)


def _new_event_loop() -> asyncio.AbstractEventLoop:
    # uvloop roughly halves the per-request cost of the cache-hit path; asyncio works too.
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


# `check` exit codes (README: Command line). ClickException's own 1 would read as "positive".
EXIT_CLEAN, EXIT_POSITIVE, EXIT_ERROR, EXIT_NOT_JUDGED = 0, 1, 2, 3
_NOT_JUDGED = ("pending", Label.ERROR.value, Label.UNREADABLE.value)


class _CheckError(click.ClickException):
    exit_code = EXIT_ERROR


@main.command()
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
    from horde_scanner.service.context import open_services

    settings = _settings(ctx)

    async def go() -> int:
        positive = not_judged = failed = False
        async with open_services(settings) as svc:
            for path in files:
                try:
                    data = path.read_bytes()
                except OSError as exc:
                    _print_check(as_json, {"file": str(path), "error": exc.strerror or str(exc)})
                    failed = True
                    continue
                outcome = await svc.judge.evaluate(data, source=f"check:{path}", within_s=wait)
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
        code = _run(go)
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


async def _resolve_sha256(store: Store, value: str) -> str:
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
    """One verdict with its signals and audit trail (SHA256 may be a unique prefix)."""

    async def go() -> dict[str, Any] | None:
        nonlocal sha256
        async with await Store.open(_settings(ctx).store.path) as store:
            sha256 = await _resolve_sha256(store, sha256)
            stored = await store.get_verdict(sha256)
            trail = await store.audit_trail(sha256)
            listed = await store.list_kind(sha256)
            pdq = await HashStore(store).pdq_of(sha256)
        if stored is None and not trail and listed is None:
            return None
        record: dict[str, Any] = _verdict_record(stored) if stored else {"sha256": sha256}
        record["list"] = listed
        record["pdq"] = [{"frame": h.frame, "hash": h.hex, "quality": h.quality} for h in pdq]
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
    from horde_scanner.review import evidence

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
    from horde_scanner.review.decisions import verdict_dict

    record = verdict_dict(stored)
    return {
        **record,
        "first_seen": _iso(stored.first_seen),
        "judged_at": _iso(stored.verdict.judged_at),
    }


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds")


# -- storage sweeps ----------------------------------------------------------------------------

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


@main.command()
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
    from horde_scanner.sweep.actions import Action
    from horde_scanner.sweep.app import run_scan
    from horde_scanner.sweep.progress import Progress

    settings = _settings(ctx)
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

    report = _run(go)
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


@main.command()
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
    from horde_scanner.sweep.actions import Action
    from horde_scanner.sweep.app import parse_since, plan_apply, run_apply
    from horde_scanner.sweep.progress import Progress

    try:
        since_ts = parse_since(since) if since else None
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--since") from None
    settings = _settings(ctx)
    if action == "delete" and not yes:
        plan = _run(lambda: plan_apply(settings, since=since_ts, address=address))
        if not plan:
            click.echo("nothing to apply: no recorded positive without an action")
            return
        _confirm_delete(plan)

    async def go() -> Any:
        return await run_apply(
            settings, action=Action(action), since=since_ts, address=address, progress=Progress()
        )

    reports = _run(go)
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


@main.command()
@click.argument("target")
@click.option("--note", default="", help="Why (kept with the allow-list entry and audit).")
@click.pass_context
def release(ctx: click.Context, target: str, note: str) -> None:
    """Restore a quarantined file (action ID, or every one with a SHA256) and allow-list it."""
    from horde_scanner.sweep.app import run_release

    if not target.isdigit() and not is_sha256_hex(target.lower()):
        raise click.BadParameter(
            "expected an action id (a number) or a sha256 (64 hex characters)",
            param_hint="TARGET",
        )
    settings = _settings(ctx)

    async def go() -> list[str]:
        return await run_release(settings, target, note=note)

    for where in _run(go):
        click.echo(f"restored {where}; its sha256 is on the allow list")


# -- allow / deny ------------------------------------------------------------------------------


def _hash_of(target: str) -> str | None:
    """The sha256 of a file or a full sha256; None for what may be a sha256 prefix."""
    candidate = target.lower()
    if is_sha256_hex(candidate):
        return candidate
    path = Path(target)
    if path.is_file():
        try:
            return sha256_hex(path.read_bytes())
        except OSError as exc:
            raise click.ClickException(f"{target}: {exc.strerror}") from None
    if len(candidate) >= 6 and all(c in "0123456789abcdef" for c in candidate):
        return None
    raise click.BadParameter(
        f"{target!r} is neither a sha256 (64 hex characters, or a unique prefix of at least "
        "6) nor a readable file",
        param_hint="TARGET",
    )


_PAST = {"allow": "allowed", "deny": "denied"}


def _list_command(kind: str, help_text: str) -> click.Command:
    @click.command(kind, help=help_text)
    @click.argument("targets", nargs=-1, required=True)
    @click.option("--note", default="", help="Why (kept in the audit log).")
    @click.option("--remove", is_flag=True, help=f"Take the hashes off the {kind} list.")
    @click.pass_context
    def command(ctx: click.Context, targets: tuple[str, ...], note: str, remove: bool) -> None:
        given = [(t, _hash_of(t)) for t in targets]

        async def go() -> list[str]:
            done = []
            async with await Store.open(_settings(ctx).store.path) as store:
                hashes = [h or await _resolve_sha256(store, t) for t, h in given]
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
                    done.append(f"{_PAST[kind]} {sha}")
            return done

        for line in _run(go):
            click.echo(line)

    return command


main.add_command(_list_command("allow", "Allow-list SHA256 hashes or FILES (always accepted)."))
main.add_command(
    _list_command("deny", "Deny-list SHA256 hashes or FILES (always rejected as csam).")
)

main.add_command(hashes_group)
main.add_command(policy_group)


# -- worker ------------------------------------------------------------------------------------


@main.command()
@click.option(
    "--server",
    required=True,
    envvar="HORDE_SCANNER_WORKER_SERVER",
    help="Base URL of the horde-scanner service, e.g. http://scanner:14051.",
)
@click.option(
    "--key",
    required=True,
    envvar="HORDE_SCANNER_WORKER_KEY",
    help="One of the service's workers.keys (env HORDE_SCANNER_WORKER_KEY).",
)
@click.option("--name", default=None, help="Worker name shown by the service (default: host).")
@click.option(
    "--concurrency",
    type=click.IntRange(1, 256),
    default=None,
    help="Images in flight at once (default: local.batch_size).",
)
@click.option(
    "--poll-wait",
    type=click.FloatRange(0, 60),
    default=10.0,
    show_default=True,
    help="Long-poll seconds per request when the service has no work.",
)
@click.option(
    "--model-dir",
    type=click.Path(path_type=Path, file_okay=False),
    default=None,
    help="Saved CLIP model directory (overrides local.model_dir).",
)
@click.option("--device", default=None, help="auto, cpu or cuda[:N] (overrides local.device).")
@click.pass_context
def worker(
    ctx: click.Context,
    server: str,
    key: str,
    name: str | None,
    concurrency: int | None,
    poll_wait: float,
    model_dir: Path | None,
    device: str | None,
) -> None:
    """Judge a service's images with local CLIP (extra [gpu]) and post the results back."""
    import socket
    from urllib.parse import urlsplit

    parts = urlsplit(server)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise click.BadParameter("expected an http:// or https:// URL", param_hint="--server")
    settings = _settings(ctx)
    local = settings.local.model_copy(
        update={k: v for k, v in {"model_dir": model_dir, "device": device}.items() if v}
    )
    from horde_scanner.backends import plugins
    from horde_scanner.judging.policy import Policy

    async def go() -> None:
        policy = Policy.load(settings.policy.path)
        try:
            backend = plugins.local_clip_backend(local, policy.clip.phrases)
        except plugins.PluginUnavailable as exc:
            raise click.ClickException(str(exc)) from None
        try:
            await plugins.run_worker(
                server,
                key,
                backend,
                name=name or socket.gethostname(),
                concurrency=concurrency or local.batch_size,
                poll_wait_s=poll_wait,
                limits=settings.media.limits(),
                policy=policy,
            )
        except plugins.WorkerStopped as exc:
            raise click.ClickException(str(exc)) from None
        finally:
            await backend.aclose()

    try:
        _run(go)
    except KeyboardInterrupt:
        click.echo("worker stopped", err=True)


if __name__ == "__main__":
    main()
