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
  our own request timeout              DELETE the request, BackendUnavailable
"""

from __future__ import annotations

import asyncio
import base64
import logging
import time
from typing import Any

import aiohttp
from PIL import Image, ImageOps
from tenacity import (
    AsyncRetrying,
    retry_if_exception_type,
    stop_after_attempt,
    wait_exponential_jitter,
)

from horde_scanner import PROJECT_URL, __version__
from horde_scanner.backends.base import BackendFailed, BackendUnavailable, Readiness
from horde_scanner.backends.ratelimit import TokenBucket
from horde_scanner.config import ANONYMOUS_HORDE_KEY, HordeSettings
from horde_scanner.judging import frames as framesignals
from horde_scanner.media.decode import Frame, PreparedImage, encode_webp
from horde_scanner.verdict import Signals

log = logging.getLogger(__name__)

# Kudos prices (reference §4): charged on delivery; burn is 2 with slow_workers, else 1.
_FORM_PRICE = {"caption": 1, "nsfw": 1, "interrogation": 3}


class _Transient(Exception):
    """A failure worth retrying at once (connection, timeout, 5xx)."""


class _RequestExpired(Exception):
    pass


class _FormsFaulted(Exception):
    pass


class HordeClient:
    """HTTP calls to the AI Horde, with our side of its rate limits applied."""

    def __init__(self, settings: HordeSettings, session: aiohttp.ClientSession) -> None:
        self.settings = settings
        self._session = session
        self._base = settings.url.rstrip("/")
        self._headers = {
            "Client-Agent": f"horde-scanner:{__version__}:{settings.contact_url or PROJECT_URL}",
        }
        self._submits = TokenBucket(settings.submits_per_min / 60.0, burst=5)
        self._polls = TokenBucket(settings.status_polls_per_s)
        self._timeout = aiohttp.ClientTimeout(total=settings.http_timeout_s)

    async def _call(
        self, method: str, path: str, *, json_body: Any = None, with_key: bool = False
    ) -> tuple[int, Any]:
        headers = dict(self._headers)
        if with_key:
            headers["apikey"] = self.settings.api_key
        retrying = AsyncRetrying(
            retry=retry_if_exception_type(_Transient),
            stop=stop_after_attempt(self.settings.retries + 1),
            wait=wait_exponential_jitter(multiplier=0.5, max=10.0, jitter=0.5),
            reraise=True,
        )
        try:
            async for attempt in retrying:
                with attempt:
                    return await self._once(method, path, headers, json_body)
        except _Transient as exc:
            raise BackendUnavailable(f"AI Horde unreachable: {exc}", retry_after_s=30) from None
        raise AssertionError("unreachable")  # pragma: no cover

    async def _once(
        self, method: str, path: str, headers: dict[str, str], json_body: Any
    ) -> tuple[int, Any]:
        try:
            async with self._session.request(
                method, self._base + path, json=json_body, headers=headers, timeout=self._timeout
            ) as resp:
                if resp.status >= 500:
                    raise _Transient(f"{method} {path}: HTTP {resp.status}")
                try:
                    body = await resp.json(content_type=None)
                except ValueError:
                    body = None
                return resp.status, body
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise _Transient(f"{method} {path}: {type(exc).__name__} {exc}".strip()) from None

    async def submit(self, source_image_b64: str, forms: list[str]) -> str:
        body = {
            "source_image": source_image_b64,
            "forms": [{"name": f} for f in forms],
            "slow_workers": self.settings.slow_workers,
        }
        await self._submits.acquire()
        status, reply = await self._call(
            "POST", "/v2/interrogate/async", json_body=body, with_key=True
        )
        if status in (200, 201, 202) and isinstance(reply, dict) and reply.get("id"):
            return str(reply["id"])
        raise _classify(status, reply)

    async def status(self, request_id: str) -> dict[str, Any]:
        await self._polls.acquire()
        status, reply = await self._call("GET", f"/v2/interrogate/status/{request_id}")
        if status == 200 and isinstance(reply, dict):
            return reply
        if status == 404:
            raise _RequestExpired(request_id)
        raise _classify(status, reply)

    async def cancel(self, request_id: str) -> None:
        await self._call("DELETE", f"/v2/interrogate/status/{request_id}")

    async def heartbeat(self) -> bool:
        status, _ = await self._call("GET", "/v2/status/heartbeat")
        return status == 200


class _HordeRefused(Exception):
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


class HordeBackend:
    """Judges an image with the `nsfw` and `caption` forms (and `interrogation` if enabled)."""

    name = "horde"
    # Frames are sent one request each, or packed four to a 2x2 image (horde.pack_frames).
    takes_frames = True

    def __init__(self, settings: HordeSettings, session: aiohttp.ClientSession) -> None:
        self.settings = settings
        self.pack_side = 512
        self.client = HordeClient(settings, session)
        self._in_flight = asyncio.Semaphore(settings.max_in_flight)
        self._paused_until = 0.0
        self._pause_reason = ""
        self._fatal: str | None = None
        self.kudos_estimate = 0.0
        self.requests_sent = 0
        self.in_flight = 0
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

    def readiness(self) -> Readiness:
        if self._fatal:
            return Readiness(self.name, False, self._fatal)
        if time.monotonic() < self._paused_until:
            left = self._paused_until - time.monotonic()
            return Readiness(self.name, False, f"{self._pause_reason} (retry in {left:.0f} s)")
        return Readiness(self.name, True, f"{self.in_flight} requests in flight")

    async def aclose(self) -> None:
        return None

    def _check_sendable(self) -> None:
        if self._fatal:
            raise BackendUnavailable(self._fatal, retry_after_s=300)
        left = self._paused_until - time.monotonic()
        if left > 0:
            raise BackendUnavailable(self._pause_reason, retry_after_s=left)

    async def judge(self, image: PreparedImage) -> Signals:
        if image.animated:
            return await self._judge_frames(image)
        return await self._judge_webp(image.webp)

    async def _judge_frames(self, image: PreparedImage) -> Signals:
        size = 4 if self.settings.pack_frames else 1
        groups = [list(image.frames[i : i + size]) for i in range(0, len(image.frames), size)]
        tasks = [asyncio.ensure_future(self._judge_group(group)) for group in groups]
        try:
            results = await asyncio.gather(*tasks)
        except BaseException:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            raise
        return framesignals.combine(self.name, list(zip(groups, results, strict=True)))

    async def _judge_group(self, frames: list[Frame]) -> Signals:
        if len(frames) == 1 and frames[0].webp:
            return await self._judge_webp(frames[0].webp)
        webp = await asyncio.to_thread(pack_frames, frames, self.pack_side)
        return await self._judge_webp(webp)

    async def _judge_webp(self, webp: bytes) -> Signals:
        self._check_sendable()
        payload = base64.b64encode(webp).decode("ascii")
        async with self._in_flight:
            self.in_flight += 1
            try:
                return await self._judge_encoded(payload)
            finally:
                self.in_flight -= 1

    async def _judge_encoded(self, payload: str) -> Signals:
        deadline = time.monotonic() + self.settings.request_timeout_s
        last_problem = ""
        # One resubmission is allowed for an expired request or faulted forms (reference §4).
        for attempt in range(2):
            request_id = await self._submit(payload, deadline)
            try:
                results = await self._wait(request_id, deadline)
            except _RequestExpired:
                last_problem = "request expired on the AI Horde"
                log.warning(
                    "AI Horde request %s expired; %s",
                    request_id,
                    "resubmitting" if attempt == 0 else "giving up",
                )
                continue
            except _FormsFaulted as exc:
                last_problem = f"forms faulted on the AI Horde: {exc}"
                log.warning("AI Horde request %s: %s", request_id, last_problem)
                await self._cancel_quietly(request_id)
                continue
            except BaseException:
                # Cancelled by a caller, our own timeout, or an error: never leave work behind.
                await self._cancel_quietly(request_id)
                raise
            return self._signals(results)
        raise BackendUnavailable(last_problem, retry_after_s=60)

    async def _submit(self, payload: str, deadline: float) -> str:
        backoff = 2.0
        while True:
            self._check_sendable()
            try:
                request_id = await self.client.submit(payload, self.forms)
                self.requests_sent += 1
                return request_id
            except _HordeRefused as exc:
                if exc.status == 429:
                    # Too many prompts or the per-IP limiter: wait our turn, keep the image.
                    if time.monotonic() + backoff > deadline:
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

    async def _wait(self, request_id: str, deadline: float) -> dict[str, Any]:
        while True:
            await asyncio.sleep(self.settings.poll_interval_s)
            if time.monotonic() > deadline:
                raise BackendUnavailable(
                    f"AI Horde did not answer within {self.settings.request_timeout_s:.0f} s",
                    retry_after_s=60,
                )
            try:
                state = await self.client.status(request_id)
            except _HordeRefused as exc:
                if exc.status == 429:
                    continue
                raise self._refusal(exc) from None
            overall = state.get("state")
            forms = {str(f.get("form")): f for f in state.get("forms", []) if isinstance(f, dict)}
            if overall in ("done", "faulted", "partial"):
                missing = [
                    name for name in self.forms if forms.get(name, {}).get("state") != "done"
                ]
                done = {n: f for n, f in forms.items() if f.get("state") == "done"}
                self._count_kudos(done)
                if missing:
                    raise _FormsFaulted(", ".join(missing))
                return {name: f.get("result") or {} for name, f in done.items()}

    def _count_kudos(self, done: dict[str, Any]) -> None:
        burn = 2 if self.settings.slow_workers else 1
        self.kudos_estimate += sum(_FORM_PRICE.get(name, 1) + burn for name in done)

    async def _cancel_quietly(self, request_id: str) -> None:
        try:
            await asyncio.shield(self.client.cancel(request_id))
        except (BackendUnavailable, asyncio.CancelledError, Exception) as exc:
            log.debug("AI Horde cancel of %s failed: %s", request_id, exc)

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
