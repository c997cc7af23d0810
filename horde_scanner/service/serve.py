"""`horde-scanner serve`: run the app until SIGINT/SIGTERM, saying where it listens and what
is on, and turning the errors an admin can cause (store, port) into one clear message."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import signal
import time

from aiohttp import web

from horde_scanner.backends.base import describe_paths
from horde_scanner.config import Settings
from horde_scanner.errors import FinalError
from horde_scanner.integrations.enforce import NO_PICTRS_NOTE, LatePositiveEnforcer
from horde_scanner.runtime import Runtime
from horde_scanner.service.app import build_app
from horde_scanner.service.context import EDGE, RUNTIME, EdgeDeps
from horde_scanner.service.health import DRAINING, Draining
from horde_scanner.service.pacing import PacedRunner

log = logging.getLogger("horde_scanner.serve")


class ListenError(FinalError):
    """The address cannot be bound."""


def enforcement_note(enforcer: LatePositiveEnforcer) -> str | None:
    if not enforcer.purges:
        return NO_PICTRS_NOTE
    return None


async def summary(rt: Runtime, edge: EdgeDeps) -> str:
    """One line: the backend and its paths, pict-rs API or not, clients, workers."""
    backend, enforcer = await rt.backend(), await rt.enforcer()
    paths = ", ".join(f"{r.name} ({'live' if r.live else 'down'})" for r in describe_paths(backend))
    s = rt.settings
    parts = [
        f"backend {backend.name}: {paths}",
        f"deadline {s.validation.deadline_s:g} s, on_timeout={s.validation.on_timeout.value}",
        f"clients: {', '.join(edge.auth.names) or 'none (only IPADDR from allowed addresses)'}",
        f"pict-rs API: {'on' if enforcer.purges else 'off'}",
    ]
    if await rt.pool() is not None:
        parts.append("remote workers: on")
    return "; ".join(parts)


def make_runner(app: web.Application, settings: Settings) -> web.AppRunner:
    """The one way the app is put on a socket (`serve` and the test harness alike)."""
    return PacedRunner(
        app,
        head_timeout_s=settings.server.header_timeout_s,
        access_log=None,
        shutdown_timeout=settings.server.shutdown_timeout_s,
        lingering_time=settings.server.linger_s,
    )


def freeze_heap() -> int:
    """Collect once, then move every object alive now out of the cyclic collector's reach
    (`gc.freeze`); how many were moved.

    Start-up leaves some 120,000 long-lived objects (SQLAlchemy, Alembic, numpy, the app and
    its parts), and a full collection walks them all with the event loop stopped: 100-170 ms
    on the development machine, twice the release before SQLAlchemy's, now and then in the
    middle of a burst of cache hits (one such pause cost a 5 s round of `bench.validate` 7 %
    of its throughput). Frozen, they are never walked again; what is made later is collected
    as before. Objects freed by reference counting are freed as ever: only garbage in cycles
    among the frozen objects would stay, and the collection before freezing clears start-up's."""
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()


async def serve(
    settings: Settings, host: str, port: int, backlog: int = 1024, *, reuse_port: bool = False
) -> None:
    """Serve until a signal; raises the store/config errors of start-up and ListenError.

    On the signal /readyz turns 503 at once and the port stays open `server.drain_s` longer,
    so that a load balancer moves away; then the uploads in flight are answered (up to
    `server.shutdown_timeout_s`) before the services close."""
    app = build_app(settings)
    draining = Draining()
    app[DRAINING] = draining
    runner = make_runner(app, settings)
    await runner.setup()  # opens the store and the backend: StoreError etc. come from here
    try:
        # reuse_port: one of `server.processes` copies sharing the port (SO_REUSEPORT).
        site = web.TCPSite(runner, host, port, backlog=backlog, reuse_port=reuse_port or None)
        try:
            await site.start()
        except OSError as exc:
            raise ListenError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
        rt, edge = app[RUNTIME], app[EDGE]
        bound = runner.addresses[0][1] if runner.addresses else port
        log.info("listening on http://%s:%s; %s", host, bound, await summary(rt, edge))
        note = enforcement_note(await rt.enforcer())
        if note:
            log.warning("%s", note)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                loop.add_signal_handler(sig, stop.set)
        log.info("start-up heap frozen: %d objects out of the collector's reach", freeze_heap())
        await stop.wait()
        draining.since = time.time()
        log.info("stopping: /readyz answers 503; draining for %.1f s", settings.server.drain_s)
        await asyncio.sleep(settings.server.drain_s)
        log.info(
            "shutting down: %d answers since start, %d judgements waiting as jobs",
            sum(edge.metrics.answer_counts().values()),
            await (await rt.store()).count_jobs(),
        )
    finally:
        await runner.cleanup()
    log.info("stopped")
