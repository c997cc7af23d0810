"""/admin's queue and items: undecided positives, late positives and unscanned items as cards,
one item's verdict, decisions and audit trail, and the decisions' forms (allow, confirm,
re-judge). The item's Lemmy panel comes from lemmy_page.py, its preview from preview_page.py.
"""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from horde_scanner.integrations.enforce import NO_PICTRS_NOTE
from horde_scanner.moderation.actions import ActionError
from horde_scanner.review import view
from horde_scanner.review.decisions import ReviewError
from horde_scanner.review.evidence import DECISION_EVENTS
from horde_scanner.service.admin import lemmy_page, review_api
from horde_scanner.service.admin.auth import Session
from horde_scanner.service.admin.page import (
    _checked_post,
    _csrf,
    _e,
    _page,
    _refused,
    _session_or_login,
    _when,
)
from horde_scanner.service.admin.params import sha_param
from horde_scanner.service.context import REVIEW, ReviewDeps
from horde_scanner.service.errors import RequestError


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


def _preview(svc: ReviewDeps, session: Session, sha: str, in_quarantine: bool) -> str:
    if not (svc.previews and session.previews):
        return ""
    if not in_quarantine:
        return '<div class="preview muted">no preview: not in quarantine</div>'
    return (
        f'<div class="preview"><a class="reveal button" href="/admin/preview/{sha}">'
        "Reveal blurred preview</a></div>"
    )


def _card(svc: ReviewDeps, session: Session, item: dict[str, Any], extra: str = "") -> str:
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


def _previews_control(svc: ReviewDeps, session: Session) -> str:
    if not svc.previews:
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
    svc = request.app[REVIEW]
    data = await review_api.queue_data(svc, 100)
    parts = [_previews_control(svc, session)]
    if not svc.late_purges:
        parts.append(f'<p class="muted" id="no-pictrs-api">Note: {_e(NO_PICTRS_NOTE)}.</p>')
    sections = (
        ("positives", "Positives waiting for a decision", data["positives"]),
        ("unscanned", "Unscanned (unreadable or not judged)", data["unscanned"]),
    )
    shas = [i["sha256"] for i in data["positives"]] + [p["sha256"] for p in data["late_positives"]]
    who = await lemmy_page.summaries(request, shas)
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
    svc = request.app[REVIEW]
    sha = sha_param(request)
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
    lemmy = lemmy_page.item_sections(request, session, sha, record)
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
    svc = request.app[REVIEW]
    sha = sha_param(request)
    action = request.match_info["action"]
    note = str(form.get("note") or "")[:500]
    if "\x00" in note:  # no store keeps one (PostgreSQL's text cannot hold it)
        raise RequestError(400, "bad_note", "a note must not hold a NUL character")
    try:
        if action == "allow":
            await svc.review.allow(sha, by=session.actor, note=note)
        elif action == "confirm":
            await svc.review.confirm(sha, by=session.actor, note=note)
            await review_api.after_confirm(svc, sha)
        elif action == "provenance":
            await lemmy_page.refresh(request, sha)
            raise web.HTTPSeeOther(f"/admin/item/{sha}#provenance")
        elif action == "lemmy":
            page = await lemmy_page.lemmy_form(request, session, sha, form)
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
        return _refused(sha, exc.detail, session, exc.status)
    raise web.HTTPSeeOther(f"/admin/item/{sha}#decision")


def add_routes(app: web.Application) -> None:
    r = app.router
    r.add_get("/admin", queue_page)
    r.add_get("/admin/item/{sha256}", item_page)
    r.add_post("/admin/item/{sha256}/{action}", decide)
