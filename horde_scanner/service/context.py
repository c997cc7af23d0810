"""Everything the handlers share: the runtime's parts (horde_scanner/runtime.py), opened at
start-up and stopped at exit (never at import)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import aiohttp
from aiohttp import web

from horde_scanner.backends.base import Backend
from horde_scanner.backends.horde import start_horde
from horde_scanner.backends.shared_submits import share_horde_budget
from horde_scanner.backends.workers import WorkerPool
from horde_scanner.config import Settings
from horde_scanner.hashlists.matcher import HashMatcher
from horde_scanner.hashlists.publish import Publisher
from horde_scanner.hashlists.subscribe import Subscriber
from horde_scanner.integrations.enforce import LatePositiveEnforcer
from horde_scanner.integrations.metrics import Metrics
from horde_scanner.integrations.notify import Notifier, ReadinessWatcher
from horde_scanner.judging.judge import Judge
from horde_scanner.judging.policy import Policy
from horde_scanner.moderation.actions import Moderator
from horde_scanner.moderation.provenance import ProvenanceResolver
from horde_scanner.review.decisions import Review
from horde_scanner.review.quarantine import Quarantine
from horde_scanner.runtime import Runtime, open_runtime
from horde_scanner.service.admission import LateAdmissions
from horde_scanner.service.auth import ClientAuth, forget_raw_ids
from horde_scanner.service.upload_body import ByteBudget
from horde_scanner.signals.embedding_exchange import EmbeddingPublisher, EmbeddingSubscriber
from horde_scanner.signals.embeddings import EmbeddingMatcher
from horde_scanner.store.interfaces import UnifiedStore
from horde_scanner.sweep.metrics import SweepProgress

log = logging.getLogger(__name__)


@dataclass
class Services:
    settings: Settings
    store: UnifiedStore
    policy: Policy
    backend: Backend
    judge: Judge
    enforcer: LatePositiveEnforcer
    auth: ClientAuth
    session: aiohttp.ClientSession
    hashes: HashMatcher
    metrics: Metrics
    notifier: Notifier
    watcher: ReadinessWatcher
    quarantine: Quarantine
    review: Review
    # Sweeps running in this process report here; /metrics reads it.
    sweeps: SweepProgress
    publisher: Publisher
    subscriber: Subscriber
    # The parts above come from here; a sweep run inside the service opens nothing of its own.
    runtime: Runtime
    # Uploads answered before they got an admission slot, waiting for one (service/admission.py).
    late_admissions: LateAdmissions
    # Complete uploads being admitted at once (server.max_concurrent_uploads).
    upload_gate: asyncio.Semaphore = field(default_factory=lambda: asyncio.Semaphore(32))
    # Bytes of bodies being read, in memory and spooled to disk (service/upload_body.py).
    upload_memory: ByteBudget = field(default_factory=lambda: ByteBudget(256 << 20))
    upload_spool: ByteBudget = field(default_factory=lambda: ByteBudget(0))
    started_at: float = field(default_factory=time.time)
    # Remote workers pulling jobs (service/workers.py); None when workers.keys is empty.
    workers: WorkerPool | None = None
    # Image embeddings (signals/embeddings.py): their matcher, list and subscriptions.
    embeddings: EmbeddingMatcher | None = None
    embedding_publisher: EmbeddingPublisher | None = None
    embedding_subscriber: EmbeddingSubscriber | None = None
    # Provenance of stored positives from Lemmy's database (off when lemmy.database_url is unset).
    provenance: ProvenanceResolver | None = None
    # Admin actions through Lemmy's API (off when lemmy.url is unset).
    moderator: Moderator | None = None


SERVICES: web.AppKey[Services] = web.AppKey("services", Services)


@asynccontextmanager
async def open_services(
    settings: Settings, *, backend: Backend | None = None
) -> AsyncIterator[Services]:
    """The runtime's parts the handlers use, plus the service's own background work."""
    async with open_runtime(settings, backend=backend, service=True) as rt:
        store = await rt.store()
        if backend is not None:
            # A backend handed to the service (tests, bench) runs and stops with it.
            await start_horde(backend, store)
            share_horde_budget(backend, store)
            rt.on_close(backend.aclose)
        auth = ClientAuth(settings.server)
        await forget_raw_ids(auth, store)
        judge = await rt.judge()
        gate = asyncio.Semaphore(settings.server.max_concurrent_uploads)
        late = LateAdmissions(gate, judge)
        rt.on_close(late.aclose)  # before the judge stops: they still need it
        yield Services(
            settings,
            store,
            rt.policy(),
            await rt.backend(),
            judge,
            await rt.enforcer(),
            auth,
            await rt.session(),
            await rt.hashes(),
            rt.metrics,
            await rt.notifier(),
            await rt.watcher(),
            await rt.quarantine(),
            await rt.review(),
            rt.sweeps,
            await rt.publisher(),
            await rt.subscriber(),
            rt,
            late,
            upload_gate=gate,
            upload_memory=ByteBudget(settings.server.upload_memory_bytes),
            upload_spool=ByteBudget(settings.server.upload_spool_bytes),
            workers=await rt.pool(),
            embeddings=await rt.embeddings(),
            embedding_publisher=await rt.embedding_publisher(),
            embedding_subscriber=await rt.embedding_subscriber(),
            provenance=await rt.provenance(),
            moderator=await rt.moderator(),
        )
