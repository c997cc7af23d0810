"""Remote workers as a Backend: `judge()` queues the image and waits for a worker to pull it.

Workers (our `horde-scanner worker`, or fedi-safety's pictrs-safety worker) poll the service
(service/workers.py speaks the HTTP side). This module holds the queue and its rules:

- a job is handed to one worker at a time; one that has not answered `job_timeout_s` after it
  was taken goes back to the front of the queue for the next worker (its first worker may
  still answer: whichever answer comes first wins);
- a worker is a key name plus a worker name (`X-Worker-Name`, or its address): an answer is
  believed only from a worker the job was handed to; any other is refused and counted;
- a worker that has not polled for `missing_after_s` is gone; with no worker left, waiting
  callers get BackendUnavailable (a router then tries another path, the job runner retries);
- more than `max_queue` waiting jobs make the pool saturated: new images are refused at once.

Everything lives in memory: the job runner persists the work itself, so a restart loses nothing.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
import uuid
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum

from horde_scanner.backends.base import Backend, BackendFailed, BackendUnavailable, Readiness
from horde_scanner.config import WorkerPoolSettings
from horde_scanner.media.decode import PreparedImage
from horde_scanner.verdict import Signals

log = logging.getLogger(__name__)

# Refused answers, or jobs taken and not answered in time, with no accepted answer since,
# before the pool says it is stuck and stops counting as live (a hybrid router then goes
# elsewhere). One alone is ordinary: a worker that died with a job, or a late second answer.
_STUCK_AFTER = 2

# How often a waiting caller re-checks that workers are still there.
_TICK_S = 0.5


@dataclass
class PoolJob:
    id: str
    webp: bytes
    future: asyncio.Future[Signals]
    created: float
    taken_by: str | None = None
    taken_at: float | None = None
    handed_out: int = 0
    # Every worker the job was handed to: only these may answer it.
    holders: set[str] = field(default_factory=set)

    @property
    def filename(self) -> str:
        return f"{self.id}.webp"


class Refusal(StrEnum):
    """Why a worker's answer was not believed (label of the refused-answers metric)."""

    UNKNOWN_JOB = "unknown_job"  # never existed, answered already, or its caller gave up
    NOT_HOLDER = "not_holder"  # the job was handed to another worker


def worker_id(key_name: str, name: str) -> str:
    return f"{key_name}/{name}"


@dataclass
class WorkerInfo:
    name: str
    last_seen: float
    taken: int = 0
    answered: int = 0
    reassigned_from: int = 0
    busy: set[str] = field(default_factory=set)


class WorkerPool(Backend):
    name = "workers"
    expected_latency_s = 1.0

    def __init__(
        self, settings: WorkerPoolSettings, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.settings = settings
        self._clock = clock
        self._keys = [(name, secret.encode()) for name, secret in settings.keys.items()]
        self._waiting: deque[PoolJob] = deque()
        self._jobs: dict[str, PoolJob] = {}  # by filename: waiting or taken
        self.workers: dict[str, WorkerInfo] = {}
        self._work = asyncio.Event()
        self.reassigned = 0
        self.answered = 0
        self.handed_out = 0
        self.refused: Counter[str] = Counter()
        self.last_refusal = ""
        # Since the last accepted answer: jobs handed out, answers refused, jobs not answered
        # in time. Jobs taken and nothing said about them taken: a protocol mismatch.
        self._handed_since_accept = 0
        self._refused_since_accept = 0
        self._expired_since_accept = 0

    # -- worker side ---------------------------------------------------------------------------

    def key_name(self, key: str | None) -> str | None:
        """The name of the configured key `key` is, or None."""
        if not key:
            return None
        given = key.encode()
        # Compare with every key so the time taken does not tell which one nearly matched.
        matches = [name for name, k in self._keys if secrets.compare_digest(given, k)]
        return matches[0] if matches else None

    def authorised(self, key: str | None) -> bool:
        return self.key_name(key) is not None

    def seen(self, worker: str) -> WorkerInfo:
        info = self.workers.get(worker)
        if info is None:
            info = self.workers[worker] = WorkerInfo(worker, self._clock())
        info.last_seen = self._clock()
        return info

    def pop(self, worker: str) -> PoolJob | None:
        info = self.seen(worker)
        self._reclaim_expired()
        while self._waiting:
            job = self._waiting.popleft()
            if job.future.done():  # its caller gave up meanwhile
                continue
            job.taken_by, job.taken_at = worker, self._clock()
            job.handed_out += 1
            job.holders.add(worker)
            self.handed_out += 1
            self._handed_since_accept += 1
            info.taken += 1
            info.busy.add(job.filename)
            return job
        return None

    async def pop_wait(self, worker: str, wait_s: float) -> PoolJob | None:
        """Long poll: a job as soon as one is queued, or None after `wait_s`."""
        deadline = self._clock() + wait_s
        while True:
            job = self.pop(worker)
            if job is not None or self._clock() >= deadline:
                return job
            event = self._work
            try:
                async with asyncio.timeout(min(_TICK_S * 4, deadline - self._clock())):
                    await event.wait()
            except TimeoutError:
                pass

    def answer(
        self, filename: str, worker: str, signals: Signals | None, error: str = ""
    ) -> Refusal | None:
        """A worker's result: None when believed, else why it was refused."""
        info = self.seen(worker)
        job = self._jobs.get(filename)
        if job is None or job.future.done():
            info.busy.discard(filename)
            return self._refuse(Refusal.UNKNOWN_JOB, filename, worker)
        if worker not in job.holders:
            # Never handed this job: whatever it says about the image is not believed.
            return self._refuse(Refusal.NOT_HOLDER, filename, worker)
        info.busy.discard(filename)
        if signals is not None:
            job.future.set_result(signals)
        else:
            job.future.set_exception(BackendFailed(f"worker {worker} could not judge: {error}"))
        info.answered += 1
        self.answered += 1
        self._handed_since_accept = self._refused_since_accept = self._expired_since_accept = 0
        self._forget(job)
        return None

    def _refuse(self, why: Refusal, filename: str, worker: str) -> Refusal:
        self.refused[why.value] += 1
        self._refused_since_accept += 1
        self.last_refusal = f"{why.value}: {filename[:80]!r} from {worker}"
        log.warning("worker answer refused (%s)", self.last_refusal)
        return why

    def _reclaim_expired(self) -> None:
        now = self._clock()
        for job in list(self._jobs.values()):
            if job.taken_at is None or job.future.done():
                continue
            if now - job.taken_at >= self.settings.job_timeout_s:
                owner = self.workers.get(job.taken_by or "")
                if owner is not None:
                    owner.busy.discard(job.filename)
                    owner.reassigned_from += 1
                job.taken_by = job.taken_at = None
                self.reassigned += 1
                self._expired_since_accept += 1
                self._waiting.appendleft(job)  # it has waited longest
                self._notify()

    def _notify(self) -> None:
        # Wake every long poll; the losers wait again on the fresh event.
        self._work.set()
        self._work = asyncio.Event()

    # -- caller side (the Backend) ---------------------------------------------------------------

    def live_workers(self) -> list[WorkerInfo]:
        now = self._clock()
        return [
            w
            for w in self.workers.values()
            # A single-threaded worker does not poll while it judges.
            if now - w.last_seen <= self.settings.missing_after_s
            or (w.busy and now - w.last_seen <= self.settings.job_timeout_s)
        ]

    @property
    def queued(self) -> int:
        return len(self._waiting)

    @property
    def saturated(self) -> bool:
        return self.queued >= self.settings.max_queue

    def readiness(self) -> Readiness:
        live = self.live_workers()
        detail = f"{len(live)} workers live, {self.queued} jobs queued, {len(self._jobs)} open"
        if not live:
            return Readiness(self.name, False, "no worker polled recently; " + detail)
        if self.saturated:
            return Readiness(self.name, False, "saturated; " + detail)
        if self._handed_since_accept and self._refused_since_accept >= _STUCK_AFTER:
            return Readiness(
                self.name,
                False,
                f"workers took {self._handed_since_accept} jobs but none of their answers was "
                f"accepted ({self._refused_since_accept} refused, last {self.last_refusal}); "
                + detail,
            )
        if self._expired_since_accept >= _STUCK_AFTER:
            return Readiness(
                self.name,
                False,
                f"workers took {self._handed_since_accept} jobs but answered none of the last "
                f"{self._expired_since_accept} within workers.job_timeout_s; " + detail,
            )
        return Readiness(self.name, True, detail)

    async def judge(self, image: PreparedImage) -> Signals:
        if not self.live_workers():
            raise BackendUnavailable(
                f"no worker polled in the last {self.settings.missing_after_s:.0f} s",
                retry_after_s=self.settings.missing_after_s,
            )
        if self.saturated:
            raise BackendUnavailable(
                f"worker pool saturated ({self.queued} jobs queued)", retry_after_s=2.0
            )
        loop = asyncio.get_running_loop()
        job = PoolJob(uuid.uuid4().hex, image.webp, loop.create_future(), self._clock())
        self._jobs[job.filename] = job
        self._waiting.append(job)
        self._notify()
        try:
            while True:
                try:
                    async with asyncio.timeout(_TICK_S):
                        return await asyncio.shield(job.future)
                except TimeoutError:
                    self._reclaim_expired()
                    if not self.live_workers():
                        raise BackendUnavailable(
                            "every worker went away while the image waited", retry_after_s=5.0
                        ) from None
        finally:
            if not job.future.done():
                job.future.cancel()
            self._forget(job)

    def _forget(self, job: PoolJob) -> None:
        self._jobs.pop(job.filename, None)
        try:
            self._waiting.remove(job)
        except ValueError:
            pass

    async def close(self) -> None:
        for job in list(self._jobs.values()):
            if not job.future.done():
                job.future.cancel()
        self._jobs.clear()
        self._waiting.clear()
