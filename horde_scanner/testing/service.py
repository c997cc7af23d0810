"""Run the real service on a loopback port inside a test."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web

from horde_scanner.backends.base import Backend
from horde_scanner.backends.workers import WorkerPool
from horde_scanner.config import Settings, load_settings
from horde_scanner.integrations.enforce import LatePositiveEnforcer
from horde_scanner.integrations.notify import Notifier
from horde_scanner.judging.judge import Judge
from horde_scanner.moderation.provenance import ProvenanceResolver
from horde_scanner.policy.rules import Policy
from horde_scanner.review.quarantine import Quarantine
from horde_scanner.runtime import Runtime
from horde_scanner.service.admission import LateAdmissions
from horde_scanner.service.app import build_app
from horde_scanner.service.context import EDGE, RUNTIME, VALIDATE
from horde_scanner.service.metrics import Metrics
from horde_scanner.service.serve import make_runner
from horde_scanner.service.upload_body import ByteBudget
from horde_scanner.signals.embedding_exchange import EmbeddingSubscriber
from horde_scanner.signals.embeddings import EmbeddingMatcher
from horde_scanner.signals.hash_matcher import HashMatcher
from horde_scanner.signals.hash_subscribe import Subscriber
from horde_scanner.store.interfaces import UnifiedStore
from horde_scanner.sweep.metrics import SweepProgress

CLIENT_ID = "test-pictrs"


def make_settings(db: Path, horde_url: str, **sections: dict[str, Any]) -> Settings:
    """Settings for a test: its own store, the fake Horde, fast polling, one client id."""
    tree: dict[str, dict[str, Any]] = {
        "store": {"path": db},
        "horde": {
            "url": horde_url,
            "poll_interval_s": 0.12,
            "api_key": "0000000000",
            "retries": 2,
            "http_timeout_s": 5.0,
        },
        "server": {"client_ids": [CLIENT_ID]},
        "validation": {"deadline_s": 3.0},
    }
    for name, values in sections.items():
        tree.setdefault(name, {}).update(values)
    return load_settings(None, **tree)


@dataclass(frozen=True, slots=True)
class Parts:
    """What tests look at in a running service: the parts its composition root (the Runtime)
    built, and the service's own upload budgets and metrics, as its handlers got them."""

    runtime: Runtime
    settings: Settings
    store: UnifiedStore
    judge: Judge
    policy: Policy
    hashes: HashMatcher
    embeddings: EmbeddingMatcher
    quarantine: Quarantine
    enforcer: LatePositiveEnforcer
    notifier: Notifier
    subscriber: Subscriber
    embedding_subscriber: EmbeddingSubscriber
    provenance: ProvenanceResolver
    workers: WorkerPool | None
    sweeps: SweepProgress
    metrics: Metrics
    upload_gate: asyncio.Semaphore
    upload_memory: ByteBudget
    upload_spool: ByteBudget
    late_admissions: LateAdmissions

    @classmethod
    async def of(cls, app: web.Application) -> Parts:
        # Every part asked for here was built at start-up: asking again only returns it.
        rt, validate = app[RUNTIME], app[VALIDATE]
        return cls(
            runtime=rt,
            settings=rt.settings,
            store=await rt.store(),
            judge=await rt.judge(),
            policy=rt.policy(),
            hashes=await rt.hashes(),
            embeddings=await rt.embeddings(),
            quarantine=await rt.quarantine(),
            enforcer=await rt.enforcer(),
            notifier=await rt.notifier(),
            subscriber=await rt.subscriber(),
            embedding_subscriber=await rt.embedding_subscriber(),
            provenance=await rt.provenance(),
            workers=await rt.pool(),
            sweeps=rt.sweeps,
            metrics=app[EDGE].metrics,
            upload_gate=validate.upload_gate,
            upload_memory=validate.upload_memory,
            upload_spool=validate.upload_spool,
            late_admissions=validate.late_admissions,
        )


class RunningService:
    def __init__(self, runner: web.AppRunner, url: str, parts: Parts) -> None:
        self.runner = runner
        self.url = url
        self.parts = parts

    @property
    def runtime(self) -> Runtime:
        """The composition root the service was built from."""
        return self.parts.runtime

    def scan_url(self, client_id: str = CLIENT_ID) -> str:
        return f"{self.url}/api/v1/scan/{client_id}"


@asynccontextmanager
async def running_service(
    settings: Settings, *, backend: Backend | None = None
) -> AsyncIterator[RunningService]:
    runner = make_runner(build_app(settings, backend=backend), settings)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield RunningService(runner, f"http://127.0.0.1:{port}", await Parts.of(runner.app))
    finally:
        await runner.cleanup()


async def wait_for(
    predicate: Callable[[], Awaitable[Any]], timeout: float = 10.0, interval: float = 0.05
) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = await predicate()
        if value:
            return value
        await asyncio.sleep(interval)
    raise AssertionError("condition not met in time")
