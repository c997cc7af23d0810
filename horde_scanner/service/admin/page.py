"""/admin: the review page. Server-rendered HTML, a few lines of vanilla JS, no build step.

Safety for the person reviewing: no image is ever shown unless previews are enabled in the
configuration (`admin.previews`) AND turned on in this session AND the item is held in
quarantine AND the admin clicks "reveal" on that one item; even then the server sends only a
small, blurred, greyscale JPEG made from the held copy. Everything else is metadata.
"""

from __future__ import annotations

import asyncio
import html
import io
import json
from datetime import UTC, datetime
from importlib import resources
from typing import Any
from urllib.parse import quote

from aiohttp import web
from PIL import Image, ImageFilter

from horde_scanner.integrations.enforce import NO_PICTRS_NOTE
from horde_scanner.media.decode import (
    DecodeLimits,
    PreparedImage,
    UnreadableMedia,
    prepare_within,
)
from horde_scanner.moderation.actions import ActionError
from horde_scanner.review import view
from horde_scanner.review.decisions import ReviewError
from horde_scanner.review.evidence import DECISION_EVENTS
from horde_scanner.service.admin import api as admin_api
from horde_scanner.service.admin import lemmy_page
from horde_scanner.service.admin.auth import (
    ADMIN,
    AdminGate,
    Session,
    actor_name,
    client_key,
    same_origin,
)
from horde_scanner.service.context import ADMIN_DEPS, AdminDeps
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
    svc: AdminDeps = request.app[ADMIN_DEPS]
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


# -- queue and items -------------------------------------------------------------------------


def _signals_html(signals: dict[str, Any] | None) -> str:
    if not signals:
        return "-"
    parts = []
    if signals.get("nsfw") is not None:
        parts.append(f"nsfw flag: <b>{_e(signals['nsfw'])}</b>")
    if signals.get("caption"):
        parts.append(f"caption: {_e(signals['caption'])}")
    for name in ("tags", "scores"):
        values = signals.get(name) or {}
        top = sorted(values.items(), key=lambda kv: -kv[1])[:8]
        if top:
            parts.append(f"{name}: " + ", ".join(f"{_e(k)} {v:.2f}" for k, v in top))
    return "<br>".join(parts) or "-"


def _actions(session: Session, sha: str) -> str:
    return (
        '<div class="actions">'
        f'<form method="post" action="/admin/item/{sha}/allow">{_csrf(session)}'
        '<input type="text" name="note" placeholder="note for the audit log" maxlength="500">'
        '<button class="allow" type="submit">Allow</button></form>'
        f'<form method="post" action="/admin/item/{sha}/confirm" '
        'data-ask="Deny-list this image? Its admin-quarantine copy is deleted; sweep copies '
        'stay as evidence.">'
        f"{_csrf(session)}"
        '<input type="text" name="note" placeholder="note for the audit log" maxlength="500">'
        '<button class="confirm" type="submit">Confirm</button></form>'
        "</div>"
    )


def _preview(svc: AdminDeps, session: Session, sha: str, in_quarantine: bool) -> str:
    if not (svc.admin.previews and session.previews):
        return ""
    if not in_quarantine:
        return '<div class="preview muted">no preview: not in quarantine</div>'
    return (
        f'<div class="preview"><a class="reveal button" href="/admin/preview/{sha}">'
        "Reveal blurred preview</a></div>"
    )


def _card(svc: AdminDeps, session: Session, item: dict[str, Any], extra: str = "") -> str:
    sha = item["sha256"]
    label = item.get("label") or "?"
    reasons = "".join(f"<li>{_e(r)}</li>" for r in item.get("reasons") or []) or "<li>-</li>"
    rows = [
        ("judged", _e(_when(item.get("judged_at")))),
        ("first seen", _e(_when(item.get("first_seen")))),
        ("found", _e(item.get("source") or "-")),
        ("backend", _e(item.get("backend") or "-")),
        ("media", _e(f"{item.get('media_type') or '?'}, {item.get('size') or '?'} bytes")),
        ("reasons", f"<ul>{reasons}</ul>"),
        ("scores", _signals_html(item.get("signals"))),
        ("quarantine", "held" if item.get("in_quarantine") else "not held"),
    ]
    if item.get("who"):
        rows.append(("who, where", _e(item["who"])))
    dl = "".join(f"<dt>{k}</dt><dd>{v}</dd>" for k, v in rows)
    return (
        f'<article class="item" id="item-{sha}" data-sha="{sha}"><div>'
        f'<span class="label label-{_e(label)}">{_e(label)}</span> '
        f'<a href="/admin/item/{sha}"><code>{sha}</code></a>{extra}<dl>{dl}</dl>'
        f"{_actions(session, sha)}</div>"
        f"{_preview(svc, session, sha, bool(item.get('in_quarantine')))}</article>"
    )


def _previews_control(svc: AdminDeps, session: Session) -> str:
    if not svc.admin.previews:
        return '<p class="muted">Previews are disabled in the configuration (admin.previews).</p>'
    state, flip, label = (
        ("on", "0", "Turn previews off") if session.previews else ("off", "1", "Turn previews on")
    )
    return (
        f'<form method="post" action="/admin/previews" class="previews">{_csrf(session)}'
        f'<input type="hidden" name="on" value="{flip}">'
        f'<span class="muted">Previews are {state}: only quarantined items, blurred, greyscale, '
        "small, one at a time on click.</span> "
        f'<button type="submit" id="previews-toggle">{label}</button></form>'
    )


async def queue_page(request: web.Request) -> web.Response:
    session = _session_or_login(request)
    svc: AdminDeps = request.app[ADMIN_DEPS]
    data = await admin_api.queue_data(svc, 100)
    parts = [_previews_control(svc, session)]
    if not svc.enforcer.purges:
        parts.append(f'<p class="muted" id="no-pictrs-api">Note: {_e(NO_PICTRS_NOTE)}.</p>')
    sections = (
        ("positives", "Positives waiting for a decision", data["positives"]),
        ("unscanned", "Unscanned (unreadable or not judged)", data["unscanned"]),
    )
    shas = [i["sha256"] for i in data["positives"]] + [p["sha256"] for p in data["late_positives"]]
    who = {
        sha: lemmy_page.summary(view.provenance_entry(row))
        for sha, row in (await svc.store.provenance_of(shas)).items()
    }
    for item in data["positives"]:
        item["who"] = who.get(item["sha256"])
    late_cards = []
    for late in data["late_positives"]:
        stored = await svc.store.get_verdict(late["sha256"])
        item = (
            view.verdict_fields(stored)
            if stored
            else {"sha256": late["sha256"], "label": late["label"]}
        )
        item["in_quarantine"] = late["in_quarantine"]
        item["who"] = who.get(late["sha256"])
        note = (
            f' <span class="muted">late positive, found {_e(_when(late["found_at"]))}, '
            f"{_e(late['enforcement'])}</span>"
        )
        late_cards.append(_card(svc, session, item, note))
    for key, title, items in sections[:1]:
        parts.append(_section(key, title, [_card(svc, session, i) for i in items]))
    parts.append(_section("late", "Late positives (accepted before their verdict)", late_cards))
    for key, title, items in sections[1:]:
        parts.append(_section(key, title, [_card(svc, session, i) for i in items]))
    return _page("Queue", "".join(parts), session)


def _section(key: str, title: str, cards: list[str]) -> str:
    body = "".join(cards) or '<p class="muted">Nothing here.</p>'
    return f'<section id="{key}"><h2>{_e(title)} ({len(cards)})</h2>{body}</section>'


async def item_page(request: web.Request) -> web.Response:
    session = _session_or_login(request)
    svc: AdminDeps = request.app[ADMIN_DEPS]
    sha = admin_api.sha_param(request)
    record = await svc.review.detail(sha)
    if record is None:
        return _page(
            "Not found", f"<p>Nothing is known about <code>{sha}</code>.</p>", session, status=404
        )
    decisions = [a for a in record["audit"] if a["event"] in DECISION_EVENTS]
    banner = ""
    if decisions:
        last = decisions[-1]
        banner = (
            f'<p class="decision" id="decision">Decision: <b>{_e(last["event"])}</b> by '
            f"<b>{_e(last['by'])}</b> at {_e(_when(last['ts']))} (audit #{last['id']})"
            + (f": {_e(last['detail'].get('note'))}" if last["detail"].get("note") else "")
            + "</p>"
        )
    listed = (
        f'<p class="notice">On the <b>{_e(record["list"])}</b> list.</p>' if record["list"] else ""
    )
    card = _card(svc, session, record) if "label" in record else ""
    rejudge = (
        f'<form method="post" action="/admin/item/{sha}/rejudge">{_csrf(session)}'
        '<select name="mode"><option value="policy">re-judge with the current policy</option>'
        '<option value="backend">re-judge with a fresh backend call (quarantined copy)</option>'
        '</select> <button type="submit">Re-judge</button></form>'
    )
    rows = "".join(
        f"<tr><td>{a['id']}</td><td>{_e(_when(a['ts']))}</td><td>{_e(a['event'])}</td>"
        f"<td>{_e(a['label'])}</td><td>{_e(a['action'])}</td><td>{_e(a['by'])}</td>"
        f"<td><code>{_e(_compact(a['detail']))}</code></td></tr>"
        for a in record["audit"]
    )
    quarantine = (
        "".join(
            f"<li>{_e(q['holder'])} quarantine, {_e(q['origin'])}:{_e(q['identifier'])}"
            f" - {_e(q['state'])}</li>"
            for q in record["quarantine"]
        )
        or "<li>never quarantined</li>"
    )
    lemmy = lemmy_page.provenance_html(
        svc, session, sha, record["provenance"]
    ) + lemmy_page.actions_html(svc, session, sha, record["provenance"], record["lemmy_actions"])
    body = (
        f"{banner}{listed}{card}{rejudge}{lemmy}<h2>Quarantine</h2><ul>{quarantine}</ul>"
        '<h2>Audit trail</h2><table class="audit"><thead><tr><th>#</th><th>when</th>'
        "<th>event</th><th>label</th><th>action</th><th>by</th><th>detail</th></tr></thead>"
        f"<tbody>{rows}</tbody></table>"
    )
    return _page(f"Item {sha[:12]}", body, session)


def _compact(detail: dict[str, Any]) -> str:
    text = json.dumps(detail, separators=(",", ":"), ensure_ascii=False)
    return text if len(text) <= 400 else text[:400] + "..."


async def decide(request: web.Request) -> web.Response:
    session, form = await _checked_post(request)
    svc: AdminDeps = request.app[ADMIN_DEPS]
    sha = admin_api.sha_param(request)
    action = request.match_info["action"]
    note = str(form.get("note") or "")[:500]
    if "\x00" in note:  # no store keeps one (PostgreSQL's text cannot hold it)
        raise RequestError(400, "bad_note", "a note must not hold a NUL character")
    try:
        if action == "allow":
            await svc.review.allow(sha, by=session.actor, note=note)
        elif action == "confirm":
            await svc.review.confirm(sha, by=session.actor, note=note)
            await admin_api.after_confirm(svc, sha)
        elif action == "provenance":
            await _refresh_provenance(svc, sha)
            raise web.HTTPSeeOther(f"/admin/item/{sha}#provenance")
        elif action == "lemmy":
            page = await lemmy_page.lemmy_form(svc, session, sha, form)
            if page is not None:
                return _page(page[0], page[1], session)
            raise web.HTTPSeeOther(f"/admin/item/{sha}#lemmy-actions")
        elif action == "rejudge":
            await svc.review.rejudge(
                sha, by=session.actor, mode=str(form.get("mode") or "policy"), wait_s=30.0
            )
        else:
            raise RequestError(404, "not_found", f"no action {action!r}")
    except (ReviewError, ActionError) as exc:
        return _page(
            "Could not do that",
            f'<p class="error">{_e(exc.detail)}</p><p><a href="/admin/item/{sha}">Back</a></p>',
            session,
            status=exc.status,
        )
    raise web.HTTPSeeOther(f"/admin/item/{sha}#decision")


async def _refresh_provenance(svc: AdminDeps, sha: str) -> None:
    if not await svc.store.refresh_provenance(sha):
        stored = await svc.store.get_verdict(sha)
        await svc.store.want_provenance(sha, "admin", seen_at=stored.first_seen if stored else None)
    if svc.provenance is not None:
        svc.provenance.wake()


async def lemmy_retry(request: web.Request) -> web.Response:
    session, _ = await _checked_post(request)
    svc: AdminDeps = request.app[ADMIN_DEPS]
    sha = admin_api.sha_param(request)
    try:
        await lemmy_page.retry(svc, session, request.match_info["id"])
    except ActionError as exc:
        return _page(
            "Could not do that",
            f'<p class="error">{_e(exc.detail)}</p><p><a href="/admin/item/{sha}">Back</a></p>',
            session,
            status=exc.status,
        )
    raise web.HTTPSeeOther(f"/admin/item/{sha}#lemmy-actions")


async def previews(request: web.Request) -> web.Response:
    session, form = await _checked_post(request)
    svc: AdminDeps = request.app[ADMIN_DEPS]
    session.previews = svc.admin.previews and form.get("on") == "1"
    await svc.store.audit("admin_previews", source=session.actor, detail={"on": session.previews})
    raise web.HTTPSeeOther("/admin")


async def preview(request: web.Request) -> web.Response:
    gate = _gate(request)
    session = gate.session_for(request)
    if session is None:
        raise RequestError(403, "not_signed_in", "sign in at /admin/login first")
    svc: AdminDeps = request.app[ADMIN_DEPS]
    if not (svc.admin.previews and session.previews):
        raise RequestError(403, "previews_off", "previews are off for this session")
    sha = admin_api.sha_param(request)
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


async def export(request: web.Request) -> web.Response:
    _session_or_login(request)
    return await admin_api.export_response(request)


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
    r.add_get("/admin", queue_page)
    r.add_get("/admin/", root_slash)
    r.add_get("/admin/login", login_form)
    r.add_post("/admin/login", login)
    r.add_post("/admin/logout", logout)
    r.add_get("/admin/item/{sha256}", item_page)
    r.add_post("/admin/item/{sha256}/{action}", decide)
    r.add_post("/admin/item/{sha256}/lemmy-retry/{id}", lemmy_retry)
    r.add_post("/admin/previews", previews)
    r.add_get("/admin/preview/{sha256}", preview)
    r.add_get("/admin/export", export)
    r.add_get("/admin/static/{name}", static)
