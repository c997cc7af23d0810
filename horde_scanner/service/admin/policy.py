"""Policy dry run in the admin API and on the review page. Nothing here changes anything: the
running policy stays until the admin points `policy.path` at the new file and restarts.

POST /api/v1/admin/policy/check                         body: the policy TOML
POST /api/v1/admin/policy/diff?since=&label=&samples=&baseline=stored|current
GET  /admin/policy, POST /admin/policy                  the same, as a page (upload a file)
"""

from __future__ import annotations

import asyncio
import html
from typing import Any

from aiohttp import web

from horde_scanner.judging.policy_diff import DiffReport, run_diff
from horde_scanner.policy.rules import Policy, PolicyError
from horde_scanner.service.admin.auth import actor_name, admin_only
from horde_scanner.service.admin.page import _checked_post, _csrf, _page, _session_or_login
from horde_scanner.service.admin.params import PREFIX, parse_labels, parse_time
from horde_scanner.service.context import POLICY, PolicyDeps
from horde_scanner.service.errors import RequestError
from horde_scanner.verdict import Label

# A policy file is a few kilobytes; anything near this is not one.
MAX_POLICY_BYTES = 256 * 1024
MAX_SAMPLES = 100
# One dry run at a time: each one reads the whole store, and two would only share the CPU.
_DIFF_LOCK: web.AppKey[asyncio.Lock] = web.AppKey("policy_diff_lock", asyncio.Lock)


def _parse(raw: bytes) -> Policy:
    if not raw.strip():
        raise RequestError(400, "missing_policy", "send the candidate policy TOML as the body")
    if len(raw) > MAX_POLICY_BYTES:
        raise RequestError(
            413, "policy_too_large", f"a policy file is at most {MAX_POLICY_BYTES} bytes"
        )
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise RequestError(400, "bad_policy", "the policy file is not UTF-8 text") from None
    try:
        return Policy.from_text(text, "uploaded policy")
    except PolicyError as exc:
        raise RequestError(400, "bad_policy", str(exc)) from None


async def _body_policy(request: web.Request) -> Policy:
    if request.content_type.startswith("multipart/"):
        form = await request.post()
        field = form.get("policy")
        raw = field.file.read() if isinstance(field, web.FileField) else str(field or "").encode()
        return _parse(raw)
    if request.content_length is not None and request.content_length > MAX_POLICY_BYTES:
        raise RequestError(
            413, "policy_too_large", f"a policy file is at most {MAX_POLICY_BYTES} bytes"
        )
    return _parse(await request.read())


def _since(value: str | None) -> float | None:
    """Unix seconds, ISO 8601, or a duration back from now (90m, 12h, 30d)."""
    from horde_scanner.timefmt import parse_since

    if not value:
        return None
    try:
        return parse_time(value, "since")
    except RequestError:
        try:
            return parse_since(value)
        except ValueError:
            raise RequestError(
                400, "bad_time", f"since={value!r}: expected unix seconds, ISO 8601 or 30d"
            ) from None


def _samples(value: str | None) -> int:
    if not value:
        return 5
    if not value.isdigit() or int(value) > MAX_SAMPLES:
        raise RequestError(400, "bad_samples", f"samples must be 0 to {MAX_SAMPLES}")
    return int(value)


async def _diff(
    request: web.Request,
    candidate: Policy,
    *,
    since: float | None,
    labels: tuple[str, ...],
    samples: int,
    baseline: str,
) -> DiffReport:
    svc: PolicyDeps = request.app[POLICY]
    if baseline not in ("stored", "current"):
        raise RequestError(400, "bad_baseline", "baseline must be stored or current")
    async with request.app[_DIFF_LOCK]:
        return await run_diff(
            svc.store,
            candidate,
            baseline=svc.policy if baseline == "current" else None,
            since=since,
            labels=labels,
            reject_labels=[label.value for label in svc.validation.reject_labels],
            sample_size=samples,
        )


@admin_only
async def check_api(request: web.Request) -> web.Response:
    policy = await _body_policy(request)
    return web.json_response({"valid": True, "version": policy.version})


@admin_only
async def diff_api(request: web.Request) -> web.Response:
    q = request.query
    candidate = await _body_policy(request)
    report = await _diff(
        request,
        candidate,
        since=_since(q.get("since")),
        labels=parse_labels(q.getall("label", [])),
        samples=_samples(q.get("samples")),
        baseline=q.get("baseline") or "stored",
    )
    svc: PolicyDeps = request.app[POLICY]
    await svc.store.audit(
        "policy_dry_run",
        source=actor_name("api", request.headers.get("X-Admin-Actor")),
        detail={"candidate": candidate.version, "changed": report.changed},
    )
    return web.json_response({**report.as_dict(), "current": {"version": svc.policy.version}})


# -- the page ---------------------------------------------------------------------------------


def _e(value: Any) -> str:
    return "" if value is None else html.escape(str(value), quote=True)


def _form(session: Any, error: str = "") -> str:
    options = "".join(
        f'<option value="{label.value}">{label.value}</option>'
        for label in (Label.CSAM, Label.NSFW, Label.CLEAN)
    )
    problem = f'<p class="error" id="policy-error">{_e(error)}</p>' if error else ""
    return (
        "<h2>Policy dry run</h2>"
        '<p class="muted">Upload a candidate policy file: every stored verdict is judged again '
        "from its stored signals, offline, and you see what would change. Nothing changes here; "
        "to switch, point <code>policy.path</code> at the file and restart.</p>"
        f"{problem}"
        '<form class="policy" method="post" action="/admin/policy" enctype="multipart/form-data">'
        f"{_csrf(session)}"
        '<label>Policy file (TOML) <input type="file" name="policy" accept=".toml" required>'
        "</label>"
        '<label>Judged since <input type="text" name="since" placeholder="30d or 2026-11-01">'
        "</label>"
        f'<label>Only changes from or to <select name="label"><option value="">any label'
        f"</option>{options}</select></label>"
        '<button type="submit" id="policy-diff">Show the diff</button></form>'
    )


async def policy_page(request: web.Request) -> web.Response:
    session = _session_or_login(request)
    return _page("Policy dry run", _form(session), session)


async def policy_post(request: web.Request) -> web.Response:
    session, form = await _checked_post(request)
    field = form.get("policy")
    raw = field.file.read(MAX_POLICY_BYTES + 1) if isinstance(field, web.FileField) else b""
    try:
        candidate = _parse(raw)
        label = str(form.get("label") or "")
        report = await _diff(
            request,
            candidate,
            since=_since(str(form.get("since") or "").strip() or None),
            labels=parse_labels([label] if label else []),
            samples=5,
            baseline="stored",
        )
    except RequestError as exc:
        return _page("Policy dry run", _form(session, exc.detail), session, status=exc.status)
    svc: PolicyDeps = request.app[POLICY]
    await svc.store.audit(
        "policy_dry_run",
        source=session.actor,
        detail={"candidate": candidate.version, "changed": report.changed},
    )
    return _page("Policy dry run", _form(session) + _report_html(report, svc), session)


def _report_html(report: DiffReport, svc: PolicyDeps) -> str:
    d = report.as_dict()
    skipped = "".join(f"<li>{n:,} {_e(why)}</li>" for why, n in sorted(report.skipped.items()))
    parts = [
        '<section id="policy-report">',
        f"<h2>Candidate {_e(report.candidate_version)} against the stored verdicts</h2>",
        f'<p class="notice">Nothing has changed: the service still judges with policy '
        f"<b>{_e(svc.policy.version)}</b>.</p>",
        f'<p id="policy-summary">{d["examined"]:,} verdicts examined, {d["judged"]:,} '
        f"re-judged; <b>{d['changed']:,} would change</b>, {d['unchanged']:,} would not.</p>",
        f"<ul>{skipped}</ul>" if skipped else "",
    ]
    for change in d["changes"]:
        key = f"{change['from']}-{change['to']}"
        parts.append(
            f'<div class="change" id="change-{_e(key)}"><h3>{_e(change["from"])} &rarr; '
            f"{_e(change['to'])}: {change['count']:,}</h3>"
        )
        for s in change["samples"]:
            sig = s["signals"]
            frames = sig.get("frames") or [sig]
            shown = "<br>".join(
                _e(
                    (f"{f['frame']}: " if "frame" in f else "")
                    + f"nsfw {f.get('nsfw')}; caption {f.get('caption')!r}"
                    + (f"; tags {f['tags']}" if f.get("tags") else "")
                    + (f"; scores {f['scores']}" if f.get("scores") else "")
                )
                for f in frames
            )
            decision = f" ({_e(s['decision'])})" if s["decision"] else ""
            parts.append(
                f'<article class="item sample"><a href="/admin/item/{s["sha256"]}"><code>'
                f"{s['sha256']}</code></a>{decision}<dl><dt>signals</dt><dd>{shown}</dd>"
                f"<dt>was</dt><dd>{_e('; '.join(s['old_reasons']) or '-')}</dd>"
                f"<dt>now</dt><dd>{_e('; '.join(s['new_reasons']) or '-')}</dd></dl></article>"
            )
        parts.append("</div>")
    dec = d["decisions"]
    rows = "".join(
        f'<tr class="{"agree" if i["agrees"] else "disagree"}"><td>{_e(i["decision"])}</td>'
        f'<td><a href="/admin/item/{i["sha256"]}"><code>{i["sha256"][:16]}</code></a></td>'
        f"<td>{_e(i['by'])}</td><td>{_e(i['old_label'])} &rarr; {_e(i['new_label'])}</td>"
        f"<td>{'agrees' if i['agrees'] else 'disagrees'}</td></tr>"
        for i in dec["items"]
    )
    parts.append(
        '<h3>Admin decisions</h3><p id="policy-decisions">The candidate agrees with '
        f"{dec['agree']:,} and disagrees with {dec['disagree']:,} decisions (the stored verdicts "
        f"agreed with {dec['agreed_before']:,}).</p>"
        '<table class="audit decisions"><thead><tr><th>decision</th><th>sha256</th><th>by</th>'
        f"<th>label</th><th>candidate</th></tr></thead><tbody>{rows}</tbody></table></section>"
    )
    return "".join(parts)


def add_routes(app: web.Application) -> None:
    app[_DIFF_LOCK] = asyncio.Lock()
    r = app.router
    r.add_post(f"{PREFIX}/policy/check", check_api)
    r.add_post(f"{PREFIX}/policy/diff", diff_api)
    r.add_get("/admin/policy", policy_page)
    r.add_post("/admin/policy", policy_post)
