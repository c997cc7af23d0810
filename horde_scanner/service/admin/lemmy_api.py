"""/api/v1/admin/: who uploaded an image, where Lemmy uses it, and the admin's actions through
Lemmy's API (bearer token; JSON in and out, errors as {"error", "detail"}).

GET  verdicts/{sha256}/provenance      who uploaded it, where Lemmy uses it (or why not known)
POST verdicts/{sha256}/provenance      ask Lemmy's database again now
POST verdicts/{sha256}/lemmy           {"actions": ["ban", "purge", ...], "dry_run": true, "by"}
POST lemmy/actions/{id}/retry          send a failed Lemmy call again
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from horde_scanner.moderation.actions import parse_actions
from horde_scanner.review import view
from horde_scanner.service.admin.auth import admin_only
from horde_scanner.service.admin.params import PREFIX, actor, json_body, sha_param
from horde_scanner.service.context import LEMMY, LemmyDeps
from horde_scanner.service.errors import RequestError


@admin_only
async def provenance(request: web.Request) -> web.Response:
    svc = request.app[LEMMY]
    sha = sha_param(request)
    return web.json_response(await provenance_data(svc, sha))


async def provenance_data(svc: LemmyDeps, sha256: str) -> dict[str, Any]:
    row = view.provenance_entry(await svc.store.provenance(sha256))
    return {
        "sha256": sha256,
        "lemmy": svc.provenance.describe() if svc.provenance is not None else {"state": "off"},
        "provenance": row,
        "lemmy_actions": [view.action_entry(a) for a in await svc.store.lemmy_actions(sha256)],
    }


@admin_only
async def refresh_provenance(request: web.Request) -> web.Response:
    svc = request.app[LEMMY]
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
    svc = request.app[LEMMY]
    sha = sha_param(request)
    body = await json_body(request)
    raw = body.get("actions")
    if not isinstance(raw, list) or not all(isinstance(a, str) for a in raw):
        raise RequestError(400, "bad_actions", 'actions must be a list, e.g. ["ban", "purge"]')
    dry_run = body.get("dry_run", True)
    if not isinstance(dry_run, bool):
        raise RequestError(400, "bad_dry_run", "dry_run must be true or false")
    return await act_response(svc, sha, raw, by=actor(request, body), dry_run=dry_run)


async def act_response(
    svc: LemmyDeps, sha256: str, actions: list[str], *, by: str, dry_run: bool
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
    svc = request.app[LEMMY]
    body = await json_body(request)
    try:
        action_id = int(request.match_info["id"])
    except ValueError:
        raise RequestError(400, "bad_id", "expected a numeric action id") from None
    if svc.moderator is None or not svc.moderator.enabled:
        raise RequestError(409, "lemmy_not_configured", "Lemmy actions need lemmy.url")
    result = await svc.moderator.retry(action_id, by=actor(request, body))
    if result["state"] != "done":
        return web.json_response(
            {"error": "lemmy_refused", "detail": f"Lemmy answered {result['status']}", **result},
            status=502,
        )
    return web.json_response(result)


def add_routes(app: web.Application) -> None:
    r = app.router
    r.add_get(f"{PREFIX}/verdicts/{{sha256}}/provenance", provenance)
    r.add_post(f"{PREFIX}/verdicts/{{sha256}}/provenance", refresh_provenance)
    r.add_post(f"{PREFIX}/verdicts/{{sha256}}/lemmy", lemmy_act)
    r.add_post(f"{PREFIX}/lemmy/actions/{{id}}/retry", lemmy_retry)
