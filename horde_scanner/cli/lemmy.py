"""`horde-scanner lemmy check|provenance|act|retry`, `horde-scanner evidence --for-instance`,
`horde-scanner access-log`: provenance of positives and admin actions through Lemmy."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from horde_scanner.cli.common import OUTPUT_OPTION, resolve_sha256, run, settings_of, since_of
from horde_scanner.cli.common import write_output as write
from horde_scanner.moderation import access_log, for_instance
from horde_scanner.moderation.actions import parse_actions
from horde_scanner.review.view import action_entry, provenance_entry
from horde_scanner.runtime import open_runtime


@click.group()
def lemmy() -> None:
    """Who uploaded a positive, where Lemmy uses it, and acting on it through Lemmy."""


def _need_db(ctx: click.Context) -> None:
    if settings_of(ctx).lemmy.database_url is None:
        raise click.ClickException("lemmy.database_url is not set (see the Lemmy docs page)")


@lemmy.command("role-sql")
def role_sql() -> None:
    """Print the SQL that makes the read-only role provenance needs (run it with psql as
    Lemmy's database owner, the password in psql's variable `pw`)."""
    from importlib import resources

    text = resources.files("horde_scanner.data").joinpath("lemmy_readonly_role.sql").read_text()
    click.echo(text, nl=False)


@lemmy.command("check")
@click.pass_context
def check(ctx: click.Context) -> None:
    """Connect to Lemmy's database (and API, when lemmy.url is set) and say what was found."""
    _need_db(ctx)
    settings = settings_of(ctx)

    async def go() -> list[str]:
        from horde_scanner.integrations.lemmy_api import LemmyApi

        async with open_runtime(settings) as rt:
            resolver = await rt.provenance()
            assert resolver.lemmy is not None
            schema = await resolver.lemmy.check()
            said = [
                f"Lemmy {schema.version} database {resolver.lemmy.where}: every column "
                f"provenance reads is granted; own host {resolver.lemmy.own_host}"
            ]
            if schema.uploads is None:
                said.append("Lemmy 0.18 records no uploads: uploaders cannot be known")
            if settings.lemmy.url:
                moderator = await rt.moderator()
                api = LemmyApi(settings.lemmy, await rt.session(), moderator.api_form())
                await api.login()
                said.append(
                    f"Lemmy API {settings.lemmy.url} ({api.api} form): logged in as "
                    f"{settings.lemmy.username}"
                )
            return said

    for line in run(go):
        click.echo(line)


@lemmy.command("provenance")
@click.argument("sha256")
@click.option("--now", is_flag=True, help="Ask Lemmy's database now instead of showing the record.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def provenance(ctx: click.Context, sha256: str, now: bool, as_json: bool) -> None:
    """Who uploaded the image and where Lemmy uses it (SHA256 may be a unique prefix)."""
    settings = settings_of(ctx)

    async def go() -> dict[str, Any] | None:
        async with open_runtime(settings) as rt:
            store = await rt.store()
            sha = await resolve_sha256(store, sha256)
            if now:
                _need_db(ctx)
                stored = await store.get_verdict(sha)
                await store.want_provenance(
                    sha, "admin", seen_at=stored.first_seen if stored else None
                )
                await store.refresh_provenance(sha)
                resolver = await rt.provenance()
                row = await store.provenance(sha)
                assert row is not None
                if await resolver.resolve_one(row) is False:
                    raise click.ClickException(resolver.detail)
            return provenance_entry(await store.provenance(sha))

    prov = run(go)
    if prov is None:
        raise click.ClickException("no provenance recorded for it (try --now)")
    if as_json:
        click.echo(json.dumps(prov, indent=2))
        return
    click.echo(_describe(prov))


def _describe(prov: dict[str, Any]) -> str:
    lines = [f"state: {prov['state']}"]
    if prov.get("error"):
        lines.append(f"why: {prov['error']}")
    for up in prov.get("uploads") or []:
        who = up.get("uploader")
        if who:
            where = "local" if who["local"] else f"remote, {who['instance']}"
            lines.append(
                f"uploaded by {who['name']} ({who['actor_url']}, {where}) at {up['uploaded_at']}"
            )
        elif up.get("kind") == "thumbnail":
            lines.append(f"generated thumbnail of post {up.get('thumbnail_for_post')}")
    for u in prov.get("usages") or []:
        ident = u.get("comment_id") or u.get("private_message_id") or u.get("post_id") or ""
        lines.append(
            f"used as {u['kind']} {ident} {u.get('url') or ''} "
            f"(origin {u.get('origin_instance')})".replace("  ", " ")
        )
    if prov.get("origin_instances"):
        lines.append("origin instances: " + ", ".join(prov["origin_instances"]))
    lines += [f"note: {n}" for n in prov.get("notes") or []]
    return "\n".join(lines)


@lemmy.command("act")
@click.argument("sha256")
@click.option(
    "--action",
    "actions",
    multiple=True,
    required=True,
    type=click.Choice(["report", "remove", "ban", "purge", "delete_image"]),
    help="What to do (repeat): report, remove, ban, purge, delete_image.",
)
@click.option("--yes", is_flag=True, help="Make the calls (without it: a dry run listing them).")
@click.option("--by", default=None, help="Who asks (recorded in the audit trail).")
@click.pass_context
def act(
    ctx: click.Context, sha256: str, actions: tuple[str, ...], yes: bool, by: str | None
) -> None:
    """Act on a positive through Lemmy's API; a dry run unless --yes. Exit 1 when Lemmy
    refused a call (each is recorded; retry with `lemmy retry ID`)."""
    settings = settings_of(ctx)

    async def go() -> dict[str, Any]:
        async with open_runtime(settings) as rt:
            store = await rt.store()
            sha = await resolve_sha256(store, sha256)
            moderator = await rt.moderator()
            resolver = await rt.provenance()
            if resolver.lemmy is not None:
                try:
                    await resolver.lemmy.check()  # the API form follows the schema
                except Exception as exc:  # the dry run still works on the stored record
                    click.echo(f"note: {exc}", err=True)
            return await moderator.act(
                sha, parse_actions(actions), by=f"cli:{by or 'admin'}", dry_run=not yes
            )

    result = run(go)
    verb = "would call" if result["dry_run"] else "called"
    click.echo(f"Lemmy {result['lemmy']} ({result['api']} API form), {verb}:")
    for c in result["calls"]:
        state = "" if result["dry_run"] else f" -> {c['state']} {c['status']} {c['answer']}"
        body = json.dumps(c["body"]) if c["body"] is not None else ""
        click.echo(f"  {c['method']} {c['path']} {body}{state}".rstrip())
    for s in result["skipped"]:
        click.echo(f"  (done already: {s['action']} {s['target']}, #{s['done']})")
    for n in result["notes"]:
        click.echo(f"note: {n}")
    if result.get("failed"):
        raise SystemExit(1)


@lemmy.command("retry")
@click.argument("action_id", type=int)
@click.option("--by", default=None, help="Who asks (recorded in the audit trail).")
@click.pass_context
def retry(ctx: click.Context, action_id: int, by: str | None) -> None:
    """Send a failed Lemmy call again."""
    settings = settings_of(ctx)

    async def go() -> dict[str, Any]:
        async with open_runtime(settings) as rt:
            resolver = await rt.provenance()
            if resolver.lemmy is not None:
                try:
                    await resolver.lemmy.check()
                except Exception as exc:
                    click.echo(f"note: {exc}", err=True)
            return await (await rt.moderator()).retry(action_id, by=f"cli:{by or 'admin'}")

    result = run(go)
    click.echo(
        f"#{action_id} {result['action']} {result['target']}: {result['state']} "
        f"{result['status']} {result['answer']}"
    )
    if result["state"] != "done":
        raise SystemExit(1)


@lemmy.command("actions")
@click.argument("sha256")
@click.pass_context
def actions_cmd(ctx: click.Context, sha256: str) -> None:
    """Every Lemmy call made about an image, with what Lemmy answered."""
    settings = settings_of(ctx)

    async def go() -> list[dict[str, Any]]:
        async with open_runtime(settings) as rt:
            store = await rt.store()
            sha = await resolve_sha256(store, sha256)
            return [action_entry(a) for a in await store.lemmy_actions(sha)]

    for a in run(go):
        click.echo(
            f"#{a['id']} {a['requested_at']} {a['by']} {a['action']} {a['target']} "
            f"{a['request']['method']} {a['request']['path']} -> {a['state']} {a['status']}"
        )


@click.command("evidence")
@click.option("--for-instance", "host", required=True, help="The origin instance's host name.")
@OUTPUT_OPTION
@click.pass_context
def evidence(ctx: click.Context, host: str, output: Path | None) -> None:
    """The record another instance's admins need: hashes, times, their post and actor URLs,
    what was done here (JSON). Never an image."""
    settings = settings_of(ctx)

    async def go() -> dict[str, Any]:
        async with open_runtime(settings) as rt:
            return await for_instance.record(
                await rt.store(), host, own_host=settings.lemmy.hostname
            )

    record = run(go)
    write(output, json.dumps(record, indent=2) + "\n", f"the record for {host}")


@click.command("access-log")
@click.argument("logfile", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--since", default=None, help="Rejected uploads since (2024-05-01, 12h, 30d).")
@click.option(
    "--before-s",
    type=float,
    default=access_log.DEFAULT_BEFORE_S,
    show_default=True,
    help="Seconds before an upload's arrival a log line may be.",
)
@click.option(
    "--after-s",
    type=float,
    default=access_log.DEFAULT_AFTER_S,
    show_default=True,
    help="Seconds after our answer a log line may be (it is written at the end).",
)
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def access_log_cmd(
    ctx: click.Context,
    logfile: Path,
    since: str | None,
    before_s: float,
    after_s: float,
    as_json: bool,
) -> None:
    """Match uploads rejected at validation against a reverse proxy's access log (nginx
    combined format): candidate addresses and user agents, by time."""
    settings = settings_of(ctx)

    async def go() -> tuple[list[Any], dict[str, list[str]]]:
        async with open_runtime(settings) as rt:
            store = await rt.store()
            rows = await store.rejected_uploads(since_of(since), None, 10_000)
            pdq = {r.sha256: [h.hex for h in await store.pdq_of(r.sha256)] for r in rows}
            return rows, pdq

    rejected, pdq = run(go)
    try:
        with logfile.open(encoding="utf-8", errors="replace") as f:
            found = access_log.match(
                rejected, access_log.parse(f), before_s=before_s, after_s=after_s
            )
    except OSError as exc:
        raise click.ClickException(f"cannot read {logfile}: {exc.strerror}") from None
    for entry in found:
        entry["pdq"] = pdq.get(entry["sha256"], [])
    if as_json:
        click.echo(json.dumps(found, indent=2))
    else:
        click.echo(access_log.describe(found), nl=False)
