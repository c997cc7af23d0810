"""/admin's blurred previews. Safety for the person reviewing: no image is ever shown unless
previews are enabled in the configuration (`admin.previews`) AND turned on in this session AND
the item is held in quarantine AND the admin clicks "reveal" on that one item; even then the
server sends only a small, blurred, greyscale JPEG made from the held copy, decoded within every
limit of [media] and the process's decode memory budget.
"""

from __future__ import annotations

import asyncio
import io

from aiohttp import web
from PIL import Image, ImageFilter

from horde_scanner.media.decode import (
    DecodeLimits,
    PreparedImage,
    UnreadableMedia,
    prepare_within,
)
from horde_scanner.service.admin.page import _HEADERS, _checked_post, _gate
from horde_scanner.service.admin.params import sha_param
from horde_scanner.service.context import PREVIEW
from horde_scanner.service.errors import RequestError


async def previews(request: web.Request) -> web.Response:
    session, form = await _checked_post(request)
    svc = request.app[PREVIEW]
    session.previews = svc.admin.previews and form.get("on") == "1"
    await svc.store.audit("admin_previews", source=session.actor, detail={"on": session.previews})
    raise web.HTTPSeeOther("/admin")


async def preview(request: web.Request) -> web.Response:
    gate = _gate(request)
    session = gate.session_for(request)
    if session is None:
        raise RequestError(403, "not_signed_in", "sign in at /admin/login first")
    svc = request.app[PREVIEW]
    if not (svc.admin.previews and session.previews):
        raise RequestError(403, "previews_off", "previews are off for this session")
    sha = sha_param(request)
    data = await svc.review.held_bytes(sha)
    if data is None:
        raise RequestError(404, "not_in_quarantine", "previews exist only for quarantined items")
    settings = svc.admin
    # Every decode limit of [media] holds here too, and the memory budget: a held file is
    # untrusted bytes.
    limits = svc.media.limits(backend_max_side=settings.preview_max_side)
    try:
        prepared = await prepare_within(data, limits, svc.decode_memory)
        jpeg = await asyncio.to_thread(
            render_preview, prepared, limits, settings.preview_blur_radius
        )
    except UnreadableMedia as exc:
        raise RequestError(422, "unreadable", exc.reason) from None
    await svc.store.audit("admin_preview", sha256=sha, source=session.actor)
    return web.Response(body=jpeg, content_type="image/jpeg", headers=_HEADERS)


def render_preview(prepared: PreparedImage, limits: DecodeLimits, blur_radius: float) -> bytes:
    """Small, greyscale, blurred JPEG of the first frame. Blocking: run in a thread."""
    max_side = limits.backend_max_side
    image: Image.Image = prepared.image.convert("L")
    image.thumbnail((max_side, max_side))
    image = image.filter(ImageFilter.GaussianBlur(blur_radius))
    out = io.BytesIO()
    image.save(out, format="JPEG", quality=70)
    return out.getvalue()


def add_routes(app: web.Application) -> None:
    r = app.router
    r.add_post("/admin/previews", previews)
    r.add_get("/admin/preview/{sha256}", preview)
