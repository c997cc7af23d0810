"""Background judgements that survive a restart.

Every miss becomes a row in the store's `jobs` table before anything else happens, so a crash,
a restart or a backend outage loses nothing. A fixed set of worker tasks takes rows from the
table through a small in-memory queue: memory holds at most `2 x workers` payloads however many
images wait, and no task is spawned per request.

Whoever needs the outcome of a job (an upload waiting on its deadline, a sweep, `check`) gets
a Future for it by sha256; identical images share one job and one Future ("single flight").

The store is an upstream that can go away for a while (a restart, a fail-over, a full disk,
a lock: store/outage.py). No task here dies of it: the feeder waits for the store's return; a
verdict reached meanwhile is delivered to whoever waits for it at once and kept in memory
(at most `max_kept`; past that the worker waits) to be written when the store is back, never
judged again; a retry that could not be written is kept the same way.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

from horde_scanner.backends.base import BackendUnavailable
from horde_scanner.store.interfaces import JobStore, StoreLifecycle, VerdictStore
from horde_scanner.store.jobs import Job
from horde_scanner.store.verdicts import StoredVerdict
from horde_scanner.tasks import cancel_and_wait
from horde_scanner.verdict import Label, Verdict, VerdictRoute


class JobRunnerStore(VerdictStore, JobStore, StoreLifecycle, Protocol):
    """What the job runner asks of the store."""


log = logging.getLogger(__name__)

# Retry delay of a job that failed while a path came back (it failed on the old state).
_AFTER_RESUME_S = 0.2

# The first retry of a job that failed for want of the store, once it is back.
_AFTER_STORE_S = 0.2
# Pause between tries to write what was kept, when a try failed for another reason than the
# store being away (which is waited for instead), doubling up to the second figure.
_KEPT_PAUSE_S = (0.2, 30.0)

Processor = Callable[[Job], Awaitable[Verdict]]
# (job, verdict, what the validation endpoint answered before the verdict came, if anything)
FinishedHook = Callable[[Job, Verdict, str | None], Awaitable[None]]


@dataclass(slots=True)
class _Kept:
    """A verdict reached while the store was away, and how far its writing got."""

    job: Job
    verdict: Verdict
    persisted: bool
    written: bool = False  # the verdict is stored; the job row is still to be finished


class JobRunner:
    def __init__(
        self,
        store: JobRunnerStore,
        process: Processor,
        on_finished: FinishedHook,
        *,
        workers: int,
        max_attempts: int = 50,
        # validation.job_max_backoff_s: the cap of the doubling wait after a failure.
        max_backoff_s: float = 60.0,
        max_kept: int = 10_000,
    ) -> None:
        self._store = store
        self._health = store.health
        self.max_kept = max_kept
        self._process = process
        self._on_finished = on_finished
        self._workers = workers
        self.max_attempts = max_attempts
        self.max_backoff_s = max_backoff_s
        self._queue: asyncio.Queue[Job] = asyncio.Queue(maxsize=workers)
        self._futures: dict[str, asyncio.Future[Verdict]] = {}
        # Answers given while a job was still running; read by the worker that finishes it,
        # and saved to the job row in batches (save_answers) so that a restart keeps them.
        self._answers: dict[str, str] = {}
        self._unsaved_answers: dict[str, str] = {}
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        # Verdicts being written: a stop must wait for these, not cut them off half-recorded.
        self._finishing: set[asyncio.Future[None]] = set()
        self.busy = 0
        # Jobs this process claimed and has not finished: their leases are renewed (replicas),
        # and a stop hands them back.
        self._held: set[str] = set()
        # Verdicts another replica wrote for jobs waited on here, to be read and delivered.
        self._remote: set[asyncio.Task[None]] = set()
        # Hashes waited on here whose job row another process made (SQLite has no
        # notifications: looked at when the store says another connection wrote).
        self._theirs: set[str] = set()
        # Fresh re-judges waited on here, with when they were asked for: a verdict stored
        # before that is the one being replaced, not their answer.
        self._fresh: dict[str, float] = {}
        # Bumped by resume(): a job that failed while a path came back is retried at once.
        self._resumes = 0
        # Why judgements had to be tried again, by kind (read by /metrics).
        self.failures: Counter[str] = Counter()
        # Verdicts reached while the store was away, by sha256, to be written when it is back;
        # and retries (job back to pending, in delay_s, why) that could not be written.
        self._kept: dict[str, _Kept] = {}
        self._kept_retries: dict[str, tuple[float, str]] = {}
        self._kept_wake = asyncio.Event()

    async def start(self) -> None:
        self._store.subscribe(self._store_changed)
        self._tasks = [
            asyncio.create_task(self._feed(), name="jobs-feeder"),
            asyncio.create_task(self._write_kept(), name="jobs-kept-writer"),
        ]
        if self._store.job_lease_s > 0:
            self._tasks.append(asyncio.create_task(self._renew(), name="jobs-lease"))
        self._tasks += [
            asyncio.create_task(self._work(), name=f"jobs-worker-{i}") for i in range(self._workers)
        ]
        self._wake.set()

    async def stop(self) -> None:
        await cancel_and_wait(self._tasks)
        self._tasks = []
        if self._finishing:
            await asyncio.gather(*self._finishing, return_exceptions=True)
        for task in list(self._remote):
            task.cancel()
        if self._kept or self._kept_retries:
            with contextlib.suppress(Exception):
                await self._flush_kept()
            if self._kept:
                # Their job rows stay: judged again by the next process (the store was away).
                log.error(
                    "stopping with %d verdicts the store never took (it was unavailable)",
                    len(self._kept),
                )
        if self._held:
            # Replicas: hand them over now rather than when the lease lapses.
            with contextlib.suppress(Exception):
                await self._store.release_jobs(self._held)
            self._held.clear()
        # Jobs claimed but not finished go back to pending in the store on the next open.
        for fut in self._futures.values():
            if not fut.done():
                fut.cancel()
        self._futures.clear()
        self._fresh.clear()

    async def resume(self, why: str) -> None:
        """Make every waiting job due now (a path came back) and wake the feeder."""
        self._resumes += 1
        try:
            woken = await self._store.wake_jobs()
        except Exception as exc:
            if not self._health.failed(exc):
                raise
            woken = 0  # the jobs wait for the store first
        if woken:
            log.info("%s: %d waiting jobs resumed", why, woken)
        self._wake.set()

    @property
    def kept(self) -> int:
        """Verdicts waiting in memory for the store to come back."""
        return len(self._kept)

    def kept_verdict(self, sha256: str) -> Verdict | None:
        """A verdict reached while the store was away and not written yet: an answer all the
        same (the upload of the same image meanwhile is a cache hit)."""
        kept = self._kept.get(sha256)
        return kept.verdict if kept is not None else None

    def future_for(self, sha256: str) -> asyncio.Future[Verdict] | None:
        return self._futures.get(sha256)

    def _single_flight(self, sha256: str) -> tuple[asyncio.Future[Verdict], bool]:
        """The Future every caller for this hash waits on, and whether this call made it (and
        so must see the work done)."""
        fut = self._futures.get(sha256)
        if fut is not None:
            return fut, False
        fut = asyncio.get_running_loop().create_future()
        self._futures[sha256] = fut
        return fut, True

    async def submit(
        self,
        sha256: str,
        payload: bytes,
        *,
        media_type: str | None,
        size: int | None,
        source: str | None,
        fresh: bool = False,
    ) -> asyncio.Future[Verdict]:
        """Persist a job (unless one for this hash exists) and return its Future.

        Another process on the same store (a replica, or one of `server.processes`) may have
        written the verdict just before our job row went in, or may hold the row itself: its
        verdict is taken rather than judged again. `fresh`: judge even though a verdict is
        stored (an admin's re-judge)."""
        fut, first = self._single_flight(sha256)
        if not first:
            return fut
        if fresh:
            self._fresh[sha256] = time.time()
        try:
            created = await self._store.add_job(
                sha256, payload, media_type=media_type, size=size, source=source
            )
            if not created and not self._store.shared:
                # Another process's row (SQLite): its verdict is looked for when the store
                # says another connection wrote (check_others). Watch before looking, so a
                # verdict written in between is seen by one or the other.
                self._theirs.add(sha256)
            stored = None if fresh else await self._store.get_verdict(sha256)
            if stored is not None and _judgement(stored) and sha256 not in self._held:
                self._theirs.discard(sha256)
                if created:
                    await self._store.finish_job(sha256)
                self._resolve(sha256, stored.verdict)
                return fut
        except BaseException as exc:
            self._futures.pop(sha256, None)
            self._fresh.pop(sha256, None)
            if not fut.done() and isinstance(exc, Exception):
                # Others joined this single flight meanwhile: they must not wait for a job that
                # was never written (the caller tries again when the store is back).
                fut.set_exception(exc)
                fut.add_done_callback(lambda f: f.exception())
            raise
        self._wake.set()
        return fut

    async def check_others(self) -> None:
        """Deliver verdicts other processes wrote for hashes waited on here (SQLite has no
        notifications: called when the store says another connection wrote). Any hash not
        being judged here may have one: a job row another process made, or our own row that
        another process's feeder claimed first."""
        waiting = [sha256 for sha256 in self._futures if sha256 not in self._held]
        if not waiting:
            return
        for sha256, stored in (await self._store.get_verdicts(waiting)).items():
            if sha256 in self._held or not (sha256 in self._theirs or _judgement(stored)):
                continue
            if stored.verdict.judged_at < self._fresh.get(sha256, 0.0):
                continue  # the verdict a fresh re-judge replaces
            self._theirs.discard(sha256)
            self._resolve(sha256, stored.verdict)
        self._theirs.intersection_update(self._futures)

    def _resolve(self, sha256: str, verdict: Verdict) -> None:
        self._fresh.pop(sha256, None)
        fut = self._futures.pop(sha256, None)
        self._answers.pop(sha256, None)
        self._unsaved_answers.pop(sha256, None)
        if fut is not None and not fut.done():
            fut.set_result(verdict)

    def _store_changed(self, kind: str, sha256: str) -> None:
        # Another replica on the same database (PostgreSQL notifications).
        if kind == "job":
            self._wake.set()
        elif kind == "verdict" and sha256 in self._futures and sha256 not in self._held:
            self._spawn_remote([sha256])
        elif kind == "reset":
            self._wake.set()
            self._spawn_remote([s for s in self._futures if s not in self._held])

    def _spawn_remote(self, sha256s: list[str]) -> None:
        if sha256s:
            task = asyncio.get_running_loop().create_task(self._take_remote(sha256s))
            self._remote.add(task)
            task.add_done_callback(self._remote.discard)

    async def _take_remote(self, sha256s: list[str]) -> None:
        for sha256 in sha256s:
            while True:
                try:
                    stored = await self._store.get_verdict(sha256)
                    break
                except Exception as exc:
                    if not self._health.failed(exc):
                        log.exception("reading %s's verdict failed", sha256[:12])
                        stored = None
                        break
                await self._health.back()
            if stored is not None and sha256 not in self._held:
                self._resolve(sha256, stored.verdict)

    async def _renew(self) -> None:
        while True:
            await asyncio.sleep(self._store.job_lease_s / 3)
            try:
                await self._store.renew_jobs(list(self._held))
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if not self._health.failed(exc):
                    log.exception("renewing job leases failed")

    async def run_inline(
        self,
        sha256: str,
        payload: bytes,
        *,
        media_type: str | None,
        size: int | None,
        source: str | None,
    ) -> asyncio.Future[Verdict]:
        """Judge now, in the caller's task, without a job row: for callers that wait for the
        verdict anyway and redo the work themselves after a crash (a sweep reads the file
        again). Same processor, same finish and single flight as `submit`; when the backend
        is unavailable the work becomes an ordinary persisted job, retried with backoff.
        """
        fut, first = self._single_flight(sha256)
        if not first:
            return fut
        job = Job(sha256, payload, media_type, size, source, None, 0)
        resumes = self._resumes
        try:
            verdict = await self._process(job)
        except Exception as exc:  # BackendUnavailable, or a backend bug: treated alike
            reason = exc.reason if isinstance(exc, BackendUnavailable) else "internal error"
            if not isinstance(exc, BackendUnavailable):
                log.exception("job %s failed unexpectedly", sha256[:12])
            delay = exc.retry_after_s if isinstance(exc, BackendUnavailable) else None
            if resumes != self._resumes:
                delay = _AFTER_RESUME_S
            log.info("job %s: %s; persisted for retry", sha256[:12], reason)
            await self._store.add_job(
                sha256, payload, media_type=media_type, size=size, source=source
            )
            await self._store.retry_job(sha256, delay_s=delay or 1.0, error=reason)
            self._wake.set()
            return fut
        except BaseException:
            # Cancelled (a sweep stopped by a signal): the work is kept as a job, and whoever
            # else waits on this hash gets an error, not a hang.
            self._futures.pop(sha256, None)
            if not fut.done():
                fut.set_exception(BackendUnavailable("judgement interrupted"))
                fut.add_done_callback(lambda f: f.exception())
            with contextlib.suppress(Exception):
                await asyncio.shield(
                    self._store.add_job(
                        sha256, payload, media_type=media_type, size=size, source=source
                    )
                )
            raise
        # A job row may exist for this hash (kept by an interrupted sweep): finish it too.
        await self._finish(job, verdict)
        return fut

    def note_answer(self, sha256: str, answer: str) -> None:
        """Record, synchronously, that an answer was given before the verdict existed."""
        if self._answers.get(sha256) != "accept":
            self._answers[sha256] = answer
            self._unsaved_answers[sha256] = answer
            if self._store.shared and sha256 not in self._held:
                # Another replica may be judging it: it reads the answer from the job row.
                self._spawn_save()

    def _spawn_save(self) -> None:
        task = asyncio.get_running_loop().create_task(self._save_quietly())
        self._remote.add(task)
        task.add_done_callback(self._remote.discard)

    async def _save_quietly(self) -> None:
        with contextlib.suppress(Exception):  # kept for the next save (Judge's sync loop)
            await self.save_answers()

    async def save_answers(self) -> None:
        if self._unsaved_answers:
            answers, self._unsaved_answers = self._unsaved_answers, {}
            try:
                await self._store.set_job_answers(answers)
            except BaseException:
                # Tried again at the next save; an answer noted since wins ("accept" stays).
                for sha256, answer in answers.items():
                    if self._unsaved_answers.get(sha256) != "accept":
                        self._unsaved_answers.setdefault(sha256, answer)
                raise

    @property
    def outstanding(self) -> int:
        return len(self._futures)

    async def _feed(self) -> None:
        while True:
            self._wake.clear()
            try:
                room = self._queue.maxsize - self._queue.qsize()
                jobs = await self._store.claim_jobs(room) if room > 0 else []
                for job in jobs:
                    self._held.add(job.sha256)
                    await self._queue.put(job)
                if jobs and len(jobs) == room:
                    # Queue full: wait for a worker to take one before claiming more.
                    await self._wait_wake(0.05)
                    continue
                next_at = await self._store.next_job_time()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                # The feeder outlives any store error: the jobs are in the store, so wait for
                # it (an outage), or look again shortly (anything else).
                if self._health.failed(exc):
                    await self._health.back()
                else:
                    log.exception("claiming jobs failed")
                    await asyncio.sleep(1.0)
                continue
            delay = 5.0 if next_at is None else min(5.0, max(0.0, next_at - time.time()))
            await self._wait_wake(delay)

    async def _wait_wake(self, wait_s: float) -> None:
        # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancellation that
        # arrives as the event is set, and stop() would then wait forever.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(wait_s):
                await self._wake.wait()

    async def _work(self) -> None:
        while True:
            job = await self._queue.get()
            self._wake.set()  # room in the queue
            self.busy += 1
            try:
                await self._run(job)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # neither a bug nor the store kills the worker
                if self._health.failed(exc):
                    self.failures["store_unavailable"] += 1
                    log.warning(
                        "job %s: store unavailable (%s); tried again when it is back",
                        job.sha256[:12],
                        exc,
                    )
                    await self._retry_safely(job, _AFTER_STORE_S, "store unavailable")
                else:
                    self.failures["internal"] += 1
                    log.exception("job %s failed unexpectedly", job.sha256[:12])
                    await self._retry_safely(job, 60.0, "internal error")
            finally:
                self.busy -= 1

    async def _run(self, job: Job) -> None:
        resumes = self._resumes
        try:
            verdict = await self._process(job)
        except BackendUnavailable as exc:
            self.failures["backend_unavailable"] += 1
            if job.attempts + 1 >= self.max_attempts:
                verdict = Verdict(
                    label=Label.ERROR,
                    reasons=[f"not judged after {job.attempts + 1} attempts: {exc.reason}"],
                    backend="runner",
                )
            else:
                backoff = min(self.max_backoff_s, 2.0 ** min(job.attempts, 16))
                delay = max(backoff, exc.retry_after_s or 0.0)
                if resumes != self._resumes:  # a path came back while this one failed
                    delay = _AFTER_RESUME_S
                await self._retry_safely(job, delay, exc.reason)
                return
        finishing = asyncio.ensure_future(self._finish(job, verdict))
        self._finishing.add(finishing)
        finishing.add_done_callback(self._finishing.discard)
        await asyncio.shield(finishing)

    async def _retry(self, job: Job, delay_s: float, reason: str) -> None:
        log.info("job %s: %s; retrying in %.0f s", job.sha256[:12], reason, delay_s)
        await self._store.retry_job(job.sha256, delay_s=delay_s, error=reason)
        self._held.discard(job.sha256)
        self._wake.set()

    async def _retry_safely(self, job: Job, delay_s: float, reason: str) -> None:
        """`_retry`, or, when it cannot be written, kept until it can (the job stays held:
        it must not be left `running` in the store with nobody judging it)."""
        try:
            await self._retry(job, delay_s, reason)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if not self._health.failed(exc):
                log.exception("job %s: its retry could not be written", job.sha256[:12])
            self._kept_retries[job.sha256] = (delay_s, reason)
            self._kept_wake.set()

    async def _finish(self, job: Job, verdict: Verdict, *, persisted: bool = True) -> None:
        while True:
            try:
                await self._store.put_verdict(
                    job.sha256,
                    verdict,
                    media_type=job.media_type,
                    size=job.size,
                    source=job.source,
                )
                break
            except Exception as exc:
                if not self._health.failed(exc):
                    raise
                if len(self._kept) < self.max_kept:
                    log.info("job %s: verdict kept until the store is back", job.sha256[:12])
                    self._keep(_Kept(job, verdict, persisted))
                    return
            # As many kept as allowed: this worker waits for the store (nothing is dropped).
            await self._health.back()
        await self._complete(job, verdict, persisted)

    def _keep(self, kept: _Kept) -> None:
        self._kept[kept.job.sha256] = kept
        self._deliver(kept.job.sha256, kept.verdict)  # whoever waits has its answer now
        self._kept_wake.set()

    def _deliver(self, sha256: str, verdict: Verdict) -> None:
        self._fresh.pop(sha256, None)
        fut = self._futures.pop(sha256, None)
        if fut is not None and not fut.done():
            fut.set_result(verdict)

    async def _complete(self, job: Job, verdict: Verdict, persisted: bool) -> None:
        """The verdict is stored: finish the job row and tell whoever follows verdicts."""
        # Resolve and read the early answer in one synchronous step, so that an upload timing
        # out at this very moment either sees the verdict or leaves its answer for us.
        self._deliver(job.sha256, verdict)
        answered = self._answers.pop(job.sha256, None)
        self._unsaved_answers.pop(job.sha256, None)
        try:
            stored = await self._store.finish_job(job.sha256) if persisted else None
        except Exception as exc:
            if not self._health.failed(exc):
                raise
            if answered is not None and self._answers.get(job.sha256) != "accept":
                self._answers[job.sha256] = answered
            self._keep(_Kept(job, verdict, persisted, written=True))
            return
        self._held.discard(job.sha256)
        given = {answered, stored} - {None}
        await self._on_finished(
            job, verdict, "accept" if "accept" in given else given.pop() if given else None
        )

    async def _write_kept(self) -> None:
        """Write what was kept while the store was away, as soon as it is back."""
        pause = _KEPT_PAUSE_S[0]
        while True:
            await self._kept_wake.wait()
            await self._health.back()
            self._kept_wake.clear()
            try:
                await self._flush_kept()
                pause = _KEPT_PAUSE_S[0]
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self._kept_wake.set()
                if not self._health.failed(exc):
                    log.exception("writing verdicts kept while the store was away failed")
                    await asyncio.sleep(pause)
                    pause = min(pause * 2, _KEPT_PAUSE_S[1])

    async def _flush_kept(self) -> None:
        if self._kept:
            log.info("store back: writing %d verdicts kept meanwhile", len(self._kept))
        for sha256, kept in list(self._kept.items()):
            if not kept.written:
                job = kept.job
                await self._store.put_verdict(
                    sha256, kept.verdict, media_type=job.media_type, size=job.size,
                    source=job.source,
                )  # fmt: skip
                kept.written = True
            if self._kept.get(sha256) is kept:
                del self._kept[sha256]
            try:
                await self._complete(kept.job, kept.verdict, kept.persisted)
            except Exception:
                # The verdict is stored; what follows it (audit, enforcement) failed once.
                log.exception("job %s: stored; what follows its verdict failed", sha256[:12])
        for sha256, (delay_s, reason) in list(self._kept_retries.items()):
            await self._store.retry_job(sha256, delay_s=delay_s, error=reason)
            del self._kept_retries[sha256]
            self._held.discard(sha256)
        self._wake.set()


def _judgement(stored: StoredVerdict) -> bool:
    """A verdict another process just wrote, as the caller's lookup would have taken it: a
    backend's judgement. Errors are looked at again, and a verdict resting on a hash-list
    entry may be the stale one the lookup set aside (the entry since lifted)."""
    verdict = stored.verdict
    return verdict.route is VerdictRoute.JUDGED and verdict.label not in (
        Label.ERROR,
        Label.UNREADABLE,
    )
