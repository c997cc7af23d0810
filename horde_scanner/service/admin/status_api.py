"""/api/v1/admin/stats: the admin's overview (bearer token): what the store counts, the
backend's state and spend, this process's answers since it started."""

from __future__ import annotations

import time
from typing import Any

from aiohttp import web

from horde_scanner.service.admin.auth import admin_only
from horde_scanner.service.admin.params import PREFIX
from horde_scanner.service.context import STATUS, StatusDeps


@admin_only
async def stats(request: web.Request) -> web.Response:
    return web.json_response(await stats_data(request.app[STATUS]))


async def stats_data(svc: StatusDeps) -> dict[str, Any]:
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


def add_routes(app: web.Application) -> None:
    app.router.add_get(f"{PREFIX}/stats", stats)
