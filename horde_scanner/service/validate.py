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
from typing import Any

from aiohttp import web

from horde_scanner.config import OnEvent
from horde_scanner.judging.judge import Outcome, Route
from horde_scanner.service.admission import Slot
from horde_scanner.service.context import VALIDATE, ValidateDeps
from horde_scanner.service.errors import RequestError
from horde_scanner.service.metrics import OVERLOAD
from horde_scanner.service.upload_body import Pace, UploadBody, UploadCut, read_body
from horde_scanner.verdict import Label

log = logging.getLogger(__name__)

ACCEPT_STATUS = 200
REJECT_STATUS = 406
# Time kept back from the deadline for logging and writing the response.
_RESPONSE_MARGIN_S = 0.25


def _decide(svc: ValidateDeps, outcome: Outcome) -> tuple[OnEvent, str]:
    """(accept or reject, why) for an outcome."""
    rules = svc.validation
    verdict = outcome.verdict
    if verdict is None and outcome.route is Route.UNAVAILABLE:
        return rules.on_timeout, "no judging path is live; judged when one is back"
    if verdict is None and outcome.route is Route.STORE:
        return rules.on_timeout, "the store is unavailable; judged when it is back"
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


async def _unjudged(
    request: web.Request,
    svc: ValidateDeps,
    source: str,
    started: float,
    *,
    reason: str,
    received: int,
    later: bool = False,
) -> None:
    """An upload answered without a verdict: never silent (audit row, log line, metric).
    `later`: its body was kept and will be judged (service/admission.py)."""
    svc.metrics.unjudged(reason)
    declared = request.content_length
    address = svc.auth.client_address(request)
    log.warning(
        "upload answered without a verdict (%s): %s from %s, %d of %s bytes, %.1f s",
        reason,
        source,
        address,
        received,
        declared if declared is not None else "?",
        time.monotonic() - started,
    )
    # Bounded like the other answers' audit rows: a flush behind a burst's job writes must
    # not carry the answer past the deadline (the row is still written).
    deadline = started + svc.validation.deadline_s - _RESPONSE_MARGIN_S / 2
    await _audit_by(
        svc,
        deadline,
        "unjudged",
        action=reason,
        source=source,
        detail={
            "reason": reason,
            "address": address,
            "received_bytes": received,
            "declared_bytes": declared,
            "elapsed_ms": round((time.monotonic() - started) * 1000, 1),
            "judged_later": later,
        },
    )


async def _audit_by(svc: ValidateDeps, deadline: float, event: str, **fields: Any) -> None:
    """Audit without letting the store's back-pressure overrun the deadline: every 500th row
    flushes the buffer, which waits for the database thread (busy persisting a burst's jobs).
    The write goes on in the background when time is up; the row is not lost."""
    write = asyncio.ensure_future(svc.store.audit(event, **fields))
    try:
        await asyncio.wait_for(asyncio.shield(write), max(0.0, deadline - time.monotonic()))
    except TimeoutError:
        write.add_done_callback(_log_failure)


def _log_failure(task: asyncio.Future[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("audit write failed: %s", task.exception())


async def _cut(request: web.Request, exc: UploadCut) -> web.StreamResponse:
    """408 makes pict-rs reject the upload (fail closed).

    A lingering close, as HTTP servers do it: the answer goes out, our side of the connection
    is shut at once (FIN, so the sender sees a complete answer now), and what it still sends is
    read and dropped for at most `server.linger_s`. Closing a socket with unread bytes in it
    resets the connection, and a reset can take the answer with it."""
    response = web.json_response({"error": exc.reason, "detail": exc.detail}, status=408)
    response.force_close()  # "Connection: close": this connection takes no further request
    await response.prepare(request)
    await response.write_eof()
    transport = request.transport
    if transport is not None and transport.can_write_eof():
        transport.write_eof()
    return response


def _overloaded(svc: ValidateDeps, started: float) -> web.Response:
    """The body was read, but no admission slot came free before the deadline."""
    answer = svc.validation.on_timeout
    svc.metrics.observe_overload(answer.value, time.monotonic() - started)
    log.warning("overloaded: answered %s with no admission slot before the deadline", answer.value)
    body = {
        "sha256": None,
        "answer": answer.value,
        "label": None,
        "route": OVERLOAD,
        "reasons": ["too many uploads at once; not admitted before the deadline"],
        "elapsed_ms": round((time.monotonic() - started) * 1000, 1),
    }
    return web.json_response(body, status=REJECT_STATUS if answer is OnEvent.REJECT else 200)


async def scan(request: web.Request) -> web.StreamResponse:
    started = time.monotonic()
    svc: ValidateDeps = request.app[VALIDATE]
    client_id = request.match_info["client_id"]
    if not svc.auth.allows(request, client_id):
        raise RequestError(
            401,
            "unknown_client",
            "client id not configured (server.clients, server.client_ids), or IPADDR from an "
            "address that is not allowed",
        )
    rules = svc.validation
    source = f"upload:{svc.auth.name_for(client_id)}"
    deadline = started + rules.deadline_s - _RESPONSE_MARGIN_S
    server = svc.server
    # The body is read first, on its own pace and byte budget (upload_body.py): a slow sender
    # holds a socket, never an admission slot. Admission (hash, lookup, persist) takes
    # milliseconds per upload, and only complete bodies queue for it.
    upload = UploadBody(
        server.max_body_bytes, svc.upload_memory, svc.upload_spool, server.upload_spool_dir
    )
    owned: UploadBody | None = upload  # None once handed to the late admissions
    try:
        pace = Pace(deadline, server.upload_min_bytes_per_s, server.upload_rate_grace_s)
        try:
            await read_body(request, upload, pace)
        except UploadCut as exc:
            await _unjudged(request, svc, source, started, reason=exc.reason, received=exc.received)
            return await _cut(request, exc)
        except RequestError as exc:
            await _unjudged(request, svc, source, started, reason=exc.error, received=upload.size)
            raise
        # A cache hit needs nothing but the hash taken while reading: no admission slot, no
        # joined bytes, no store (most uploads are hits: this is their whole path).
        hit = svc.judge.cached(upload.sha256)
        if hit is not None:
            return _answer(svc, source, started, hit)
        slot = Slot(svc.upload_gate, upload)
        if not await slot.acquire(_loop_time(deadline)):
            await _unjudged(
                request, svc, source, started, reason="overload", received=upload.size, later=True
            )
            # Answered now, judged once a slot is free (a late positive is enforced then).
            svc.late_admissions.take(upload, source=source, answered=rules.on_timeout.value)
            owned = None
            return _overloaded(svc, started)

        try:
            data = await upload.data()
            outcome = await svc.judge.evaluate(
                data,
                sha256=upload.sha256,
                source=source,
                within_s=max(0.0, deadline - time.monotonic()),
                answer_if_late=rules.on_timeout.value,
                on_admitted=slot.release,
            )
            del data
        finally:
            slot.release()
    finally:
        if owned is not None:
            owned.close()
    if outcome.route in (Route.CACHE, Route.ALLOW, Route.DENY):
        return _answer(svc, source, started, outcome)
    answer, why = _decide(svc, outcome)
    label = outcome.label.value if outcome.label else None
    if outcome.route is not Route.CACHE or answer is OnEvent.REJECT:
        # Clean cache hits are counted, not logged one by one: they are most of the traffic.
        await _audit_by(
            svc,
            started + rules.deadline_s - _RESPONSE_MARGIN_S / 2,
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


def _answer(svc: ValidateDeps, source: str, started: float, outcome: Outcome) -> web.Response:
    """An answer from memory (the cache, the lists): counted; audited like any answer, except
    clean cache hits (most of the traffic), without waiting (the rows are buffered anyway)."""
    answer, why = _decide(svc, outcome)
    label = outcome.label.value if outcome.label else None
    elapsed = time.monotonic() - started
    if outcome.route is not Route.CACHE or answer is OnEvent.REJECT:
        task = asyncio.ensure_future(
            svc.store.audit(
                "answered",
                sha256=outcome.sha256,
                label=label,
                action=answer.value,
                source=source,
                detail={"route": outcome.route.value, "why": why,
                        "elapsed_ms": round(elapsed * 1000, 1)},
            )
        )  # fmt: skip
        task.add_done_callback(_log_failure)
    if answer is OnEvent.REJECT:
        log.info("reject %s (%s) %s", outcome.sha256[:12], outcome.route.value, why)
    svc.metrics.observe_answer(outcome, answer.value, elapsed)
    verdict = outcome.verdict
    body = {
        "sha256": outcome.sha256,
        "answer": answer.value,
        "label": label,
        "route": outcome.route.value,
        "reasons": verdict.reasons if verdict else [why],
        "elapsed_ms": round(elapsed * 1000, 1),
    }
    return web.json_response(body, status=REJECT_STATUS if answer is OnEvent.REJECT else 200)
