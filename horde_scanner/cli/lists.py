"""`horde-scanner allow|deny`: the admin's allow and confirm decisions, from the CLI."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from horde_scanner.cli.common import resolve_sha256, run, settings_of
from horde_scanner.media.hashing import is_sha256_hex, sha256_hex
from horde_scanner.store.factory import open_store


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


def _quarantine_lines(detail: dict[str, Any]) -> list[str]:
    """What a decision did to quarantined copies, one line each."""
    released = detail.get("quarantine", {"released": [], "failed": []})
    lines = [f"  restored {r['identifier']}" for r in released["released"]]
    lines += [f"  NOT restored {r['identifier']}: {r['why']}" for r in released["failed"]]
    if detail.get("quarantine_deleted"):
        lines.append(f"  deleted {detail['quarantine_deleted']} held copy(ies) from quarantine")
    lines += [
        f"  kept as evidence: {c['identifier']} ({c['holder']} quarantine)"
        for c in detail.get("quarantine_kept", [])
    ]
    return lines


def _list_command(kind: str, help_text: str) -> click.Command:
    @click.command(kind, help=help_text)
    @click.argument("targets", nargs=-1, required=True)
    @click.option("--note", default="", help="Why (kept in the audit log).")
    @click.option("--remove", is_flag=True, help=f"Take the hashes off the {kind} list.")
    @click.pass_context
    def command(ctx: click.Context, targets: tuple[str, ...], note: str, remove: bool) -> None:
        given = [(t, _hash_of(t)) for t in targets]

        async def go() -> list[str]:
            from horde_scanner.sweep.holder import review_for

            settings = settings_of(ctx)
            done = []
            async with await open_store(settings.store) as store:
                hashes = [h or await resolve_sha256(store, t) for t, h in given]
                review = review_for(settings, store)
                for sha in hashes:
                    if remove:
                        if await review.unlist(sha, kind, by="cli", note=note):
                            done.append(f"removed from {kind} list: {sha}")
                        else:
                            done.append(f"not on the {kind} list: {sha}")
                        continue
                    decide = review.allow if kind == "allow" else review.deny
                    decided = await decide(sha, by="cli", note=note)
                    done.append(f"{_PAST[kind]} {sha}")
                    done += _quarantine_lines(decided["audit"]["detail"])
            return done

        for line in run(go):
            click.echo(line)

    return command


allow = _list_command("allow", "Allow-list SHA256 hashes or FILES (always accepted).")
deny = _list_command("deny", "Deny-list SHA256 hashes or FILES (always rejected as csam).")
