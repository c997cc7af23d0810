"""/admin: the review page's frame. Server-rendered HTML, a few lines of vanilla JS, no build
step. This module holds what every part of the page shares (the layout, sessions, CSRF), the
sign-in, the export link and the static files; the queue and items are review_page.py, the
previews preview_page.py, the Lemmy panel lemmy_page.py.

Safety for the person reviewing: everything the page shows is metadata; the one image it can
show is a small, blurred, greyscale preview of a quarantined item, and only on the conditions
preview_page.py lists.
"""

from __future__ import annotations

import html
from datetime import UTC, datetime
from importlib import resources
from typing import Any
from urllib.parse import quote

from aiohttp import web

from horde_scanner.service.admin import export_api
from horde_scanner.service.admin.auth import (
    ADMIN,
    AdminGate,
    Session,
    actor_name,
    client_key,
    same_origin,
)
from horde_scanner.service.context import SIGN_IN
from horde_scanner.service.errors import RequestError

_STATIC = {"admin.js": "application/javascript", "admin.css": "text/css"}
_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
        "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    # same-origin, not no-referrer: with no-referrer Chromium sends `Origin: null` on our own
    # form posts, and the Origin check could not tell them from a sandboxed attacker page.
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}


def _e(value: Any) -> str:
    return "" if value is None else html.escape(str(value), quote=True)


def _when(stamp: str | None) -> str:
    """The verdict view's ISO time, written the way people read it."""
    if not stamp:
        return "-"
    return datetime.fromisoformat(stamp).astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _refused(sha: str, detail: str, session: Session, status: int) -> web.Response:
    """A decision or an action on an item that could not be done: why, and the way back."""
    return _page(
        "Could not do that",
        f'<p class="error">{_e(detail)}</p><p><a href="/admin/item/{sha}">Back</a></p>',
        session,
        status=status,
    )


def _page(title: str, body: str, session: Session | None = None, status: int = 200) -> web.Response:
    bar = ""
    if session is not None:
        bar = (
            f'<span class="muted">signed in as {_e(session.actor)}</span>'
            '<a href="/admin">Queue</a>'
            '<a href="/admin/policy">Policy dry run</a>'
            '<a href="/admin/export?format=csv">Export CSV</a>'
            '<a href="/admin/export?format=json">Export JSON</a>'
            f'<form method="post" action="/admin/logout">{_csrf(session)}'
            '<button type="submit">Log out</button></form>'
        )
    doc = (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{_e(title)} - horde-scanner</title>"
        '<link rel="stylesheet" href="/admin/static/admin.css">'
        '<script src="/admin/static/admin.js" defer></script></head><body>'
        f'<header class="top"><h1>horde-scanner review</h1>{bar}</header>'
        f"<main>{body}</main></body></html>"
    )
    return web.Response(text=doc, content_type="text/html", status=status, headers=_HEADERS)


def _see_other(location: str) -> web.Response:
    return web.Response(status=303, headers={"Location": location, **_HEADERS})


def _csrf(session: Session) -> str:
    return f'<input type="hidden" name="csrf" value="{_e(session.csrf)}">'


def _gate(request: web.Request) -> AdminGate:
    gate = request.app[ADMIN]
    gate.require_enabled()
    return gate


def _login_redirect(request: web.Request) -> web.HTTPSeeOther:
    return web.HTTPSeeOther(f"/admin/login?next={quote(request.path_qs, safe='')}")


def _session_or_login(request: web.Request) -> Session:
    session = _gate(request).session_for(request)
    if session is None:
        raise _login_redirect(request)
    return session


async def _checked_post(request: web.Request) -> tuple[Session, Any]:
    """A POST from a signed-in admin with this session's CSRF token, else 403."""
    gate = _gate(request)
    session = gate.session_for(request)
    if session is None:
        raise RequestError(403, "not_signed_in", "sign in at /admin/login first")
    if not same_origin(request):
        raise RequestError(403, "bad_origin", "cross-origin form posts are refused")
    form = await request.post()
    if not gate.csrf_ok(session, form.get("csrf")):  # type: ignore[arg-type]
        raise RequestError(403, "bad_csrf", "missing or wrong CSRF token; reload the page")
    return session, form


# -- login ---------------------------------------------------------------------------------


def _safe_next(value: str | None) -> str:
    """Only our own pages, and nothing that could end a header (CR, LF, other controls)."""
    if (
        value
        and value.startswith("/admin")
        and not value.startswith("//")
        and not any(ord(c) < 0x20 or ord(c) == 0x7F or c == "\\" for c in value)
    ):
        return value
    return "/admin"


def _login_body(next_url: str, error: str = "") -> str:
    problem = f'<p class="error">{_e(error)}</p>' if error else ""
    return (
        f"<h2>Sign in</h2>{problem}"
        '<form class="login" method="post" action="/admin/login">'
        f'<input type="hidden" name="next" value="{_e(next_url)}">'
        '<label>Admin token <input type="password" name="token" autocomplete="current-password"'
        " required></label>"
        '<label>Your name (for the audit log) <input type="text" name="name" maxlength="48">'
        "</label>"
        '<button type="submit">Sign in</button></form>'
    )


def locked_out() -> web.Response:
    """The sign-in page for a client that failed too often (answered before its form is read,
    so it goes back to the queue page once signed in)."""
    body = _login_body("/admin", "Too many failed attempts; wait a few minutes.")
    return _page("Sign in", body, status=429)


async def login_form(request: web.Request) -> web.Response:
    gate = _gate(request)
    next_url = _safe_next(request.query.get("next"))
    if gate.session_for(request) is not None:
        raise web.HTTPSeeOther(next_url)
    return _page("Sign in", _login_body(next_url))


async def login(request: web.Request) -> web.Response:
    gate = _gate(request)
    svc = request.app[SIGN_IN]
    # Before the token is looked at: a cross-site form must not spend this client's allowance
    # of failures (and so lock the admin out).
    if not same_origin(request):
        raise RequestError(403, "bad_origin", "cross-origin form posts are refused")
    address = svc.auth.client_address(request) or "unknown"
    client = client_key(address)
    form = await request.post()
    next_url = _safe_next(str(form.get("next") or ""))
    if not gate.login_allowed(client):
        return _page(
            "Sign in",
            _login_body(next_url, "Too many failed attempts; wait a few minutes."),
            status=429,
        )
    if not gate.token_matches(str(form.get("token") or "")):
        gate.login_failed(client)
        svc.metrics.error("admin_login_failed")
        return _page("Sign in", _login_body(next_url, "Wrong admin token."), status=401)
    session = gate.open_session(actor_name("page", str(form.get("name") or "")))
    await svc.store.audit("admin_login", source=session.actor, detail={"address": address})
    response = _see_other(next_url)
    gate.set_cookie(request, response, session)
    return response


async def logout(request: web.Request) -> web.Response:
    session, _ = await _checked_post(request)
    gate = request.app[ADMIN]
    gate.close_session(session)
    response = _see_other("/admin/login")
    gate.clear_cookie(response)
    return response


async def export(request: web.Request) -> web.Response:
    _session_or_login(request)
    return await export_api.export_response(request)


async def static(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    if name not in _STATIC:
        raise RequestError(404, "not_found", "no such file")
    text = resources.files("horde_scanner.service").joinpath("static", name).read_text()
    return web.Response(
        text=text,
        content_type=_STATIC[name],
        headers={"Cache-Control": "max-age=300", "X-Content-Type-Options": "nosniff"},
    )


async def root_slash(request: web.Request) -> web.Response:
    raise web.HTTPSeeOther("/admin")


def add_routes(app: web.Application) -> None:
    r = app.router
    r.add_get("/admin/", root_slash)
    r.add_get("/admin/login", login_form)
    r.add_post("/admin/login", login)
    r.add_post("/admin/logout", logout)
    r.add_get("/admin/export", export)
    r.add_get("/admin/static/{name}", static)
