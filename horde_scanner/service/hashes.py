"""GET /api/v1/hashes: this instance's hash list, for other instances to subscribe to; and the
subscriptions to theirs, which run while the service does.

Publishing is off by default. When on, the list needs `Authorization: Bearer <publish_token>`
unless `publish_public` is set. The body is the JSON exchange format (hashlists/format.py) of
this instance's own entries only, each saying who confirmed it and when: the deny list (admin
confirmed positives and the admin's own deny entries) and imported entries; never what it
subscribed to, so lists do not echo around a ring of instances, and never an unreviewed
machine verdict unless `publish_unreviewed` is set. It is rendered once per
change of the store's hash generation and carries a strong ETag, so `If-None-Match` gets a
304 with no body when nothing changed.
"""

from __future__ import annotations

import asyncio
import hashlib
import secrets
from collections.abc import AsyncIterator

from aiohttp import web

from horde_scanner.config import HashesSettings
from horde_scanner.hashlists.format import HashEntry, dump_json
from horde_scanner.hashlists.store import HashStore
from horde_scanner.hashlists.subscribe import Subscriber
from horde_scanner.service.context import SERVICES
from horde_scanner.service.errors import RequestError


class Publisher:
    def __init__(self, hashes: HashStore, settings: HashesSettings) -> None:
        self._hashes = hashes
        self._settings = settings
        self._lock = asyncio.Lock()
        self._generation: int | None = None
        self._body = b""
        self._etag = ""

    async def current(self) -> tuple[bytes, str]:
        """(body, ETag) of the list as it is now."""
        async with self._lock:
            generation = await self._hashes.generation()
            if generation != self._generation:
                entries = await self._hashes.published(
                    self._settings.publish_source,
                    self._settings.pdq_min_quality,
                    self._settings.pdq_max_distance,
                    unreviewed=self._settings.publish_unreviewed,
                )
                loop = asyncio.get_running_loop()
                self._body = await loop.run_in_executor(None, _render, entries)
                self._etag = '"' + hashlib.sha256(self._body).hexdigest()[:40] + '"'
                self._generation = generation
            return self._body, self._etag


def _render(entries: list[HashEntry]) -> bytes:
    return dump_json(entries).encode()


def _etag_matches(header: str | None, etag: str) -> bool:
    if not header:
        return False
    if header.strip() == "*":
        return True
    candidates = [tag.strip().removeprefix("W/") for tag in header.split(",")]
    return etag in candidates


PUBLISHER: web.AppKey[Publisher] = web.AppKey("hash_publisher", Publisher)
SUBSCRIBER: web.AppKey[Subscriber] = web.AppKey("hash_subscriber", Subscriber)


async def get_hashes(request: web.Request) -> web.StreamResponse:
    settings = request.app[SERVICES].settings.hashes
    if not settings.publish:
        raise RequestError(
            404, "not_published", "this instance does not publish its hash list (hashes.publish)"
        )
    if not settings.publish_public:
        header = request.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        expected = (settings.publish_token or "").encode()
        given = token.strip().encode()
        if scheme.lower() != "bearer" or not secrets.compare_digest(given, expected):
            raise RequestError(
                401, "unauthorized", "send Authorization: Bearer <the publisher's token>"
            )
    body, etag = await request.app[PUBLISHER].current()
    headers = {"ETag": etag, "Cache-Control": "no-cache"}
    if _etag_matches(request.headers.get("If-None-Match"), etag):
        return web.Response(status=304, headers=headers)
    response = web.Response(body=body, content_type="application/json", headers=headers)
    if "gzip" in request.headers.get("Accept-Encoding", ""):
        response.enable_compression()
    return response


def setup(app: web.Application) -> None:
    """Add the route and the subscriptions' lifecycle (after the shared services')."""

    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        svc = app[SERVICES]
        app[PUBLISHER] = Publisher(svc.hashes.hashes, svc.settings.hashes)
        subscriber = Subscriber(svc.hashes, svc.settings.hashes, svc.session)
        app[SUBSCRIBER] = subscriber
        await subscriber.start()
        try:
            yield
        finally:
            await subscriber.stop()

    app.cleanup_ctx.append(lifecycle)
    app.router.add_get("/api/v1/hashes", get_hashes)
