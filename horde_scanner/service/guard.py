"""A size, a pace and a failure throttle for every route, before its handler reads anything.

- Throttle: a client that sent too many wrong credentials of a kind (admin token, client id,
  worker key, publish token, metrics token) is answered 429 at once, before its body is read
  or its credential compared (throttle.py). The failures are counted here, from the handlers'
  own 401 answers, so every route that takes a credential is covered the same way.
- Size and pace: every route but the scan route (which reads its body on its own pace and byte
  budget, upload_body.py) gets its body read here, whole, before the handler runs: at most the
  route's cap (server.form_max_bytes; a worker's answer server.worker_answer_max_bytes; a policy
  file its own limit), chunked or not, within server.body_timeout_s. The handler then reads
  the same bytes from memory, as aiohttp's request.read()/post()/json() always do.
- Headers: a handler's response whose header values carry control characters (a redirect
  built from a user's `next=`) is refused with a clear 400 instead of an empty reply.
"""

from __future__ import annotations

import asyncio
import logging
import re
from dataclasses import dataclass

from aiohttp import web
from aiohttp.streams import StreamReader

from horde_scanner.config import ServerSettings
from horde_scanner.service.admin.auth import ADMIN, client_key
from horde_scanner.service.admin.page import locked_out
from horde_scanner.service.context import EDGE
from horde_scanner.service.errors import Handler, RequestError
from horde_scanner.service.throttle import FailureThrottle

log = logging.getLogger(__name__)

# What a route's credential is, by path prefix (the first match wins).
_KINDS: tuple[tuple[str, str], ...] = (
    ("/api/v1/scan/", "client id"),
    ("/api/v1/pop", "worker key"),
    ("/api/v1/worker/", "worker key"),
    ("/api/v1/hashes", "publish token"),
    ("/metrics", "metrics token"),
    ("/api/v1/admin/", "admin token"),
    ("/admin/login", "admin token"),
)
# The handlers' answers that mean "wrong credential" (what the throttle counts).
_WRONG = {"unknown_client", "bad_worker_key", "unauthorized"}
# Routes whose bodies are read elsewhere (on their own pace and budget).
_OWN_BODY = ("/api/v1/scan/",)
# Policy files (admin/policy.py's limit) plus multipart framing.
_POLICY_BODY = 256 * 1024 + 64 * 1024
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


@dataclass(frozen=True, slots=True)
class _Limits:
    cap: int
    timeout_s: float


class Guard:
    """The throttles of the kinds that server.auth_* governs (the admin token has its own)."""

    def __init__(self, settings: ServerSettings) -> None:
        self.settings = settings
        self._throttles = {
            kind: FailureThrottle(settings.auth_max_failures, settings.auth_failure_window_s)
            for _, kind in _KINDS
            if kind != "admin token"
        }

    def throttle(self, request: web.Request, kind: str) -> FailureThrottle:
        if kind == "admin token":
            return request.app[ADMIN].failures
        return self._throttles[kind]

    def limits(self, path: str) -> _Limits:
        s = self.settings
        if path == "/api/v1/pop":
            return _Limits(s.worker_answer_max_bytes, s.body_timeout_s)
        if path in ("/api/v1/admin/policy/check", "/api/v1/admin/policy/diff", "/admin/policy"):
            return _Limits(_POLICY_BODY, s.body_timeout_s)
        return _Limits(s.form_max_bytes, s.body_timeout_s)


GUARD: web.AppKey[Guard] = web.AppKey("guard", Guard)


def _kind(request: web.Request) -> str | None:
    if request.path == "/admin/login" and request.method != "POST":
        return None  # the sign-in form itself takes no credential
    return next((kind for prefix, kind in _KINDS if request.path.startswith(prefix)), None)


def _client(request: web.Request) -> str:
    address = None
    if EDGE in request.app:
        address = request.app[EDGE].auth.client_address(request)
    return client_key(address or request.remote)


@web.middleware
async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
    gate = request.app[GUARD]
    kind = _kind(request)
    if kind is not None:
        throttle = gate.throttle(request, kind)
        # (No failure anywhere, as on a busy scan route: no client address to work out.)
        if throttle.any_failures and not throttle.allowed(_client(request)):
            if EDGE in request.app:
                request.app[EDGE].metrics.error("too_many_failures")
            if request.path == "/admin/login":
                return locked_out()  # a person at a browser: the page, not JSON
            raise RequestError(
                429,
                "too_many_failures",
                f"too many wrong credentials ({kind}) from this client; wait up to "
                f"{throttle.window_s:.0f} s",
            )
    if request.body_exists and not request.path.startswith(_OWN_BODY):
        await _read_whole(request, gate.limits(request.path))
    try:
        response = await handler(request)
    except RequestError as exc:
        # The admin token's failures are counted where it is compared (admin/auth.py, the
        # login form); the others' here, from the handlers' own answers.
        if kind not in (None, "admin token") and exc.status == 401 and exc.error in _WRONG:
            gate.throttle(request, kind).failed(_client(request))
        raise
    except web.HTTPException as exc:
        _check_headers(request, exc)
        raise
    _check_headers(request, response)
    return response


async def _read_whole(request: web.Request, limits: _Limits) -> None:
    """Read the body into memory (the cap, the time), then let the handler read it again."""
    declared = request.content_length
    if declared is not None and declared > limits.cap:
        raise RequestError(
            413, "too_large", f"body of {declared} bytes exceeds this route's {limits.cap} bytes"
        )
    body = bytearray()
    try:
        async with asyncio.timeout(limits.timeout_s):
            while chunk := await request.content.readany():
                body += chunk
                if len(body) > limits.cap:
                    raise RequestError(
                        413, "too_large", f"body exceeds this route's {limits.cap} bytes"
                    )
    except TimeoutError:
        log.warning(
            "body of %s %s from %s not complete after %.0f s (%d bytes): answered 408",
            request.method,
            request.path,
            request.remote,
            limits.timeout_s,
            len(body),
        )
        raise RequestError(
            408,
            "body_timeout",
            f"the body must arrive within {limits.timeout_s:g} s (server.body_timeout_s)",
        ) from None
    data = bytes(body)
    # aiohttp answers read()/text()/json()/urlencoded post() from _read_bytes, and a multipart
    # post() from the payload stream: give it both.
    # (A limit above the body's size: feeding it must not pause the connection's reading.)
    replay = StreamReader(request.protocol, len(data) + 1, loop=asyncio.get_running_loop())
    replay.feed_data(data)
    replay.feed_eof()
    request._read_bytes = data  # noqa: SLF001
    request._payload = replay  # noqa: SLF001


def _check_headers(request: web.Request, response: web.StreamResponse) -> None:
    if not _CONTROL.search("".join(response.headers.values())):
        return
    for name, value in response.headers.items():
        if _CONTROL.search(value):
            log.warning(
                "%s %s: refused a response whose %s header held a control character",
                request.method,
                request.path,
                name,
            )
            raise RequestError(
                400,
                "bad_header_value",
                f"the {name} this request asked for holds a control character (CR, LF, ...)",
            )
