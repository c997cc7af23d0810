"""What every fake shares: serving its aiohttp app on a loopback port, as a context manager
(and the same for a test's own small app)."""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from typing import Any, Self

from aiohttp import web


def is_loopback_host(host: str | None) -> bool:
    if host is None:
        return False
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class LoopbackServer:
    """Subclasses build `app()`; `base_path` is appended to the URL tests are given."""

    base_path = ""
    _runner: web.AppRunner | None = None
    url = ""

    def app(self) -> web.Application:
        raise NotImplementedError

    async def _middleware(
        self, request: web.Request, handler: Callable[[web.Request], Any]
    ) -> web.StreamResponse:
        """Subclasses may override to see (and fail) every request."""
        response: web.StreamResponse = await handler(request)
        return response

    def _middleware_factory(self) -> Any:
        # aiohttp only treats functions marked by web.middleware as (request, handler) style.
        @web.middleware
        async def middleware(request: web.Request, handler: Any) -> web.StreamResponse:
            return await self._middleware(request, handler)

        return middleware

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        """Serve on loopback; returns the base URL, e.g. ``http://127.0.0.1:PORT/api``."""
        if not is_loopback_host(host):
            raise ValueError(f"fakes only listen on loopback, not {host!r}")
        runner = web.AppRunner(self.app(), access_log=None, shutdown_timeout=1.0)
        await runner.setup()
        await web.TCPSite(runner, host, port).start()
        self._runner = runner
        self.url = f"http://{host}:{runner.addresses[0][1]}{self.base_path}"
        return self.url

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


class AppServer(LoopbackServer):
    """A test's own aiohttp app on a loopback port: `async with AppServer(app) as server`, or
    `await server.start()` (the base URL) and `await server.stop()` to take it away mid-test."""

    def __init__(self, app: web.Application) -> None:
        self._app = app

    def app(self) -> web.Application:
        return self._app
