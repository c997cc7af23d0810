"""A fake Lemmy HTTP API on loopback (0.18, 0.19 or 1.0), for the moderation tests.

It follows upstream (LemmyNet/lemmy 0.18.5, 0.19.x, main = 1.0):
- routes: /api/v3/... (0.18, 0.19) or /api/v4/... (1.0), as in src/api_routes_http.rs /
  crates/api/routes/src/lib.rs; 0.19's image delete is GET /pictrs/image/delete/{token}/{alias}
  (0.19.12+ semantics: the token is ignored, an admin may delete);
- auth: 0.18 the `auth` field of the JSON body; 0.19/1.0 `Authorization: Bearer` (or the
  `jwt` cookie). A bad or expired JWT is ignored by the session middleware, so a handler that
  needs a user answers 401 `{"error":"incorrect_login"}` (LocalUserView's FromRequest);
- errors: 0.19 `{"error": <type>, "message"?}`: 404 `{"error":"unknown","message":"Record
  not found"}` for a missing row (diesel NotFound through `?`), 400 `not_an_admin`;
  1.0 adds `cause` and says `not_found` (LemmyErrorType::NotFound);
- bodies: 1.0 requires `reason` on removals, purges and bans, and spells the ban's data flag
  `remove_or_restore_data`; 0.19 `remove_data`.

Every call is recorded (method, path, JSON body, whether a JWT came and how) so a test can
assert exactly what was sent. `delay_s` holds every answer back after the work is done (a
Lemmy that times out).
"""

from __future__ import annotations

import asyncio
import secrets
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from horde_scanner.testing.server import LoopbackServer


@dataclass
class Received:
    method: str
    path: str
    body: Any
    auth: str | None  # "bearer" | "body" | "cookie" | None
    user: str | None  # who the JWT belonged to, when it was valid


@dataclass
class FakeUser:
    name: str
    password: str
    person_id: int
    admin: bool


@dataclass
class FakeLemmy(LoopbackServer):
    version: str = "0.19"  # "0.18" | "0.19" | "1.0"
    posts: set[int] = field(default_factory=set)
    comments: set[int] = field(default_factory=set)
    persons: set[int] = field(default_factory=set)
    private_messages: set[int] = field(default_factory=set)
    images: set[str] = field(default_factory=set)
    users: dict[str, FakeUser] = field(default_factory=dict)
    delay_s: float = 0.0
    # Refuse these (action path, id) with Lemmy's answer for a row it cannot find.
    calls: list[Received] = field(default_factory=list)
    _tokens: dict[str, str] = field(default_factory=dict)

    def add_user(self, name: str, password: str, person_id: int, *, admin: bool) -> None:
        self.users[name] = FakeUser(name, password, person_id, admin)
        self.persons.add(person_id)

    def expire_tokens(self) -> None:
        """Every JWT issued so far stops working (logout, a JWT secret rotated, expiry)."""
        self._tokens.clear()

    def sent(self) -> list[tuple[str, str, Any]]:
        """What was called, minus logins and the JWT: (method, path, body)."""
        out = []
        for c in self.calls:
            if c.path.endswith(("/user/login", "/auth/login")):
                continue
            body = (
                {k: v for k, v in c.body.items() if k != "auth"}
                if isinstance(c.body, dict)
                else c.body
            )
            out.append((c.method, c.path, body))
        return out

    # -- the app -----------------------------------------------------------------------------

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._middleware_factory()])
        r = app.router
        v = "/api/v4" if self.version == "1.0" else "/api/v3"
        if self.version == "1.0":
            r.add_post(f"{v}/account/auth/login", self._login)
            r.add_post(f"{v}/admin/ban", self._ban)
            r.add_delete(f"{v}/image", self._delete_image_v4)
        else:
            r.add_post(f"{v}/user/login", self._login)
            r.add_post(f"{v}/user/ban", self._ban)
            r.add_get("/pictrs/image/delete/{token}/{alias}", self._delete_image_v3)
        r.add_post(f"{v}/post/remove", self._remove("post"))
        r.add_post(f"{v}/comment/remove", self._remove("comment"))
        r.add_post(f"{v}/admin/purge/post", self._purge("post"))
        r.add_post(f"{v}/admin/purge/comment", self._purge("comment"))
        r.add_post(f"{v}/post/report", self._report("post"))
        r.add_post(f"{v}/comment/report", self._report("comment"))
        r.add_post(f"{v}/private_message/report", self._report("private_message"))
        return app

    async def _middleware(self, request: web.Request, handler: Any) -> web.StreamResponse:
        response: web.StreamResponse = await handler(request)
        if self.delay_s:
            # Lemmy did the work; its answer is late (the client may have given up by then).
            await asyncio.sleep(self.delay_s)
        return response

    def _error(self, status: int, kind: str, message: str | None = None) -> web.Response:
        body: dict[str, Any] = {"error": kind}
        if self.version == "1.0":
            body["cause"] = message or kind
        elif message is not None:
            body["message"] = message
        return web.json_response(body, status=status)

    def _not_found(self) -> web.Response:
        if self.version == "1.0":
            return self._error(404, "not_found", "Record not found")
        return self._error(404, "unknown", "Record not found")

    async def _read(self, request: web.Request) -> tuple[Any, FakeUser | None]:
        """The body, and the user its JWT names (None when missing or no longer valid)."""
        body: Any = None
        if request.can_read_body:
            try:
                body = await request.json()
            except ValueError:
                body = None
        token, how = None, None
        if self.version == "0.18":
            if isinstance(body, dict) and body.get("auth"):
                token, how = str(body["auth"]), "body"
        else:
            header = request.headers.get("Authorization", "")
            if header.startswith("Bearer "):
                token, how = header[7:], "bearer"
            elif request.cookies.get("jwt"):
                token, how = request.cookies["jwt"], "cookie"
        name = self._tokens.get(token) if token else None
        user = self.users.get(name) if name else None
        self.calls.append(Received(request.method, request.path, body, how, name))
        return body, user

    async def _login(self, request: web.Request) -> web.Response:
        body, _ = await self._read(request)
        body = body if isinstance(body, dict) else {}
        user = self.users.get(str(body.get("username_or_email", "")))
        if user is None or body.get("password") != user.password:
            return self._error(401, "incorrect_login")
        jwt = "jwt-" + secrets.token_hex(16)
        self._tokens[jwt] = user.name
        return web.json_response(
            {"jwt": jwt, "registration_created": False, "verify_email_sent": False}
        )

    def _need_admin(self, user: FakeUser | None) -> web.Response | None:
        if user is None:
            return self._error(401, "incorrect_login")
        if not user.admin:
            return self._error(400, "not_an_admin")
        return None

    def _missing_reason(self, body: dict[str, Any]) -> web.Response | None:
        # 1.0: `reason: String` is not optional; serde refuses the JSON (actix: 400, text).
        if self.version == "1.0" and not isinstance(body.get("reason"), str):
            return web.Response(status=400, text="Json deserialize error: missing field `reason`")
        return None

    def _table(self, kind: str) -> set[Any]:
        return {
            "post": self.posts,
            "comment": self.comments,
            "private_message": self.private_messages,
            "person": self.persons,
        }[kind]

    def _remove(self, kind: str) -> Any:
        async def handler(request: web.Request) -> web.Response:
            body, user = await self._read(request)
            body = body if isinstance(body, dict) else {}
            refused = self._need_admin(user) or self._missing_reason(body)
            if refused is not None:
                return refused
            if body.get(f"{kind}_id") not in self._table(kind):
                return self._not_found()
            view = {"id": body[f"{kind}_id"], "removed": bool(body.get("removed"))}
            return web.json_response({f"{kind}_view": {kind: view}})

        return handler

    def _purge(self, kind: str) -> Any:
        async def handler(request: web.Request) -> web.Response:
            body, user = await self._read(request)
            body = body if isinstance(body, dict) else {}
            refused = self._need_admin(user) or self._missing_reason(body)
            if refused is not None:
                return refused
            ident = body.get(f"{kind}_id")
            if ident not in self._table(kind):
                return self._not_found()
            self._table(kind).discard(ident)
            return web.json_response({"success": True})

        return handler

    def _report(self, kind: str) -> Any:
        async def handler(request: web.Request) -> web.Response:
            body, user = await self._read(request)
            body = body if isinstance(body, dict) else {}
            if user is None:
                return self._error(401, "incorrect_login")
            if not body.get("reason"):
                return self._error(400, "report_reason_required")
            if body.get(f"{kind}_id") not in self._table(kind):
                return self._not_found()
            return web.json_response({f"{kind}_report_view": {"id": len(self.calls)}})

        return handler

    async def _ban(self, request: web.Request) -> web.Response:
        body, user = await self._read(request)
        body = body if isinstance(body, dict) else {}
        refused = self._need_admin(user) or self._missing_reason(body)
        if refused is not None:
            return refused
        if body.get("person_id") not in self.persons:
            return self._not_found()
        return web.json_response(
            {"person_view": {"person": {"id": body["person_id"]}}, "banned": bool(body["ban"])}
        )

    async def _delete_image_v3(self, request: web.Request) -> web.Response:
        _, user = await self._read(request)
        if user is None:
            return self._error(401, "incorrect_login")
        alias = request.match_info["alias"]
        if alias not in self.images:
            return self._not_found()
        if not user.admin:  # 0.19.12+: the uploader or an admin
            return self._error(404, "unknown", "Record not found")
        self.images.discard(alias)
        return web.Response(status=204)

    async def _delete_image_v4(self, request: web.Request) -> web.Response:
        body, user = await self._read(request)
        refused = self._need_admin(user)
        if refused is not None:
            return refused
        body = body if isinstance(body, dict) else {}
        if body.get("filename") not in self.images:
            # pict-rs's purge of an unknown alias, passed on as Lemmy's pictrs_purge error.
            return self._error(400, "pictrs_purge_response_error", "alias-not-found")
        self.images.discard(body["filename"])
        return web.json_response({"success": True})
