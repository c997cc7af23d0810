"""POST /api/v1/scan/{client_id}: pict-rs's external validation call.

pict-rs streams the stored file as the raw body (chunked, Content-Type = stored format); a
multipart `file` field is accepted too, as pictrs-safety does. 2xx accepts, 406 rejects; any
other status also makes pict-rs reject, so errors that are the uploader's fault say so clearly.
The answer never comes later than `validation.deadline_s` after the request arrived.
"""

from __future__ import annotations

import asyncio
import logging
import time

import aiohttp
from aiohttp import web

from horde_scanner.config import OnEvent
from horde_scanner.judging.judge import Outcome, Route
from horde_scanner.service.context import SERVICES, Services
from horde_scanner.service.errors import RequestError
from horde_scanner.verdict import Label

log = logging.getLogger(__name__)

ACCEPT_STATUS = 200
REJECT_STATUS = 406
# Time kept back from the deadline for logging and writing the response.
_RESPONSE_MARGIN_S = 0.25


async def read_upload(request: web.Request, limit: int) -> bytes:
    if request.content_length is not None and request.content_length > limit:
        raise RequestError(
            413,
            "too_large",
            f"body of {request.content_length} bytes exceeds server.max_body_bytes ({limit})",
        )
    if request.content_type == "multipart/form-data":
        data = await _read_multipart_file(request, limit)
    else:
        buf = bytearray()
        async for chunk in request.content.iter_any():
            buf += chunk
            if len(buf) > limit:
                raise RequestError(
                    413, "too_large", f"body exceeds server.max_body_bytes ({limit})"
                )
        data = bytes(buf)
    if not data:
        raise RequestError(400, "empty_body", "the request carried no image bytes")
    return data


async def _read_multipart_file(request: web.Request, limit: int) -> bytes:
    try:
        reader = await request.multipart()
        async for part in reader:
            if isinstance(part, aiohttp.BodyPartReader) and part.name == "file":
                buf = bytearray()
                while chunk := await part.read_chunk(65536):
                    buf += chunk
                    if len(buf) > limit:
                        raise RequestError(
                            413, "too_large", f"file exceeds server.max_body_bytes ({limit})"
                        )
                return bytes(buf)
    except ValueError as exc:
        raise RequestError(400, "bad_multipart", f"cannot read multipart body: {exc}") from None
    raise RequestError(400, "missing_file", "multipart body has no `file` field")


def _decide(svc: Services, outcome: Outcome) -> tuple[OnEvent, str]:
    """(accept or reject, why) for an outcome."""
    rules = svc.settings.validation
    verdict = outcome.verdict
    if verdict is None and outcome.route is Route.UNAVAILABLE:
        return rules.on_timeout, "no judging path is live; judged when one is back"
    if verdict is None:
        return rules.on_timeout, "deadline reached before a verdict"
    if verdict.label is Label.UNREADABLE:
        return rules.on_unreadable, "unreadable: " + "; ".join(verdict.reasons)
    if verdict.label is Label.ERROR:
        return rules.on_timeout, "not judged: " + "; ".join(verdict.reasons)
    if verdict.label in rules.reject_labels:
        return OnEvent.REJECT, f"{verdict.label.value}: " + "; ".join(verdict.reasons)
    return OnEvent.ACCEPT, verdict.label.value


def _loop_time(monotonic_deadline: float) -> float:
    loop = asyncio.get_running_loop()
    return loop.time() + (monotonic_deadline - time.monotonic())


def _overloaded(svc: Services, source: str, started: float) -> web.Response:
    """Too many uploads at once to even read this one before the deadline."""
    answer = svc.settings.validation.on_timeout
    svc.answers[("overload", answer.value)] += 1
    log.warning("overloaded: answered %s without reading the upload (%s)", answer.value, source)
    body = {
        "sha256": None,
        "answer": answer.value,
        "label": None,
        "route": "overload",
        "reasons": ["too many uploads at once; not read before the deadline"],
        "elapsed_ms": round((time.monotonic() - started) * 1000, 1),
    }
    return web.json_response(body, status=REJECT_STATUS if answer is OnEvent.REJECT else 200)


async def scan(request: web.Request) -> web.Response:
    started = time.monotonic()
    svc: Services = request.app[SERVICES]
    client_id = request.match_info["client_id"]
    if not svc.auth.allows(request, client_id):
        raise RequestError(
            401,
            "unknown_client",
            "client id not configured (server.clients, server.client_ids), or IPADDR from an "
            "address that is not allowed",
        )
    rules = svc.settings.validation
    source = f"upload:{svc.auth.name_for(client_id)}"
    deadline = started + rules.deadline_s - _RESPONSE_MARGIN_S
    gate = svc.upload_gate
    # Bodies are read only while a slot is free: a burst waits in the kernel's socket buffers,
    # not in our memory. Admission (hash, lookup, persist) takes milliseconds per upload.
    try:
        async with asyncio.timeout_at(_loop_time(deadline)):
            await gate.acquire()
    except TimeoutError:
        return _overloaded(svc, source, started)
    released = False

    def release() -> None:
        nonlocal released
        if not released:
            released = True
            gate.release()

    try:
        data = await read_upload(request, svc.settings.server.max_body_bytes)
        outcome = await svc.judge.evaluate(
            data,
            source=source,
            within_s=max(0.0, deadline - time.monotonic()),
            answer_if_late=rules.on_timeout.value,
            on_admitted=release,
        )
        del data
    finally:
        release()
    answer, why = _decide(svc, outcome)
    label = outcome.label.value if outcome.label else None
    if outcome.route is not Route.CACHE or answer is OnEvent.REJECT:
        # Clean cache hits are counted, not logged one by one: they are most of the traffic.
        await svc.store.audit(
            "answered",
            sha256=outcome.sha256,
            label=label,
            action=answer.value,
            source=source,
            detail={
                "route": outcome.route.value,
                "why": why,
                "elapsed_ms": round((time.monotonic() - started) * 1000, 1),
            },
        )
    svc.answers[(outcome.route.value, answer.value)] += 1
    svc.metrics.observe_answer(outcome, answer.value, time.monotonic() - started)
    if answer is OnEvent.REJECT:
        log.info("reject %s (%s) %s", outcome.sha256[:12], outcome.route.value, why)
    body = {
        "sha256": outcome.sha256,
        "answer": answer.value,
        "label": label,
        "route": outcome.route.value,
        "reasons": outcome.verdict.reasons if outcome.verdict else [why],
        "elapsed_ms": round((time.monotonic() - started) * 1000, 1),
    }
    status = REJECT_STATUS if answer is OnEvent.REJECT else ACCEPT_STATUS
    return web.json_response(body, status=status)
