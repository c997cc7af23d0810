"""Run the real service on a loopback port inside a test."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from aiohttp import web

from horde_scanner.backends.base import Backend
from horde_scanner.config import Settings, load_settings
from horde_scanner.service.app import build_app
from horde_scanner.service.context import SERVICES, Services
from horde_scanner.service.serve import make_runner

CLIENT_ID = "test-pictrs"


def make_settings(db: Path, horde_url: str, **sections: dict[str, Any]) -> Settings:
    """Settings for a test: its own store, the fake Horde, fast polling, one client id."""
    tree: dict[str, dict[str, Any]] = {
        "store": {"path": db},
        "horde": {
            "url": horde_url,
            "poll_interval_s": 0.12,
            "api_key": "0000000000",
            "retries": 2,
            "http_timeout_s": 5.0,
        },
        "server": {"client_ids": [CLIENT_ID]},
        "validation": {"deadline_s": 3.0},
    }
    for name, values in sections.items():
        tree.setdefault(name, {}).update(values)
    return load_settings(None, **tree)


class RunningService:
    def __init__(self, runner: web.AppRunner, url: str) -> None:
        self.runner = runner
        self.url = url

    @property
    def services(self) -> Services:
        return self.runner.app[SERVICES]

    def scan_url(self, client_id: str = CLIENT_ID) -> str:
        return f"{self.url}/api/v1/scan/{client_id}"


@asynccontextmanager
async def running_service(
    settings: Settings, *, backend: Backend | None = None
) -> AsyncIterator[RunningService]:
    runner = make_runner(build_app(settings, backend=backend), settings)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield RunningService(runner, f"http://127.0.0.1:{port}")
    finally:
        await runner.cleanup()


async def wait_for(
    predicate: Callable[[], Awaitable[Any]], timeout: float = 10.0, interval: float = 0.05
) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = await predicate()
        if value:
            return value
        await asyncio.sleep(interval)
    raise AssertionError("condition not met in time")
