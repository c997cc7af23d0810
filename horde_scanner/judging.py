"""The one pipeline every image goes through, whoever asks (upload, sweep, `check`):

    bytes -> sha256 -> allow/deny list -> cached verdict (re-judged if the policy changed)
          -> persisted job -> decode (bounded pool) -> backend -> policy -> verdict

`evaluate()` returns within its timeout whatever happens; the job goes on without it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from concurrent.futures import Executor
from dataclasses import dataclass
from enum import StrEnum

from horde_scanner.backends.base import Backend, BackendFailed
from horde_scanner.hashing import sha256_hex
from horde_scanner.jobs import FinishedHook, JobRunner
from horde_scanner.media import DecodeLimits, UnreadableMedia, prepare, sniff
from horde_scanner.policy import Policy
from horde_scanner.store import Job, Store
from horde_scanner.verdict import Label, Verdict

log = logging.getLogger(__name__)

# Hashing big bodies off the loop pays for the thread hop above this size.
_HASH_IN_POOL_BYTES = 1 << 20


class Route(StrEnum):
    """How an answer was reached (for logs, audit and metrics)."""

    ALLOW = "allow"
    DENY = "deny"
    CACHE = "cache"
    BACKEND = "backend"
    TIMEOUT = "timeout"


@dataclass(frozen=True, slots=True)
class Outcome:
    sha256: str
    route: Route
    verdict: Verdict | None  # None only when the timeout came first
    media_type: str | None = None
    size: int | None = None

    @property
    def label(self) -> Label | None:
        return self.verdict.label if self.verdict else None


class Judge:
    def __init__(
        self,
        store: Store,
        policy: Policy,
        backend: Backend,
        executor: Executor,
        *,
        limits: DecodeLimits,
        workers: int,
        cache_size: int = 100_000,
        max_attempts: int = 50,
        on_finished: FinishedHook | None = None,
    ) -> None:
        self.store = store
        self.policy = policy
        self.backend = backend
        self._executor = executor
        self._limits = limits
        self._cache: OrderedDict[str, Outcome] = OrderedDict()
        self._cache_size = cache_size
        self._extra_hook = on_finished
        self.runner = JobRunner(
            store, self._process, self._finished, workers=workers, max_attempts=max_attempts
        )
        self._data_version: int | None = None
        # Bumped by forget(), so a judgement finishing meanwhile does not re-cache stale news.
        self._forgets = 0
        self._sync_task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self.runner.start()
        self._data_version = await self.store.data_version()
        self._sync_task = asyncio.create_task(self._sync_loop(), name="judge-sync")

    async def stop(self) -> None:
        if self._sync_task is not None:
            self._sync_task.cancel()
            try:
                await self._sync_task
            except asyncio.CancelledError:
                pass
        await self.runner.stop()
        await self.store.flush_audit()

    async def _sync_loop(self) -> None:
        # Another process (the CLI's `allow`, a sweep) may change lists or verdicts; drop our
        # in-memory answers when it does. Audit rows are flushed on the same beat.
        while True:
            await asyncio.sleep(1.0)
            try:
                version = await self.store.data_version()
                if version != self._data_version:
                    self._data_version = version
                    self._cache.clear()
                await self.store.flush_audit()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("store sync failed")

    def forget(self, sha256: str | None = None) -> None:
        """Drop cached answers (one, or all) after a list or verdict changed in-process."""
        self._forgets += 1
        if sha256 is None:
            self._cache.clear()
        else:
            self._cache.pop(sha256, None)

    def _remember(self, outcome: Outcome) -> Outcome:
        if self._cache_size:
            self._cache[outcome.sha256] = outcome
            if len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        return outcome

    async def sha256(self, data: bytes) -> str:
        if len(data) > _HASH_IN_POOL_BYTES:
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(self._executor, sha256_hex, data)
        return sha256_hex(data)

    async def lookup(self, sha256: str) -> Outcome | None:
        """Lists, then the verdict cache. Never calls a backend."""
        hit = self._cache.get(sha256)
        if hit is not None:
            self._cache.move_to_end(sha256)
            return hit
        kind = await self.store.list_kind(sha256)
        if kind == "allow":
            verdict = Verdict(label=Label.CLEAN, reasons=["allow list"], backend="list")
            return self._remember(Outcome(sha256, Route.ALLOW, verdict))
        if kind == "deny":
            verdict = Verdict(label=Label.CSAM, reasons=["deny list"], backend="list")
            return self._remember(Outcome(sha256, Route.DENY, verdict))
        stored = await self.store.get_verdict(sha256)
        # Errors and unreadable results were never judgements: look again.
        if stored is None or stored.verdict.label in (Label.ERROR, Label.UNREADABLE):
            return None
        verdict = stored.verdict
        if verdict.policy_version != self.policy.version and verdict.signals is not None:
            verdict = self.policy.judge(verdict.signals)
            await self.store.put_verdict(sha256, verdict)
            await self.store.audit(
                "rejudged",
                sha256=sha256,
                label=verdict.label.value,
                detail={"from": stored.verdict.label.value, "policy": self.policy.version},
            )
        outcome = Outcome(sha256, Route.CACHE, verdict, stored.media_type, stored.size)
        return self._remember(outcome)

    async def evaluate(
        self, data: bytes, *, source: str, within_s: float | None, sha256: str | None = None
    ) -> Outcome:
        """Judge `data`, answering within `within_s` seconds (None: wait as long as it takes)."""
        started = time.monotonic()
        sha = sha256 or await self.sha256(data)
        known = await self.lookup(sha)
        if known is not None:
            return known
        fut = self.runner.future_for(sha)
        if fut is None:
            fut = await self.runner.submit(
                sha, data, media_type=sniff(data), size=len(data), source=source
            )
        media_type, size = sniff(data), len(data)
        del data  # the job row holds the bytes now; do not keep them alive while waiting
        remaining = None if within_s is None else max(0.0, within_s - (time.monotonic() - started))
        try:
            verdict = await asyncio.wait_for(asyncio.shield(fut), remaining)
        except TimeoutError:
            if fut.done() and not fut.cancelled():
                verdict = fut.result()
            else:
                return Outcome(sha, Route.TIMEOUT, None, media_type, size)
        return Outcome(sha, Route.BACKEND, verdict, media_type, size)

    async def _process(self, job: Job) -> Verdict:
        loop = asyncio.get_running_loop()
        try:
            prepared = await loop.run_in_executor(
                self._executor, prepare, job.payload, self._limits
            )
        except UnreadableMedia as exc:
            return Verdict(
                label=Label.UNREADABLE,
                reasons=[exc.reason],
                backend="decoder",
                policy_version=self.policy.version,
            )
        try:
            signals = await self.backend.judge(prepared)
        except BackendFailed as exc:
            return Verdict(
                label=Label.ERROR,
                reasons=[str(exc)],
                backend=self.backend.name,
                policy_version=self.policy.version,
            )
        return self.policy.judge(signals)

    async def _finished(self, job: Job, verdict: Verdict, answered: str | None) -> None:
        await self.store.audit(
            "judged",
            sha256=job.sha256,
            label=verdict.label.value,
            source=job.source,
            detail={
                "reasons": verdict.reasons,
                "backend": verdict.backend,
                "answered_before": answered,
            },
        )
        if verdict.label not in (Label.ERROR, Label.UNREADABLE):
            # An admin may have listed this hash while the job finished (the upload already
            # has its answer by now): a list decision must not be hidden by this verdict.
            generation = self._forgets
            if await self.store.list_kind(job.sha256) is None and generation == self._forgets:
                self._remember(Outcome(job.sha256, Route.CACHE, verdict, job.media_type, job.size))
        if self._extra_hook is not None:
            await self._extra_hook(job, verdict, answered)
