"""A fake AI Horde interrogation ("alchemy") API, served over loopback HTTP.

It follows /work/shared/reference/ai-horde-alchemy.md and, where that note is silent or
second-hand, the AI Horde sources it cites (``horde/apis/v2/stable.py``, ``horde/image.py``,
``horde/exceptions.py``). Behaviour that differs from a naive reading of the note, on purpose:

* A base64 image larger than 3072*3072 *pixels in area* is refused with rc
  ``ImageValidationFailed`` (``horde/image.py::convert_source_image_to_pil``);
  ``SourceImageResolutionExceeded`` is only raised for more than 255 tiles of 512 px. Within
  that area, and with WebP's 16383 px side limit failing the re-encode first (again
  ``ImageValidationFailed``), only URL sources can reach it, or base64 ones when the fake's
  ``reencode_webp`` is off.
* ``source_image`` values starting with ``http`` are fetched like the server does (2 s timeout,
  at most 5 MB, must open in Pillow), but only from loopback hosts: anything else is refused
  with ``ImageValidationFailed`` without sending a packet, because tests must stay on loopback.
  The server answers every URL problem with ``ImageValidationFailed``, not
  ``SourceImageUrlInvalid``.
* A missing ``apikey`` header is a schema failure (400, no rc, reqparse ``required=True``); an
  empty or unknown one is 401 ``InvalidAPIKey``.
* The order of the POST checks is the server's: limiter, payload schema, header schema,
  maintenance, webhook, API key, TooManyPrompts (raw form count, before duplicates are
  dropped), raid-mode IP check, then the image.
* Rate limits are flask-limiter fixed windows (``horde/limiter.py``): a window opens at the
  first request and lasts its period, so a burst up to the limit passes at once. Submits: 90 a
  minute per IP (the limiter's default; ``Interrogate`` has no decorator of its own). Status:
  10 a second keyed on ip + method + path (``limiter_api.get_request_path``), so every request
  id has its own budget and GET and DELETE on it count apart.
* DELETE cancels every form not done and keeps the request (a later GET is still 200 until it
  expires); a form cancelled while processing is charged like a delivery, a waiting one is
  free (``horde/classes/stable/interrogation.py``).

A request expires ``expire_after`` seconds after creation by default; ``expiry_refresh=True``
gives the server's rule, where each pop (processing) and delivery (done) restarts the timer.

The simulated workers are evaluated lazily from a clock instead of background tasks, so a
fake can't leak tasks and tests can inject a clock. Forms no public worker serves yet
(``vectorize``, ``palette``, ``describe``, ``aesthetic`` and the newer upscalers) stay
``waiting`` until the request expires, as they would on the real horde.

Run ``python -m horde_scanner.testing.horde --port 7001 --latency 2.0`` for a demo server
(``--latency-range 2.8 5.2`` draws each request's latency uniformly instead).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import binascii
import io
import json
import math
import random
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, TypeAlias
from urllib.parse import urlsplit

import aiohttp
from aiohttp import web
from PIL import Image, ImageStat

from horde_scanner.errors import FinalError
from horde_scanner.testing.server import LoopbackServer, is_loopback_host

ANON_APIKEY = "0000000000"
MAX_PIXELS = 3072 * 3072
MAX_TILES = 255
URL_MAX_BYTES = 5 * 1024 * 1024
URL_FETCH_TIMEOUT_S = 2.0
DEFAULT_EXPIRE_AFTER_S = 20 * 60.0

POST_PROCESSORS: frozenset[str] = frozenset(
    {
        "GFPGAN",
        "GFPGANv1.3",
        "CodeFormers",
        "RestoreFormer",
        "RealESRGAN_x4plus",
        "RealESRGAN_x2plus",
        "RealESRGAN_x4plus_anime_6B",
        "NMKD_Siax",
        "4x_AnimeSharp",
        "4xNomos8kSC",
        "4xLSDIRplus",
        "4xNomosWebPhoto_RealPLKSR",
        "4xNomos2_realplksr_dysample",
        "4xNomos2_hq_dat2",
        "2xModernSpanimationV1",
        "strip_background",
    }
)
KNOWN_FORMS: frozenset[str] = (
    frozenset({"caption", "interrogation", "nsfw", "vectorize", "palette", "describe", "aesthetic"})
    | POST_PROCESSORS
)
# What the legacy alchemist worker implements; everything else has no public worker yet.
LW_SERVED_FORMS: frozenset[str] = frozenset(
    {
        "caption",
        "interrogation",
        "nsfw",
        "GFPGAN",
        "CodeFormers",
        "RealESRGAN_x4plus",
        "RealESRGAN_x2plus",
        "RealESRGAN_x4plus_anime_6B",
        "NMKD_Siax",
        "4x_AnimeSharp",
        "strip_background",
    }
)
DEFAULT_UNSERVED_FORMS: frozenset[str] = KNOWN_FORMS - LW_SERVED_FORMS
INTERROGATION_LISTS = ("artists", "flavors", "mediums", "movements", "sites", "tags", "techniques")
ACTIVE_STATES = frozenset({"waiting", "processing"})

Verdict: TypeAlias = dict[str, Any]
Judge: TypeAlias = Callable[[Image.Image], Verdict]
LatencySpec: TypeAlias = float | Callable[[], float]
Clock: TypeAlias = Callable[[], float]

# ---------------------------------------------------------------------------------------------
# Colour-marker convention of the default judge.
#
# Tests can't ship real abusive images, so the default judge reads the image's mean colour:
#   red     (r>200, g<60, b<60)   -> nsfw True,  caption "a photo of a young girl in a bedroom",
#                                    tags include "lolicon" (what our policy must treat as CSAM)
#   magenta (r>200, g<60, b>200)  -> nsfw True,  caption "a photo of a naked woman on a bed"
#   yellow  (r>200, g>200, b<60)  -> nsfw False, caption "a photo of a little girl at school"
#   anything else                 -> nsfw False, caption "a photo of a landscape with trees"
# The thresholds leave room for the WebP q50 re-encode the horde applies to base64 uploads.
# ---------------------------------------------------------------------------------------------
MARKER_COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (230, 20, 20),
    "magenta": (230, 20, 230),
    "yellow": (235, 225, 20),
    "green": (40, 150, 60),
}


def marker_image(
    colour: str = "green", size: tuple[int, int] = (64, 64), fmt: str = "PNG"
) -> bytes:
    """Encode a solid image of one of MARKER_COLOURS, for the default judge to classify."""
    buf = io.BytesIO()
    Image.new("RGB", size, MARKER_COLOURS[colour]).save(buf, format=fmt)
    return buf.getvalue()


def marker_b64(colour: str = "green", size: tuple[int, int] = (64, 64), fmt: str = "PNG") -> str:
    """The ``source_image`` value the horde expects: raw base64, no ``data:`` prefix."""
    return base64.b64encode(marker_image(colour, size, fmt)).decode("ascii")


def _ranked(*items: tuple[str, float]) -> list[dict[str, Any]]:
    return [{"text": text, "confidence": conf} for text, conf in items]


def _interrogation(**overrides: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    # Softmax confidences over a whole list, so each list sums to well under 100.
    base: dict[str, list[dict[str, Any]]] = {
        "artists": _ranked(("Claude Monet", 23.1), ("Ivan Shishkin", 12.4), ("Bob Ross", 9.8)),
        "flavors": _ranked(("matte painting", 18.2), ("detailed", 11.0), ("sunlight", 7.5)),
        "mediums": _ranked(("a photograph", 41.7), ("a digital rendering", 12.3)),
        "movements": _ranked(("naturalism", 21.0), ("photorealism", 15.2)),
        "sites": _ranked(("flickr", 33.3), ("unsplash", 20.1)),
        "tags": _ranked(("scenery", 31.0), ("tree", 22.4), ("outdoors", 14.9)),
        "techniques": _ranked(("depth of field", 25.5), ("long exposure", 9.1)),
    }
    base.update(overrides)
    return base


def default_judge(image: Image.Image) -> Verdict:
    """Classify by mean colour; see the marker convention above."""
    r, g, b = ImageStat.Stat(image.convert("RGB")).mean[:3]
    if r > 200 and g < 60 and b < 60:
        return {
            "nsfw": True,
            "caption": "a photo of a young girl in a bedroom",
            "interrogation": _interrogation(
                tags=_ranked(("lolicon", 40.0), ("1girl", 21.5), ("bed", 12.0), ("nude", 8.2)),
                movements=_ranked(("Erotic", 30.2), ("naturalism", 6.0)),
            ),
        }
    if r > 200 and g < 60 and b > 200:
        return {
            "nsfw": True,
            "caption": "a photo of a naked woman on a bed",
            "interrogation": _interrogation(
                tags=_ranked(("nude", 35.0), ("breasts", 22.0), ("bed", 10.1)),
                movements=_ranked(("Erotic", 38.9), ("photorealism", 9.0)),
            ),
        }
    if r > 200 and g > 200 and b < 60:
        return {
            "nsfw": False,
            "caption": "a photo of a little girl at school",
            "interrogation": _interrogation(
                tags=_ranked(("school uniform", 28.0), ("1girl", 19.0), ("classroom", 15.5)),
            ),
        }
    return {
        "nsfw": False,
        "caption": "a photo of a landscape with trees",
        "interrogation": _interrogation(),
    }


@dataclass
class FormRecord:
    """One form of a fake interrogation; times are on the fake's clock."""

    name: str
    payload: dict[str, Any]
    state: str
    processing_at: float | None
    done_at: float | None
    fault: bool
    result: dict[str, Any] | None = None


@dataclass
class InterrogationRecord:
    id: str
    apikey: str
    created: float
    touched: float
    slow_workers: bool
    trusted_workers: bool
    image: Image.Image
    image_bytes: bytes
    tiles: int
    forms: list[FormRecord]
    faulted: bool
    verdict: Verdict | None = None


@dataclass
class Submission:
    """What an accepted POST carried, for assertions."""

    id: str
    apikey: str
    client_agent: str | None
    ip: str
    forms: list[str]
    payloads: dict[str, dict[str, Any]]
    slow_workers: bool
    trusted_workers: bool
    webhook: str | None
    source_is_url: bool
    source_chars: int
    image_size: tuple[int, int]
    image_format: str | None  # Pillow's name for the format the client sent, e.g. "WEBP"
    body_keys: frozenset[str] = frozenset()  # every top-level key of the request body


class _Reject(FinalError):
    """An error reply raised out of nested validation helpers: {"message", "rc"}."""

    def __init__(self, status: int, message: str, rc: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.rc = rc


def _image_failed(message: str, rc: str = "ImageValidationFailed") -> _Reject:
    return _Reject(400, f"Image validation failed. {message}", rc)


def _form_item_error(i: int, item: Any) -> tuple[str, str] | None:
    if not isinstance(item, dict):
        return f"forms.{i}", f"{item!r} is not of type 'object'"
    if "name" not in item:
        return f"forms.{i}", "'name' is a required property"
    if item["name"] not in KNOWN_FORMS:
        return f"forms.{i}.name", f"{item['name']!r} is not one of {sorted(KNOWN_FORMS)}"
    payload = item.get("payload")
    if payload is not None and not isinstance(payload, dict):
        return f"forms.{i}.payload", f"{payload!r} is not of type 'object'"
    return None


def _tiles(size: tuple[int, int]) -> int:
    width, height = size
    return ((width + 511) // 512) * ((height + 511) // 512)


class FakeHorde(LoopbackServer):
    """In-memory AI Horde with knobs for failure injection; every knob may change mid-test."""

    base_path = "/api"

    def __init__(
        self,
        *,
        latency: LatencySpec = 1.0,
        judge: Judge = default_judge,
        valid_keys: Iterable[str] = (),
        expire_after: float = DEFAULT_EXPIRE_AFTER_S,
        expiry_refresh: bool = False,
        post_rate_per_min: int | None = 90,
        post_window_s: float = 60.0,
        status_rate_per_s: int | None = 10,
        max_forms_per_user: int = 300,
        max_forms_anonymous: int = 5000,
        unserved_forms: Iterable[str] = DEFAULT_UNSERVED_FORMS,
        reencode_webp: bool = True,
        interrogator_count: int = 4,
        version: str = "4.x",
        clock: Clock = time.monotonic,
    ) -> None:
        self.latency: LatencySpec = latency
        self.judge: Judge = judge
        self.valid_keys: set[str] = {ANON_APIKEY, *valid_keys}
        self.expire_after = expire_after
        self.expiry_refresh = expiry_refresh
        self.post_rate_per_min = post_rate_per_min
        # The submit limit's period; tests shorten it to see several windows quickly.
        self.post_window_s = post_window_s
        self.status_rate_per_s = status_rate_per_s
        self.max_forms_per_user = max_forms_per_user
        self.max_forms_anonymous = max_forms_anonymous
        self.unserved_forms: set[str] = set(unserved_forms)
        self.reencode_webp = reencode_webp
        self.interrogator_count = interrogator_count
        # Forms of other users in the queue, as /v2/status/performance reports them.
        self.extra_queued_forms = 0
        self.version = version
        self.clock: Clock = clock

        # Failure injection.
        self.maintenance = False
        self.too_many_prompts = False
        self.untrusted_ip = False
        self.stalled = False
        self.fault_forms: set[str] = set()
        self.fault_next = 0
        self.drop_connections = 0
        self.drop_after_handling = False
        self.delay_responses = 0.0
        # Chaos, drawn per call / per request from `rng` (seeded for repeatable runs):
        # the share of calls of every kind answered 5xx before anything is done (the real
        # server behind a failing proxy or worker process: nothing happens, so a failed POST
        # creates no request), the share of new requests no worker ever picks up (they stay
        # `waiting` until they expire), and the share of new requests whose forms all fault.
        self.error_rate = 0.0
        self.error_statuses: tuple[int, ...] = (500, 502, 503)
        self.error_methods: frozenset[str] = frozenset({"GET", "POST", "DELETE"})
        self.never_finish_rate = 0.0
        self.fault_rate = 0.0
        self.rng = random.Random()

        # Observations.
        self.client_agents: list[str | None] = []
        self.submissions: list[Submission] = []
        self.post_bodies: list[Any] = []
        self.errors: Counter[str] = Counter()
        self.requests_total = 0
        self.posts = 0
        self.status_calls = 0
        self.deletes = 0
        self.performance_calls = 0
        self.rate_limited = 0
        self.dropped = 0
        self.injected_errors = 0
        self.posts_rate_limited = 0  # POSTs the per-IP submit limiter answered 429
        # Ids of requests created never to finish, or to fault (chaos knobs above).
        self.never_finishing: set[str] = set()
        self.faulting: set[str] = set()

        self.interrogations: dict[str, InterrogationRecord] = {}
        self._kudos: dict[str, float] = {}
        self._windows: dict[tuple[str, ...], tuple[float, int]] = {}
        self._r2: dict[str, bytes] = {}
        self._origin = ""

    # -- lifecycle ---------------------------------------------------------------------------

    def app(self) -> web.Application:
        # Base64 sources of large images exceed aiohttp's 1 MiB default body limit.
        app = web.Application(
            middlewares=[self._middleware_factory()], client_max_size=64 * 1024 * 1024
        )
        app.router.add_post("/api/v2/interrogate/async", self._post)
        app.router.add_get("/api/v2/interrogate/status/{id}", self._status)
        app.router.add_delete("/api/v2/interrogate/status/{id}", self._delete)
        app.router.add_get("/api/v2/status/heartbeat", self._heartbeat)
        app.router.add_get("/api/v2/status/performance", self._performance)
        app.router.add_get("/fake-r2/{name}", self._r2_object)
        return app

    # -- views for tests ---------------------------------------------------------------------

    @property
    def kudos_spent(self) -> dict[str, float]:
        """Kudos charged per API key; reading it brings the simulated workers up to date."""
        self._sweep(self.clock())
        return dict(self._kudos)

    def active_forms(self, apikey: str) -> int:
        self._sweep(self.clock())
        return self._active_forms(apikey)

    # -- middleware and limiter --------------------------------------------------------------

    async def _middleware(
        self,
        request: web.Request,
        handler: Callable[[web.Request], Any],
    ) -> web.StreamResponse:
        self.requests_total += 1
        self.client_agents.append(request.headers.get("Client-Agent"))
        self._origin = f"{request.scheme}://{request.host}"
        if self.delay_responses > 0:
            await asyncio.sleep(self.delay_responses)
        if (
            self.error_rate > 0
            and request.method in self.error_methods
            and self.rng.random() < self.error_rate
        ):
            # What a proxy in front of a failing backend answers: no JSON, no rc, nothing done.
            self.injected_errors += 1
            status = self.rng.choice(self.error_statuses)
            self.errors[f"HTTP{status}"] += 1
            return web.Response(status=status, text=f"{status} injected error")
        if self.drop_connections > 0:
            self.drop_connections -= 1
            self.dropped += 1
            if self.drop_after_handling:
                # The server did the work; only the answer is lost, as with a proxy reset.
                await handler(request)
            if request.transport is not None:
                request.transport.abort()
            # Never reaches the client: the socket is gone, so aiohttp drops it quietly.
            return web.Response(status=500)
        response: web.StreamResponse = await handler(request)
        return response

    def _limited(self, key: tuple[str, ...], limit: int | None, window: float, now: float) -> bool:
        # flask-limiter's "fixed-window" strategy (limits' storage): a counter that starts
        # with the first hit after the last window expired and lives `window` seconds; every
        # hit counts, refused ones too. A burst of `limit` at once passes.
        if limit is None:
            return False
        opened, count = self._windows.get(key, (now, 0))
        if now - opened >= window:
            opened, count = now, 0
        count += 1
        self._windows[key] = (opened, count)
        return count > limit

    def _rate_limited_response(
        self, description: str, key: tuple[str, ...], limit: int, window: float
    ) -> web.Response:
        # flask-limiter's 429 carries only the limit description, never an rc (flask-restx
        # renders it as {"message": ...}). The server's limiter has headers_enabled=True
        # (horde/limiter.py), so the answer also says when the window resets.
        self.rate_limited += 1
        self.errors["RateLimited"] += 1
        opened, _ = self._windows[key]
        reset_in = max(0.0, opened + window - self.clock())
        headers = {
            "X-RateLimit-Limit": str(limit),
            "X-RateLimit-Remaining": "0",
            "X-RateLimit-Reset": str(int(time.time() + reset_in)),
            "Retry-After": str(math.ceil(reset_in)),
        }
        return web.json_response({"message": description}, status=429, headers=headers)

    def _fail(self, status: int, message: str, rc: str | None = None) -> web.Response:
        self.errors[rc or f"HTTP{status}"] += 1
        body: dict[str, Any] = {"message": message}
        if rc is not None:
            body["rc"] = rc
        return web.json_response(body, status=status)

    def _reply(self, rejected: _Reject) -> web.Response:
        return self._fail(rejected.status, rejected.message, rejected.rc)

    # -- simulated workers -------------------------------------------------------------------

    def _advance(self, req: InterrogationRecord, now: float) -> bool:
        """Replay worker events up to ``now``; False once the request has expired."""
        events: list[tuple[float, int, FormRecord]] = []
        for form in req.forms:
            if form.state == "waiting" and form.processing_at is not None:
                events.append((form.processing_at, 0, form))
            if form.state in ACTIVE_STATES and form.done_at is not None:
                events.append((form.done_at, 1, form))
        events.sort(key=lambda ev: (ev[0], ev[1]))
        for at, kind, form in events:
            if at > now:
                break
            # An event only happens if the request was still alive when it came.
            if at - self._expiry_base(req) > self.expire_after:
                return False
            if kind == 0 and form.state == "waiting":
                form.state = "processing"
            elif kind == 1 and form.state in ACTIVE_STATES:
                self._finish(req, form)
            req.touched = max(req.touched, at)
        return now - self._expiry_base(req) <= self.expire_after

    def _expiry_base(self, req: InterrogationRecord) -> float:
        # The server restarts the timer on every pop and delivery; counting from creation
        # instead expires sooner, which is the stricter test of a client.
        return req.touched if self.expiry_refresh else req.created

    def _finish(self, req: InterrogationRecord, form: FormRecord) -> None:
        if form.fault:
            form.state = "faulted"
            return
        form.state = "done"
        form.result = self._result(req, form)
        self._charge(req, form)

    def _charge(self, req: InterrogationRecord, form: FormRecord) -> None:
        price = 3 * req.tiles if form.name in POST_PROCESSORS else 1
        if form.name == "interrogation":
            price = 3
        # Burn is 2 with slow_workers=true: the docstring says otherwise, the kudos tests agree.
        burn = 2 if req.slow_workers else 1
        self._kudos[req.apikey] = self._kudos.get(req.apikey, 0.0) + price + burn

    def _result(self, req: InterrogationRecord, form: FormRecord) -> dict[str, Any]:
        if req.verdict is None:
            req.verdict = self.judge(req.image)
        verdict = req.verdict
        if form.name == "caption":
            return {"caption": str(verdict["caption"])}
        if form.name == "nsfw":
            return {"nsfw": bool(verdict["nsfw"])}
        if form.name == "interrogation":
            top = form.payload.get("top_count", 5)
            top = top if isinstance(top, int) and top > 0 else 5
            lists = verdict.get("interrogation") or {}
            return {"interrogation": {k: list(lists.get(k, []))[:top] for k in INTERROGATION_LISTS}}
        if form.name in POST_PROCESSORS:
            key = f"{req.id}-{form.name}.webp"
            self._r2[key] = req.image_bytes
            return {form.name: f"{self._origin}/fake-r2/{key}"}
        if form.name == "vectorize":
            width, height = req.image.size
            svg = f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}"/>'
            return {"vectorize": svg}
        # No source documents palette/describe/aesthetic shapes; a custom judge may supply them.
        return {form.name: verdict.get(form.name)}

    def _sweep(self, now: float) -> None:
        for rid, req in list(self.interrogations.items()):
            if not self._advance(req, now):
                del self.interrogations[rid]

    def _live(self, rid: str, now: float) -> InterrogationRecord | None:
        req = self.interrogations.get(rid)
        if req is None:
            return None
        if not self._advance(req, now):
            del self.interrogations[req.id]
            return None
        return req

    def _active_forms(self, apikey: str) -> int:
        return sum(
            1
            for req in self.interrogations.values()
            if req.apikey == apikey
            for form in req.forms
            if form.state in ACTIVE_STATES
        )

    @staticmethod
    def _overall(req: InterrogationRecord) -> str:
        states = [form.state for form in req.forms]
        if req.faulted or all(s == "faulted" for s in states):
            return "faulted"
        if all(s == "done" for s in states):
            return "done"
        if "processing" in states:
            return "processing"
        if "waiting" in states:
            return "waiting"
        return "partial"

    def _status_body(self, req: InterrogationRecord) -> dict[str, Any]:
        forms: list[dict[str, Any]] = []
        for form in req.forms:
            entry: dict[str, Any] = {"form": form.name, "state": form.state}
            if form.state == "done":
                entry["result"] = form.result
            forms.append(entry)
        return {"state": self._overall(req), "forms": forms}

    # -- POST validation ---------------------------------------------------------------------

    @staticmethod
    def _schema_errors(body: Any, headers: Any) -> dict[str, str]:
        # Mirrors flask-restx: the JSON model is checked first, the reqparse headers after.
        errors: dict[str, str] = {}
        if not isinstance(body, dict):
            return {"": f"{body!r} is not of type 'object'"}
        source = body.get("source_image")
        if "source_image" not in body:
            errors["source_image"] = "'source_image' is a required property"
        elif not isinstance(source, str):
            errors["source_image"] = f"{source!r} is not of type 'string'"
        forms = body.get("forms")
        if forms is not None:
            if not isinstance(forms, list):
                errors["forms"] = f"{forms!r} is not of type 'array'"
            else:
                for i, item in enumerate(forms):
                    problem = _form_item_error(i, item)
                    if problem is not None:
                        errors[problem[0]] = problem[1]
        for flag in ("slow_workers", "trusted_workers"):
            if flag in body and not isinstance(body[flag], bool):
                errors[flag] = f"{body[flag]!r} is not of type 'boolean'"
        webhook = body.get("webhook")
        if webhook is not None:
            if not isinstance(webhook, str):
                errors["webhook"] = f"{webhook!r} is not of type 'string'"
            elif len(webhook) < 10:
                errors["webhook"] = f"{webhook!r} is too short"
            elif len(webhook) > 1024:
                errors["webhook"] = f"{webhook!r} is too long"
        if errors:
            return errors
        if "apikey" not in headers:
            return {"apikey": "A User API key Missing required parameter in the HTTP headers"}
        return {}

    async def _load_source(self, source: str) -> tuple[Image.Image, bytes, bool, str | None]:
        """(image the worker sees, bytes behind the worker's URL, is_url, format as sent)."""
        if source.startswith("http"):
            data = await self._fetch_url(source)
            image = self._open(data, "Url does not contain a valid image.")
            # URL sources skip the pixel-area check and the re-encode: workers refetch the URL.
            return image, data, True, image.format
        try:
            data = base64.b64decode(source.encode("utf-8"))
        except (binascii.Error, ValueError) as exc:
            raise _image_failed(
                "Please ensure the source image payload is either a URL containing an image "
                "or a valid base64 encoded image."
            ) from exc
        image = self._open(data, "Please ensure the source image payload is a valid image.")
        width, height = image.size
        if width * height > MAX_PIXELS:
            raise _image_failed("Image size cannot exceed 3072*3072 pixels")
        if not self.reencode_webp:
            return image, data, False, image.format
        # The horde stores base64 sources as WebP q50; workers only ever see that copy.
        mode = "RGBA" if "A" in image.getbands() else "RGB"
        buf = io.BytesIO()
        try:
            image.convert(mode).save(buf, format="WEBP", quality=50)
        except (OSError, ValueError) as exc:
            # WebP caps each side at 16383 px; the server turns that failure into this rc,
            # which is why a base64 image can't reach SourceImageResolutionExceeded there.
            raise _image_failed(
                "Please ensure the source image payload is either a URL containing an image "
                "or a valid base64 encoded image."
            ) from exc
        webp = buf.getvalue()
        return self._open(webp, "re-encode failed"), webp, False, image.format

    @staticmethod
    def _open(data: bytes, message: str) -> Image.Image:
        try:
            image = Image.open(io.BytesIO(data))
            image.load()
        except Exception as exc:  # Pillow raises many types for corrupt input
            raise _image_failed(message) from exc
        return image

    @staticmethod
    async def _fetch_url(url: str) -> bytes:
        failure = "Something went wrong when retrieving image url."
        if not is_loopback_host(urlsplit(url).hostname):
            # The real server would fetch it; a test fake must never leave loopback.
            raise _image_failed(failure)
        timeout = aiohttp.ClientTimeout(total=URL_FETCH_TIMEOUT_S)
        try:
            async with (
                aiohttp.ClientSession(timeout=timeout) as session,
                session.get(url) as resp,
            ):
                if int(resp.headers.get("Content-Length", "0") or 0) / 1024 > 5000:
                    raise _image_failed("Provided image cannot be larger than 5Mb")
                data = await resp.content.read(URL_MAX_BYTES + 1)
        except _Reject:
            raise
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            raise _image_failed(failure) from exc
        if len(data) > URL_MAX_BYTES:
            raise _image_failed("Provided image cannot be larger than 5Mb")
        return data

    # -- handlers ----------------------------------------------------------------------------

    async def _post(self, request: web.Request) -> web.Response:
        self.posts += 1
        now = self.clock()
        ip = request.remote or "unknown"
        key = ("post", ip)
        if self._limited(key, self.post_rate_per_min, self.post_window_s, now):
            assert self.post_rate_per_min is not None
            self.posts_rate_limited += 1
            return self._rate_limited_response(
                f"{self.post_rate_per_min} per 1 minute",
                key,
                self.post_rate_per_min,
                self.post_window_s,
            )
        raw = await request.read()
        if b"\\u0000" in raw or b"\x00" in raw:
            return self._fail(400, "Null bytes are not allowed in payloads", "NulByteInPayload")
        try:
            body = json.loads(raw)
        except ValueError as exc:
            return self._fail(400, f"Failed to decode JSON object: {exc}")
        self.post_bodies.append(body)
        errors = self._schema_errors(body, request.headers)
        if errors:
            self.errors["SchemaValidation"] += 1
            return web.json_response(
                {"message": "Input payload validation failed", "errors": errors}, status=400
            )
        if self.maintenance:
            return self._fail(
                400,
                "Interrogate is temporarily disabled as the horde is in maintenance mode.",
                "MaintenanceMode",
            )
        webhook = body.get("webhook")
        if webhook and not webhook.startswith("https://"):
            return self._fail(400, "webhooks need to point to an https endpoint.", "BadRequest")
        apikey = request.headers["apikey"]
        if apikey not in self.valid_keys:
            return self._fail(
                401,
                "No user matching sent API Key. Have you remembered to register at "
                "https://aihorde.net/register ?",
                "InvalidAPIKey",
            )
        raw_forms: list[dict[str, Any]] = body.get("forms") or []
        self._sweep(now)
        limit = self.max_forms_anonymous if apikey == ANON_APIKEY else self.max_forms_per_user
        wanted = self._active_forms(apikey) + len(raw_forms)
        if self.too_many_prompts or wanted > limit:
            return self._fail(
                429,
                f"Parallel requests ({wanted}) exceeded user limit ({limit}). Please try again "
                "later or request to increase your concurrency.",
                "TooManyPrompts",
            )
        if self.untrusted_ip:
            return self._fail(
                403,
                "Due to abuse prevention, untrusted users cannot use this service from a "
                "VPN or proxy. Please try again from a different IP, or get trusted.",
                "UntrustedUnsafeIP",
            )
        source: str = body["source_image"]
        try:
            image, image_bytes, is_url, sent_format = await self._load_source(source)
        except _Reject as rejected:
            return self._reply(rejected)
        tiles = _tiles(image.size)
        if tiles > MAX_TILES:
            return self._reply(
                _image_failed(
                    f"Image is too large ({tiles} tiles) and would cause horde alchemists to run "
                    "out of VRAM trying to process it.",
                    "SourceImageResolutionExceeded",
                )
            )
        return self._create(
            request, body, apikey, ip, raw_forms, image, image_bytes, is_url, sent_format, tiles
        )

    def _create(
        self,
        request: web.Request,
        body: dict[str, Any],
        apikey: str,
        ip: str,
        raw_forms: list[dict[str, Any]],
        image: Image.Image,
        image_bytes: bytes,
        is_url: bool,
        sent_format: str | None,
        tiles: int,
    ) -> web.Response:
        now = self.clock()
        latency = float(self.latency()) if callable(self.latency) else float(self.latency)
        fault_all = self.fault_next > 0
        if fault_all:
            self.fault_next -= 1
        never = self.never_finish_rate > 0 and self.rng.random() < self.never_finish_rate
        if not fault_all and self.fault_rate > 0 and self.rng.random() < self.fault_rate:
            fault_all = True
        rid = str(uuid.uuid4())
        if never:
            self.never_finishing.add(rid)
        elif fault_all:
            self.faulting.add(rid)
        forms: list[FormRecord] = []
        for item in raw_forms:
            name = item["name"]
            if any(form.name == name for form in forms):
                continue
            served = not self.stalled and not never and name not in self.unserved_forms
            forms.append(
                FormRecord(
                    name=name,
                    payload=dict(item.get("payload") or {}),
                    state="waiting",
                    processing_at=now + latency / 2 if served else None,
                    done_at=now + latency if served else None,
                    fault=fault_all or name in self.fault_forms,
                )
            )
        slow_workers = bool(body.get("slow_workers", True))
        trusted_workers = bool(body.get("trusted_workers", False))
        self.interrogations[rid] = InterrogationRecord(
            id=rid,
            apikey=apikey,
            created=now,
            touched=now,
            slow_workers=slow_workers,
            trusted_workers=trusted_workers,
            image=image,
            image_bytes=image_bytes,
            tiles=tiles,
            forms=forms,
            faulted=not forms,
        )
        self.submissions.append(
            Submission(
                id=rid,
                apikey=apikey,
                client_agent=request.headers.get("Client-Agent"),
                ip=ip,
                forms=[form.name for form in forms],
                payloads={form.name: form.payload for form in forms},
                slow_workers=slow_workers,
                trusted_workers=trusted_workers,
                webhook=body.get("webhook"),
                source_is_url=is_url,
                source_chars=len(body["source_image"]),
                image_size=image.size,
                image_format=sent_format,
                body_keys=frozenset(body),
            )
        )
        return web.json_response({"id": rid}, status=202)

    def _status_limited(self, request: web.Request, now: float) -> web.Response | None:
        # lim.get_request_path: the key is ip + method + path, so each request id has its own
        # budget, and GET and DELETE on one id count apart.
        ip = request.remote or "unknown"
        key = ("status", ip, request.method, request.path)
        if self._limited(key, self.status_rate_per_s, 1.0, now):
            assert self.status_rate_per_s is not None
            return self._rate_limited_response(
                f"{self.status_rate_per_s} per 1 second", key, self.status_rate_per_s, 1.0
            )
        return None

    def _not_found(self, rid: str) -> web.Response:
        return self._fail(404, f"Interrogation with ID '{rid}' not found.", "RequestNotFound")

    async def _status(self, request: web.Request) -> web.Response:
        self.status_calls += 1
        req = self._status_target(request)
        if isinstance(req, web.Response):
            return req
        return web.json_response(self._status_body(req))

    def _status_target(self, request: web.Request) -> InterrogationRecord | web.Response:
        """The live request a GET/DELETE on a status path is about, or the error answer."""
        now = self.clock()
        limited = self._status_limited(request, now)
        if limited is not None:
            return limited
        rid = request.match_info["id"]
        req = self._live(rid, now)
        return self._not_found(rid) if req is None else req

    async def _delete(self, request: web.Request) -> web.Response:
        self.deletes += 1
        req = self._status_target(request)
        if isinstance(req, web.Response):
            return req
        # InterrogationForms.cancel: every form not done becomes cancelled (a faulted one
        # too); one a worker was processing is charged as if delivered, a waiting one is
        # free. The request itself stays: a later GET still answers until it expires.
        for form in req.forms:
            if form.state == "done":
                continue
            if form.state == "processing":
                self._charge(req, form)
            form.state = "cancelled"
        return web.json_response(self._status_body(req))

    async def _heartbeat(self, request: web.Request) -> web.Response:
        return web.json_response({"message": "OK", "version": self.version})

    async def _performance(self, request: web.Request) -> web.Response:
        now = self.clock()
        # No decorator on HordeLoad: the limiter's default, 90 per minute per IP and route.
        key = ("performance", request.remote or "unknown")
        if self._limited(key, 90, 60.0, now):
            return self._rate_limited_response("90 per 1 minute", key, 90, 60.0)
        self.performance_calls += 1
        self._sweep(now)
        # count_totals: forms waiting or processing, over the whole horde.
        queued = self.extra_queued_forms + sum(
            1
            for req in self.interrogations.values()
            for form in req.forms
            if form.state in ACTIVE_STATES
        )
        return web.json_response(
            {
                "queued_requests": 0,
                "queued_text_requests": 0,
                "worker_count": 0,
                "text_worker_count": 0,
                "thread_count": 0,
                "text_thread_count": 0,
                "queued_megapixelsteps": 0.0,
                "past_minute_megapixelsteps": 0.0,
                "queued_tokens": 0,
                "past_minute_tokens": 0.0,
                "queued_forms": float(queued),
                "interrogator_count": self.interrogator_count,
                "interrogator_thread_count": self.interrogator_count,
            }
        )

    async def _r2_object(self, request: web.Request) -> web.Response:
        data = self._r2.get(request.match_info["name"])
        if data is None:
            raise web.HTTPNotFound()
        return web.Response(body=data, content_type="image/webp")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Fake AI Horde interrogation API (loopback)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=7001)
    parser.add_argument("--latency", type=float, default=2.0, help="seconds per request")
    parser.add_argument(
        "--latency-range",
        type=float,
        nargs=2,
        metavar=("LOW", "HIGH"),
        help="draw each request's latency uniformly from LOW..HIGH seconds",
    )
    parser.add_argument(
        "--queued-forms", type=int, default=0, help="other users' forms in the queue"
    )
    parser.add_argument("--interrogators", type=int, default=4)
    parser.add_argument("--expire-after", type=float, default=DEFAULT_EXPIRE_AFTER_S)
    parser.add_argument("--key", action="append", default=[], help="extra valid API key")
    args = parser.parse_args(argv)
    if not is_loopback_host(args.host):
        parser.error("--host must be a loopback address")
    latency: LatencySpec = args.latency
    if args.latency_range:
        low, high = sorted(args.latency_range)
        rng = random.Random()
        latency = lambda: rng.uniform(low, high)  # noqa: E731
    horde = FakeHorde(
        latency=latency,
        expire_after=args.expire_after,
        valid_keys=args.key,
        interrogator_count=args.interrogators,
    )
    horde.extra_queued_forms = args.queued_forms
    print(f"fake horde on http://{args.host}:{args.port}/api (Ctrl-C stops)", flush=True)
    web.run_app(horde.app(), host=args.host, port=args.port, print=None, access_log=None)


if __name__ == "__main__":
    main()
