"""Shared pieces for the admin tests: settings with an admin token, bearer calls, a webhook sink."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from horde_scanner.config import Settings
from horde_scanner.testing.service import make_settings

TOKEN = "test-admin-token-0123456789abcdef"
# The AI Horde is never contacted in these tests (MockBackend judges); this port refuses.
UNUSED_HORDE = "http://127.0.0.1:9/api"


def admin_settings(tmp_path: Path, **sections: dict[str, Any]) -> Settings:
    admin = {"token": TOKEN, **sections.pop("admin", {})}
    quarantine = {"dir": tmp_path / "quarantine", **sections.pop("quarantine", {})}
    return make_settings(
        tmp_path / "s.db", UNUSED_HORDE, admin=admin, quarantine=quarantine, **sections
    )


async def call(
    http: aiohttp.ClientSession,
    method: str,
    url: str,
    *,
    token: str | None = TOKEN,
    json: Any = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, Any]:
    sent = dict(headers or {})
    if token is not None:
        sent["Authorization"] = f"Bearer {token}"
    async with http.request(method, url, json=json, headers=sent) as resp:
        body = await resp.json(content_type=None) if resp.content_type != "text/csv" else None
        return resp.status, body if body is not None else await resp.text()


class WebhookSink:
    """A loopback HTTP server that records JSON POSTs and answers with `status`."""

    def __init__(self, status: int = 204, delay_s: float = 0.0) -> None:
        self.status = status
        self.delay_s = delay_s
        self.received: list[Any] = []
        self.url = ""

    async def _handle(self, request: web.Request) -> web.Response:
        self.received.append(await request.json())
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        return web.Response(status=self.status, text="" if self.status < 300 else "sink says no")

    def events(self, kind: str) -> list[Any]:
        return [r for r in self.received if isinstance(r, dict) and r.get("event") == kind]


@asynccontextmanager
async def webhook_sink(status: int = 204, delay_s: float = 0.0) -> AsyncIterator[WebhookSink]:
    sink = WebhookSink(status, delay_s)
    app = web.Application()
    app.router.add_post("/hook", sink._handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    sink.url = f"http://127.0.0.1:{runner.addresses[0][1]}/hook"
    try:
        yield sink
    finally:
        await runner.cleanup()
