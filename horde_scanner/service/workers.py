"""The pull protocol for remote GPU workers, pictrs-safety compatible.

    GET  /api/v1/pop            header `apikey`; optional `?wait=S` long poll (our worker)
         200: the image (WebP) with `Content-Disposition: attachment; filename="<job>.webp"`
         204: nothing to do
    POST /api/v1/pop            JSON {"image": "<job>.webp", "is_csam": bool, "is_nsfw": bool}
         201: taken; 404: unknown job (answered by another worker, or its caller gave up)
         Our own worker adds "signals": a full Signals object (per-phrase CLIP scores), which
         the service judges with its own policy instead of trusting the booleans, or "error".
    GET  /api/v1/worker/policy  what our worker must score: {"version", "clip_phrases"}

fedi-safety's worker (lemmy_safety_pictrs.py) speaks the first two as they are.
"""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web
from pydantic import ValidationError

from horde_scanner.backends.workers import WorkerPool
from horde_scanner.policy import WORKER_CSAM
from horde_scanner.service.context import SERVICES, Services
from horde_scanner.service.errors import RequestError
from horde_scanner.verdict import Signals

_MAX_ANSWER_BYTES = 1 << 20


def _pool(request: web.Request) -> tuple[Services, WorkerPool, str]:
    svc = request.app[SERVICES]
    pool = svc.workers
    if pool is None:
        raise RequestError(404, "workers_disabled", "no worker pool configured (set workers.keys)")
    if not pool.authorised(request.headers.get("apikey")):
        raise RequestError(401, "bad_worker_key", "missing or unknown `apikey` header")
    name = request.headers.get("X-Worker-Name", "").strip()[:100]
    if not name:
        # pictrs-safety workers send no name: one worker per address.
        name = request.remote or "unknown"
    return svc, pool, name


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
            "Content-Disposition": f'attachment; filename="{job.filename}"',
            "X-Policy-Version": svc.policy.version,
        },
    )


async def answer(request: web.Request) -> web.Response:
    _, pool, worker = _pool(request)
    if request.content_length is not None and request.content_length > _MAX_ANSWER_BYTES:
        raise RequestError(413, "too_large", f"answer exceeds {_MAX_ANSWER_BYTES} bytes")
    try:
        body: Any = json.loads(await request.read())
    except ValueError as exc:
        raise RequestError(400, "bad_json", f"body is not JSON: {exc}") from None
    if not isinstance(body, dict) or not isinstance(body.get("image"), str):
        raise RequestError(400, "bad_answer", "expected a JSON object with a string `image`")
    filename = body["image"]
    signals: Signals | None = None
    error = ""
    if body.get("error"):
        error = str(body["error"])[:500]
    elif body.get("signals") is not None:
        try:
            signals = Signals.model_validate(body["signals"])
        except ValidationError as exc:
            raise RequestError(400, "bad_signals", f"`signals` is not valid: {exc}") from None
        signals = signals.model_copy(update={"backend": f"worker:{worker}"})
    else:
        flags = {k: body.get(k) for k in ("is_csam", "is_nsfw")}
        if not all(isinstance(v, bool) for v in flags.values()):
            raise RequestError(400, "bad_answer", "`is_csam` and `is_nsfw` must be true or false")
        signals = Signals(
            backend=f"worker:{worker}",
            nsfw=flags["is_nsfw"],
            scores={WORKER_CSAM: 1.0 if flags["is_csam"] else 0.0},
        )
    if not pool.answer(filename, worker, signals, error):
        raise RequestError(
            404, "unknown_job", f"{filename}: no open job (answered already, or given up)"
        )
    return web.json_response({"image": filename, "accepted": True}, status=201)


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
