"""The aiohttp application: routes and the lifecycle of the shared services."""

from __future__ import annotations

from collections.abc import AsyncIterator

from aiohttp import web

from horde_scanner.backends.base import Backend
from horde_scanner.config import Settings
from horde_scanner.service import hashes, health, validate, workers
from horde_scanner.service.context import SERVICES, open_services
from horde_scanner.service.errors import json_errors


def build_app(settings: Settings, *, backend: Backend | None = None) -> web.Application:
    # Multipart framing adds a little on top of the file itself.
    app = web.Application(
        middlewares=[json_errors], client_max_size=settings.server.max_body_bytes + 65536
    )

    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        async with open_services(settings, backend=backend) as services:
            app[SERVICES] = services
            yield

    app.cleanup_ctx.append(lifecycle)
    app.router.add_post("/api/v1/scan/{client_id}", validate.scan)
    app.router.add_get("/healthz", health.healthz)
    app.router.add_get("/readyz", health.readyz)
    hashes.setup(app)
    workers.add_routes(app)
    return app
