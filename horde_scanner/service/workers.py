"""The pull protocol for remote GPU workers, pictrs-safety compatible.

    GET  /api/v1/pop            header `apikey`; optional `?wait=S` long poll (our worker)
         200: the image (WebP) with `Content-Disposition: attachment; filename=<job>.webp`
              (unquoted, as Flask's send_file writes it: fedi-safety takes everything after
              the first `=` as the name; job names are hex, so nothing needs quoting)
         204: nothing to do
    POST /api/v1/pop            JSON {"image": "<job>.webp", "is_csam": bool, "is_nsfw": bool}
         201: taken; 404: unknown job (answered already, or its caller gave up);
         403: the job was handed to another worker. `image` may be quoted.
         Our own worker adds "signals": a full Signals object (per-phrase CLIP scores), which
         the service judges with its own policy instead of trusting the booleans, or "error".
    GET  /api/v1/worker/policy  what our worker must score: {"version", "clip_phrases"}

fedi-safety's worker (lemmy_safety_pictrs.py) speaks the first two as they are.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from aiohttp import web
from pydantic import ValidationError

from horde_scanner.backends.workers import Refusal, WorkerPool, worker_id
from horde_scanner.policy.rules import WORKER_CSAM
from horde_scanner.service.context import WORKERS, WorkersDeps
from horde_scanner.service.errors import RequestError
from horde_scanner.verdict import Signals

log = logging.getLogger(__name__)


def _pool(request: web.Request, *, answering: bool = False) -> tuple[WorkersDeps, WorkerPool, str]:
    svc = request.app[WORKERS]
    pool = svc.pool
    if pool is None:
        raise RequestError(404, "workers_disabled", "no worker pool configured (set workers.keys)")
    key_name = pool.key_name(request.headers.get("apikey"))
    if key_name is None:
        if answering:
            svc.metrics.worker_answer("bad_worker_key")
            log.warning("worker answer refused (bad_worker_key) from %s", request.remote)
        raise RequestError(401, "bad_worker_key", "missing or unknown `apikey` header")
    name = request.headers.get("X-Worker-Name", "").strip()[:100]
    if not name:
        # pictrs-safety workers send no name: one worker per address.
        name = request.remote or "unknown"
    return svc, pool, worker_id(key_name, name)


def job_name(value: str) -> str:
    """The job name a worker sent back, quoted (`"<id>.webp"`) or not."""
    value = value.strip()
    if len(value) >= 2 and value[0] == value[-1] == '"':
        value = value[1:-1]
    return value


async def pop(request: web.Request) -> web.StreamResponse:
    svc, pool, worker = _pool(request)
    wait_s = 0.0
    if "wait" in request.query:
        try:
            wait_s = float(request.query["wait"])
        except ValueError:
            raise RequestError(400, "bad_wait", "`wait` must be a number of seconds") from None
        if not 0 <= wait_s <= pool.settings.max_poll_wait_s:
            raise RequestError(
                400,
                "bad_wait",
                f"`wait` must be between 0 and {pool.settings.max_poll_wait_s:g} seconds "
                "(workers.max_poll_wait_s)",
            )
    job = await pool.pop_wait(worker, wait_s) if wait_s else pool.pop(worker)
    if job is None:
        return web.Response(status=204)
    return web.Response(
        body=job.webp,
        content_type="image/webp",
        headers={
            "Content-Disposition": f"attachment; filename={job.filename}",
            "X-Policy-Version": svc.policy.version,
        },
    )


async def answer(request: web.Request) -> web.Response:
    svc, pool, worker = _pool(request, answering=True)
    try:
        filename, signals, error = await _read_answer(request, worker)
    except RequestError as exc:
        svc.metrics.worker_answer("bad_answer")
        log.warning("worker answer refused (%s) from %s: %s", exc.error, worker, exc.detail[:200])
        raise
    refused = pool.answer(filename, worker, signals, error)
    svc.metrics.worker_answer(refused.value if refused else "accepted")
    if refused is Refusal.NOT_HOLDER:
        raise RequestError(
            403, "not_your_job", f"{filename}: this job was handed to another worker"
        )
    if refused is not None:
        raise RequestError(
            404, "unknown_job", f"{filename}: no open job (answered already, or given up)"
        )
    return web.json_response({"image": filename, "accepted": True}, status=201)


async def _read_answer(request: web.Request, worker: str) -> tuple[str, Signals | None, str]:
    # guard.py has read the body already, chunked or not, within
    # server.worker_answer_max_bytes and server.body_timeout_s.
    try:
        body: Any = json.loads(await request.read())
    except ValueError as exc:
        raise RequestError(400, "bad_json", f"body is not JSON: {exc}") from None
    if not isinstance(body, dict) or not isinstance(body.get("image"), str):
        raise RequestError(400, "bad_answer", "expected a JSON object with a string `image`")
    filename = job_name(body["image"])
    signals: Signals | None = None
    error = ""
    if body.get("error"):
        error = str(body["error"])[:500]
    elif body.get("signals") is not None:
        try:
            signals = Signals.model_validate(body["signals"])
        except ValidationError as exc:
            raise RequestError(400, "bad_signals", f"`signals` is not valid: {exc}") from None
        signals = signals.model_copy(
            update={"backend": f"worker:{worker}", "extra": {**signals.extra, "worker": worker}}
        )
    else:
        flags = {k: body.get(k) for k in ("is_csam", "is_nsfw")}
        if not all(isinstance(v, bool) for v in flags.values()):
            raise RequestError(400, "bad_answer", "`is_csam` and `is_nsfw` must be true or false")
        signals = Signals(
            backend=f"worker:{worker}",
            nsfw=flags["is_nsfw"],
            scores={WORKER_CSAM: 1.0 if flags["is_csam"] else 0.0},
            # A bare boolean from a remote worker: a verdict here, never evidence for others.
            extra={"worker": worker, "answer": "boolean", "evidence": False},
        )
    return filename, signals, error


async def worker_policy(request: web.Request) -> web.Response:
    svc, _, _ = _pool(request)
    return web.json_response(
        {
            "version": svc.policy.version,
            "clip_phrases": svc.policy.clip.phrases,
        }
    )


def add_routes(app: web.Application) -> None:
    app.router.add_get("/api/v1/pop", pop)
    app.router.add_post("/api/v1/pop", answer)
    app.router.add_get("/api/v1/worker/policy", worker_policy)
