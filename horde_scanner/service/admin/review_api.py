"""/api/v1/admin/: the review queue and the decisions on it (bearer token; JSON in and out,
errors as {"error", "detail"}).

GET  verdicts?label=&source=&backend=&since=&until=&undecided=&limit=&offset=
GET  verdicts/{sha256}                 the verdict, its signals, lists, quarantine, audit trail
POST verdicts/{sha256}/allow           {"note": "...", "by": "alice"}
POST verdicts/{sha256}/confirm         {"note": "...", "by": "alice"}
POST verdicts/{sha256}/rejudge         {"mode": "policy" | "backend", "wait_s": 60, "by": ...}
GET  queue                             undecided positives, late positives, unscanned items
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from horde_scanner.moderation.actions import ActionError
from horde_scanner.review import view
from horde_scanner.review.decisions import POSITIVE, UNSCANNED, Review, VerdictFilter
from horde_scanner.service.admin.auth import admin_only
from horde_scanner.service.admin.params import (
    MAX_LIMIT,
    PREFIX,
    actor,
    filter_from_query,
    int_param,
    json_body,
    note,
    sha_param,
)
from horde_scanner.service.context import REVIEW, ReviewDeps
from horde_scanner.service.errors import RequestError


@admin_only
async def list_verdicts(request: web.Request) -> web.Response:
    svc = request.app[REVIEW]
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
    svc = request.app[REVIEW]
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
    svc = request.app[REVIEW]
    sha = sha_param(request)
    body = await json_body(request)
    return web.json_response(
        await decide(svc.review, sha, by=actor(request, body), note=note(body))
    )


@admin_only
async def allow(request: web.Request) -> web.Response:
    return await _decide(request, Review.allow)


@admin_only
async def confirm(request: web.Request) -> web.Response:
    response = await _decide(request, Review.confirm)
    await after_confirm(request.app[REVIEW], sha_param(request))
    return response


async def after_confirm(svc: ReviewDeps, sha256: str) -> None:
    """An admin vouched for the positive: lemmy.auto_actions may now run on it (when its
    provenance is resolved; else when it is)."""
    if svc.moderator is not None:
        try:
            await svc.moderator.auto(sha256)
        except ActionError:
            pass  # not resolved yet: the resolver runs them when it is


@admin_only
async def rejudge(request: web.Request) -> web.Response:
    svc = request.app[REVIEW]
    sha = sha_param(request)
    body = await json_body(request)
    mode = body.get("mode", "policy")
    wait = body.get("wait_s", 60)
    if not isinstance(wait, int | float) or not 0 <= wait <= 600:
        raise RequestError(400, "bad_wait_s", "wait_s must be a number of seconds from 0 to 600")
    result = await svc.review.rejudge(
        sha, by=actor(request, body), mode=str(mode), wait_s=float(wait)
    )
    return web.json_response(result, status=202 if result.get("state") == "pending" else 200)


@admin_only
async def queue(request: web.Request) -> web.Response:
    svc = request.app[REVIEW]
    limit = int_param(request.query.get("limit"), "limit", 100, 1, MAX_LIMIT)
    return web.json_response(await queue_data(svc, limit))


async def queue_data(svc: ReviewDeps, limit: int) -> dict[str, Any]:
    review = svc.review
    positives = await review.search(VerdictFilter(labels=POSITIVE, undecided=True, limit=limit))
    unscanned = await review.search(VerdictFilter(labels=UNSCANNED, undecided=True, limit=limit))
    late = await review.late_positives(limit)
    shas = [v.sha256 for v in positives + unscanned] + [p["sha256"] for p in late]
    held = await review.held_among(shas)
    return {
        "positives": [
            {**view.verdict_fields(v), "in_quarantine": v.sha256 in held} for v in positives
        ],
        "late_positives": [{**p, "in_quarantine": p["sha256"] in held} for p in late],
        "unscanned": [
            {**view.verdict_fields(v), "in_quarantine": v.sha256 in held} for v in unscanned
        ],
    }


def add_routes(app: web.Application) -> None:
    r = app.router
    r.add_get(f"{PREFIX}/verdicts", list_verdicts)
    r.add_get(f"{PREFIX}/verdicts/{{sha256}}", show_verdict)
    r.add_post(f"{PREFIX}/verdicts/{{sha256}}/allow", allow)
    r.add_post(f"{PREFIX}/verdicts/{{sha256}}/confirm", confirm)
    r.add_post(f"{PREFIX}/verdicts/{{sha256}}/rejudge", rejudge)
    r.add_get(f"{PREFIX}/queue", queue)
