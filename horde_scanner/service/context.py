"""Everything the handlers share, built at start-up and torn down at exit (never at import)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import aiohttp
from aiohttp import web

from horde_scanner.backends.base import Backend
from horde_scanner.backends.horde import start_horde
from horde_scanner.backends.prescreen import PrescreenBackend
from horde_scanner.backends.router import build_backend
from horde_scanner.backends.shared_submits import share_horde_budget
from horde_scanner.backends.workers import WorkerPool
from horde_scanner.config import Settings
from horde_scanner.hashlists.matcher import HashMatcher
from horde_scanner.integrations.enforce import LatePositiveEnforcer
from horde_scanner.integrations.notify import Notifier, ReadinessWatcher, backend_event
from horde_scanner.integrations.pictrs import PictrsClient
from horde_scanner.judging.judge import Judge, build_judge
from horde_scanner.judging.policy import Policy
from horde_scanner.review.decisions import Review
from horde_scanner.review.quarantine import Quarantine
from horde_scanner.service.auth import ClientAuth
from horde_scanner.service.metrics import Metrics, Sources
from horde_scanner.store.sqlite import Job, Store
from horde_scanner.sweep.holder import review_for
from horde_scanner.sweep.metrics import SweepProgress
from horde_scanner.verdict import Label, Verdict

log = logging.getLogger(__name__)


@dataclass
class Services:
    settings: Settings
    store: Store
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
    # Uploads being read and admitted at once (server.max_concurrent_uploads).
    upload_gate: asyncio.Semaphore = field(default_factory=lambda: asyncio.Semaphore(32))
    started_at: float = field(default_factory=time.time)
    # Answers by (route, answer), for logs now and metrics later.
    answers: Counter[tuple[str, str]] = field(default_factory=Counter)
    # Remote workers pulling jobs (service/workers.py); None when workers.keys is empty.
    workers: WorkerPool | None = None


SERVICES: web.AppKey[Services] = web.AppKey("services", Services)


@asynccontextmanager
async def open_services(
    settings: Settings, *, backend: Backend | None = None
) -> AsyncIterator[Services]:
    """Open the store, the backend and the job runner; close them all on exit."""
    policy = Policy.load(settings.policy.path)
    store = await Store.open(settings.store)
    session = aiohttp.ClientSession()
    executor = ThreadPoolExecutor(
        max_workers=settings.validation.max_decoding, thread_name_prefix="decode"
    )
    try:
        pool = WorkerPool(settings.workers) if settings.workers.keys else None
        backend = backend or build_backend(settings, session, policy=policy, pool=pool)
        second = None
        if settings.prescreen.second_opinion and isinstance(backend, PrescreenBackend):
            second = backend.next
        pictrs = None
        if settings.pictrs.url and settings.pictrs.api_key:
            pictrs = PictrsClient(
                settings.pictrs.url,
                settings.pictrs.api_key,
                session,
                search_pages=settings.pictrs.search_pages,
            )
        enforcer = LatePositiveEnforcer(store, pictrs, frozenset(settings.validation.reject_labels))
        metrics = Metrics()
        notifier = Notifier(settings.notify, session)

        async def on_finished(job: Job, verdict: Verdict, answered: str | None) -> None:
            await enforcer.on_finished(job, verdict, answered)
            _after_judgement(metrics, notifier, job, verdict, answered)

        hashes = HashMatcher(store, settings.hashes, executor)
        await hashes.start()
        judge = build_judge(
            settings,
            store,
            policy,
            backend,
            executor,
            on_finished=on_finished,
            hashes=hashes,
            second_opinion=second,
        )
        quarantine = Quarantine(store, settings.quarantine.dir)
        sweeps = SweepProgress()
        watcher = ReadinessWatcher(
            backend.readiness,
            settings.notify.readiness_interval_s,
            lambda state: notifier.notify(backend_event(state)),
        )
        metrics.bind(
            Sources(
                backend=backend,
                job_failures=lambda: judge.runner.failures,
                jobs_outstanding=lambda: judge.runner.outstanding,
                backend_live=lambda: backend.readiness().live,
                notifier=notifier,
                sweeps=sweeps,
            )
        )
        await start_horde(backend, store.db)
        share_horde_budget(backend, store)
        await judge.start()
        enforcer.start()
        await notifier.start()
        await watcher.start()
        try:
            yield Services(
                settings,
                store,
                policy,
                backend,
                judge,
                enforcer,
                ClientAuth(settings.server),
                session,
                hashes,
                metrics,
                notifier,
                watcher,
                quarantine,
                review_for(settings, store, judge, quarantine),
                sweeps,
                upload_gate=asyncio.Semaphore(settings.server.max_concurrent_uploads),
                workers=pool,
            )
        finally:
            await watcher.stop()
            await enforcer.stop()
            await judge.stop()
            await hashes.stop()
            await notifier.stop()
            await backend.aclose()
            if pool is not None:
                await pool.aclose()
    finally:
        await session.close()
        executor.shutdown(wait=False, cancel_futures=True)
        await store.close()


def _after_judgement(
    metrics: Metrics, notifier: Notifier, job: Job, verdict: Verdict, answered: str | None
) -> None:
    metrics.judged.labels(label=verdict.label.value, backend=verdict.backend or "none").inc()
    if verdict.label is Label.ERROR:
        metrics.error("backend_failed")
    elif verdict.label is Label.UNREADABLE:
        metrics.error("unreadable")
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
