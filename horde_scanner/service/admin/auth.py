"""Who may use the admin API and the review page.

API: `Authorization: Bearer <admin.token>`, compared in constant time. Page: the same token,
typed once into the login form, buys a random server-side session (cookie: HttpOnly,
SameSite=Strict, Path=/admin) and a per-session CSRF token every POST must carry. Sessions live
in memory: a restart logs everyone out. Without a configured token both are off and say how
to turn them on.

Wrong tokens, on the API or the login form, are counted per client (its address; an IPv6
client by its /64, which one host usually holds whole): past `admin.max_failures` within
`admin.failure_window_s` that client waits (429), and no other client does. The login form
refuses cross-site posts before it looks at the token, so a page elsewhere cannot spend an
admin's allowance.
"""

from __future__ import annotations

import hmac
import ipaddress
import re
import secrets
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from aiohttp import web

from horde_scanner.config import AdminSettings
from horde_scanner.moderation.actions import ActionError
from horde_scanner.review.decisions import ReviewError
from horde_scanner.service.context import SIGN_IN
from horde_scanner.service.errors import RequestError
from horde_scanner.service.throttle import FailureThrottle

COOKIE = "hs_admin"
_ACTOR_RE = re.compile(r"[^A-Za-z0-9._@+-]")

DISABLED_DETAIL = (
    "the admin API and the review page are off: set admin.token (env "
    "HORDE_SCANNER_ADMIN__TOKEN) to a random string of at least 16 characters and restart"
)


def actor_name(channel: str, name: str | None) -> str:
    """`channel:name` for the audit log; the name is what the admin typed, trimmed to safe text."""
    clean = _ACTOR_RE.sub("", (name or "").strip())[:48]
    return f"{channel}:{clean}" if clean else channel


@dataclass
class Session:
    id: str
    actor: str
    csrf: str
    expires: float
    previews: bool = False
    created: float = field(default_factory=time.time)


class AdminGate:
    def __init__(self, settings: AdminSettings) -> None:
        self.settings = settings
        token = settings.token.get_secret_value() if settings.token else None
        self._token = token.encode() if token else None
        self._sessions: OrderedDict[str, Session] = OrderedDict()
        self.failures = FailureThrottle(settings.max_failures, settings.failure_window_s)

    @property
    def enabled(self) -> bool:
        return self._token is not None

    def require_enabled(self) -> None:
        if not self.enabled:
            raise RequestError(404, "admin_disabled", DISABLED_DETAIL)

    def token_matches(self, candidate: str) -> bool:
        if self._token is None:
            return False
        return hmac.compare_digest(candidate.encode(), self._token)

    def check_bearer(self, request: web.Request, address: str | None = None) -> None:
        """A right bearer token, from a client that has not failed too often (else 429)."""
        self.require_enabled()
        client = client_key(address)
        if not self.login_allowed(client):
            raise RequestError(
                429,
                "too_many_failures",
                f"too many wrong admin tokens from this client; wait up to "
                f"{self.settings.failure_window_s:.0f} s",
            )
        header = request.headers.get("Authorization", "")
        scheme, _, value = header.partition(" ")
        if scheme.lower() != "bearer" or not value.strip():
            raise _unauthorised("send the admin token as `Authorization: Bearer <token>`")
        if not self.token_matches(value.strip()):
            self.login_failed(client)
            raise _unauthorised("wrong admin token")

    # -- failure throttling (API and login form) ----------------------------------------------

    def login_allowed(self, client: str) -> bool:
        return self.failures.allowed(client)

    def login_failed(self, client: str) -> None:
        self.failures.failed(client)

    # -- sessions ----------------------------------------------------------------------------

    def open_session(self, actor: str) -> Session:
        session = Session(
            id=secrets.token_urlsafe(32),
            actor=actor,
            csrf=secrets.token_urlsafe(32),
            expires=time.time() + self.settings.session_ttl_s,
        )
        self._sessions[session.id] = session
        while len(self._sessions) > self.settings.max_sessions:
            self._sessions.popitem(last=False)
        return session

    def session_for(self, request: web.Request) -> Session | None:
        sid = request.cookies.get(COOKIE)
        if not sid or not self.enabled:
            return None
        session = self._sessions.get(sid)
        if session is None:
            return None
        if session.expires < time.time():
            self._sessions.pop(sid, None)
            return None
        return session

    def close_session(self, session: Session) -> None:
        self._sessions.pop(session.id, None)

    def set_cookie(
        self, request: web.Request, response: web.StreamResponse, session: Session
    ) -> None:
        response.set_cookie(
            COOKIE,
            session.id,
            max_age=int(self.settings.session_ttl_s),
            path="/admin",
            httponly=True,
            samesite="Strict",
            secure=self._secure(request),
        )

    def clear_cookie(self, response: web.StreamResponse) -> None:
        response.del_cookie(COOKIE, path="/admin")

    def _secure(self, request: web.Request) -> bool:
        mode = self.settings.cookie_secure
        if mode == "always":
            return True
        if mode == "never":
            return False
        return request.secure or request.headers.get("X-Forwarded-Proto", "") == "https"

    @staticmethod
    def csrf_ok(session: Session, submitted: str | None) -> bool:
        return bool(submitted) and hmac.compare_digest(
            str(submitted).encode(), session.csrf.encode()
        )


def same_origin(request: web.Request) -> bool:
    """A browser's Origin (when sent) must name this host: a second line behind the CSRF token."""
    origin = request.headers.get("Origin")
    if not origin or origin == "null":
        return origin is None
    host = origin.split("://", 1)[-1]
    return host == request.host


def client_key(address: str | None) -> str:
    """Whose failures these are: the address, or an IPv6 address's /64 network."""
    if not address:
        return "unknown"
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address[:64]
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.ip_network(f"{ip}/64", strict=False))
    return str(ip)


def _unauthorised(detail: str) -> RequestError:
    return RequestError(401, "unauthorized", detail)


ADMIN: web.AppKey[AdminGate] = web.AppKey("admin_gate", AdminGate)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def admin_only(handler: Handler) -> Handler:
    """An admin API handler behind the bearer token; its review and Lemmy errors as HTTP ones."""

    async def guarded(request: web.Request) -> web.StreamResponse:
        deps = request.app[SIGN_IN]
        address = deps.auth.client_address(request)
        try:
            request.app[ADMIN].check_bearer(request, address)
        except RequestError as exc:
            if exc.status == 401:
                deps.metrics.error("admin_token_failed")
            raise
        try:
            return await handler(request)
        except (ReviewError, ActionError) as exc:
            raise RequestError(exc.status, exc.error, exc.detail) from None

    return guarded
