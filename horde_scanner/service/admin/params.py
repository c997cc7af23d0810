"""What every admin API area reads of a request the same way: the path's sha256, times, labels,
bounded integers, a JSON body, who acts and their note. Bad input is a 400 naming the problem."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from horde_scanner.media.hashing import is_sha256_hex
from horde_scanner.review.decisions import VerdictFilter
from horde_scanner.service.admin.auth import actor_name
from horde_scanner.service.errors import RequestError
from horde_scanner.verdict import Label

PREFIX = "/api/v1/admin"
MAX_LIMIT = 1000


def parse_time(value: str | None, name: str) -> float | None:
    """Unix seconds or ISO 8601 (UTC when no offset is given)."""
    if value is None or value == "":
        return None
    try:
        return float(value)
    except ValueError:
        pass
    try:
        when = datetime.fromisoformat(value)
    except ValueError:
        raise RequestError(
            400, "bad_time", f"{name}={value!r}: expected unix seconds or ISO 8601"
        ) from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when.timestamp()


def parse_labels(values: list[str]) -> tuple[str, ...]:
    labels: list[str] = []
    for raw in values:
        for item in raw.split(","):
            item = item.strip().lower()
            if not item:
                continue
            if item not in Label.__members__.values():
                known = ", ".join(label.value for label in Label)
                raise RequestError(400, "bad_label", f"unknown label {item!r} (known: {known})")
            labels.append(item)
    return tuple(labels)


def int_param(value: str | None, name: str, default: int, low: int, high: int) -> int:
    if value is None or value == "":
        return default
    try:
        number = int(value)
    except ValueError:
        raise RequestError(400, f"bad_{name}", f"{name}={value!r}: expected an integer") from None
    if not low <= number <= high:
        raise RequestError(400, f"bad_{name}", f"{name} must be between {low} and {high}")
    return number


def filter_from_query(query: Any) -> VerdictFilter:
    undecided = query.get("undecided", "").lower() in ("1", "true", "yes")
    return VerdictFilter(
        labels=parse_labels(query.getall("label", [])),
        source=query.get("source") or None,
        backend=query.get("backend") or None,
        since=parse_time(query.get("since"), "since"),
        until=parse_time(query.get("until"), "until"),
        undecided=undecided,
        limit=int_param(query.get("limit"), "limit", 100, 1, MAX_LIMIT),
        offset=int_param(query.get("offset"), "offset", 0, 0, 10**9),
    )


def sha_param(request: web.Request) -> str:
    sha = request.match_info["sha256"].lower()
    if not is_sha256_hex(sha):
        raise RequestError(400, "bad_sha256", "expected a sha256 as 64 hex characters")
    return sha


async def json_body(request: web.Request) -> dict[str, Any]:
    if not request.can_read_body:
        return {}
    raw = await request.read()
    if not raw.strip():
        return {}
    try:
        body = json.loads(raw)
    except ValueError as exc:
        raise RequestError(400, "bad_json", f"request body is not JSON: {exc}") from None
    if not isinstance(body, dict):
        raise RequestError(400, "bad_json", "request body must be a JSON object")
    return body


def actor(request: web.Request, body: dict[str, Any]) -> str:
    name = body.get("by") or request.headers.get("X-Admin-Actor")
    return actor_name("api", str(name) if name else None)


def note(body: dict[str, Any]) -> str:
    text = body.get("note", "")
    if not isinstance(text, str):
        raise RequestError(400, "bad_note", "note must be a string")
    if "\x00" in text:  # no store keeps one (PostgreSQL's text cannot hold it)
        raise RequestError(400, "bad_note", "note must not hold a NUL character")
    return text[:1000]
