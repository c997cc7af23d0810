"""AI Horde interrogation ("alchemy") as a Backend: a thin aiohttp client of our own.

Protocol facts (shared/reference/ai-horde-alchemy.md): POST /v2/interrogate/async returns an id;
GET /v2/interrogate/status/{id} is polled until every form is done or faulted; DELETE cancels.
Errors are `{"message", "rc"}`; limiter 429s and schema 400s carry no `rc`.

What this client does about each failure:
  429 (TooManyPrompts or the limiter)  wait with backoff and try again; the image stays queued
  400 MaintenanceMode                  stop sending for `maintenance_pause_s`: BackendUnavailable
  401 InvalidAPIKey                    stop sending at all, log loudly: BackendUnavailable
  403 UntrustedUnsafeIP                BackendUnavailable (raid mode; anonymous users blocked)
  other 400 (image refused)            BackendFailed: this image will never be judged here
  404 on status (request expired)      submit once more, then BackendUnavailable
  faulted forms                        submit once more, then BackendUnavailable
  connection errors, timeouts, 5xx     tenacity: bounded retries with exponential backoff + jitter
  a status poll failing all the same   poll the live request again (it is the Horde's, not lost);
                                       while the path is down, wait for it to come back
  our own request timeout              DELETE the request, BackendUnavailable

Flaky is not down. A submitted request is polled until it ends or `request_timeout_s` of the
Horde's own time has passed (counted from the Horde's answer to the submit: time waiting for
our own submit window is ours, not the Horde's), whatever single polls fail. Its id is kept in
the store (store/horde_requests.py) until it ends, so a process killed meanwhile polls it again
after the restart instead of submitting the image twice.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import logging
import math
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractAsyncContextManager
from dataclasses import replace
from typing import Any, Protocol

import aiohttp
from PIL import Image, ImageOps
from prometheus_client.core import Metric
from tenacity import (
    AsyncRetrying,
    retry_if_exception_type,
    stop_after_attempt,
    wait_exponential_jitter,
)
from tenacity.stop import stop_base

from horde_scanner import PROJECT_URL, __version__
from horde_scanner.backends.base import (
    Backend,
    BackendFailed,
    BackendUnavailable,
    Readiness,
    counter,
    gauge,
    iter_backends,
    judging_sha256,
)
from horde_scanner.backends.horde_perf import HordeLoad, LatencyEstimate
from horde_scanner.backends.kudos import KudosBudget
from horde_scanner.backends.ratelimit import PathLimiter, SubmitBudget, SubmitWindow
from horde_scanner.backends.reachability import Reachability
from horde_scanner.backends.shared_submits import SharedSubmitWindow, SubmitTables
from horde_scanner.config import ANONYMOUS_HORDE_KEY, HordeSettings
from horde_scanner.errors import FinalError, RetryLater
from horde_scanner.media.decode import Frame, PreparedImage, encode_webp
from horde_scanner.policy import frames as framesignals
from horde_scanner.store.interfaces import HordeRequestStore, KudosStore
from horde_scanner.tasks import cancel_and_wait
from horde_scanner.verdict import Signals

log = logging.getLogger(__name__)

# Kudos prices (reference §4): charged on delivery; burn is 2 with slow_workers, else 1.
_FORM_PRICE = {"caption": 1, "nsfw": 1, "interrogation": 3}


class _Transient(RetryLater):
    """A failure worth retrying at once (connection, timeout, 5xx)."""


class _WhenDown(stop_base):
    """Stop retrying once the AI Horde is known down."""

    def __init__(self, reach: Reachability) -> None:
        self._reach = reach

    def __call__(self, retry_state: object) -> bool:
        return self._reach.down


class _RequestExpired(RetryLater):
    pass


class _FormsFaulted(RetryLater):
    pass


class _TimedOut(RetryLater):
    """A live request that did not end within `request_timeout_s` of the Horde's time."""


# A BackendUnavailable while the path is known down: jobs wait this long at most, and are
# woken the moment the path is back (backends/recovery.py), so a long wait costs nothing.
_DOWN_RETRY_S = 300.0


class StatusLimiter(Protocol):
    def slot(self, key: str) -> AbstractAsyncContextManager[None]: ...


class HordeClient:
    """HTTP calls to the AI Horde, with our side of its rate limits applied (ratelimit.py).

    Every attempt, retries included, takes its own slot: the server counts each one."""

    def __init__(
        self,
        settings: HordeSettings,
        session: aiohttp.ClientSession,
        *,
        submits: SubmitBudget | None = None,
        status_limiter: StatusLimiter | None = None,
    ) -> None:
        self.settings = settings
        self._session = session
        self._base = settings.url.rstrip("/")
        self._headers = {
            "Client-Agent": f"horde-scanner:{__version__}:{settings.contact_url or PROJECT_URL}",
        }
        self.submits: SubmitBudget = submits or SubmitWindow(
            settings.submits_per_min, settings.submit_window_s
        )
        self.status_limiter: StatusLimiter = status_limiter or PathLimiter(
            settings.status_polls_per_s, 1.0
        )
        self._timeout = aiohttp.ClientTimeout(total=settings.http_timeout_s)
        # 429s from the Horde's rate limiter (no rc): should stay 0.
        self.rate_limited = 0
        self.reach = Reachability(
            "AI Horde",
            self._probe,
            down_after=settings.down_after_failures,
            probe_interval_s=settings.probe_interval_s,
        )

    async def _probe(self) -> None:
        await self._once("GET", "/v2/status/heartbeat", dict(self._headers), None)

    async def _call(
        self,
        method: str,
        path: str,
        *,
        json_body: Any = None,
        with_key: bool = False,
        slot: Callable[[], AbstractAsyncContextManager[None]] | None = None,
    ) -> tuple[int, Any]:
        headers = dict(self._headers)
        if with_key:
            headers["apikey"] = self.settings.api_key
        retrying = AsyncRetrying(
            retry=retry_if_exception_type(_Transient),
            # Known down: no point retrying; jobs are woken when the probe sees it back.
            stop=stop_after_attempt(self.settings.retries + 1) | _WhenDown(self.reach),
            wait=wait_exponential_jitter(multiplier=0.5, max=10.0, jitter=0.5),
            reraise=True,
        )
        try:
            async for attempt in retrying:
                with attempt:
                    if slot is None:
                        return await self._once(method, path, headers, json_body)
                    async with slot():
                        return await self._once(method, path, headers, json_body)
        except _Transient as exc:
            self.reach.failed(str(exc), gave_up=True)
            # Down: woken when it is back. A flaky path: the job's own backoff.
            hint = _DOWN_RETRY_S if self.reach.down else None
            raise BackendUnavailable(f"AI Horde unreachable: {exc}", retry_after_s=hint) from None
        raise AssertionError("unreachable")  # pragma: no cover

    async def _once(
        self, method: str, path: str, headers: dict[str, str], json_body: Any
    ) -> tuple[int, Any]:
        try:
            async with self._session.request(
                method, self._base + path, json=json_body, headers=headers, timeout=self._timeout
            ) as resp:
                if resp.status >= 500:
                    self.reach.failed(f"HTTP {resp.status}")
                    raise _Transient(f"{method} {path}: HTTP {resp.status}")
                self.reach.ok()
                try:
                    body = await resp.json(content_type=None)
                except ValueError:
                    body = None
                if resp.status == 429 and not (isinstance(body, dict) and body.get("rc")):
                    self.rate_limited += 1
                    log.warning("AI Horde rate limiter answered 429 to %s %s", method, path)
                return resp.status, body
        except (aiohttp.ClientError, TimeoutError) as exc:
            self.reach.failed(f"{type(exc).__name__} {exc}".strip())
            raise _Transient(f"{method} {path}: {type(exc).__name__} {exc}".strip()) from None

    async def submit(self, source_image_b64: str, forms: list[str], priority: float = 0.0) -> str:
        body = {
            "source_image": source_image_b64,
            "forms": [{"name": f} for f in forms],
            "slow_workers": self.settings.slow_workers,
        }
        status, reply = await self._call(
            "POST",
            "/v2/interrogate/async",
            json_body=body,
            with_key=True,
            slot=lambda: self.submits.slot(priority),
        )
        if status in (200, 201, 202) and isinstance(reply, dict) and reply.get("id"):
            return str(reply["id"])
        raise _classify(status, reply)

    def _status_call(self, method: str, request_id: str) -> Any:
        path = f"/v2/interrogate/status/{request_id}"
        # The Horde keys this limit on ip + method + path: GET and DELETE count apart.
        return self._call(method, path, slot=lambda: self.status_limiter.slot(f"{method} {path}"))

    async def status(self, request_id: str) -> dict[str, Any]:
        status, reply = await self._status_call("GET", request_id)
        if status == 200 and isinstance(reply, dict):
            return reply
        if status == 404:
            raise _RequestExpired(request_id)
        raise _classify(status, reply)

    async def cancel(self, request_id: str) -> dict[str, Any] | None:
        """DELETE: the forms not done are cancelled; the request stays until it expires."""
        status, reply = await self._status_call("DELETE", request_id)
        return reply if status == 200 and isinstance(reply, dict) else None

    async def heartbeat(self) -> bool:
        status, _ = await self._call("GET", "/v2/status/heartbeat")
        return status == 200

    async def performance(self) -> Any:
        # One try: the next reading comes soon enough, and start-up must not wait on retries.
        try:
            status, reply = await self._once(
                "GET", "/v2/status/performance", dict(self._headers), None
            )
        except _Transient as exc:
            raise BackendUnavailable(f"AI Horde unreachable: {exc}") from None
        return reply if status == 200 else None


class _HordeRefused(FinalError):
    def __init__(self, status: int, rc: str, message: str) -> None:
        super().__init__(f"HTTP {status} {rc}: {message}")
        self.status = status
        self.rc = rc
        self.message = message


def pack_frames(frames: list[Frame], side: int = 512, quality: int = 85) -> bytes:
    """Up to four frames on one side x side canvas, 2x2, each fitted into its quarter. Blocking."""
    tile = side // 2
    canvas = Image.new("RGB", (side, side), (255, 255, 255))
    for i, frame in enumerate(frames[:4]):
        small = ImageOps.contain(frame.image, (tile, tile), Image.Resampling.BILINEAR)
        x = (i % 2) * tile + (tile - small.width) // 2
        y = (i // 2) * tile + (tile - small.height) // 2
        canvas.paste(small, (x, y))
    return encode_webp(canvas, quality)


def _classify(status: int, reply: Any) -> _HordeRefused:
    reply = reply if isinstance(reply, dict) else {}
    return _HordeRefused(status, str(reply.get("rc") or ""), str(reply.get("message") or ""))


# Before anything is known about the Horde's load (seconds); anonymous and low-kudos users
# often wait tens of seconds.
_PRIOR_LATENCY_S = 20.0
# A Horde queue this long (expected seconds per image) is worth a warning at start-up.
_LONG_QUEUE_S = 60.0


class _Request:
    """One interrogation request of ours: what it reserved and what it has cost so far."""

    __slots__ = ("id", "reserved", "charged", "seen")

    def __init__(self, request_id: str, reserved: float) -> None:
        self.id = request_id
        self.reserved = reserved
        self.charged: set[str] = set()
        # Form states at the last poll (a cancelled form is charged if it was processing).
        self.seen: dict[str, str] = {}


class HordeBackend(Backend):
    """Judges an image with the `nsfw` and `caption` forms (and `interrogation` if enabled)."""

    name = "horde"
    # Frames are sent one request each, or packed four to a 2x2 image (horde.pack_frames).
    takes_frames = True
    # Before its queue is read: anonymous or low-kudos users often wait tens of seconds.
    expected_latency_s = _PRIOR_LATENCY_S

    def __init__(
        self,
        settings: HordeSettings,
        session: aiohttp.ClientSession,
        *,
        client: HordeClient | None = None,
    ) -> None:
        self.settings = settings
        self.pack_side = 512
        self.client = client or HordeClient(settings, session)
        self._in_flight = asyncio.Semaphore(settings.max_in_flight)
        # The contract's concurrency (base.py): a burst of new images all in flight at once.
        self.concurrency = settings.max_in_flight
        self._paused_until = 0.0
        self._pause_reason = ""
        self._fatal: str | None = None
        self.kudos_estimate = 0.0
        self.budget = KudosBudget(settings.max_kudos_per_day)
        self.latency = LatencyEstimate(_PRIOR_LATENCY_S)
        self._perf_task: asyncio.Task[None] | None = None
        self.requests_sent = 0
        self.in_flight = 0
        # Requests that ended without a judgement (each may be submitted once more), requests
        # picked up again after a restart, and status polls that failed (and were repeated).
        self.expired = 0
        self.faulted = 0
        self.timed_out = 0
        self.resumed = 0
        self.failed_polls = 0
        # Where live requests are kept across a restart (the store; None: not kept).
        self._requests: HordeRequestStore | None = None
        if settings.api_key == ANONYMOUS_HORDE_KEY:
            log.warning(
                "AI Horde: using the anonymous API key; anonymous requests get the lowest "
                "priority and are often slower than the validation deadline. Register at "
                "https://aihorde.net/register and set HORDE_SCANNER_HORDE__API_KEY."
            )

    @property
    def forms(self) -> list[str]:
        forms = ["nsfw", "caption"]
        if self.settings.interrogation:
            forms.append("interrogation")
        return forms

    def _form_cost(self, name: str) -> float:
        burn = 2 if self.settings.slow_workers else 1
        return _FORM_PRICE.get(name, 1) + burn

    @property
    def request_cost(self) -> float:
        return sum(self._form_cost(name) for name in self.forms)

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self, store: object | None = None) -> None:
        """Load today's kudos spend from the store and begin reading the Horde's load; live
        requests are kept in the store from now on, and submits drawn from its shared budget."""
        if isinstance(store, KudosStore):
            await self.budget.attach(store)
        if isinstance(store, HordeRequestStore):
            self._requests = store
        if isinstance(store, SubmitTables):
            self.share_submits(store)
        if self.settings.performance_interval_s > 0 and self._perf_task is None:
            self._perf_task = asyncio.create_task(self._perf_loop(), name="horde-performance")

    def share_submits(self, store: SubmitTables) -> None:
        """Draw from the submit budget kept in the store: one for all replicas and processes
        on it, and one that a restart does not empty."""
        settings = self.client.settings
        window = float(settings.submit_window_s)
        # An unanswered slot of a killed process: its POST reached the server within one
        # HTTP timeout of being sent, and counts there for one window after that.
        self.client.submits = SharedSubmitWindow(
            store,
            int(settings.submits_per_min),
            window,
            stale_s=float(settings.http_timeout_s) + window,
        )

    async def close(self) -> None:
        await cancel_and_wait([self._perf_task])
        self._perf_task = None
        await self.client.reach.aclose()
        await self.budget.flush()

    async def _perf_loop(self) -> None:
        await self.read_performance(at_start=True)
        while True:
            await asyncio.sleep(self.settings.performance_interval_s)
            await self.read_performance()

    async def read_performance(self, *, at_start: bool = False) -> HordeLoad | None:
        try:
            body = await self.client.performance()
        except BackendUnavailable as exc:
            log.log(logging.WARNING if at_start else logging.DEBUG, "AI Horde load: %s", exc)
            return None
        load = HordeLoad.from_body(body, time.monotonic())
        if load is None:
            return None
        self.latency.load = load
        if at_start:
            self._log_load(load)
        return load

    def _log_load(self, load: HordeLoad) -> None:
        expected = load.queue_latency_s(len(self.forms))
        if load.interrogators == 0:
            log.warning(
                "AI Horde: no interrogation workers online (%.0f forms queued): misses will "
                "be answered by validation.on_timeout and judged when workers return",
                load.queued_forms,
            )
        elif expected >= _LONG_QUEUE_S:
            log.warning(
                "AI Horde queue is long: %.0f forms for %d interrogation workers, about %.1f "
                "min per image; most misses will be answered by validation.on_timeout and "
                "judged late. A registered key with kudos gets priority; a local path "
                "(backend.kind=hybrid) answers sooner",
                load.queued_forms,
                load.interrogators,
                expected / 60,
            )
        else:
            log.info(
                "AI Horde: %.0f forms queued, %d interrogation workers, about %.1f s per image",
                load.queued_forms,
                load.interrogators,
                expected,
            )

    # -- state -------------------------------------------------------------------------------

    def live_latency_s(self) -> float:
        """Seconds a new image is expected to take (for hybrid routing, /readyz, /metrics)."""
        return self.latency.expected_s(len(self.forms))

    def describe(self) -> dict[str, Any]:
        expected = self.live_latency_s()
        load = self.latency.load
        out: dict[str, Any] = {
            "expected_latency_s": None if math.isinf(expected) else round(expected, 2),
            "latency_from": self.latency.source(),
            "in_flight": self.in_flight,
            "submits_waiting": self.client.submits.waiting,
            "rate_limited": self.client.rate_limited,
            "requests_sent": self.requests_sent,
            "expired": self.expired,
            "faulted": self.faulted,
            "timed_out": self.timed_out,
            "resumed": self.resumed,
            "failed_polls": self.failed_polls,
            "kudos_estimated": self.kudos_estimate,
        }
        if load is not None:
            out["queue"] = {
                "queued_forms": load.queued_forms,
                "interrogators": load.interrogators,
                "read_s_ago": round(time.monotonic() - load.read_at),
            }
        if self.budget.limit is not None:
            out["kudos"] = self.budget.describe()
        return out

    def metrics(self) -> Iterator[Metric]:
        yield gauge("horde_in_flight", "AI Horde requests in flight.", self.in_flight)
        yield counter(
            "horde_kudos_estimated", "Kudos spent on the AI Horde (estimated).", self.kudos_estimate
        )
        yield gauge(
            "horde_expected_latency_seconds",
            "Seconds a new image is expected to take on the AI Horde (+Inf: no workers).",
            self.live_latency_s(),
        )
        yield gauge(
            "horde_submits_waiting",
            "Images waiting for our share of the AI Horde's submit limit.",
            self.client.submits.waiting,
        )
        yield counter(
            "horde_rate_limited",
            "429 answers from the AI Horde's rate limiter (should stay 0).",
            self.client.rate_limited,
        )
        load = self.latency.load
        if load is not None:
            yield gauge(
                "horde_queued_forms",
                "Interrogation forms waiting or processing on the whole AI Horde.",
                load.queued_forms,
            )
            yield gauge(
                "horde_interrogators", "Interrogation workers on the AI Horde.", load.interrogators
            )
        budget = self.budget
        if budget.limit is not None:
            yield gauge("horde_kudos_budget", "horde.max_kudos_per_day.", budget.limit)
            yield gauge(
                "horde_kudos_spent_today", "Kudos charged this UTC day (estimated).", budget.spent
            )
            yield counter(
                "horde_budget_refused",
                "Misses not sent to the AI Horde because the day's kudos budget was spent.",
                budget.refused,
            )

    def readiness(self) -> Readiness:
        return replace(self._readiness(), recoveries=self.client.reach.recoveries)

    def _readiness(self) -> Readiness:
        if self._fatal:
            return Readiness(self.name, False, self._fatal)
        if self.client.reach.down:
            return Readiness(self.name, False, self.client.reach.detail())
        if time.monotonic() < self._paused_until:
            left = self._paused_until - time.monotonic()
            return Readiness(self.name, False, f"{self._pause_reason} (retry in {left:.0f} s)")
        if not self.budget.can_afford(self.request_cost):
            return Readiness(self.name, False, self._budget_reason())
        expected = self.live_latency_s()
        shown = "unknown (no workers)" if math.isinf(expected) else f"{expected:.1f} s"
        detail = f"{self.in_flight} requests in flight; expected latency {shown}"
        waiting = self.client.submits.waiting
        if waiting:
            detail += f"; {waiting} waiting for the submit limit"
        return Readiness(self.name, True, detail)

    def _budget_reason(self) -> str:
        b = self.budget
        return (
            f"daily kudos budget spent ({b.spent:.0f} of {b.limit or 0:.0f}, {b.reserved:.0f} "
            f"reserved); renews in {b.renews_in_s() / 3600:.1f} h (UTC midnight)"
        )

    def _check_sendable(self) -> None:
        if self._fatal:
            raise BackendUnavailable(self._fatal, retry_after_s=300)
        if self.client.reach.down:
            raise BackendUnavailable(self.client.reach.detail(), retry_after_s=_DOWN_RETRY_S)
        left = self._paused_until - time.monotonic()
        if left > 0:
            raise BackendUnavailable(self._pause_reason, retry_after_s=left)

    # -- judging -----------------------------------------------------------------------------

    async def judge(self, image: PreparedImage) -> Signals:
        # Arrival time orders a burst beyond the submit limit: oldest image first.
        arrived = time.monotonic()
        if image.animated:
            return await self._judge_frames(image, arrived)
        return await self._judge_webp(image.webp, arrived)

    async def _judge_frames(self, image: PreparedImage, arrived: float) -> Signals:
        size = 4 if self.settings.pack_frames else 1
        groups = [list(image.frames[i : i + size]) for i in range(0, len(image.frames), size)]
        tasks = [asyncio.ensure_future(self._judge_group(group, arrived)) for group in groups]
        try:
            results = await asyncio.gather(*tasks)
        except BaseException:
            await cancel_and_wait(tasks)
            raise
        return framesignals.combine(self.name, list(zip(groups, results, strict=True)))

    async def _judge_group(self, frames: list[Frame], arrived: float) -> Signals:
        if len(frames) == 1 and frames[0].webp:
            return await self._judge_webp(frames[0].webp, arrived)
        webp = await asyncio.to_thread(pack_frames, frames, self.pack_side)
        return await self._judge_webp(webp, arrived)

    async def _judge_webp(self, webp: bytes, arrived: float) -> Signals:
        self._check_sendable()
        payload = base64.b64encode(webp).decode("ascii")
        async with self._in_flight:
            self.in_flight += 1
            try:
                return await self._judge_encoded(payload, arrived)
            finally:
                self.in_flight -= 1

    async def _judge_encoded(self, payload: str, arrived: float) -> Signals:
        key = self._image_key(payload)
        last_problem = ""
        # One resubmission is allowed for a request that expired or faulted (reference §4);
        # a live one is polled until it ends or outlives request_timeout_s.
        for attempt in range(2):
            cost = self.request_cost
            if not self.budget.reserve(cost):
                raise BackendUnavailable(self._budget_reason(), self.budget.renews_in_s())
            try:
                request_id, sent_at = await self._live_or_submit(key, payload, arrived)
            except BaseException:
                self.budget.settle(cost, 0.0)
                raise
            req = _Request(request_id, cost)
            # The Horde's time only: from its answer to the submit, never our queueing before.
            deadline = sent_at + self.settings.request_timeout_s
            again = "resubmitting" if attempt == 0 else "giving up"
            try:
                results = await self._wait(req, deadline)
            except _RequestExpired:
                self.expired += 1
                last_problem = "request expired on the AI Horde"
                log.warning("AI Horde request %s expired; %s", request_id, again)
                await self._forget(key, req)
                self._settle(req)
                continue
            except _FormsFaulted as exc:
                self.faulted += 1
                last_problem = f"forms faulted on the AI Horde: {exc}"
                log.warning("AI Horde request %s: %s; %s", request_id, last_problem, again)
                await self._cancel_quietly(req)
                await self._forget(key, req)
                continue
            except _TimedOut:
                # Given up (and cancelled): the job tries again after its backoff.
                self.timed_out += 1
                problem = f"AI Horde did not answer within {self.settings.request_timeout_s:g} s"
                log.warning("AI Horde request %s: %s; cancelled", request_id, problem)
                await self._cancel_quietly(req)
                await self._forget(key, req)
                raise BackendUnavailable(problem) from None
            except BaseException:
                # Cancelled by a caller, or a refusal: never leave work behind.
                await self._cancel_quietly(req)
                await self._forget(key, req)
                raise
            self.latency.observe(time.monotonic() - sent_at)
            self._settle(req)
            await self._forget(key, req)
            return self._signals(results)
        raise BackendUnavailable(last_problem)

    def _image_key(self, payload: str) -> str:
        """What identifies one request across a restart: the file being judged (its sha256,
        so that two files sending the same pixels are still judged apart) and what is sent
        for it (one file may send several frames)."""
        digest = hashlib.sha256((judging_sha256.get() or "").encode("ascii"))
        digest.update(payload.encode("ascii"))
        digest.update(",".join(self.forms).encode("ascii"))
        return digest.hexdigest()

    async def _live_or_submit(self, key: str, payload: str, arrived: float) -> tuple[str, float]:
        """(request id, monotonic time the Horde accepted it): the request a process before a
        restart left live for this image, else a new submission (remembered in the store)."""
        if self._requests is not None:
            try:
                held = await self._requests.live_horde_request(key)
            except Exception as exc:  # the store is away: submit as if nothing were held
                log.warning("AI Horde requests held in the store unreadable: %s", exc)
                held = None
            if held is not None:
                request_id, submitted_at = held
                self.resumed += 1
                # Left by a process killed before a restart (or by a replica whose lease on
                # this job lapsed): the Horde still holds it, so poll it, never pay twice.
                log.info("AI Horde request %s from before a restart: polling it again", request_id)
                return request_id, time.monotonic() - max(0.0, time.time() - submitted_at)
        request_id = await self._submit(payload, arrived)
        sent_at = time.monotonic()
        if self._requests is not None:
            try:
                await self._requests.hold_horde_request(key, request_id, time.time())
            except Exception as exc:
                log.warning("AI Horde request %s not kept in the store: %s", request_id, exc)
        return request_id, sent_at

    async def _forget(self, key: str, req: _Request) -> None:
        if self._requests is None:
            return
        try:
            await asyncio.shield(self._requests.drop_horde_request(key, req.id))
        except (asyncio.CancelledError, Exception) as exc:
            # Left behind, it is dropped when it must have expired on the Horde anyway.
            log.debug("AI Horde request %s not dropped from the store: %s", req.id, exc)

    async def _submit(self, payload: str, arrived: float) -> str:
        backoff = 2.0
        # Waiting for our own submit window is not bounded here (the image is queued, not
        # failing); only a Horde that keeps answering 429 for request_timeout_s is given up.
        refused_since: float | None = None
        while True:
            self._check_sendable()
            try:
                request_id = await self.client.submit(payload, self.forms, arrived)
                self.requests_sent += 1
                return request_id
            except _HordeRefused as exc:
                if exc.status == 429:
                    # Too many prompts or the per-IP limiter: wait our turn, keep the image.
                    now = time.monotonic()
                    refused_since = now if refused_since is None else refused_since
                    if now + backoff - refused_since > self.settings.request_timeout_s:
                        raise BackendUnavailable("AI Horde keeps answering 429", 60) from None
                    log.info("AI Horde 429 (%s); waiting %.0f s", exc.rc or "rate limit", backoff)
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, 60.0)
                    continue
                raise self._refusal(exc) from None

    def _refusal(self, exc: _HordeRefused) -> Exception:
        if exc.rc == "MaintenanceMode":
            self._pause(self.settings.maintenance_pause_s, "AI Horde is in maintenance mode")
            return BackendUnavailable(self._pause_reason, self.settings.maintenance_pause_s)
        if exc.status == 401 or exc.rc == "InvalidAPIKey":
            self._fatal = (
                "AI Horde rejected the API key (401 InvalidAPIKey): fix "
                "horde.api_key / HORDE_SCANNER_HORDE__API_KEY and restart"
            )
            log.error(self._fatal)
            return BackendUnavailable(self._fatal, retry_after_s=300)
        if exc.status == 403:
            self._pause(self.settings.maintenance_pause_s, f"AI Horde refused us: {exc}")
            return BackendUnavailable(self._pause_reason, self.settings.maintenance_pause_s)
        if exc.status == 400 and exc.rc:
            return BackendFailed(f"AI Horde refused the image: {exc.rc} {exc.message}".strip())
        return BackendUnavailable(f"AI Horde answered {exc}", retry_after_s=60)

    def _pause(self, seconds: float, reason: str) -> None:
        self._paused_until = time.monotonic() + seconds
        self._pause_reason = reason
        log.warning("%s; not sending for %.0f s", reason, seconds)

    def next_poll_s(self, state: str | None) -> float:
        """Seconds to the next status poll: `state` is the request's state at the last poll
        (None before the first). Faster while a worker is processing it."""
        if state is None:
            return self.settings.first_poll_s
        if state == "processing":
            return self.settings.processing_poll_s
        return self.settings.poll_interval_s

    async def _wait(self, req: _Request, deadline: float) -> dict[str, Any]:
        """Poll a live request until it ends (done, faulted, expired: 404) or outlives
        `deadline` (_TimedOut). A poll that fails (5xx, a connection error, after its retries)
        loses nothing: the request lives on the Horde, so it is polled again; while the path
        is down, the next poll waits for it to come back."""
        overall: str | None = None
        while True:
            await asyncio.sleep(self.next_poll_s(overall))
            if self.client.reach.down:
                await self.client.reach.wait_up(deadline - time.monotonic())
            if time.monotonic() > deadline:
                raise _TimedOut(req.id)
            try:
                state = await self.client.status(req.id)
            except BackendUnavailable as exc:
                self.failed_polls += 1
                log.debug("AI Horde status of %s failed (%s); polling again", req.id, exc)
                continue
            except _HordeRefused as exc:
                if exc.status == 429:
                    continue
                raise self._refusal(exc) from None
            overall = str(state.get("state") or "")
            forms = {str(f.get("form")): f for f in state.get("forms", []) if isinstance(f, dict)}
            req.seen = {name: str(f.get("state")) for name, f in forms.items()}
            done = {n: f for n, f in forms.items() if f.get("state") == "done"}
            self._charge(req, done)
            if overall in ("done", "faulted", "partial"):
                missing = [name for name in self.forms if name not in done]
                if missing:
                    raise _FormsFaulted(", ".join(missing))
                return {name: f.get("result") or {} for name, f in done.items()}

    def _charge(self, req: _Request, names: Any) -> None:
        for name in names:
            if name not in req.charged:
                req.charged.add(name)
                self.kudos_estimate += self._form_cost(name)

    def _settle(self, req: _Request) -> None:
        self.budget.settle(req.reserved, sum(self._form_cost(n) for n in req.charged))

    async def _cancel_quietly(self, req: _Request) -> None:
        # The Horde charges a form cancelled while a worker processes it, as if delivered;
        # one still waiting is free. A form we never saw waiting is counted as charged.
        try:
            reply = await asyncio.shield(self.client.cancel(req.id))
        except (BackendUnavailable, asyncio.CancelledError, Exception) as exc:
            log.debug("AI Horde cancel of %s failed: %s", req.id, exc)
            reply = None
        if isinstance(reply, dict):
            for form in reply.get("forms", []):
                if isinstance(form, dict) and form.get("state") == "done":
                    self._charge(req, [str(form.get("form"))])
        self._charge(req, [n for n in self.forms if req.seen.get(n) not in ("waiting", "faulted")])
        self._settle(req)

    def _signals(self, results: dict[str, Any]) -> Signals:
        nsfw = results.get("nsfw", {}).get("nsfw")
        caption = results.get("caption", {}).get("caption")
        tags: dict[str, float] = {}
        interrogation = results.get("interrogation", {}).get("interrogation") or {}
        for entries in interrogation.values() if isinstance(interrogation, dict) else []:
            for entry in entries or []:
                if isinstance(entry, dict) and "text" in entry:
                    text = str(entry["text"]).lower()
                    tags[text] = max(tags.get(text, 0.0), float(entry.get("confidence") or 0.0))
        return Signals(
            backend=self.name,
            nsfw=bool(nsfw) if nsfw is not None else None,
            caption=str(caption) if caption is not None else None,
            tags=tags,
        )


def horde_paths(backend: Backend) -> list[HordeBackend]:
    """The AI Horde paths inside a backend (itself, a router's member, behind a pre-screen)."""
    return [b for b in iter_backends(backend) if isinstance(b, HordeBackend)]


def share_horde_budget(backend: Backend, store: object) -> None:
    """The AI Horde paths inside `backend` draw from the submit budget kept in `store`
    (HordeBackend.start does this for a store that keeps one)."""
    if not isinstance(store, SubmitTables):
        return
    for horde in horde_paths(backend):
        horde.share_submits(store)
