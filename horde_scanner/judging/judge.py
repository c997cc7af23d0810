"""The one pipeline every image goes through, whoever asks (upload, sweep, `check`):

    bytes -> sha256 -> allow/deny list -> hash lists (exact sha256) -> cached verdict
          (re-judged if the policy changed; re-checked against the PDQ index unless csam)
          -> persisted job -> decode + PDQ + index search (bounded pool) -> PDQ match? -> verdict
          -> backend, and beside it the image's embedding (encoder pool) -> embedding match?
          -> verdict; else policy -> verdict

`evaluate()` returns within its timeout whatever happens; the job goes on without it.

While the store is away (store/outage.py), answers come from memory: the recent verdicts
cached here and those the job runner keeps until the store is back. An upload that memory
cannot answer waits for the store (its bytes held, within `store.outage_upload_bytes` for all
of them), and the caller's deadline answers it meanwhile; once the store is back it is looked
up and judged like any other (lists first, a stored verdict is never judged again).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Protocol

import numpy as np

from horde_scanner.backends.base import (
    Backend,
    BackendFailed,
    cleared,
    concurrency,
    describe_paths,
    judge_image,
)
from horde_scanner.backends.recovery import RecoveryWatch
from horde_scanner.config import Settings
from horde_scanner.errors import RetryLater
from horde_scanner.judging.jobs import FinishedHook, JobRunner
from horde_scanner.judging.second_opinion import SecondOpinion
from horde_scanner.media.decode import (
    DecodedImage,
    DecodeLimits,
    PreparedImage,
    UnreadableMedia,
    decode,
    decode_cost,
    encode_for_backend,
    sniff,
)
from horde_scanner.media.hashing import PdqHash, pdq_hash, sha256_hex
from horde_scanner.media.memory import DecodeMemory
from horde_scanner.policy.rules import Policy
from horde_scanner.signals.embeddings import EmbeddingMatch, EmbeddingMatcher, is_embedding_match
from horde_scanner.signals.hash_index import Hit
from horde_scanner.signals.hash_matcher import HashMatcher, denies, is_match
from horde_scanner.store.interfaces import (
    AuditStore,
    JobStore,
    ListStore,
    StoreLifecycle,
    VerdictStore,
)
from horde_scanner.store.jobs import Job
from horde_scanner.tasks import cancel_and_wait
from horde_scanner.verdict import Label, Signals, Verdict


class JudgeStore(VerdictStore, ListStore, JobStore, AuditStore, StoreLifecycle, Protocol):
    """What the judge asks of the store (and hands its job runner and second opinion)."""


log = logging.getLogger(__name__)

# Hashing big bodies off the loop pays for the thread hop above this size.
_HASH_IN_POOL_BYTES = 1 << 20
# How often an answer waiting on a backend looks whether any path is still live.
_LIVENESS_CHECK_S = 0.25
# Cached verdicts read again at once after another replica replaced them, at most.
_MAX_REFRESHING = 64


class Route(StrEnum):
    """How an answer was reached (for logs, audit and metrics)."""

    ALLOW = "allow"
    DENY = "deny"
    # A hash list entry (exact sha256, or PDQ within distance) answered: no backend call.
    MATCH = "match"
    CACHE = "cache"
    BACKEND = "backend"
    TIMEOUT = "timeout"
    # No judging path was live (e.g. the AI Horde unreachable): answered at once, job kept.
    UNAVAILABLE = "unavailable"
    # The store was away and memory had no answer: answered by on_timeout; the upload waits
    # for the store in memory (judged when it is back), unless that memory was full.
    STORE = "store_unavailable"


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


@dataclass(slots=True)
class _Ticket:
    """What one evaluate() call knows so far, shared with its admission task."""

    sha256: str | None
    media_type: str | None
    size: int
    submitted: bool = False
    answer: str | None = None
    # Waiting for the store to come back (held in memory).
    store_wait: bool = False

    def outcome(self, route: Route, verdict: Verdict | None) -> Outcome:
        if route is Route.BACKEND and verdict is not None and is_match(verdict):
            route = Route.MATCH  # a hash-list match made in the job, before any backend call
        return Outcome(self.sha256 or "", route, verdict, self.media_type, self.size)


class Judge:
    def __init__(
        self,
        store: JudgeStore,
        policy: Policy,
        backend: Backend,
        executor: Executor,
        *,
        limits: DecodeLimits,
        workers: int,
        cache_size: int = 100_000,
        max_attempts: int = 50,
        outage_upload_bytes: int = 64 << 20,
        outage_verdicts: int = 10_000,
        max_backoff_s: float = 60.0,
        on_finished: FinishedHook | None = None,
        hashes: HashMatcher | None = None,
        second_opinion: Backend | None = None,
        second_opinion_max_pending: int = 100,
        embeddings: EmbeddingMatcher | None = None,
        memory: DecodeMemory | None = None,
    ) -> None:
        self.store = store
        # Every decode holds its estimated bytes from this budget (shared by the process).
        self.memory = memory or DecodeMemory(limits.decode_memory_bytes)
        self.policy = policy
        self.backend = backend
        self._executor = executor
        self._limits = limits
        self._cache: OrderedDict[str, Outcome] = OrderedDict()
        self._cache_size = cache_size
        self._extra_hook = on_finished
        self.hashes = hashes
        # Off (None, or not enabled) until an image encoder is configured.
        self.embeddings = embeddings if embeddings is not None and embeddings.enabled else None
        self.runner = JobRunner(
            store,
            self._process,
            self._finished,
            workers=workers,
            max_attempts=max_attempts,
            max_kept=outage_verdicts,
            max_backoff_s=max_backoff_s,
        )
        # Bytes of uploads waiting for the store to come back, and the most there may be.
        self.store_waiting_bytes = 0
        self.store_waiting = 0
        self._outage_upload_bytes = outage_upload_bytes
        # Uploads refused that room (answered by on_timeout, recorded, never judged).
        self.store_refused = 0
        self._data_version: int | None = None
        # Bumped by forget(), so a judgement finishing meanwhile does not re-cache stale news.
        self._forgets = 0
        self._sync_task: asyncio.Task[None] | None = None
        self._refreshing: set[asyncio.Task[None]] = set()
        self._recovery = RecoveryWatch(backend, self._recovered)
        # Images the pre-screen cleared, held from judgement to stored verdict for a second
        # opinion (at most one per running job).
        self.second_opinion: SecondOpinion | None = None
        self._held: dict[str, PreparedImage] = {}
        if second_opinion is not None:
            self.second_opinion = SecondOpinion(
                store,
                policy,
                second_opinion,
                max_pending=second_opinion_max_pending,
                on_worse=on_finished,
                forget=self.forget,
            )

    async def start(self) -> None:
        self.store.subscribe(self._store_changed)
        await self.runner.start()
        self._data_version = await self.store.data_version()
        self._sync_task = asyncio.create_task(self._sync_loop(), name="judge-sync")
        await self._recovery.start()

    async def _recovered(self, paths: list[str]) -> None:
        await self.runner.resume(f"{', '.join(paths)} live again")

    async def stop(self) -> None:
        await self._recovery.stop()
        await cancel_and_wait([self._sync_task, *self._refreshing])
        self._sync_task = None
        await self.runner.stop()
        await self.runner.save_answers()
        if self.second_opinion is not None:
            await self.second_opinion.stop()
        self._held.clear()
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
                    await self.runner.check_others()
                await self.runner.save_answers()
                await self.store.flush_audit()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if not self.store.health.failed(exc):  # an outage is said once, by the store
                    log.exception("store sync failed")

    def _store_changed(self, kind: str, sha256: str) -> None:
        # Another replica wrote a verdict or a list decision (PostgreSQL notifications).
        if kind == "list":
            self.forget(sha256)
        elif kind == "verdict":
            # Cached here, or waited for here (another replica judged our upload): read it,
            # so that this replica answers it from memory too, even while the store is away.
            cached = self._cache.pop(sha256, None) is not None
            if cached or self.runner.future_for(sha256) is not None:
                self._refresh(sha256)
        elif kind == "reset":
            self.forget()

    def _refresh(self, sha256: str) -> None:
        """Read, in the background, a verdict another replica wrote for an image cached or
        waited for here: the memory that answers while the store is away stays full."""
        if len(self._refreshing) >= _MAX_REFRESHING:
            return
        task = asyncio.get_running_loop().create_task(self._quiet_lookup(sha256))
        self._refreshing.add(task)
        task.add_done_callback(self._refreshing.discard)

    async def _quiet_lookup(self, sha256: str) -> None:
        with contextlib.suppress(Exception):  # only a warm-up: the next upload looks it up
            await self.lookup(sha256)

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

    def cached(self, sha256: str) -> Outcome | None:
        """The answer memory holds for this hash, if any (no store, no await): the cache of
        recent answers, then verdicts kept while the store is away. `lookup` begins here."""
        hit = self._cache.get(sha256)
        if hit is not None:
            self._cache.move_to_end(sha256)
            return hit
        kept = self.runner.kept_verdict(sha256)
        if kept is not None:  # judged while the store was away, not written yet
            return Outcome(sha256, Route.CACHE, kept)
        return None

    async def lookup(self, sha256: str) -> Outcome | None:
        """Lists, then the verdict cache. Never calls a backend."""
        hit = self.cached(sha256)
        if hit is not None:
            return hit
        kind = await self.store.list_kind(sha256)
        if kind == "allow":
            verdict = Verdict(label=Label.CLEAN, reasons=["allow list"], backend="list")
            return self._remember(Outcome(sha256, Route.ALLOW, verdict))
        if kind == "deny":
            verdict = Verdict(label=Label.CSAM, reasons=["deny list"], backend="list")
            return self._remember(Outcome(sha256, Route.DENY, verdict))
        if self.hashes is not None:
            match = await self.hashes.match_sha256(sha256)
            if match is not None and match.rejects:
                verdict = match.verdict(self.policy.version)
                return self._remember(Outcome(sha256, Route.MATCH, verdict))
        stored = await self.store.get_verdict(sha256)
        # Errors and unreadable results were never judgements: look again.
        if stored is None or stored.verdict.label in (Label.ERROR, Label.UNREADABLE):
            return None
        verdict = stored.verdict
        if self.embeddings is not None and is_embedding_match(verdict):
            # It lasts as long as its entry does (an allow, a list that dropped it).
            still = await self.embeddings.recheck(sha256)
            if still is None:
                return None
            again = still.verdict(self.policy.version)
            return self._remember(
                Outcome(sha256, Route.MATCH, again, stored.media_type, stored.size)
            )
        if self.hashes is not None:
            recheck = await self.hashes.recheck(sha256, verdict, self.policy.version)
            if recheck.verdict is not None:
                outcome = Outcome(
                    sha256, Route.MATCH, recheck.verdict, stored.media_type, stored.size
                )
                return self._remember(outcome)
            if recheck.stale:
                return None
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
        self,
        data: bytes,
        *,
        source: str,
        within_s: float | None,
        sha256: str | None = None,
        answer_if_late: str | None = None,
        on_admitted: Callable[[], None] | None = None,
        durable: bool = True,
    ) -> Outcome:
        """Judge `data`, returning within `within_s` seconds (None: as long as it takes).

        When time runs out first, everything already started goes on in the background (the
        job is persisted even if that was still under way), and `answer_if_late`, what the
        caller answers instead, is remembered so that a late positive can be enforced.
        `on_admitted` is called once the bytes are no longer needed (answered from the lists or
        cache, or persisted as a job), so a caller can bound how many bodies it holds.

        `durable=False` (only with `within_s=None`) is the fast path for callers that wait
        anyway and can redo the work after a crash, like a storage sweep: a miss is judged in
        the caller's task without a persisted job row (the rest of the pipeline is the same).
        """
        ticket = _Ticket(sha256=sha256, media_type=sniff(data), size=len(data))
        if within_s is None:
            admitted = await self._admit(data, source, ticket, on_admitted, inline=not durable)
            if isinstance(admitted, Outcome):
                return admitted
            return ticket.outcome(Route.BACKEND, await asyncio.shield(admitted))
        admission = asyncio.ensure_future(self._admit(data, source, ticket, on_admitted))
        admission.add_done_callback(_log_failed_admission)
        del data  # the admission (then the job row) holds the bytes; do not keep them here
        route = Route.TIMEOUT
        try:
            async with asyncio.timeout(within_s):
                try:
                    admitted = await asyncio.shield(admission)
                except StoreAway:
                    return ticket.outcome(Route.STORE, None)
                if isinstance(admitted, Outcome):
                    return admitted
                # Waiting for the deadline when nothing can judge (e.g. the AI Horde found
                # unreachable, now or while we wait) only delays the same on_timeout answer.
                # The job is persisted and resumes when a path is back.
                while not admitted.done() and self.can_judge_now():
                    await asyncio.wait([admitted], timeout=_LIVENESS_CHECK_S)
                if admitted.done() and admitted.exception() is None:
                    return ticket.outcome(Route.BACKEND, await asyncio.shield(admitted))
                # (A job that could not be written fails its Future: the admission that made
                # it is waiting for the store to write it again.)
                route = Route.STORE if admitted.done() else Route.UNAVAILABLE
        except TimeoutError:
            if ticket.store_wait:
                route = Route.STORE
        # From here to the return nothing awaits: a verdict landing now is either seen here or
        # finds the answer noted for it.
        if admission.done() and not admission.cancelled() and admission.exception() is None:
            admitted = admission.result()
            if isinstance(admitted, Outcome):
                return admitted
            if admitted.done() and not admitted.cancelled() and admitted.exception() is None:
                return ticket.outcome(Route.BACKEND, admitted.result())
        if answer_if_late is not None:
            ticket.answer = answer_if_late
            if ticket.submitted and ticket.sha256:
                self.runner.note_answer(ticket.sha256, answer_if_late)
        return ticket.outcome(route, None)

    def can_judge_now(self) -> bool:
        """Whether any judging path (pre-screen, CLIP, workers, AI Horde) is live."""
        return any(r.live for r in describe_paths(self.backend))

    async def _admit(
        self,
        data: bytes,
        source: str,
        ticket: _Ticket,
        on_admitted: Callable[[], None] | None,
        *,
        inline: bool = False,
    ) -> Outcome | asyncio.Future[Verdict]:
        """Hash, look up, and if unknown persist a job: an Outcome, or the job's Future.

        While the store is away the bytes wait here for its return (within the room
        `store.outage_upload_bytes` gives all of them; without room: StoreAway)."""
        held = 0
        try:
            sha = ticket.sha256 = ticket.sha256 or await self.sha256(data)
            while True:
                try:
                    known = await self.lookup(sha)
                    if known is not None:
                        return known
                    submit = self.runner.run_inline if inline else self.runner.submit
                    fut = self.runner.future_for(sha) or await submit(
                        sha, data, media_type=ticket.media_type, size=ticket.size, source=source
                    )
                    failed = fut.done() and not fut.cancelled() and fut.exception()
                    if failed:  # a joined flight whose job could not be written
                        raise failed
                    break
                except Exception as exc:
                    if not self.store.health.failed(exc):
                        raise
                    if not held:
                        if self.store_waiting_bytes + len(data) > self._outage_upload_bytes:
                            self.store_refused += 1
                            log.error(
                                "store unavailable and %d uploads (%d bytes) already wait for "
                                "it: %s is answered without being judged",
                                self.store_waiting, self.store_waiting_bytes, sha[:12],
                            )  # fmt: skip
                            raise StoreAway(str(exc)) from None
                        held = max(1, len(data))
                        self.store_waiting_bytes += held
                        self.store_waiting += 1
                        ticket.store_wait = True
                await self.store.health.back()
        finally:
            if held:
                self.store_waiting_bytes -= held
                self.store_waiting -= 1
            if on_admitted is not None:
                on_admitted()
        ticket.submitted = True
        if ticket.answer is not None:
            self.runner.note_answer(sha, ticket.answer)
        return fut

    def _decode(
        self, payload: bytes
    ) -> tuple[DecodedImage, PreparedImage | None, list[PdqHash], list[Hit]]:
        """Decode once, hash the pixels, search the index, and encode for the backend unless
        a deny entry matched (the encoding costs more than all the rest): one pool trip."""
        decoded = decode(payload, self._limits)
        try:
            frames = decoded.frames or ()
            if frames:
                hashes = [pdq_hash(f.image, frame=f.index) for f in frames]
            else:
                hashes = [pdq_hash(decoded.image)]
        except (ValueError, TypeError) as exc:  # no hash is no match, not a failed judgement
            log.warning("no PDQ for a %s image: %s", decoded.media_type, exc)
            hashes = []
        hits = self.hashes.search(hashes) if self.hashes is not None else []
        if denies(hits):
            return decoded, None, hashes, hits
        return decoded, encode_for_backend(decoded, payload, self._limits), hashes, hits

    def _unreadable(self, exc: UnreadableMedia) -> Verdict:
        return Verdict(
            label=Label.UNREADABLE,
            reasons=[exc.reason],
            backend="decoder",
            policy_version=self.policy.version,
        )

    async def _process(self, job: Job) -> Verdict:
        loop = asyncio.get_running_loop()
        try:
            cost = await loop.run_in_executor(
                self._executor, decode_cost, job.payload, self._limits
            )
            # Waits (here, not in a pool thread) while other decodes hold the budget; the
            # upload's deadline meanwhile answers it by on_timeout.
            async with self.memory.hold(cost, job.media_type or "file"):
                decoded, prepared, hashes, hits = await loop.run_in_executor(
                    self._executor, self._decode, job.payload
                )
        except UnreadableMedia as exc:
            return self._unreadable(exc)
        if self.hashes is not None:
            listed = await self.hashes.judge_hashes(
                job.sha256, hashes, hits, job.source, self.policy.version
            )
            if listed is not None:
                return listed
        # The embedding starts first: it runs beside the encoding and the backend's call.
        embedding = (
            asyncio.create_task(self.embeddings.embed(decoded.image))
            if self.embeddings is not None
            else None
        )
        try:
            if prepared is None:
                try:
                    prepared = await loop.run_in_executor(
                        self._executor, encode_for_backend, decoded, job.payload, self._limits
                    )
                except UnreadableMedia as exc:
                    return self._unreadable(exc)
            if embedding is None:
                signals = await judge_image(self.backend, prepared, sha256=job.sha256)
            else:
                judged = await self._judge_with_embedding(job, embedding, prepared)
                if isinstance(judged, Verdict):
                    return judged
                signals = judged
        except BackendFailed as exc:
            return Verdict(
                label=Label.ERROR,
                reasons=[str(exc)],
                backend=self.backend.name,
                policy_version=self.policy.version,
            )
        finally:
            if embedding is not None:
                await cancel_and_wait([embedding])
        if self.second_opinion is not None and cleared(signals):
            self._held[job.sha256] = prepared
        return self.policy.judge(signals)

    async def _judge_with_embedding(
        self, job: Job, embedding: asyncio.Task[np.ndarray | None], prepared: PreparedImage
    ) -> Signals | Verdict:
        """The backend's signals, with the image's embedding computed beside them (encoder
        pool); a deny entry's match is the verdict, without waiting for the backend."""
        assert self.embeddings is not None
        judging = asyncio.create_task(judge_image(self.backend, prepared, sha256=job.sha256))
        try:
            vector = await embedding
            match = await self._embedding_match(job, vector)
            if match is not None and match.rejects:
                return match.verdict(self.policy.version)
            signals = await judging
        finally:
            await cancel_and_wait([embedding, judging])
        if vector is None:
            # No embedding of our own (the encoder busy): one the backend sent counts the same.
            match = await self._embedding_match(job, self.embeddings.from_signals(signals))
            if match is not None and match.rejects:
                return match.verdict(self.policy.version)
        return signals

    async def _embedding_match(self, job: Job, vector: np.ndarray | None) -> EmbeddingMatch | None:
        """Keep the image's embedding, and match it; a review source's match is flagged."""
        if self.embeddings is None or vector is None:
            return None
        await self.embeddings.keep(job.sha256, vector)
        match = await self.embeddings.match(vector)
        if match is not None and not match.rejects:
            await self.embeddings.flag(job.sha256, match, job.source)
        return match

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
        if self.hashes is not None and await self.hashes.note_verdict(job.sha256, verdict):
            # Cached answers for look-alikes of the new positive must be looked up again.
            self.forget()
        if self.embeddings is not None:
            await self.embeddings.note_verdict(job.sha256, verdict)
        # An admin may list this hash while the job finishes (the upload already has its
        # answer): a list decision must not be hidden by this verdict. No await may come
        # between the generation check and remembering.
        generation = self._forgets
        if (
            verdict.label not in (Label.ERROR, Label.UNREADABLE)
            and await self.store.list_kind(job.sha256) is None
            and generation == self._forgets
        ):
            self._remember(Outcome(job.sha256, Route.CACHE, verdict, job.media_type, job.size))
        held = self._held.pop(job.sha256, None)
        if held is not None and self.second_opinion is not None:
            self.second_opinion.offer(job, held, verdict)
        if self._extra_hook is not None:
            await self._extra_hook(job, verdict, answered)


class StoreAway(RetryLater):
    """The store is away and no more uploads may wait for it in memory."""


def _log_failed_admission(task: asyncio.Future[Any]) -> None:
    if task.cancelled():
        return
    exc = task.exception()
    if exc is not None and not isinstance(exc, StoreAway):
        log.error("admitting an upload failed: %r", exc)


def build_judge(
    settings: Settings,
    store: JudgeStore,
    policy: Policy,
    backend: Backend,
    executor: Executor,
    *,
    on_finished: FinishedHook | None = None,
    hashes: HashMatcher | None = None,
    second_opinion: Backend | None = None,
    embeddings: EmbeddingMatcher | None = None,
    memory: DecodeMemory | None = None,
) -> Judge:
    """The Judge as the service builds it; the CLI's sweeps build theirs the same way."""
    return Judge(
        store,
        policy,
        backend,
        executor,
        limits=settings.media.limits(),
        # Enough for every path behind the backend to be kept busy (its contract says).
        workers=concurrency(backend),
        cache_size=settings.validation.verdict_cache_size,
        max_attempts=settings.validation.job_max_attempts,
        outage_upload_bytes=settings.store.outage_upload_bytes,
        outage_verdicts=settings.store.outage_verdicts,
        max_backoff_s=settings.validation.job_max_backoff_s,
        on_finished=on_finished,
        hashes=hashes,
        second_opinion=second_opinion,
        second_opinion_max_pending=settings.prescreen.second_opinion_max_pending,
        embeddings=embeddings,
        memory=memory or DecodeMemory(settings.media.decode_memory_bytes),
    )
