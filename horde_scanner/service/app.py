"""The aiohttp application: routes and the lifecycle of the shared services."""

from __future__ import annotations

import hmac
from collections.abc import AsyncIterator

from aiohttp import web

from horde_scanner.backends.base import Backend
from horde_scanner.config import Settings
from horde_scanner.service import hashes, health, validate, workers
from horde_scanner.service.admin import (
    export_api,
    lemmy_api,
    lemmy_page,
    page,
    policy,
    preview_page,
    review_api,
    review_page,
    status_api,
)
from horde_scanner.service.admin.auth import ADMIN, AdminGate
from horde_scanner.service.context import EDGE, HEALTH, open_services
from horde_scanner.service.errors import Handler, RequestError, json_errors
from horde_scanner.service.guard import GUARD, Guard, guard
from horde_scanner.service.metrics import exposition


@web.middleware
async def count_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Errors by kind for /metrics (inside json_errors, which turns them into JSON)."""
    try:
        return await handler(request)
    except RequestError as exc:
        if EDGE in request.app:
            request.app[EDGE].metrics.error(exc.error)
        raise


async def metrics(request: web.Request) -> web.Response:
    svc = request.app[HEALTH]
    settings = svc.metrics_settings
    if not settings.enabled:
        raise RequestError(404, "metrics_disabled", "metrics are off (metrics.enabled)")
    if settings.token is not None:
        scheme, _, value = request.headers.get("Authorization", "").partition(" ")
        expected = settings.token.get_secret_value().encode()
        if scheme.lower() != "bearer" or not hmac.compare_digest(value.strip().encode(), expected):
            raise RequestError(401, "unauthorized", "send `Authorization: Bearer <metrics.token>`")
    return exposition(svc.metrics)


def build_app(settings: Settings, *, backend: Backend | None = None) -> web.Application:
    # Multipart framing adds a little on top of the file itself.
    app = web.Application(
        middlewares=[json_errors, count_errors, guard],
        client_max_size=settings.server.max_body_bytes + 65536,
    )

    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        async with open_services(settings, backend=backend) as services:
            services.install(app)
            yield

    app.cleanup_ctx.append(lifecycle)
    app[ADMIN] = AdminGate(settings.admin)
    app[GUARD] = Guard(settings.server)
    app.router.add_post("/api/v1/scan/{client_id}", validate.scan)
    app.router.add_get("/healthz", health.healthz)
    app.router.add_get("/readyz", health.readyz)
    hashes.setup(app)
    workers.add_routes(app)
    app.router.add_get("/metrics", metrics)
    # The admin API and the review page: one module per area, each with its own routes.
    for area in (review_api, status_api, export_api, lemmy_api):
        area.add_routes(app)
    for part in (review_page, page, lemmy_page, preview_page):
        part.add_routes(app)
    policy.add_routes(app)
    return app
