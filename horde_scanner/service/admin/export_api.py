"""/api/v1/admin/export?format=json|csv&label=...&since=...: evidence records (bearer token;
never image bytes). The review page's /admin/export answers the same (admin/page.py)."""

from __future__ import annotations

from datetime import UTC, datetime

from aiohttp import web

from horde_scanner.review import evidence
from horde_scanner.review.decisions import POSITIVE
from horde_scanner.service.admin.auth import admin_only
from horde_scanner.service.admin.params import PREFIX, parse_labels, parse_time
from horde_scanner.service.context import EXPORT
from horde_scanner.service.errors import RequestError
from horde_scanner.verdict import Label


@admin_only
async def export(request: web.Request) -> web.StreamResponse:
    return await export_response(request)


async def export_response(request: web.Request) -> web.Response:
    svc = request.app[EXPORT]
    fmt = request.query.get("format", "json")
    if fmt not in ("json", "csv"):
        raise RequestError(400, "bad_format", "format must be json or csv")
    labels = parse_labels(request.query.getall("label", [])) or POSITIVE
    since = parse_time(request.query.get("since"), "since")
    rows = await evidence.records(svc.store, [Label(x) for x in labels], since=since)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    disposition = f'attachment; filename="horde-scanner-evidence-{stamp}.{fmt}"'
    if fmt == "csv":
        return web.Response(
            text=evidence.to_csv(rows),
            content_type="text/csv",
            headers={"Content-Disposition": disposition, "Cache-Control": "no-store"},
        )
    return web.json_response(
        rows, headers={"Content-Disposition": disposition, "Cache-Control": "no-store"}
    )


def add_routes(app: web.Application) -> None:
    app.router.add_get(f"{PREFIX}/export", export)
