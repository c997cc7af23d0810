"""GET /api/v1/hashes: this instance's hash list, for other instances to subscribe to; and the
subscriptions to theirs, which run while the service does.

Publishing is off by default. When on, the list needs `Authorization: Bearer <publish_token>`
unless `publish_public` is set. The body is the JSON exchange format (signals/hash_list.py) of
this instance's own entries only, each saying who confirmed it and when: the deny list (admin
confirmed positives and the admin's own deny entries) and imported entries; never what it
subscribed to, so lists do not echo around a ring of instances, and never an unreviewed
machine verdict unless `publish_unreviewed` is set. It is rendered once per change of the
store's hash generation (signals/hash_publish.py) and carries a strong ETag, so `If-None-Match`
gets a 304 with no body when nothing changed. The subscriptions are opened by the runtime
(horde_scanner/runtime/) and run while the service does.
"""

from __future__ import annotations

import secrets

from aiohttp import web

from horde_scanner.service.context import HASHES
from horde_scanner.service.errors import RequestError


def _etag_matches(header: str | None, etag: str) -> bool:
    if not header:
        return False
    if header.strip() == "*":
        return True
    candidates = [tag.strip().removeprefix("W/") for tag in header.split(",")]
    return etag in candidates


def _authorise(request: web.Request, what: str) -> None:
    settings = request.app[HASHES].settings
    if not settings.publish:
        raise RequestError(
            404, "not_published", f"this instance does not publish its {what} (hashes.publish)"
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


async def get_hashes(request: web.Request) -> web.StreamResponse:
    _authorise(request, "hash list")
    body, etag = await request.app[HASHES].publisher.current()
    return _list_response(request, body, etag)


async def get_embeddings(request: web.Request) -> web.StreamResponse:
    """This instance's embedding list (signals/embedding_exchange.py), published with the
    hash list, under the same token."""
    _authorise(request, "embedding list")
    svc = request.app[HASHES]
    if svc.embedding_publisher is None or svc.embeddings is None or not svc.embeddings.enabled:
        raise RequestError(
            404,
            "not_published",
            "this instance computes no embeddings (embeddings.model_path has no model)",
        )
    body, etag = await svc.embedding_publisher.current()
    return _list_response(request, body, etag)


def _list_response(request: web.Request, body: bytes, etag: str) -> web.StreamResponse:
    headers = {"ETag": etag, "Cache-Control": "no-cache"}
    if _etag_matches(request.headers.get("If-None-Match"), etag):
        return web.Response(status=304, headers=headers)
    response = web.Response(body=body, content_type="application/json", headers=headers)
    if "gzip" in request.headers.get("Accept-Encoding", ""):
        response.enable_compression()
    return response


def setup(app: web.Application) -> None:
    app.router.add_get("/api/v1/hashes", get_hashes)
    app.router.add_get("/api/v1/embeddings", get_embeddings)
