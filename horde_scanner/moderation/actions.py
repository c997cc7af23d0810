"""Admin actions about a positive image, through Lemmy's API: one confirmed step that removes or
purges the posts and comments using it, bans its uploader with data removal, deletes the image
through Lemmy, reports what uses it; with a dry run listing exactly the calls.

Everything acts on the image's resolved provenance (moderation/provenance.py): without it there
is nothing to name. Calls go in a fixed order (report, remove, ban, purge, delete image: a
report needs its post to exist, a purge makes it gone). Each call is one `lemmy_actions` row:
who asked, when, the request (no secrets), what Lemmy answered; only a 2xx is `done`, anything
else is `failed` with Lemmy's answer and can be retried. A call already done for the same
object is not sent again.

`lemmy.auto_actions` applies chosen actions without asking, but only to images a person or a
deny list vouched for: on the deny list (an admin's confirm/deny), or judged by a deny-list
match. Never to a machine verdict alone.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

import aiohttp

from horde_scanner.config import LemmyAction, LemmySettings
from horde_scanner.errors import FinalError
from horde_scanner.integrations.lemmy_api import (
    Answer,
    Call,
    LemmyApi,
    LemmyApiError,
    build_call,
)
from horde_scanner.store.interfaces import (
    AuditStore,
    LemmyActionStore,
    ListStore,
    ProvenanceStore,
    VerdictStore,
)
from horde_scanner.store.provenance import DONE, FAILED, RESOLVED
from horde_scanner.verdict import VerdictRoute


class LemmyActionsStore(
    VerdictStore, ListStore, AuditStore, ProvenanceStore, LemmyActionStore, Protocol
):
    """What Lemmy actions read and record."""


log = logging.getLogger(__name__)

ORDER = (
    LemmyAction.REPORT,
    LemmyAction.REMOVE,
    LemmyAction.BAN,
    LemmyAction.PURGE,
    LemmyAction.DELETE_IMAGE,
)


class ActionError(FinalError):
    """A request that cannot be acted on; `status` and `error` are the API's answer."""

    def __init__(self, status: int, error: str, detail: str) -> None:
        super().__init__(detail)
        self.status, self.error, self.detail = status, error, detail


@dataclass
class Plan:
    api: str
    calls: list[Call] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    skipped: list[dict[str, Any]] = field(default_factory=list)


def parse_actions(values: Iterable[str]) -> list[LemmyAction]:
    out: list[LemmyAction] = []
    for raw in values:
        for item in str(raw).split(","):
            item = item.strip().lower()
            if not item:
                continue
            try:
                out.append(LemmyAction(item))
            except ValueError:
                known = ", ".join(a.value for a in LemmyAction)
                raise ActionError(
                    400, "bad_action", f"unknown action {item!r} (known: {known})"
                ) from None
    if not out:
        raise ActionError(400, "no_action", "name at least one action")
    return list(dict.fromkeys(out))


def plan_calls(
    record: dict[str, Any],
    actions: Iterable[LemmyAction],
    api: str,
    reason: str,
    done: dict[tuple[str, str], int] | None = None,
) -> Plan:
    """The calls these actions make for this provenance record, in order."""
    chosen = set(actions)
    plan = Plan(api)
    usages = record.get("usages") or []
    posts = sorted({u["post_id"] for u in usages if u["kind"].startswith("post_")})
    comments = sorted({u["comment_id"] for u in usages if u["kind"] == "comment"})
    messages = sorted({u["private_message_id"] for u in usages if u["kind"] == "private_message"})
    uploaders = sorted(
        {up["uploader"]["id"] for up in record.get("uploads") or [] if up.get("uploader")}
    )
    aliases = list(record.get("aliases") or [])
    wanted: list[tuple[str, int | str]] = []
    for action in ORDER:
        if action not in chosen:
            continue
        if action is LemmyAction.REPORT:
            wanted += [("report_post", p) for p in posts]
            wanted += [("report_comment", c) for c in comments]
            wanted += [("report_private_message", m) for m in messages]
        elif action is LemmyAction.REMOVE:
            if LemmyAction.PURGE in chosen:
                plan.notes.append("remove skipped: purge is chosen too (it removes for good)")
                continue
            wanted += [("remove_post", p) for p in posts]
            wanted += [("remove_comment", c) for c in comments]
        elif action is LemmyAction.BAN:
            if not uploaders:
                plan.notes.append(
                    "ban: no uploader is known (a generated thumbnail, an upload Lemmy did not "
                    "record, or Lemmy 0.18); ban the authors named in the usages by hand"
                )
            wanted += [("ban_person", u) for u in uploaders]
        elif action is LemmyAction.PURGE:
            wanted += [("purge_post", p) for p in posts]
            wanted += [("purge_comment", c) for c in comments]
        elif action is LemmyAction.DELETE_IMAGE:
            if not aliases:
                plan.notes.append("delete_image: no pict-rs alias is known")
            # 1.0's admin delete purges every alias of the file; 0.19 deletes one alias a call.
            wanted += [("delete_image", a) for a in (aliases[:1] if api == "1.0" else aliases)]
    if messages and chosen & {LemmyAction.REMOVE, LemmyAction.PURGE}:
        plan.notes.append(
            "Lemmy has no admin call that removes or purges a private message: report it, or "
            "ban its sender with data removal"
        )
    owned = [u for u in usages if u["kind"].startswith(("person_", "community_", "site_"))]
    if owned and chosen & {LemmyAction.REMOVE, LemmyAction.PURGE}:
        kinds = ", ".join(sorted({u["kind"] for u in owned}))
        plan.notes.append(
            f"not removed by these calls: {kinds} (a ban with data removal clears a banned "
            "uploader's avatar and banner; community and site images are changed by hand)"
        )
    for action_name, ident in wanted:
        call = build_call(api, action_name, ident, reason)
        previous = (done or {}).get((call.action, call.target))
        if previous is not None:
            plan.skipped.append({"action": call.action, "target": call.target, "done": previous})
            continue
        plan.calls.append(call)
    if not plan.calls and not plan.skipped:
        plan.notes.append("nothing to call: the image is used nowhere these actions reach")
    return plan


class Moderator:
    """Plans and makes the calls for an admin; one per process."""

    def __init__(
        self,
        store: LemmyActionsStore,
        settings: LemmySettings,
        session: aiohttp.ClientSession,
        schema_api: Callable[[], str | None],
    ) -> None:
        self._store = store
        self._settings = settings
        self._session = session
        self._schema_api = schema_api
        self._api: LemmyApi | None = None

    @property
    def enabled(self) -> bool:
        return bool(self._settings.url)

    def api_form(self) -> str:
        if self._settings.api_version != "auto":
            return self._settings.api_version
        return self._schema_api() or "0.19"

    def _client(self) -> LemmyApi:
        form = self.api_form()
        if self._api is None or self._api.api != form:
            try:
                self._api = LemmyApi(self._settings, self._session, form)
            except LemmyApiError as exc:
                raise ActionError(409, "lemmy_not_configured", str(exc)) from None
        return self._api

    async def _record(self, sha256: str) -> dict[str, Any]:
        row = await self._store.provenance(sha256)
        if row is None or row.state != RESOLVED or row.record is None:
            state = row.state if row is not None else "not asked"
            raise ActionError(
                409,
                "provenance_not_resolved",
                f"the provenance of {sha256} is {state}: nothing to act on yet",
            )
        return {**row.record, "aliases": row.aliases}

    async def plan(self, sha256: str, actions: Iterable[LemmyAction]) -> Plan:
        record = await self._record(sha256)
        done = {
            (a.action, a.target): a.id
            for a in await self._store.lemmy_actions(sha256)
            if a.state == DONE
        }
        return plan_calls(record, actions, self.api_form(), self._settings.reason, done)

    async def act(
        self, sha256: str, actions: Iterable[LemmyAction], *, by: str, dry_run: bool
    ) -> dict[str, Any]:
        """Make the calls (or, `dry_run`, only list them). Returns what was done."""
        if not self.enabled:
            raise ActionError(409, "lemmy_not_configured", "Lemmy actions need lemmy.url")
        plan = await self.plan(sha256, actions)
        out: dict[str, Any] = {
            "sha256": sha256,
            "dry_run": dry_run,
            "api": plan.api,
            "lemmy": self._settings.url,
            "notes": plan.notes,
            "skipped": plan.skipped,
            "calls": [],
        }
        if dry_run:
            out["calls"] = [
                {"action": c.action, "target": c.target, **c.public()} for c in plan.calls
            ]
            return out
        client = self._client() if plan.calls else None
        gave_up: Answer | None = None
        for call in plan.calls:
            assert client is not None
            if gave_up is None:
                answer = await self._send(client, call)
                if answer.status is None:
                    # No answer (timeout, unreachable, login refused): the rest are recorded
                    # failed without waiting on each, and can be retried.
                    gave_up = answer
            else:
                answer = Answer(
                    False,
                    None,
                    {"error": "not_sent", "detail": "Lemmy did not answer an earlier call"},
                )
            row = await self._store.add_lemmy_action(
                sha256,
                call.action,
                call.target,
                call.public(),
                state=DONE if answer.ok else FAILED,
                status=answer.status,
                answer=answer.body,
                by=by,
            )
            await self._audit(sha256, call, answer, by, row.id)
            out["calls"].append(
                {
                    "id": row.id,
                    "action": call.action,
                    "target": call.target,
                    **call.public(),
                    "state": row.state,
                    "status": answer.status,
                    "answer": answer.body,
                }
            )
        out["failed"] = sum(1 for c in out["calls"] if c["state"] == FAILED)
        return out

    async def _send(self, client: LemmyApi, call: Call) -> Answer:
        try:
            return await client.call(call)
        except LemmyApiError as exc:
            return Answer(False, None, {"error": "login_failed", "detail": str(exc)})

    async def _audit(self, sha256: str, call: Call, answer: Answer, by: str, row: int) -> None:
        await self._store.audit(
            "lemmy_action",
            sha256=sha256,
            action=call.action,
            source=by,
            detail={
                "id": row,
                "target": call.target,
                "request": f"{call.method} {call.path}",
                "state": DONE if answer.ok else FAILED,
                "status": answer.status,
            },
        )
        if not answer.ok:
            log.warning(
                "Lemmy refused %s %s for %s: %s %s",
                call.action,
                call.target,
                sha256[:12],
                answer.status,
                answer.body,
            )

    async def retry(self, action_id: int, *, by: str) -> dict[str, Any]:
        """Send a failed call again; the same row records the new answer."""
        row = await self._store.lemmy_action(action_id)
        if row is None:
            raise ActionError(404, "not_found", f"no Lemmy action #{action_id}")
        if row.state == DONE:
            raise ActionError(409, "already_done", f"Lemmy action #{action_id} is done")
        req = row.request
        call = Call(row.action, row.target, req["method"], req["path"], req.get("body"))
        call.auth_in_body = self.api_form() == "0.18" and call.body is not None
        if call.body is not None:
            call.body.pop("auth", None)
        answer = await self._send(self._client(), call)
        state = DONE if answer.ok else FAILED
        await self._store.update_lemmy_action(
            action_id, state=state, status=answer.status, answer=answer.body
        )
        await self._audit(row.sha256, call, answer, by, action_id)
        return {
            "id": action_id,
            "action": row.action,
            "target": row.target,
            "state": state,
            "status": answer.status,
            "answer": answer.body,
        }

    async def auto(self, sha256: str) -> dict[str, Any] | None:
        """`lemmy.auto_actions` for a resolved image a person or a deny list vouched for."""
        if not self._settings.auto_actions or not self.enabled:
            return None
        if not await self.vouched(sha256):
            return None
        return await self.act(sha256, self._settings.auto_actions, by="auto", dry_run=False)

    async def vouched(self, sha256: str) -> bool:
        """On the deny list (an admin confirmed or denied it), or judged by a deny-list match."""
        if await self._store.list_kind(sha256) == "deny":
            return True
        stored = await self._store.get_verdict(sha256)
        return (
            stored is not None
            and stored.verdict.is_positive
            and stored.verdict.route is VerdictRoute.MATCH
        )
