"""A pace for every request's head, on every route: its line and headers must arrive within
`server.header_timeout_s`, or it is answered 408 and the connection closed.

aiohttp bounds how long an idle kept-alive connection stays open, but not how long a request's
head may take: a client sending one header line every 2 s held a connection (and its task)
for as long as it liked. The clock starts when the connection opens, and on a kept-alive
connection at the first byte of the next request; it stops when the head is complete (the
body has its own bounds: guard.py for most routes, upload_body.py for the scan route).
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

from aiohttp import web
from aiohttp.web_protocol import RequestHandler

log = logging.getLogger(__name__)


class PacedHandler(RequestHandler):
    """aiohttp's connection handler with a deadline on each request head."""

    def __init__(self, *args: Any, head_timeout_s: float, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._head_timeout_s = head_timeout_s
        self._head_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self._start_head_clock()

    def connection_lost(self, exc: BaseException | None) -> None:
        self._stop_head_clock()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        count = self._request_count
        super().data_received(data)
        if self._request_count != count:
            self._stop_head_clock()  # a head is complete
        elif not self._busy() and not self._messages:
            self._start_head_clock()  # bytes of a next request's head

    def _busy(self) -> bool:
        """A handler is running (its body's bytes are not a next request's head)."""
        return bool(getattr(self, "_request_in_progress", False))

    def _start_head_clock(self) -> None:
        if self._head_timer is None:
            loop = asyncio.get_running_loop()
            self._head_timer = loop.call_later(self._head_timeout_s, self._head_too_slow)

    def _stop_head_clock(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_too_slow(self) -> None:
        self._head_timer = None
        transport = self.transport
        if self._busy() or self._messages or transport is None:
            return
        if transport.is_closing():
            return
        peer = transport.get_extra_info("peername")
        log.warning(
            "request head from %s not complete after %.0f s (server.header_timeout_s): "
            "answered 408, connection closed",
            peer[0] if isinstance(peer, tuple) and peer else "?",
            self._head_timeout_s,
        )
        body = json.dumps(
            {
                "error": "header_timeout",
                "detail": f"the request line and headers must arrive within "
                f"{self._head_timeout_s:g} s (server.header_timeout_s)",
            }
        ).encode()
        transport.write(
            b"HTTP/1.1 408 Request Timeout\r\nContent-Type: application/json\r\n"
            b"Connection: close\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body
        )
        self.force_close()


class _PacedServer(web.Server):
    head_timeout_s: float = 10.0

    def __call__(self) -> RequestHandler:
        return PacedHandler(
            self, loop=self._loop, head_timeout_s=self.head_timeout_s, **self._kwargs
        )


class PacedRunner(web.AppRunner):
    """web.AppRunner whose connections use PacedHandler."""

    def __init__(self, app: web.Application, *, head_timeout_s: float, **kwargs: Any) -> None:
        super().__init__(app, **kwargs)
        self._head_timeout_s = head_timeout_s

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        # The app builds a plain Server; only its protocol factory changes.
        server.__class__ = _PacedServer
        server.head_timeout_s = self._head_timeout_s  # type: ignore[attr-defined]
        return server
