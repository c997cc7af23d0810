"""What each API area's handlers need (one small typed object per area), built from the
runtime's parts (horde_scanner/runtime/) at start-up and stopped at exit (never at import)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Protocol

from aiohttp import web

from horde_scanner.backends.base import Backend
from horde_scanner.backends.workers import WorkerPool
from horde_scanner.config import (
    AdminSettings,
    HashesSettings,
    MediaSettings,
    MetricsSettings,
    ServerSettings,
    Settings,
    ValidationSettings,
)
from horde_scanner.integrations.notify import Notifier
from horde_scanner.judging.judge import Judge
from horde_scanner.judging.policy_diff import PolicyDiffStore
from horde_scanner.media.memory import DecodeMemory
from horde_scanner.moderation.actions import Moderator
from horde_scanner.moderation.provenance import ProvenanceResolver
from horde_scanner.policy.rules import Policy
from horde_scanner.review.decisions import Review
from horde_scanner.review.evidence import EvidenceStore
from horde_scanner.runtime import Runtime, open_runtime
from horde_scanner.service.admission import LateAdmissions
from horde_scanner.service.auth import ClientAuth, forget_raw_ids
from horde_scanner.service.metrics import Metrics, Sources
from horde_scanner.service.upload_body import ByteBudget
from horde_scanner.signals.embedding_exchange import EmbeddingPublisher
from horde_scanner.signals.embeddings import EmbeddingMatcher
from horde_scanner.signals.hash_publish import Publisher
from horde_scanner.store.interfaces import (
    AuditStore,
    LemmyActionStore,
    ProvenanceStore,
    StoreLifecycle,
    VerdictStore,
)
from horde_scanner.sweep.metrics import SweepProgress

log = logging.getLogger(__name__)


# What each API area's handlers need, and nothing else: built once at start-up from the
# runtime's parts (open_services), found by the handlers under the area's key on the app.


@dataclass(frozen=True, slots=True)
class EdgeDeps:
    """What the middlewares read of every request: who the client is, where errors count."""

    auth: ClientAuth
    metrics: Metrics


@dataclass(frozen=True, slots=True)
class ValidateDeps:
    """pict-rs's validation call (validate.py)."""

    validation: ValidationSettings
    server: ServerSettings
    auth: ClientAuth
    judge: Judge
    store: AuditStore
    metrics: Metrics
    # Uploads answered before they got an admission slot, waiting for one (admission.py).
    late_admissions: LateAdmissions
    # Complete uploads being admitted at once (server.max_concurrent_uploads).
    upload_gate: asyncio.Semaphore
    # Bytes of bodies being read, in memory and spooled to disk (upload_body.py).
    upload_memory: ByteBudget
    upload_spool: ByteBudget


@dataclass(frozen=True, slots=True)
class WorkersDeps:
    """The remote workers' pull protocol (workers.py)."""

    # None when workers.keys is empty: the routes answer 404.
    pool: WorkerPool | None
    policy: Policy
    metrics: Metrics


@dataclass(frozen=True, slots=True)
class HashesDeps:
    """This instance's published hash and embedding lists (hashes.py)."""

    settings: HashesSettings
    publisher: Publisher
    embeddings: EmbeddingMatcher | None
    embedding_publisher: EmbeddingPublisher | None


@dataclass(frozen=True, slots=True)
class HealthDeps:
    """/healthz, /readyz (health.py) and /metrics (app.py)."""

    validation: ValidationSettings
    metrics_settings: MetricsSettings
    metrics: Metrics
    store: StoreLifecycle
    backend: Backend
    judge: Judge
    policy: Policy
    embeddings: EmbeddingMatcher | None
    provenance: ProvenanceResolver | None


class LemmyAreaStore(ProvenanceStore, LemmyActionStore, VerdictStore, Protocol):
    """What the Lemmy area asks of the store: provenance rows, the Lemmy calls made, and a
    verdict's first sighting (to ask for provenance of an image never asked about)."""


# The admin API and the review page, one object per area (Meta HMA's "one blueprint per API
# area"): each module of service/admin/ reads one of these, and nothing wider.


@dataclass(frozen=True, slots=True)
class SignInDeps:
    """Who may use the admin API and the review page: the bearer guard (admin/auth.py) and the
    login form (admin/page.py), which count wrong tokens and audit sign-ins."""

    auth: ClientAuth
    metrics: Metrics
    store: AuditStore


@dataclass(frozen=True, slots=True)
class ReviewDeps:
    """The review queue and the decisions on it: verdicts, allow and deny lists, re-judging
    (admin/review_api.py, admin/review_page.py)."""

    review: Review
    # Late positives' cards show their stored verdict.
    store: VerdictStore
    # A confirmed positive may start lemmy.auto_actions (None when lemmy.url is unset).
    moderator: Moderator | None
    # admin.previews: whether the cards offer a blurred preview at all.
    previews: bool
    # Whether late positives are purged through pict-rs at once (the queue page says if not).
    late_purges: bool


@dataclass(frozen=True, slots=True)
class PreviewDeps:
    """The review page's blurred previews of quarantined items (admin/preview_page.py)."""

    admin: AdminSettings
    media: MediaSettings
    # Previews are decoded within the process's one decode memory budget.
    decode_memory: DecodeMemory
    review: Review
    store: AuditStore


@dataclass(frozen=True, slots=True)
class LemmyDeps:
    """Who uploaded an image and where Lemmy uses it, and the admin's Lemmy actions
    (admin/lemmy_api.py, admin/lemmy_page.py)."""

    store: LemmyAreaStore
    # Off when lemmy.database_url / lemmy.url are unset.
    provenance: ProvenanceResolver | None
    moderator: Moderator | None


@dataclass(frozen=True, slots=True)
class ExportDeps:
    """Evidence export (admin/export_api.py): the store as `evidence.records` reads it."""

    store: EvidenceStore


@dataclass(frozen=True, slots=True)
class StatusDeps:
    """The admin's overview (admin/status_api.py): counts, the backend, this process's figures."""

    review: Review
    backend: Backend
    metrics: Metrics
    started_at: float


@dataclass(frozen=True, slots=True)
class PolicyDeps:
    """The policy dry run (admin/policy.py)."""

    validation: ValidationSettings
    store: PolicyDiffStore
    policy: Policy


EDGE: web.AppKey[EdgeDeps] = web.AppKey("edge", EdgeDeps)
VALIDATE: web.AppKey[ValidateDeps] = web.AppKey("validate", ValidateDeps)
WORKERS: web.AppKey[WorkersDeps] = web.AppKey("workers", WorkersDeps)
HASHES: web.AppKey[HashesDeps] = web.AppKey("hashes", HashesDeps)
HEALTH: web.AppKey[HealthDeps] = web.AppKey("health", HealthDeps)
SIGN_IN: web.AppKey[SignInDeps] = web.AppKey("sign_in", SignInDeps)
REVIEW: web.AppKey[ReviewDeps] = web.AppKey("review", ReviewDeps)
PREVIEW: web.AppKey[PreviewDeps] = web.AppKey("preview", PreviewDeps)
LEMMY: web.AppKey[LemmyDeps] = web.AppKey("lemmy", LemmyDeps)
EXPORT: web.AppKey[ExportDeps] = web.AppKey("export", ExportDeps)
STATUS: web.AppKey[StatusDeps] = web.AppKey("status", StatusDeps)
POLICY: web.AppKey[PolicyDeps] = web.AppKey("policy", PolicyDeps)
# The composition root the parts above came from: `serve` reads its start-up summary there, a
# sweep run inside the service uses it, and tests reach parts through it.
RUNTIME: web.AppKey[Runtime] = web.AppKey("runtime", Runtime)


@dataclass(frozen=True, slots=True)
class ServiceDeps:
    runtime: Runtime
    edge: EdgeDeps
    validate: ValidateDeps
    workers: WorkersDeps
    hashes: HashesDeps
    health: HealthDeps
    sign_in: SignInDeps
    review: ReviewDeps
    preview: PreviewDeps
    lemmy: LemmyDeps
    export: ExportDeps
    status: StatusDeps
    policy: PolicyDeps

    def install(self, app: web.Application) -> None:
        """Put each area's dependencies where its handlers look."""
        app[RUNTIME] = self.runtime
        app[EDGE] = self.edge
        app[VALIDATE] = self.validate
        app[WORKERS] = self.workers
        app[HASHES] = self.hashes
        app[HEALTH] = self.health
        app[SIGN_IN] = self.sign_in
        app[REVIEW] = self.review
        app[PREVIEW] = self.preview
        app[LEMMY] = self.lemmy
        app[EXPORT] = self.export
        app[STATUS] = self.status
        app[POLICY] = self.policy


@asynccontextmanager
async def open_services(
    settings: Settings, *, backend: Backend | None = None
) -> AsyncIterator[ServiceDeps]:
    """The runtime's parts the handlers use, plus the service's own background work."""
    started_at = time.time()
    async with open_runtime(settings, backend=backend, service=True) as rt:
        store = await rt.store()
        if backend is not None:
            # A backend handed to the service (tests, bench) runs and stops with it.
            await backend.start(store)
            rt.on_close(backend.close)
        auth = ClientAuth(settings.server)
        await forget_raw_ids(auth, store)
        # /metrics counts every judgement this process finishes (uploads' and sweeps' alike).
        metrics = Metrics()
        rt.on_judged(metrics.count_judgement)
        judge = await rt.judge()
        metrics.bind(_scrape_sources(judge, await rt.backend(), await rt.notifier(), rt.sweeps))
        gate = asyncio.Semaphore(settings.server.max_concurrent_uploads)
        late = LateAdmissions(gate, judge)
        rt.on_close(late.aclose)  # before the judge stops: they still need it
        # Asked in the order the service always asked (so they stop in the reverse order);
        # its background work starts on the ask: the readiness watcher, the hash-list and
        # embedding-list subscriptions, provenance.
        policy = rt.policy()
        the_backend = await rt.backend()
        enforcer = await rt.enforcer()
        await rt.watcher()
        review = await rt.review()
        publisher = await rt.publisher()
        await rt.subscriber()
        pool = await rt.pool()
        embeddings = await rt.embeddings()
        embedding_publisher = await rt.embedding_publisher()
        await rt.embedding_subscriber()
        provenance = await rt.provenance()
        moderator = await rt.moderator()
        yield ServiceDeps(
            runtime=rt,
            edge=EdgeDeps(auth, metrics),
            validate=ValidateDeps(
                settings.validation,
                settings.server,
                auth,
                judge,
                store,
                metrics,
                late,
                upload_gate=gate,
                upload_memory=ByteBudget(settings.server.upload_memory_bytes),
                upload_spool=ByteBudget(settings.server.upload_spool_bytes),
            ),
            workers=WorkersDeps(pool, policy, metrics),
            hashes=HashesDeps(settings.hashes, publisher, embeddings, embedding_publisher),
            health=HealthDeps(
                settings.validation,
                settings.metrics,
                metrics,
                store,
                the_backend,
                judge,
                policy,
                embeddings,
                provenance,
            ),
            sign_in=SignInDeps(auth, metrics, store),
            review=ReviewDeps(
                review,
                store,
                moderator,
                previews=settings.admin.previews,
                late_purges=enforcer.purges,
            ),
            preview=PreviewDeps(settings.admin, settings.media, rt.decode_memory, review, store),
            lemmy=LemmyDeps(store, provenance, moderator),
            export=ExportDeps(store),
            status=StatusDeps(review, the_backend, metrics, started_at),
            policy=PolicyDeps(settings.validation, store, policy),
        )


def _scrape_sources(
    judge: Judge, backend: Backend, notifier: Notifier, sweeps: SweepProgress
) -> Sources:
    """What /metrics reads at scrape time."""
    return Sources(
        backend=backend,
        job_failures=lambda: judge.runner.failures,
        jobs_outstanding=lambda: judge.runner.outstanding,
        backend_live=lambda: backend.readiness().live,
        notifier=notifier,
        sweeps=sweeps,
        store=judge.store.health,
        store_kept=lambda: judge.runner.kept,
        store_waiting=lambda: judge.store_waiting,
        store_refused=lambda: judge.store_refused,
    )
