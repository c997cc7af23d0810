"""The one composition root: the service, `check`, the sweeps and the worker each open a
Runtime and ask it for the parts they need.

    async with open_runtime(settings) as rt:
        judge = await rt.judge()          # and with it the store, backend, hash matcher ...

Each part is built once, on first ask, after the parts it needs; its stop goes on the
runtime's one AsyncExitStack at that moment, so parts stop in the reverse order of their start
(a judge stops before the notifier it reports to, the store closes last), whoever asked.
Ask from one task (at start-up): two first asks of the same part at once would build it twice.

Every judgement ends in `finish` (store first, in the Judge; then the late-positive purge,
whoever listens through `on_judged` (the service's /metrics) and notifications), whichever
entry point asked for it, so a positive a sweep finds is counted and notified like an upload's.
What else is done about a verdict is the entry point's: an upload's late positive is purged
here (the enforcer acts only on jobs answered "accept"), a sweep acts by its own `--action`,
a report acts on nothing.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import AsyncExitStack, asynccontextmanager
from typing import TypeAlias

import aiohttp

from horde_scanner.backends.base import Backend
from horde_scanner.backends.kinds import build_backend
from horde_scanner.backends.workers import WorkerPool
from horde_scanner.config import Settings
from horde_scanner.integrations.enforce import LatePositiveEnforcer
from horde_scanner.integrations.notify import Notifier, ReadinessWatcher, backend_event
from horde_scanner.integrations.pictrs import PictrsClient
from horde_scanner.judging.jobs import FinishedHook
from horde_scanner.judging.judge import Judge, build_judge
from horde_scanner.media.memory import DecodeMemory
from horde_scanner.moderation.actions import Moderator
from horde_scanner.moderation.provenance import ProvenanceResolver
from horde_scanner.policy.rules import Policy
from horde_scanner.review.decisions import Review
from horde_scanner.review.quarantine import Quarantine
from horde_scanner.signals.embedding_exchange import EmbeddingPublisher, EmbeddingSubscriber
from horde_scanner.signals.embeddings import EmbeddingMatcher
from horde_scanner.signals.hash_matcher import HashMatcher
from horde_scanner.signals.hash_publish import Publisher
from horde_scanner.signals.hash_subscribe import Subscriber
from horde_scanner.store.factory import open_store
from horde_scanner.store.interfaces import UnifiedStore
from horde_scanner.store.jobs import Job
from horde_scanner.sweep.holder import review_for
from horde_scanner.sweep.metrics import SweepProgress
from horde_scanner.verdict import Verdict

# Told of each finished judgement: the job, its verdict, and what the upload was answered.
JudgedHook: TypeAlias = Callable[[Job, Verdict, str | None], None]


class Runtime:
    def __init__(
        self,
        settings: Settings,
        stack: AsyncExitStack,
        *,
        backend: Backend | None = None,
        service: bool = False,
    ) -> None:
        self.settings = settings
        self._stack = stack
        # A backend handed in is the caller's to close; one built here is closed here.
        self._backend = backend
        # The long-running service: remote workers can pull jobs from it (it serves HTTP), and
        # it asks pict-rs at start-up what it can purge. A sweep or `check` does neither.
        self._service = service
        # Sweeps of this process report here; /metrics reads it.
        self.sweeps = SweepProgress()
        # Who else hears of every finished judgement (the service's /metrics counts them).
        self._judged: list[JudgedHook] = []
        self._store: UnifiedStore | None = None
        self._session: aiohttp.ClientSession | None = None
        self._executor: ThreadPoolExecutor | None = None
        # The one decode memory budget of this process (media.decode_memory_bytes).
        self.decode_memory = DecodeMemory(settings.media.decode_memory_bytes)
        self._policy: Policy | None = None
        self._pool: WorkerPool | None = None
        self._pool_built = False
        self._pictrs: PictrsClient | None = None
        self._pictrs_built = False
        self._notifier: Notifier | None = None
        self._enforcer: LatePositiveEnforcer | None = None
        self._hashes: HashMatcher | None = None
        self._judge: Judge | None = None
        self._quarantine: Quarantine | None = None
        self._review: Review | None = None
        self._watcher: ReadinessWatcher | None = None
        self._publisher: Publisher | None = None
        self._subscriber: Subscriber | None = None
        self._embeddings: EmbeddingMatcher | None = None
        self._embedding_publisher: EmbeddingPublisher | None = None
        self._embedding_subscriber: EmbeddingSubscriber | None = None
        self._provenance: ProvenanceResolver | None = None
        self._moderator: Moderator | None = None

    def on_judged(self, hook: JudgedHook) -> None:
        """Hear of every judgement this runtime finishes, from any entry point (ask before the
        judge, so that no resumed job finishes unheard)."""
        self._judged.append(hook)

    def on_close(self, close: Callable[[], Awaitable[object]]) -> None:
        """Stop something the caller built itself (a plug-in's backend) with the rest."""
        self._stack.push_async_callback(close)

    # -- plain resources -----------------------------------------------------------------------

    async def store(self) -> UnifiedStore:
        if self._store is None:
            self._store = await open_store(self.settings.store)
            self._stack.push_async_callback(self._store.close)
        return self._store

    async def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession()
            self._stack.push_async_callback(self._session.close)
        return self._session

    def executor(self) -> ThreadPoolExecutor:
        """The bounded pool for decoding and hashing (validation.max_decoding threads)."""
        if self._executor is None:
            self._executor = ThreadPoolExecutor(
                max_workers=self.settings.validation.max_decoding, thread_name_prefix="decode"
            )
            self._stack.callback(self._executor.shutdown, wait=False, cancel_futures=True)
        return self._executor

    def policy(self) -> Policy:
        if self._policy is None:
            self._policy = Policy.load(self.settings.policy.path)
        return self._policy

    async def pictrs(self) -> PictrsClient | None:
        """pict-rs's internal API, when pictrs.url and pictrs.api_key are both set."""
        if not self._pictrs_built:
            self._pictrs_built = True
            cfg = self.settings.pictrs
            if cfg.url and cfg.api_key:
                self._pictrs = PictrsClient(
                    cfg.url, cfg.api_key, await self.session(), search_pages=cfg.search_pages
                )
        return self._pictrs

    # -- judging -------------------------------------------------------------------------------

    async def pool(self) -> WorkerPool | None:
        if not self._pool_built:
            self._pool_built = True
            if self._service and self.settings.workers.keys:
                self._pool = WorkerPool(self.settings.workers)
                self._stack.push_async_callback(self._pool.aclose)
        return self._pool

    async def backend(self) -> Backend:
        if self._backend is None:
            # The store first: the backend keeps its kudos spend there until it closes.
            store = await self.store()
            pool = await self.pool()
            session = await self.session()
            backend = build_backend(self.settings, session, policy=self.policy(), pool=pool)
            self._stack.push_async_callback(backend.close)
            await backend.start(store)
            self._backend = backend
        return self._backend

    async def hashes(self) -> HashMatcher:
        """Uploads and sweeps match perceptual hashes against the same lists."""
        if self._hashes is None:
            matcher = HashMatcher(await self.store(), self.settings.hashes, self.executor())
            await matcher.start()
            self._stack.push_async_callback(matcher.stop)
            self._hashes = matcher
        return self._hashes

    async def embeddings(self) -> EmbeddingMatcher:
        """Image embeddings matched against shared positives; off (saying why in its
        `status`) until an image encoder's file is there."""
        if self._embeddings is None:
            matcher = EmbeddingMatcher.open(
                await self.store(), self.settings.embeddings, self.executor()
            )
            await matcher.start()
            self._stack.push_async_callback(matcher.stop)
            self._embeddings = matcher
        return self._embeddings

    async def notifier(self) -> Notifier:
        if self._notifier is None:
            notifier = Notifier(self.settings.notify, await self.session())
            await notifier.start()
            self._stack.push_async_callback(notifier.stop)
            self._notifier = notifier
        return self._notifier

    async def enforcer(self) -> LatePositiveEnforcer:
        if self._enforcer is None:
            reject = frozenset(self.settings.validation.reject_labels)
            enforcer = LatePositiveEnforcer(await self.store(), await self.pictrs(), reject)
            if self._service:
                enforcer.start()
            self._stack.push_async_callback(enforcer.stop)
            self._enforcer = enforcer
        return self._enforcer

    async def finish(self) -> FinishedHook:
        """Where every judgement ends, once the Judge has stored it."""
        enforcer = await self.enforcer()
        notifier = await self.notifier()
        judged = self._judged

        async def finished(job: Job, verdict: Verdict, answered: str | None) -> None:
            await enforcer.on_finished(job, verdict, answered)
            for hook in judged:
                hook(job, verdict, answered)
            _notify(notifier, job, verdict, answered)

        return finished

    async def judge(self) -> Judge:
        if self._judge is None:
            backend = await self.backend()
            # What a cheap screen (the pre-screen) passes on to gives the second opinions.
            second = backend.passes_on() if self.settings.prescreen.second_opinion else None
            judge = build_judge(
                self.settings,
                await self.store(),
                self.policy(),
                backend,
                self.executor(),
                on_finished=await self.finish(),
                hashes=await self.hashes(),
                second_opinion=second,
                embeddings=await self.embeddings(),
                memory=self.decode_memory,
            )
            await judge.start()
            self._stack.push_async_callback(judge.stop)
            self._judge = judge
        return self._judge

    # -- review and the service's background work ----------------------------------------------

    async def quarantine(self) -> Quarantine:
        if self._quarantine is None:
            self._quarantine = Quarantine(await self.store(), self.settings.quarantine.dir)
        return self._quarantine

    async def review(self) -> Review:
        """Admin decisions; copies are held in the quarantine directory or by a sweep."""
        if self._review is None:
            store = await self.store()
            judge, quarantine = await self.judge(), await self.quarantine()
            self._review = review_for(self.settings, store, judge, quarantine)
        return self._review

    async def watcher(self) -> ReadinessWatcher:
        """Notifies when the backend goes down and comes back (a long-running process's job)."""
        if self._watcher is None:
            notifier = await self.notifier()
            watcher = ReadinessWatcher(
                (await self.backend()).readiness,
                self.settings.notify.readiness_interval_s,
                lambda state: notifier.notify(backend_event(state)),
            )
            await watcher.start()
            self._stack.push_async_callback(watcher.stop)
            self._watcher = watcher
        return self._watcher

    async def publisher(self) -> Publisher:
        if self._publisher is None:
            self._publisher = Publisher(await self.store(), self.settings.hashes)
        return self._publisher

    async def subscriber(self) -> Subscriber:
        """The hash-list subscriptions, refreshed in the background while the runtime is open."""
        if self._subscriber is None:
            subscriber = Subscriber(await self.hashes(), self.settings.hashes, await self.session())
            await subscriber.start()
            self._stack.push_async_callback(subscriber.stop)
            self._subscriber = subscriber
        return self._subscriber

    async def provenance(self) -> ProvenanceResolver:
        """Who uploaded stored positives and where Lemmy uses them (lemmy.database_url); the
        service resolves in the background, a CLI command asks once."""
        if self._provenance is None:
            resolver = ProvenanceResolver(
                await self.store(),
                self.settings.lemmy,
                await self.pictrs(),
                await self.notifier() if self._service else None,
            )
            # lemmy.auto_actions, for images a person or a deny list vouched for.
            resolver.on_resolved = (await self.moderator()).auto
            if self._service:
                await resolver.start()
            self._stack.push_async_callback(resolver.stop)
            self._provenance = resolver
        return self._provenance

    async def moderator(self) -> Moderator:
        """Admin actions through Lemmy's API, in the form of the Lemmy provenance detected."""
        if self._moderator is None:

            def schema_api() -> str | None:
                lemmy = self._provenance.lemmy if self._provenance is not None else None
                return lemmy.schema.api if lemmy is not None and lemmy.schema else None

            self._moderator = Moderator(
                await self.store(), self.settings.lemmy, await self.session(), schema_api
            )
        return self._moderator

    async def embedding_publisher(self) -> EmbeddingPublisher:
        if self._embedding_publisher is None:
            self._embedding_publisher = EmbeddingPublisher(
                await self.store(), self.settings.embeddings, self.settings.hashes.publish_source
            )
        return self._embedding_publisher

    async def embedding_subscriber(self) -> EmbeddingSubscriber:
        """The embedding-list subscriptions, refreshed in the background (when on)."""
        if self._embedding_subscriber is None:
            subscriber = EmbeddingSubscriber(
                await self.embeddings(), self.settings.embeddings, await self.session()
            )
            await subscriber.start()
            self._stack.push_async_callback(subscriber.stop)
            self._embedding_subscriber = subscriber
        return self._embedding_subscriber


@asynccontextmanager
async def open_runtime(
    settings: Settings, *, backend: Backend | None = None, service: bool = False
) -> AsyncIterator[Runtime]:
    """A Runtime whose parts, all of those asked for and only those, stop on exit."""
    async with AsyncExitStack() as stack:
        yield Runtime(settings, stack, backend=backend, service=service)


def _notify(notifier: Notifier, job: Job, verdict: Verdict, answered: str | None) -> None:
    if verdict.is_positive:
        notifier.notify(
            {
                "event": "positive",
                "sha256": job.sha256,
                "label": verdict.label.value,
                "reasons": verdict.reasons,
                "source": job.source,
                "backend": verdict.backend,
                "late": answered == "accept",
            }
        )
