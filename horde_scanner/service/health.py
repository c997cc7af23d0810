"""/healthz: the process answers. /readyz: whether the store is there and which judging paths
are live. A store that is away (store/outage.py) makes it `degraded`, not a 503: uploads are
still answered (from memory, or by on_timeout)."""

from __future__ import annotations

import os
from dataclasses import dataclass

from aiohttp import web

from horde_scanner.backends.base import describe_paths, iter_backends
from horde_scanner.service.context import HEALTH


@dataclass(slots=True)
class Draining:
    """Set when the process was told to stop: /readyz turns 503 so balancers move away."""

    since: float | None = None


DRAINING = web.AppKey("draining", Draining)


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    draining = request.app.get(DRAINING)
    if draining is not None and draining.since is not None:
        return web.json_response(
            {"status": "draining", "why": "shutting down; uploads in flight are answered"},
            status=503,
        )
    svc = request.app[HEALTH]
    health = svc.store.health
    # Known to be away: its probe says when it is back (a ping could wait out a lock).
    if health.available:
        try:
            await svc.store.ping()
        except Exception as exc:
            # Away for now (a restart, a fail-over): still answering, so degraded, not a 503.
            if not health.failed(exc, write=False):
                return web.json_response(
                    {"status": "unready", "why": f"store {svc.store.where}: {exc}"}, status=503
                )
    backend = svc.backend.readiness()
    store_up = health.available
    body = {
        "status": "ready" if backend.live and store_up else "degraded",
        "store": svc.store.where,
        "store_health": {
            "available": store_up,
            "away_since": health.away_since,
            "why": health.why,
            "verdicts_kept": svc.judge.runner.kept,
            "uploads_waiting": svc.judge.store_waiting,
        },
        "backend": {"name": backend.name, "live": backend.live, "detail": backend.detail},
        # Every judging path behind the backend (pre-screen, CLIP, workers, Horde).
        "paths": {
            r.name: {"live": r.live, "detail": r.detail} for r in describe_paths(svc.backend)
        },
        "jobs_waiting": svc.judge.runner.outstanding,
        # Which of several processes on the port answered (server.processes).
        "pid": os.getpid(),
        "policy": svc.policy.version,
    }
    if svc.embeddings is not None:
        # One line: on (model, entries) or off and why (e.g. no model file yet).
        body["embeddings"] = {
            "enabled": svc.embeddings.enabled,
            "detail": svc.embeddings.status
            + (f"; {svc.embeddings.size} entries indexed" if svc.embeddings.enabled else ""),
        }
    if svc.provenance is not None and svc.provenance.lemmy is not None:
        # Lemmy's database (provenance only): never makes the service unready.
        body["lemmy"] = svc.provenance.describe()
    for inner in iter_backends(svc.backend):
        # Each backend's own details under its name (the AI Horde's: expected latency, its
        # queue, our submit limit, the kudos budget); never over a key of this body.
        details = inner.describe()
        if details and inner.name not in body and inner.name != "why":
            body[inner.name] = details
    whys = []
    if not store_up:
        whys.append(
            f"store {svc.store.where} unavailable ({health.why}); answering from memory, "
            "the rest by on_timeout and judged when it is back"
        )
    if not backend.live:
        # Still able to answer (cache, lists, on_timeout), so not a 503.
        whys.append(
            f"{backend.name}: {backend.detail}; misses are answered by on_timeout="
            f"{svc.validation.on_timeout.value}"
        )
    if whys:
        body["why"] = "; ".join(whys)
    return web.json_response(body)
