"""`horde-scanner worker`: judge a service's images on this machine's GPU.

The worker pulls images from a running horde-scanner service over the pull protocol
(service/workers.py), scores them with local CLIP against the phrases of the *service's*
policy (fetched at start and again whenever the service's policy version changes), and posts
the full Signals back; the service applies its own policy. Several pulls run at once
(`concurrency`), so the dynamic batcher sees enough images to fill its batches.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Protocol

import aiohttp

from horde_scanner.backends.base import BackendFailed, BackendUnavailable
from horde_scanner.errors import FinalError
from horde_scanner.media.decode import (
    DecodeLimits,
    PreparedImage,
    UnreadableMedia,
    prepare_within,
)
from horde_scanner.media.memory import DecodeMemory
from horde_scanner.policy.rules import Policy
from horde_scanner.tasks import cancel_and_wait
from horde_scanner.verdict import Signals

log = logging.getLogger(__name__)


class WorkerError(FinalError):
    """The worker cannot go on (bad key, not a horde-scanner service); the message says why."""


class PhraseScorer(Protocol):
    async def set_phrases(self, phrases: list[str]) -> None: ...

    async def judge(self, image: PreparedImage) -> Signals: ...


@dataclass
class WorkerStats:
    judged: int = 0
    failed: int = 0
    refused_answers: int = 0
    connection_errors: int = 0


class Worker:
    def __init__(
        self,
        server: str,
        key: str,
        scorer: PhraseScorer,
        *,
        name: str,
        concurrency: int = 4,
        poll_wait_s: float = 10.0,
        limits: DecodeLimits | None = None,
        policy: Policy | None = None,
        memory: DecodeMemory | None = None,
    ) -> None:
        self.base = server.rstrip("/")
        self._headers = {"apikey": key, "X-Worker-Name": name}
        self.scorer = scorer
        self.name = name
        self.concurrency = concurrency
        self.poll_wait_s = poll_wait_s
        self.limits = limits or DecodeLimits()
        # Only for the pictrs-safety booleans; the service judges the Signals itself.
        self.policy = policy or Policy.load()
        self.policy_version: str | None = None
        self.stats = WorkerStats()
        self._phrases_lock = asyncio.Lock()
        self._decode = ThreadPoolExecutor(max_workers=2, thread_name_prefix="worker-decode")
        # What the service sends is untrusted bytes too: the same decode budget as the service.
        self.memory = memory or DecodeMemory(self.limits.decode_memory_bytes)

    async def run(self, stop: asyncio.Event | None = None) -> WorkerStats:
        stop = stop or asyncio.Event()
        timeout = aiohttp.ClientTimeout(total=self.poll_wait_s + 30)
        async with aiohttp.ClientSession(headers=self._headers, timeout=timeout) as session:
            await self._refresh_policy(session, None, stop)
            loops = [
                asyncio.create_task(self._loop(session, stop), name=f"worker-{i}")
                for i in range(self.concurrency)
            ]
            try:
                done, _ = await asyncio.wait(
                    [asyncio.create_task(stop.wait()), *loops],
                    return_when=asyncio.FIRST_COMPLETED,
                )
                for task in done:
                    if task in loops and task.exception() is not None:
                        raise task.exception()  # type: ignore[misc]
            finally:
                stop.set()
                await cancel_and_wait(loops)
                self._decode.shutdown(wait=False, cancel_futures=True)
        return self.stats

    async def _refresh_policy(
        self, session: aiohttp.ClientSession, seen: str | None, stop: asyncio.Event
    ) -> None:
        async with self._phrases_lock:
            if seen is not None and seen == self.policy_version:
                return  # another loop refreshed it meanwhile
            body = await self._get_json(session, "/api/v1/worker/policy", stop)
            phrases = body.get("clip_phrases")
            if not isinstance(phrases, list) or not all(isinstance(p, str) for p in phrases):
                raise WorkerError(f"{self.base}: policy answer has no clip_phrases list")
            await self.scorer.set_phrases(phrases)
            self.policy_version = str(body.get("version"))
            log.info(
                "worker %s: scoring %d phrases of policy %s",
                self.name,
                len(phrases),
                self.policy_version,
            )

    async def _get_json(
        self, session: aiohttp.ClientSession, path: str, stop: asyncio.Event
    ) -> dict[str, Any]:
        backoff = 1.0
        while True:
            try:
                async with session.get(self.base + path) as resp:
                    self._check_refused(resp)
                    if resp.status == 200:
                        body = await resp.json(content_type=None)
                        if isinstance(body, dict):
                            return body
                    raise WorkerError(
                        f"{self.base}{path}: HTTP {resp.status}; is this a horde-scanner "
                        "service with workers.keys set?"
                    )
            except (aiohttp.ClientError, TimeoutError) as exc:
                backoff = await self._connection_problem(exc, backoff, stop)

    def _check_refused(self, resp: aiohttp.ClientResponse) -> None:
        if resp.status == 401:
            raise WorkerError(f"{self.base} refused the worker key (HTTP 401)")
        if resp.status == 404 and resp.content_type == "application/json":
            raise WorkerError(f"{self.base}: worker pool is not enabled on the service")

    async def _connection_problem(
        self, exc: BaseException, backoff: float, stop: asyncio.Event
    ) -> float:
        self.stats.connection_errors += 1
        log.warning(
            "worker %s: %s unreachable (%s); retrying in %.0f s",
            self.name,
            self.base,
            exc or type(exc).__name__,
            backoff,
        )
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(backoff):
                await stop.wait()
        return min(backoff * 2, 30.0)

    async def _loop(self, session: aiohttp.ClientSession, stop: asyncio.Event) -> None:
        backoff = 1.0
        url = f"{self.base}/api/v1/pop"
        while not stop.is_set():
            try:
                async with session.get(url, params={"wait": str(self.poll_wait_s)}) as resp:
                    self._check_refused(resp)
                    if resp.status == 204:
                        backoff = 1.0
                        continue
                    if resp.status != 200:
                        raise aiohttp.ClientResponseError(
                            resp.request_info, (), status=resp.status, message="unexpected"
                        )
                    data = await resp.read()
                    filename = (
                        resp.content_disposition.filename if resp.content_disposition else None
                    )
                    version = resp.headers.get("X-Policy-Version")
                backoff = 1.0
                if not filename:
                    raise WorkerError(f"{url}: image without a Content-Disposition filename")
                if version and version != self.policy_version:
                    await self._refresh_policy(session, self.policy_version, stop)
                await self._judge_and_answer(session, filename, data)
            except (aiohttp.ClientError, TimeoutError) as exc:
                backoff = await self._connection_problem(exc, backoff, stop)

    async def _judge_and_answer(
        self, session: aiohttp.ClientSession, filename: str, data: bytes
    ) -> None:
        body: dict[str, Any] = {"image": filename, "is_csam": False, "is_nsfw": False}
        try:
            prepared = await prepare_within(data, self.limits, self.memory, self._decode)
            signals = await self.scorer.judge(prepared)
        except BackendUnavailable as exc:
            # Not ours to fail: the service hands the job to another worker after its timeout.
            log.warning("worker %s: %s not judged now: %s", self.name, filename, exc.reason)
            return
        except (UnreadableMedia, BackendFailed) as exc:
            self.stats.failed += 1
            body["error"] = str(exc)
        else:
            verdict = self.policy.judge(signals)
            body.update(
                is_csam=verdict.label.value == "csam",
                is_nsfw=verdict.is_positive,
                signals=signals.model_dump(mode="json"),
            )
            self.stats.judged += 1
        async with session.post(f"{self.base}/api/v1/pop", json=body) as resp:
            self._check_refused(resp)
            if resp.status != 201:
                # Someone else answered first (we were slow and the job was handed on).
                self.stats.refused_answers += 1
                log.info(
                    "worker %s: answer for %s not taken (HTTP %d)", self.name, filename, resp.status
                )
