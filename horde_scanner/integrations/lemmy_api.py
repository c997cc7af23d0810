"""Lemmy's HTTP API, as an admin account (lemmy.url, lemmy.username, lemmy.password[_file]).

Three forms, as upstream defines them (LemmyNet/lemmy 0.18.5, 0.19.x, 1.0; reference/lemmy.md
§3, checked against the source):

    0.18   /api/v3/...   the JWT in the body's `auth` field
    0.19   /api/v3/...   `Authorization: Bearer <jwt>`
    1.0    /api/v4/...   `Authorization: Bearer <jwt>`; reasons required; ban field names changed

The JWT comes from logging in (0.18/0.19 `POST /api/v3/user/login`, 1.0
`POST /api/v4/account/auth/login`) and is renewed when Lemmy stops taking it: both versions'
session middleware ignores a bad or expired token and the handler then answers 401
`{"error":"incorrect_login"}`, so a 401 means "log in again" (once per call).

Errors are Lemmy's own: `{"error": "<snake_case type>", "message"?: ...}` (0.19; 404 for a row
not found: `{"error":"unknown","message":"Record not found"}`), `{"error": ..., "cause": ...}`
(1.0; 404 `{"error":"not_found"}`); 400 for the rest (`not_an_admin`, ...). A call is `ok`
only on a 2xx; anything else is kept as Lemmy said it.
"""

from __future__ import annotations

import asyncio
import copy
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from horde_scanner.config import LemmySettings
from horde_scanner.errors import FinalError

log = logging.getLogger(__name__)

# How much of an answer is kept in the audit trail.
_ANSWER_MAX = 2000
REDACTED = "***"


class LemmyApiError(FinalError):
    """The API cannot be used at all (not configured, login refused); the message says why."""


@dataclass
class Call:
    """One request to Lemmy's API: what a dry run lists and the audit trail records."""

    action: str  # remove_post | purge_comment | ban_person | delete_image | report_post | ...
    target: str  # post:12 | comment:3 | person:7 | image:<alias> | private_message:2
    method: str
    path: str
    body: dict[str, Any] | None = None
    # Filled in when sent: the JWT goes into the body (0.18) or a header, never in here.
    auth_in_body: bool = False

    def public(self) -> dict[str, Any]:
        """The request as shown and stored: no JWT, no password, no delete token."""
        body = copy.deepcopy(self.body) if self.body is not None else None
        if body is not None and self.auth_in_body:
            body["auth"] = REDACTED
        return {"method": self.method, "path": self.path, "body": body}


@dataclass
class Answer:
    ok: bool
    status: int | None  # None: no HTTP answer (timeout, connection refused)
    body: Any = field(default=None)


def api_paths(api: str) -> dict[str, str]:
    """Each action's route in this API form."""
    if api == "1.0":
        return {
            "login": "/api/v4/account/auth/login",
            "remove_post": "/api/v4/post/remove",
            "remove_comment": "/api/v4/comment/remove",
            "purge_post": "/api/v4/admin/purge/post",
            "purge_comment": "/api/v4/admin/purge/comment",
            "ban_person": "/api/v4/admin/ban",
            "report_post": "/api/v4/post/report",
            "report_comment": "/api/v4/comment/report",
            "report_private_message": "/api/v4/private_message/report",
            "delete_image": "/api/v4/image",
        }
    return {
        "login": "/api/v3/user/login",
        "remove_post": "/api/v3/post/remove",
        "remove_comment": "/api/v3/comment/remove",
        "purge_post": "/api/v3/admin/purge/post",
        "purge_comment": "/api/v3/admin/purge/comment",
        "ban_person": "/api/v3/user/ban",
        "report_post": "/api/v3/post/report",
        "report_comment": "/api/v3/comment/report",
        "report_private_message": "/api/v3/private_message/report",
        # GET /pictrs/image/delete/{token}/{alias}: 0.19.12+ ignores the token (uploader or
        # admin may delete); before, pict-rs checks it.
        "delete_image": "/pictrs/image/delete/{token}/{alias}",
    }


def build_call(api: str, action: str, ident: int | str, reason: str) -> Call:
    """The request for one action on one object, in this API form."""
    paths = api_paths(api)
    v1 = api == "1.0"
    if action in ("remove_post", "remove_comment"):
        key = "post_id" if action == "remove_post" else "comment_id"
        body: dict[str, Any] = {key: ident, "removed": True, "reason": reason}
        call = Call(action, f"{key[:-3]}:{ident}", "POST", paths[action], body)
    elif action in ("purge_post", "purge_comment"):
        key = "post_id" if action == "purge_post" else "comment_id"
        call = Call(
            action, f"{key[:-3]}:{ident}", "POST", paths[action], {key: ident, "reason": reason}
        )
    elif action == "ban_person":
        data = "remove_or_restore_data" if v1 else "remove_data"
        body = {"person_id": ident, "ban": True, data: True, "reason": reason}
        call = Call(action, f"person:{ident}", "POST", paths[action], body)
    elif action.startswith("report_"):
        key = {
            "report_post": "post_id",
            "report_comment": "comment_id",
            "report_private_message": "private_message_id",
        }[action]
        body = {key: ident, "reason": reason}
        call = Call(action, f"{key[:-3]}:{ident}", "POST", paths[action], body)
    elif action == "delete_image":
        if v1:
            call = Call(action, f"image:{ident}", "DELETE", paths[action], {"filename": ident})
        else:
            path = paths[action].format(token=REDACTED, alias=ident)
            call = Call(action, f"image:{ident}", "GET", path, None)
    else:
        raise ValueError(f"unknown Lemmy action {action!r}")
    call.auth_in_body = api == "0.18" and call.body is not None
    return call


class LemmyApi:
    """Calls as the configured admin; logs in on first use and again when the JWT is refused."""

    def __init__(
        self, settings: LemmySettings, session: aiohttp.ClientSession, api: str = "0.19"
    ) -> None:
        if not settings.url or not settings.username:
            raise LemmyApiError("Lemmy actions need lemmy.url and lemmy.username")
        if settings.password is None and settings.password_file is None:
            raise LemmyApiError("Lemmy actions need lemmy.password or lemmy.password_file")
        self._settings = settings
        self._base = settings.url.rstrip("/")
        self._session = session
        self.api = api
        self._jwt: str | None = None
        self._login_lock = asyncio.Lock()
        self._timeout = aiohttp.ClientTimeout(total=settings.api_timeout_s)
        self.logins = 0

    def _password(self) -> str:
        if self._settings.password is not None:
            return self._settings.password.get_secret_value()
        path: Path = self._settings.password_file  # type: ignore[assignment]
        try:
            return path.read_text().strip()
        except OSError as exc:
            raise LemmyApiError(f"lemmy.password_file {path}: {exc.strerror}") from None

    def _totp(self) -> str | None:
        path = self._settings.totp_2fa_token_file
        if path is None:
            return None
        try:
            return path.read_text().strip() or None
        except OSError as exc:
            raise LemmyApiError(f"lemmy.totp_2fa_token_file {path}: {exc.strerror}") from None

    async def login(self) -> None:
        """Log in as the admin account (the password is read at each login)."""
        body: dict[str, Any] = {
            "username_or_email": self._settings.username,
            "password": self._password(),
        }
        totp = self._totp()
        if totp:
            body["totp_2fa_token"] = totp
        answer = await self._send("POST", api_paths(self.api)["login"], body, None)
        if not answer.ok or not isinstance(answer.body, dict) or not answer.body.get("jwt"):
            said = answer.body if answer.status is not None else "no answer"
            raise LemmyApiError(
                f"Lemmy {self._base} refused the login of {self._settings.username}: "
                f"HTTP {answer.status} {_trim(said)}"
            )
        self._jwt = str(answer.body["jwt"])
        self.logins += 1

    async def call(self, call: Call) -> Answer:
        """Send one call as the admin; a refused JWT is renewed once."""
        for attempt in range(2):
            if self._jwt is None:
                async with self._login_lock:
                    if self._jwt is None:
                        await self.login()
            jwt = self._jwt
            assert jwt is not None
            path = call.path
            if call.action == "delete_image" and self.api != "1.0":
                path = path.replace(REDACTED, "horde-scanner", 1)
            body = dict(call.body) if call.body is not None else None
            if call.auth_in_body and body is not None:
                body["auth"] = jwt
            answer = await self._send(call.method, path, body, None if self.api == "0.18" else jwt)
            if answer.status == 401 and attempt == 0:
                # Expired or revoked: Lemmy ignored the token and the handler wants a user.
                self._jwt = None
                continue
            break
        answer.body = _trim(answer.body)
        return answer

    async def _send(
        self, method: str, path: str, body: dict[str, Any] | None, jwt: str | None
    ) -> Answer:
        headers = {"Authorization": f"Bearer {jwt}"} if jwt else {}
        try:
            async with self._session.request(
                method, self._base + path, json=body, headers=headers, timeout=self._timeout
            ) as resp:
                raw = await resp.read()
                try:
                    parsed: Any = await resp.json(content_type=None) if raw else None
                except ValueError:
                    parsed = raw[:_ANSWER_MAX].decode("utf-8", "replace")
                return Answer(200 <= resp.status < 300, resp.status, parsed)
        except TimeoutError:
            return Answer(False, None, {"error": "timeout", "after_s": self._timeout.total})
        except aiohttp.ClientError as exc:
            return Answer(False, None, {"error": "unreachable", "detail": f"{type(exc).__name__}"})


def _trim(body: Any) -> Any:
    """An answer small enough for the audit trail (the JWT of a login never kept)."""
    if isinstance(body, dict) and "jwt" in body:
        body = {**body, "jwt": REDACTED}
    text = str(body)
    if len(text) > _ANSWER_MAX:
        return {"truncated": text[:_ANSWER_MAX]}
    return body
