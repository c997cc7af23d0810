"""The review page's Lemmy parts: who uploaded an image, where Lemmy uses it, which instance it
came from (moderation/provenance.py), and the admin's actions through Lemmy's API with a dry run
first (moderation/actions.py). HTML fragments and the form handlers; review_page.py places them
on the queue and the item page."""

from __future__ import annotations

import html
import json
from typing import Any

from aiohttp import web

from horde_scanner.moderation.actions import ActionError, parse_actions
from horde_scanner.review import view
from horde_scanner.service.admin.auth import Session
from horde_scanner.service.admin.page import _checked_post, _refused
from horde_scanner.service.admin.params import sha_param
from horde_scanner.service.context import LEMMY, LemmyDeps

ACTION_LABELS = (
    ("report", "report the posts, comments and messages to their moderators"),
    ("remove", "remove the posts and comments (reversible)"),
    ("ban", "ban the uploader from the site, removing their data"),
    ("purge", "purge the posts and comments"),
    ("delete_image", "delete the image through Lemmy"),
)


def _e(value: Any) -> str:
    return "" if value is None else html.escape(str(value), quote=True)


def _csrf(session: Session) -> str:
    return f'<input type="hidden" name="csrf" value="{_e(session.csrf)}">'


def _link(url: str | None) -> str:
    if not url:
        return "-"
    if not url.startswith(("https://", "http://")):
        return _e(url)  # text from another instance's database: only web links are links
    # Links to the object on its own instance; never fetched by this page.
    return f'<a href="{_e(url)}" rel="noreferrer noopener" target="_blank">{_e(url)}</a>'


def _who(person: dict[str, Any] | None) -> str:
    if not person:
        return "-"
    where = "local" if person.get("local") else f"remote, {_e(person.get('instance'))}"
    return f"<b>{_e(person.get('name'))}</b> ({_link(person.get('actor_url'))}, {where})"


def summary(prov: dict[str, Any] | None) -> str | None:
    """One line for a queue card: who uploaded it, how many usages, from where."""
    if prov is None:
        return None
    if prov["state"] != "resolved":
        return f"provenance {prov['state']}"
    who = [
        up["uploader"]["name"]
        if up.get("uploader")
        else f"thumbnail of post {up.get('thumbnail_for_post')}"
        for up in prov.get("uploads") or []
    ]
    origins = ", ".join(prov.get("origin_instances") or []) or "-"
    return (
        f"{'; '.join(who) or 'no upload record'}; used in {len(prov.get('usages') or [])} "
        f"places; origin {origins}"
    )


def provenance_html(svc: LemmyDeps, session: Session, sha: str, prov: dict[str, Any] | None) -> str:
    """The "Who and where" section of an item."""
    if svc.provenance is None or svc.provenance.lemmy is None:
        return (
            '<h2>Who and where (Lemmy)</h2><p class="muted" id="provenance">Lemmy\'s database '
            "is not configured (lemmy.database_url).</p>"
        )
    refresh = (
        f'<form method="post" action="/admin/item/{sha}/provenance">{_csrf(session)}'
        '<button type="submit" id="provenance-refresh">Ask Lemmy again</button></form>'
    )
    head = '<h2>Who and where (Lemmy)</h2><div id="provenance">'
    if prov is None:
        return head + '<p class="muted">Not asked yet.</p>' + refresh + "</div>"
    if prov["state"] == "pending":
        why = f": {_e(prov['error'])}" if prov.get("error") else ""
        return head + f'<p class="notice" id="provenance-state">Pending{why}</p>{refresh}</div>'
    if prov["state"] == "no_alias":
        return head + f'<p class="notice" id="provenance-state">{_e(prov["error"])}</p></div>'
    parts = [
        f'<p class="muted" id="provenance-state">Resolved {_e(prov.get("resolved_at"))} from '
        f"Lemmy {_e(prov.get('schema'))}; aliases: {_e(', '.join(prov.get('aliases') or []))}</p>"
    ]
    uploads = []
    for up in prov.get("uploads") or []:
        if up.get("uploader"):
            uploads.append(
                f"<li>uploaded by {_who(up['uploader'])} at {_e(up.get('uploaded_at'))}</li>"
            )
        elif up.get("kind") == "thumbnail":
            post = up.get("thumbnail_for_post")
            recorded = "" if up.get("recorded") else " (not recorded by this Lemmy version)"
            uploads.append(f"<li>generated thumbnail of post {_e(post)}{recorded}</li>")
    if not uploads:
        uploads.append("<li>no upload record</li>")
    parts.append(f'<h3>Uploader</h3><ul id="uploader">{"".join(uploads)}</ul>')
    rows = []
    for u in prov.get("usages") or []:
        ids = ", ".join(
            f"{k.removesuffix('_id')} {u[k]}"
            for k in ("post_id", "comment_id", "private_message_id")
            if u.get(k) is not None
        )
        owner = u.get("creator") or u.get("person")
        community = u.get("community") or {}
        rows.append(
            f"<tr><td>{_e(u['kind'])}</td><td>{_e(ids) or '-'}</td><td>{_link(u.get('url'))}</td>"
            f"<td>{_e(community.get('name')) or '-'}</td><td>{_who(owner)}</td>"
            f"<td>{_e(u.get('origin_instance'))}</td><td>{_e(u.get('published'))}</td></tr>"
        )
    table = (
        '<table class="audit" id="usages"><thead><tr><th>used as</th><th>ids</th><th>link</th>'
        "<th>community</th><th>by</th><th>origin instance</th><th>when</th></tr></thead>"
        f"<tbody>{''.join(rows)}</tbody></table>"
        if rows
        else '<p class="muted" id="usages">Used nowhere Lemmy\'s database shows.</p>'
    )
    parts.append(f"<h3>Used in</h3>{table}")
    origins = ", ".join(prov.get("origin_instances") or []) or "-"
    parts.append(f'<p>Origin instances: <b id="origins">{_e(origins)}</b></p>')
    for note in prov.get("notes") or []:
        parts.append(f'<p class="muted">{_e(note)}</p>')
    return head + "".join(parts) + refresh + "</div>"


def actions_html(
    svc: LemmyDeps, session: Session, sha: str, prov: dict[str, Any] | None, done: list[dict]
) -> str:
    """The "Act through Lemmy" section: the choice, a dry run, past calls with retry."""
    if svc.moderator is None or not svc.moderator.enabled:
        return ""
    parts = ['<h2>Act through Lemmy</h2><div id="lemmy-actions">']
    if prov is None or prov.get("state") != "resolved":
        parts.append('<p class="muted">Actions need the image\'s provenance first.</p>')
    else:
        boxes = "".join(
            f'<label><input type="checkbox" name="action" value="{a}"> {_e(text)}</label><br>'
            for a, text in ACTION_LABELS
        )
        parts.append(
            f'<form method="post" action="/admin/item/{sha}/lemmy" class="lemmy">'
            f"{_csrf(session)}{boxes}"
            '<button type="submit" name="mode" value="dry_run" id="lemmy-dry-run">'
            "Dry run: list the calls</button> "
            '<button type="submit" name="mode" value="act" id="lemmy-act" class="confirm" '
            'data-ask="Make these calls to Lemmy now?">Do it</button></form>'
        )
    if done:
        rows = []
        for a in done:
            retry = ""
            if a["state"] == "failed":
                retry = (
                    f'<form method="post" action="/admin/item/{sha}/lemmy-retry/{a["id"]}">'
                    f'{_csrf(session)}<button type="submit" class="retry">Retry</button></form>'
                )
            rows.append(
                f'<tr class="lemmy-{_e(a["state"])}"><td>{a["id"]}</td>'
                f"<td>{_e(a['requested_at'])}</td><td>{_e(a['by'])}</td>"
                f"<td>{_e(a['action'])} {_e(a['target'])}</td>"
                f"<td><code>{_e(a['request']['method'])} {_e(a['request']['path'])}</code></td>"
                f"<td><b>{_e(a['state'])}</b></td><td>{_e(a['status'])}</td>"
                f"<td><code>{_e(json.dumps(a['answer'])[:300])}</code></td><td>{retry}</td></tr>"
            )
        parts.append(
            '<table class="audit" id="lemmy-calls"><thead><tr><th>#</th><th>when</th><th>by</th>'
            "<th>action</th><th>request</th><th>state</th><th>HTTP</th><th>Lemmy answered</th>"
            f"<th></th></tr></thead><tbody>{''.join(rows)}</tbody></table>"
        )
    return "".join(parts) + "</div>"


async def summaries(request: web.Request, shas: list[str]) -> dict[str, str | None]:
    """The queue cards' "who, where" lines, for the images whose provenance is known."""
    rows = await request.app[LEMMY].store.provenance_of(shas)
    return {sha: summary(view.provenance_entry(row)) for sha, row in rows.items()}


def item_sections(request: web.Request, session: Session, sha: str, record: dict[str, Any]) -> str:
    """The item page's Lemmy panel: who and where, then the actions."""
    svc = request.app[LEMMY]
    prov = record["provenance"]
    return provenance_html(svc, session, sha, prov) + actions_html(
        svc, session, sha, prov, record["lemmy_actions"]
    )


async def refresh(request: web.Request, sha: str) -> None:
    """ "Ask Lemmy again": the image's provenance is due now (wanted, when never asked)."""
    svc = request.app[LEMMY]
    if not await svc.store.refresh_provenance(sha):
        stored = await svc.store.get_verdict(sha)
        await svc.store.want_provenance(sha, "admin", seen_at=stored.first_seen if stored else None)
    if svc.provenance is not None:
        svc.provenance.wake()


async def lemmy_form(
    request: web.Request, session: Session, sha: str, form: Any
) -> tuple[str, str] | None:
    """The actions form: a dry run gives a page (title, body); a real run gives None (the item
    page shows the calls made). Raises ActionError on a bad choice."""
    svc = request.app[LEMMY]
    if svc.moderator is None or not svc.moderator.enabled:
        raise ActionError(409, "lemmy_not_configured", "Lemmy actions need lemmy.url")
    actions = parse_actions(form.getall("action", []))
    dry = form.get("mode") != "act"
    result = await svc.moderator.act(sha, actions, by=session.actor, dry_run=dry)
    if not dry:
        return None
    calls = "".join(
        f"<li><code>{_e(c['method'])} {_e(c['path'])}</code> "
        f"<code>{_e(json.dumps(c['body']))}</code></li>"
        for c in result["calls"]
    )
    notes = "".join(f"<li>{_e(n)}</li>" for n in result["notes"])
    skipped = "".join(
        f"<li>{_e(s['action'])} {_e(s['target'])}: done already (#{s['done']})</li>"
        for s in result["skipped"]
    )
    hidden = "".join(f'<input type="hidden" name="action" value="{a.value}">' for a in actions)
    body = (
        f"<p>Lemmy {_e(result['lemmy'])}, API form {_e(result['api'])}. These calls would be "
        f'made, in this order:</p><ol id="dry-run-calls">{calls or "<li>none</li>"}</ol>'
        + (f'<h3>Already done</h3><ul id="dry-run-skipped">{skipped}</ul>' if skipped else "")
        + (f'<h3>Notes</h3><ul id="dry-run-notes">{notes}</ul>' if notes else "")
        + f'<form method="post" action="/admin/item/{sha}/lemmy">{_csrf(session)}{hidden}'
        '<button type="submit" name="mode" value="act" id="lemmy-act-confirmed" '
        'class="confirm" data-ask="Make these calls to Lemmy now?">Make these calls</button>'
        f'</form><p><a href="/admin/item/{sha}">Back</a></p>'
    )
    return "Lemmy calls (dry run)", body


async def retry(request: web.Request) -> web.Response:
    """A failed Lemmy call, sent again from the item page."""
    session, _ = await _checked_post(request)
    svc = request.app[LEMMY]
    sha = sha_param(request)
    try:
        await _retry(svc, session, request.match_info["id"])
    except ActionError as exc:
        return _refused(sha, exc.detail, session, exc.status)
    raise web.HTTPSeeOther(f"/admin/item/{sha}#lemmy-actions")


async def _retry(svc: LemmyDeps, session: Session, action_id: str) -> None:
    if svc.moderator is None or not svc.moderator.enabled:
        raise ActionError(409, "lemmy_not_configured", "Lemmy actions need lemmy.url")
    try:
        ident = int(action_id)
    except ValueError:
        raise ActionError(400, "bad_id", "expected a numeric action id") from None
    await svc.moderator.retry(ident, by=session.actor)


def add_routes(app: web.Application) -> None:
    app.router.add_post("/admin/item/{sha256}/lemmy-retry/{id}", retry)
