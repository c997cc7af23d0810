"""/api/v1/admin/: the admin API (bearer token). JSON in, JSON out; errors as {"error", "detail"}.

GET  verdicts?label=&source=&backend=&since=&until=&undecided=&limit=&offset=
GET  verdicts/{sha256}                 the verdict, its signals, lists, quarantine, audit trail
POST verdicts/{sha256}/allow           {"note": "...", "by": "alice"}
POST verdicts/{sha256}/confirm         {"note": "...", "by": "alice"}
POST verdicts/{sha256}/rejudge         {"mode": "policy" | "backend", "wait_s": 60, "by": ...}
GET  queue                             undecided positives, late positives, unscanned items
GET  stats
GET  export?format=json|csv&label=...  evidence records (never image bytes)
GET  verdicts/{sha256}/provenance      who uploaded it, where Lemmy uses it (or why not known)
POST verdicts/{sha256}/provenance      ask Lemmy's database again now
POST verdicts/{sha256}/lemmy           {"actions": ["ban", "purge", ...], "dry_run": true, "by"}
POST lemmy/actions/{id}/retry          send a failed Lemmy call again
"""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from horde_scanner.media.hashing import is_sha256_hex
from horde_scanner.moderation.actions import ActionError, parse_actions
from horde_scanner.review import evidence, view
from horde_scanner.review.decisions import (
    POSITIVE,
    UNSCANNED,
    Review,
    ReviewError,
    VerdictFilter,
)
from horde_scanner.service.admin.auth import ADMIN, actor_name
from horde_scanner.service.context import ADMIN_DEPS, AdminDeps
from horde_scanner.service.errors import RequestError
from horde_scanner.verdict import Label

PREFIX = "/api/v1/admin"
MAX_LIMIT = 1000

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def admin_only(handler: Handler) -> Handler:
    async def guarded(request: web.Request) -> web.StreamResponse:
        address = request.app[ADMIN_DEPS].auth.client_address(request)
        try:
            request.app[ADMIN].check_bearer(request, address)
        except RequestError as exc:
            if exc.status == 401:
                request.app[ADMIN_DEPS].metrics.error("admin_token_failed")
            raise
        try:
            return await handler(request)
        except (ReviewError, ActionError) as exc:
            raise RequestError(exc.status, exc.error, exc.detail) from None

    return guarded


def parse_time(value: str | None, name: str) -> float | None:
    """Unix seconds or ISO 8601 (UTC when no offset is given)."""
    if value is None or value == "":
        return None
    try:
        return float(value)
    except ValueError:
        pass
    try:
        when = datetime.fromisoformat(value)
    except ValueError:
        raise RequestError(
            400, "bad_time", f"{name}={value!r}: expected unix seconds or ISO 8601"
        ) from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when.timestamp()


def parse_labels(values: list[str]) -> tuple[str, ...]:
    labels: list[str] = []
    for raw in values:
        for item in raw.split(","):
            item = item.strip().lower()
            if not item:
                continue
            if item not in Label.__members__.values():
                known = ", ".join(label.value for label in Label)
                raise RequestError(400, "bad_label", f"unknown label {item!r} (known: {known})")
            labels.append(item)
    return tuple(labels)


def _int(value: str | None, name: str, default: int, low: int, high: int) -> int:
    if value is None or value == "":
        return default
    try:
        number = int(value)
    except ValueError:
        raise RequestError(400, f"bad_{name}", f"{name}={value!r}: expected an integer") from None
    if not low <= number <= high:
        raise RequestError(400, f"bad_{name}", f"{name} must be between {low} and {high}")
    return number


def filter_from_query(query: Any) -> VerdictFilter:
    undecided = query.get("undecided", "").lower() in ("1", "true", "yes")
    return VerdictFilter(
        labels=parse_labels(query.getall("label", [])),
        source=query.get("source") or None,
        backend=query.get("backend") or None,
        since=parse_time(query.get("since"), "since"),
        until=parse_time(query.get("until"), "until"),
        undecided=undecided,
        limit=_int(query.get("limit"), "limit", 100, 1, MAX_LIMIT),
        offset=_int(query.get("offset"), "offset", 0, 0, 10**9),
    )


def sha_param(request: web.Request) -> str:
    sha = request.match_info["sha256"].lower()
    if not is_sha256_hex(sha):
        raise RequestError(400, "bad_sha256", "expected a sha256 as 64 hex characters")
    return sha


async def json_body(request: web.Request) -> dict[str, Any]:
    if not request.can_read_body:
        return {}
    raw = await request.read()
    if not raw.strip():
        return {}
    try:
        body = json.loads(raw)
    except ValueError as exc:
        raise RequestError(400, "bad_json", f"request body is not JSON: {exc}") from None
    if not isinstance(body, dict):
        raise RequestError(400, "bad_json", "request body must be a JSON object")
    return body


def _actor(request: web.Request, body: dict[str, Any]) -> str:
    name = body.get("by") or request.headers.get("X-Admin-Actor")
    return actor_name("api", str(name) if name else None)


def _note(body: dict[str, Any]) -> str:
    note = body.get("note", "")
    if not isinstance(note, str):
        raise RequestError(400, "bad_note", "note must be a string")
    if "\x00" in note:  # no store keeps one (PostgreSQL's text cannot hold it)
        raise RequestError(400, "bad_note", "note must not hold a NUL character")
    return note[:1000]


@admin_only
async def list_verdicts(request: web.Request) -> web.Response:
    svc: AdminDeps = request.app[ADMIN_DEPS]
    f = filter_from_query(request.query)
    rows = await svc.review.search(f)
    return web.json_response(
        {
            "count": len(rows),
            "limit": f.limit,
            "offset": f.offset,
            "verdicts": [view.verdict_fields(r, signals=False) for r in rows],
        }
    )


@admin_only
async def show_verdict(request: web.Request) -> web.Response:
    svc: AdminDeps = request.app[ADMIN_DEPS]
    sha = sha_param(request)
    record = await svc.review.detail(sha)
    if record is None:
        raise RequestError(404, "not_found", f"nothing is known about {sha}")
    return web.json_response(record)


async def _decide(
    request: web.Request, decide: Callable[..., Awaitable[dict[str, Any]]]
) -> web.Response:
    """One review decision (a `Review` method) on the path's sha256, by the body's actor,
    with its note."""
    svc: AdminDeps = request.app[ADMIN_DEPS]
    sha = sha_param(request)
    body = await json_body(request)
    return web.json_response(
        await decide(svc.review, sha, by=_actor(request, body), note=_note(body))
    )


@admin_only
async def allow(request: web.Request) -> web.Response:
    return await _decide(request, Review.allow)


@admin_only
async def confirm(request: web.Request) -> web.Response:
    response = await _decide(request, Review.confirm)
    await after_confirm(request.app[ADMIN_DEPS], sha_param(request))
    return response


async def after_confirm(svc: AdminDeps, sha256: str) -> None:
    """An admin vouched for the positive: lemmy.auto_actions may now run on it (when its
    provenance is resolved; else when it is)."""
    if svc.moderator is not None:
        try:
            await svc.moderator.auto(sha256)
        except ActionError:
            pass  # not resolved yet: the resolver runs them when it is


@admin_only
async def provenance(request: web.Request) -> web.Response:
    svc: AdminDeps = request.app[ADMIN_DEPS]
    sha = sha_param(request)
    return web.json_response(await provenance_data(svc, sha))


async def provenance_data(svc: AdminDeps, sha256: str) -> dict[str, Any]:
    row = view.provenance_entry(await svc.store.provenance(sha256))
    return {
        "sha256": sha256,
        "lemmy": svc.provenance.describe() if svc.provenance is not None else {"state": "off"},
        "provenance": row,
        "lemmy_actions": [view.action_entry(a) for a in await svc.store.lemmy_actions(sha256)],
    }


@admin_only
async def refresh_provenance(request: web.Request) -> web.Response:
    svc: AdminDeps = request.app[ADMIN_DEPS]
    sha = sha_param(request)
    if not await svc.store.refresh_provenance(sha):
        stored = await svc.store.get_verdict(sha)
        if stored is None:
            raise RequestError(404, "not_found", f"nothing is known about {sha}")
        await svc.store.want_provenance(sha, "admin", seen_at=stored.first_seen)
    if svc.provenance is not None:
        svc.provenance.wake()
    return web.json_response(await provenance_data(svc, sha), status=202)


@admin_only
async def lemmy_act(request: web.Request) -> web.Response:
    svc: AdminDeps = request.app[ADMIN_DEPS]
    sha = sha_param(request)
    body = await json_body(request)
    raw = body.get("actions")
    if not isinstance(raw, list) or not all(isinstance(a, str) for a in raw):
        raise RequestError(400, "bad_actions", 'actions must be a list, e.g. ["ban", "purge"]')
    dry_run = body.get("dry_run", True)
    if not isinstance(dry_run, bool):
        raise RequestError(400, "bad_dry_run", "dry_run must be true or false")
    return await act_response(svc, sha, raw, by=_actor(request, body), dry_run=dry_run)


async def act_response(
    svc: AdminDeps, sha256: str, actions: list[str], *, by: str, dry_run: bool
) -> web.Response:
    if svc.moderator is None or not svc.moderator.enabled:
        raise RequestError(409, "lemmy_not_configured", "Lemmy actions need lemmy.url")
    result = await svc.moderator.act(sha256, parse_actions(actions), by=by, dry_run=dry_run)
    if result.get("failed"):
        # Lemmy refused or did not answer some calls: each is recorded failed, retryable.
        return web.json_response(
            {
                "error": "lemmy_refused",
                "detail": f"{result['failed']} of {len(result['calls'])} calls failed",
                **result,
            },
            status=502,
        )
    return web.json_response(result)


@admin_only
async def lemmy_retry(request: web.Request) -> web.Response:
    svc: AdminDeps = request.app[ADMIN_DEPS]
    body = await json_body(request)
    try:
        action_id = int(request.match_info["id"])
    except ValueError:
        raise RequestError(400, "bad_id", "expected a numeric action id") from None
    if svc.moderator is None or not svc.moderator.enabled:
        raise RequestError(409, "lemmy_not_configured", "Lemmy actions need lemmy.url")
    result = await svc.moderator.retry(action_id, by=_actor(request, body))
    if result["state"] != "done":
        return web.json_response(
            {"error": "lemmy_refused", "detail": f"Lemmy answered {result['status']}", **result},
            status=502,
        )
    return web.json_response(result)


@admin_only
async def rejudge(request: web.Request) -> web.Response:
    svc: AdminDeps = request.app[ADMIN_DEPS]
    sha = sha_param(request)
    body = await json_body(request)
    mode = body.get("mode", "policy")
    wait = body.get("wait_s", 60)
    if not isinstance(wait, int | float) or not 0 <= wait <= 600:
        raise RequestError(400, "bad_wait_s", "wait_s must be a number of seconds from 0 to 600")
    result = await svc.review.rejudge(
        sha, by=_actor(request, body), mode=str(mode), wait_s=float(wait)
    )
    return web.json_response(result, status=202 if result.get("state") == "pending" else 200)


@admin_only
async def queue(request: web.Request) -> web.Response:
    svc: AdminDeps = request.app[ADMIN_DEPS]
    limit = _int(request.query.get("limit"), "limit", 100, 1, MAX_LIMIT)
    return web.json_response(await queue_data(svc, limit))


async def queue_data(svc: AdminDeps, limit: int) -> dict[str, Any]:
    review = svc.review
    positives = await review.search(VerdictFilter(labels=POSITIVE, undecided=True, limit=limit))
    unscanned = await review.search(VerdictFilter(labels=UNSCANNED, undecided=True, limit=limit))
    late = await review.late_positives(limit)
    shas = [v.sha256 for v in positives + unscanned] + [p["sha256"] for p in late]
    held = await svc.review.held_among(shas)
    return {
        "positives": [
            {**view.verdict_fields(v), "in_quarantine": v.sha256 in held} for v in positives
        ],
        "late_positives": [{**p, "in_quarantine": p["sha256"] in held} for p in late],
        "unscanned": [
            {**view.verdict_fields(v), "in_quarantine": v.sha256 in held} for v in unscanned
        ],
    }


@admin_only
async def stats(request: web.Request) -> web.Response:
    return web.json_response(await stats_data(request.app[ADMIN_DEPS]))


async def stats_data(svc: AdminDeps) -> dict[str, Any]:
    body = await svc.review.stats()
    readiness = svc.backend.readiness()
    body.update(
        {
            "backend": {"name": readiness.name, "live": readiness.live, "detail": readiness.detail},
            "answers_since_start": svc.metrics.answer_counts(),
            "cache_hit_ratio": round(svc.metrics.cache_hit_ratio, 4),
            # The backend's own figure, when it spends kudos (the AI Horde's describe()).
            "kudos_estimate": svc.backend.describe().get("kudos_estimated"),
            "uptime_s": round(time.time() - svc.started_at, 1),
        }
    )
    return body


@admin_only
async def export(request: web.Request) -> web.StreamResponse:
    return await export_response(request)


async def export_response(request: web.Request) -> web.Response:
    svc: AdminDeps = request.app[ADMIN_DEPS]
    fmt = request.query.get("format", "json")
    if fmt not in ("json", "csv"):
        raise RequestError(400, "bad_format", "format must be json or csv")
    labels = parse_labels(request.query.getall("label", [])) or POSITIVE
    since = parse_time(request.query.get("since"), "since")
    rows = await evidence.records(svc.store, [Label(x) for x in labels], since=since)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    disposition = f'attachment; filename="horde-scanner-evidence-{stamp}.{fmt}"'
    if fmt == "csv":
        return web.Response(
            text=evidence.to_csv(rows),
            content_type="text/csv",
            headers={"Content-Disposition": disposition, "Cache-Control": "no-store"},
        )
    return web.json_response(
        rows, headers={"Content-Disposition": disposition, "Cache-Control": "no-store"}
    )


def add_routes(app: web.Application) -> None:
    r = app.router
    r.add_get(f"{PREFIX}/verdicts", list_verdicts)
    r.add_get(f"{PREFIX}/verdicts/{{sha256}}", show_verdict)
    r.add_post(f"{PREFIX}/verdicts/{{sha256}}/allow", allow)
    r.add_post(f"{PREFIX}/verdicts/{{sha256}}/confirm", confirm)
    r.add_post(f"{PREFIX}/verdicts/{{sha256}}/rejudge", rejudge)
    r.add_get(f"{PREFIX}/queue", queue)
    r.add_get(f"{PREFIX}/stats", stats)
    r.add_get(f"{PREFIX}/export", export)
    r.add_get(f"{PREFIX}/verdicts/{{sha256}}/provenance", provenance)
    r.add_post(f"{PREFIX}/verdicts/{{sha256}}/provenance", refresh_provenance)
    r.add_post(f"{PREFIX}/verdicts/{{sha256}}/lemmy", lemmy_act)
    r.add_post(f"{PREFIX}/lemmy/actions/{{id}}/retry", lemmy_retry)
