"""A fake pict-rs (0.4.3 to 0.5.x, by ``version``) over loopback HTTP, plus a client that
validates like pict-rs does.

It follows /work/shared/reference/pict-rs.md and, where that note is silent, the pict-rs
sources (robinst/pict-rs: ``src/lib.rs``, ``src/middleware/internal.rs``,
``src/repo/hash.rs``, ``src/formats.rs``, ``src/repo/{sled,postgres}.rs``). Points where the
sources are more precise than a quick reading of the note:

* The hash is ``sha256(stored bytes) || size as 6 big-endian bytes || one format byte``
  (``Hash::to_bytes``, ``InternalFormat::to_byte``: apng 0, animated avif 1, gif 2, animated
  webp 3, avif 4, jpeg 5, jxl 6, png 7, webp 8, mp4 9, webm 10): 39 bytes, 78 hex characters
  in ``/internal/hashes``. (An 8-byte size with an ASCII tag such as ``i-webp`` existed only
  before the 0.5 pagination work.) Page slugs (``current``/``prev``/``next``/``slug=``) are
  the same bytes in URL-safe base64 with padding.
* With no ``server.api_key`` configured the ``/internal`` scope still answers, always with 401
  ``invalid-api-token`` (the middleware needs ``Some(api_key)`` to match).
* Unknown aliases depend on the version. From 0.5.7 (commit 3ecefcb) purge and identifier
  answer 404 ``{"msg": "Requested a file that doesn't exist", "code": "alias-not-found"}``;
  before, purge gave 400 ``{"msg": "No images associated with provided alias"}`` and
  identifier 404 ``{"msg": "No identifiers associated with provided alias"}``. Always:
  delete -> 404 with an empty body; aliases -> 200 with an empty list; details -> 404
  ``alias-not-found``.
* ``version`` picks what exists: ``/internal/hashes`` and ``/internal/delete`` from 0.5.0
  (before, 404 with no body), the external-validation timeout from 0.4.4 (0.4.3 waits for
  ever), external validation itself from 0.4.3.
* ``/internal/prune_missing`` answers ``{"complete", "progress", "total"}``, not ``{"msg"}``.

Not modelled: variants, proxies, backgrounded uploads, metadata stripping or transcoding
(stored bytes are the uploaded bytes), and the real server's exact error texts.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, NamedTuple
from urllib.parse import urlsplit

import aiohttp
from aiohttp import web
from PIL import Image

from horde_scanner.testing.server import LoopbackServer, is_loopback_host

DEFAULT_API_KEY = "pictrs-api-key"
PICTRS_USER_AGENT = "pict-rs v0.5.17"

# extension -> (InternalFormat::to_byte, media type, ApiFormat)
FORMATS: dict[str, tuple[int, str, str]] = {
    "jpeg": (5, "image/jpeg", "Image"),
    "png": (7, "image/png", "Image"),
    "webp": (8, "image/webp", "Image"),
    "avif": (4, "image/avif", "Image"),
    "jxl": (6, "image/jxl", "Image"),
    "gif": (2, "image/gif", "Animation"),
    "apng": (0, "image/apng", "Animation"),
    "mp4": (9, "video/mp4", "Video"),
    "webm": (10, "video/webm", "Video"),
}
_ANIMATED_TAGS = {"webp": 3, "avif": 1}

DEFAULT_VERSION = "0.5.17"


def parse_version(version: str) -> tuple[int, int, int]:
    parts = version.split("-", 1)[0].split(".")
    major, minor, patch = (int(p) for p in parts[:3])
    return major, minor, patch


_PIL_EXT = {"JPEG": "jpeg", "PNG": "png", "WEBP": "webp", "GIF": "gif", "AVIF": "avif"}


def pictrs_hash(data: bytes, ext: str = "webp", *, animated: bool = False) -> bytes:
    """pict-rs ``Hash::to_bytes``: sha256, the size in 6 big-endian bytes, one format byte."""
    ext = _norm_ext(ext)
    tag = _ANIMATED_TAGS.get(ext, FORMATS[ext][0]) if animated else FORMATS[ext][0]
    return hashlib.sha256(data).digest() + len(data).to_bytes(6, "big") + bytes([tag])


def hash_slug(hash_bytes: bytes) -> str:
    """The page slug pict-rs derives from a hash (``BASE64_URL_SAFE``, padded)."""
    return base64.urlsafe_b64encode(hash_bytes).decode("ascii")


def _norm_ext(ext: str) -> str:
    ext = ext.lower().lstrip(".")
    ext = "jpeg" if ext == "jpg" else ext
    if ext not in FORMATS:
        raise ValueError(f"pict-rs stores no {ext!r} files")
    return ext


def _uuid7_hex(now: datetime) -> str:
    # Python 3.11 has no uuid7; its layout is 48 bits of ms, version 7, then random bits.
    ms = int(now.timestamp() * 1000) & ((1 << 48) - 1)
    rand = uuid.uuid4().int & ((1 << 74) - 1)
    value = (
        (ms << 80) | (0x7 << 76) | ((rand >> 62) << 64) | (0b10 << 62) | (rand & ((1 << 62) - 1))
    )
    return f"{value:032x}"


def new_identifier(ext: str, now: datetime) -> str:
    """A 0.5.7+ file-store identifier: ten 2-hex directories, then 12 hex and the extension."""
    h = _uuid7_hex(now)
    return "/".join(h[i : i + 2] for i in range(0, 20, 2)) + f"/{h[20:]}.{_norm_ext(ext)}"


def _rfc3339(ts: datetime) -> str:
    return ts.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _sniff(data: bytes) -> tuple[str, bool, int, int, int | None] | None:
    """(ext, animated, width, height, frames) of an upload, or None when pict-rs would refuse."""
    if data[4:8] == b"ftyp" and not data[8:12].startswith(b"avi"):
        return "mp4", False, 0, 0, None
    if data[:4] == b"\x1aE\xdf\xa3":
        return "webm", False, 0, 0, None
    try:
        with Image.open(io.BytesIO(data)) as img:
            frames = int(getattr(img, "n_frames", 1))
            fmt = img.format or ""
            width, height = img.size
    except Exception:  # Pillow raises many types for non-images
        return None
    if fmt == "PNG" and frames > 1:
        return "apng", True, width, height, frames
    ext = _PIL_EXT.get(fmt)
    if ext is None:
        return None
    animated = frames > 1 or ext == "gif"
    return ext, animated, width, height, frames if animated else None


@dataclass
class StoredHash:
    """One stored original: the ``hashes`` row, its file and its aliases."""

    hash: bytes
    data: bytes
    ext: str
    media_type: str
    api_format: str
    created_at: datetime
    identifier: str
    width: int
    height: int
    frames: int | None
    aliases: list[str] = field(default_factory=list)
    delete_tokens: dict[str, str] = field(default_factory=dict)
    file_missing: bool = False

    @property
    def hex(self) -> str:
        return self.hash.hex()

    def details(self) -> dict[str, Any]:
        return {
            "width": self.width,
            "height": self.height,
            "frames": self.frames,
            "content_type": self.media_type,
            "created_at": _rfc3339(self.created_at),
            "format": self.api_format,
        }


class ValidationResult(NamedTuple):
    """What the external validator answered; unpacks as (status, elapsed_s, body)."""

    status: int
    elapsed_s: float
    body: Any


@dataclass
class ValidationRecord:
    """One external-validation call made by the fake's ``POST /image``."""

    content_type: str
    size: int
    status: int | None
    elapsed_s: float
    outcome: str  # "accepted", "rejected" or "error"
    error: str | None = None


def _assert_loopback(url: str) -> None:
    if not is_loopback_host(urlsplit(url).hostname):
        raise ValueError(f"test clients only talk to loopback, not {url!r}")


async def validate_upload(
    session: aiohttp.ClientSession,
    url: str,
    data: bytes,
    content_type: str,
    chunk_size: int = 16384,
    *,
    timeout_s: float | None = None,
    user_agent: str = PICTRS_USER_AGENT,
) -> ValidationResult:
    """POST ``data`` the way pict-rs's ingest calls ``media.external_validation``.

    The body is streamed from an async generator, so aiohttp sends it chunked with no
    Content-Length, exactly like reqwest's ``Body::wrap_stream``. pict-rs treats any 2xx as
    accept and ignores the body; timeouts and connection errors propagate as
    ``TimeoutError`` / ``aiohttp.ClientError`` (pict-rs turns them into a 500).
    """
    _assert_loopback(url)

    async def chunks() -> AsyncIterator[bytes]:
        for start in range(0, len(data), chunk_size):
            yield data[start : start + chunk_size]

    started = time.monotonic()
    extra: dict[str, Any] = {}
    if timeout_s is not None:
        # Passing timeout=None would switch off the session's own timeout too.
        extra["timeout"] = aiohttp.ClientTimeout(total=timeout_s)
    async with session.post(
        url,
        data=chunks(),
        headers={"Content-Type": content_type, "User-Agent": user_agent},
        **extra,
    ) as resp:
        raw = await resp.read()
        elapsed = time.monotonic() - started
        try:
            body: Any = json.loads(raw) if raw else None
        except ValueError:
            body = None
        return ValidationResult(resp.status, elapsed, body)


def _json(status: int, payload: dict[str, Any]) -> web.Response:
    return web.json_response(payload, status=status)


class FakePictrs(LoopbackServer):
    """In-memory pict-rs: internal admin API, originals, and an ingest path that validates."""

    def __init__(
        self,
        api_key: str | None = DEFAULT_API_KEY,
        *,
        external_validation: str | None = None,
        validation_timeout: float = 10.0,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        version: str = DEFAULT_VERSION,
    ) -> None:
        self.version = version
        self._v = parse_version(version)
        if external_validation is not None and self._v < (0, 4, 3):
            raise ValueError(f"pict-rs {version} has no media.external_validation (0.4.3+)")
        self.api_key = api_key
        self.external_validation = external_validation
        # pict-rs defaults to 30 s; 10 s is Lemmy 0.18's whole-upload budget, the tighter bound.
        # 0.4.3 had no timeout option and waited for as long as the validator took.
        self.validation_timeout: float | None = validation_timeout if self._v >= (0, 4, 4) else None
        self.clock = clock

        self.purged: list[str] = []
        self.purged_aliases: list[str] = []
        self.deleted: list[str] = []
        self.validations: list[ValidationRecord] = []
        self.requests: Counter[str] = Counter()
        self.auth_failures = 0

        self._hashes: dict[bytes, StoredHash] = {}
        self._alias_hash: dict[str, bytes] = {}
        self._last_created: datetime | None = None
        self._prune_started = False

    # -- store helpers for tests -------------------------------------------------------------

    @property
    def images(self) -> dict[str, bytes]:
        """alias -> stored bytes, for every alias whose file still exists."""
        return {
            alias: self._hashes[h].data
            for alias, h in self._alias_hash.items()
            if not self._hashes[h].file_missing
        }

    def add_image(
        self,
        data: bytes,
        ext: str = "webp",
        *,
        created_at: datetime | None = None,
        alias: str | None = None,
    ) -> str:
        """Store ``data`` as pict-rs would after ingest and return a new alias for it (or
        `alias`, to match rows a test wrote elsewhere, e.g. in Lemmy's database).

        Identical bytes share one hash (pict-rs deduplicates), so a second call adds an alias.
        """
        ext = _norm_ext(ext)
        sniffed = _sniff(data)
        animated = bool(sniffed and sniffed[1])
        width, height, frames = (sniffed[2], sniffed[3], sniffed[4]) if sniffed else (0, 0, None)
        key = pictrs_hash(data, ext, animated=animated)
        stored = self._hashes.get(key)
        if stored is None:
            created = created_at or self._next_timestamp()
            tag, media_type, api_format = FORMATS[ext]
            if animated and ext in _ANIMATED_TAGS:
                api_format = "Animation"
            stored = StoredHash(
                hash=key,
                data=data,
                ext=ext,
                media_type=media_type,
                api_format=api_format,
                created_at=created,
                identifier=new_identifier(ext, created),
                width=width,
                height=height,
                frames=frames,
            )
            self._hashes[key] = stored
        return self._new_alias(stored, alias)

    def add_alias(self, existing_alias: str) -> str:
        """Another alias for the same hash, as a duplicate upload would create."""
        return self._new_alias(self._stored(existing_alias))

    def hash_hex(self, alias: str) -> str:
        return self._stored(alias).hex

    def identifier(self, alias: str) -> str:
        return self._stored(alias).identifier

    def delete_token(self, alias: str) -> str:
        return self._stored(alias).delete_tokens[alias]

    def aliases_of(self, alias: str) -> list[str]:
        return list(self._stored(alias).aliases)

    def remove_file(self, alias: str) -> None:
        """Delete the file behind ``alias`` but keep its rows, as direct storage deletion does."""
        self._stored(alias).file_missing = True

    def _stored(self, alias: str) -> StoredHash:
        return self._hashes[self._alias_hash[alias]]

    def _new_alias(self, stored: StoredHash, alias: str | None = None) -> str:
        alias = alias or f"{uuid.uuid4()}.{stored.ext}"
        stored.aliases.append(alias)
        stored.delete_tokens[alias] = str(uuid.uuid4())
        self._alias_hash[alias] = stored.hash
        return alias

    def _next_timestamp(self) -> datetime:
        # Strictly increasing, so back-to-back inserts still page in insertion order.
        now = self.clock()
        if self._last_created is not None and now <= self._last_created:
            now = self._last_created + timedelta(microseconds=1)
        self._last_created = now
        return now

    def _drop_hash(self, stored: StoredHash) -> list[str]:
        for alias in stored.aliases:
            self._alias_hash.pop(alias, None)
        self._hashes.pop(stored.hash, None)
        return list(stored.aliases)

    # -- lifecycle ---------------------------------------------------------------------------

    def app(self) -> web.Application:
        app = web.Application(
            middlewares=[self._middleware_factory()], client_max_size=256 * 1024 * 1024
        )
        r = app.router
        r.add_get("/healthz", self._healthz)
        r.add_post("/image", self._upload)
        r.add_get("/image/original/{alias}", self._original)
        r.add_get("/image/details/original/{alias}", self._details)
        r.add_get("/image/delete/{token}/{alias}", self._delete_by_token)
        r.add_delete("/image/delete/{token}/{alias}", self._delete_by_token)
        r.add_get("/internal/hashes", self._hashes_page)
        r.add_post("/internal/purge", self._purge)
        r.add_post("/internal/delete", self._delete_alias)
        r.add_get("/internal/aliases", self._aliases)
        r.add_get("/internal/identifier", self._identifier)
        r.add_post("/internal/prune_missing", self._prune_missing)
        r.add_delete("/internal/variants", self._variants)
        return app

    # -- middleware --------------------------------------------------------------------------

    async def _middleware(
        self, request: web.Request, handler: Callable[[web.Request], Any]
    ) -> web.StreamResponse:
        self.requests[request.path] += 1
        if request.path.startswith("/internal"):
            token = request.headers.get("X-Api-Token")
            if self.api_key is None or token != self.api_key:
                self.auth_failures += 1
                return _json(401, {"msg": "Invalid API Key", "code": "invalid-api-token"})
        response: web.StreamResponse = await handler(request)
        return response

    @staticmethod
    def _alias_param(request: web.Request) -> str:
        alias = request.query.get("alias")
        if alias is None:
            raise web.HTTPBadRequest(
                text=json.dumps(
                    {"msg": "Query deserialize error: missing alias", "code": "invalid-query"}
                ),
                content_type="application/json",
            )
        return alias

    # -- internal endpoints ------------------------------------------------------------------

    @property
    def has_hashes_endpoint(self) -> bool:
        return self._v >= (0, 5, 0)

    def _alias_not_found(self, old: web.Response) -> web.Response:
        if self._v >= (0, 5, 7):
            return _json(
                404, {"msg": "Requested a file that doesn't exist", "code": "alias-not-found"}
            )
        return old

    async def _hashes_page(self, request: web.Request) -> web.Response:
        if not self.has_hashes_endpoint:
            return web.Response(status=404)  # no such route before 0.5.0
        try:
            limit = int(request.query.get("limit", "20"))
        except ValueError:
            return _json(400, {"msg": "invalid limit", "code": "invalid-query"})
        ordered = sorted(self._hashes.values(), key=lambda s: (s.created_at, s.hash), reverse=True)
        page, prev, nxt = self._page(ordered, request.query, limit)
        body: dict[str, Any] = {"limit": limit}
        # pict-rs skips these keys entirely when absent instead of sending null.
        if page:
            body["current"] = hash_slug(page[0].hash)
        if prev is not None:
            body["prev"] = hash_slug(prev.hash)
        if nxt is not None:
            body["next"] = hash_slug(nxt.hash)
        body["hashes"] = [
            {"hex": s.hex, "aliases": list(s.aliases), "details": s.details()} for s in page
        ]
        return _json(200, {"msg": "ok", "page": body})

    def _page(
        self, ordered: list[StoredHash], query: Any, limit: int
    ) -> tuple[list[StoredHash], StoredHash | None, StoredHash | None]:
        start = 0
        prev: StoredHash | None = None
        if "timestamp" in query:
            try:
                ts = datetime.fromisoformat(query["timestamp"].replace("Z", "+00:00"))
            except ValueError:
                ts = None
            if ts is not None:
                # sled: the page holds hashes created before ts; prev looks limit+1 ahead.
                start = next((i for i, s in enumerate(ordered) if s.created_at < ts), len(ordered))
                newer = ordered[:start][::-1]
                prev = newer[: limit + 1][-1] if newer else None
        elif "slug" in query:
            bound = self._hash_from_slug(query["slug"])
            # An unknown or undecodable slug falls back to the first page, as in pict-rs.
            idx = next((i for i, s in enumerate(ordered) if s.hash == bound), None)
            if idx is not None:
                start = idx
                newer = ordered[:idx][::-1]
                prev = newer[:limit][-1] if newer else None
        window = ordered[start : start + limit + 1]
        nxt = window[limit] if len(window) > limit else None
        return window[:limit], prev, nxt

    @staticmethod
    def _hash_from_slug(slug: str) -> bytes | None:
        try:
            return base64.urlsafe_b64decode(slug.encode("ascii"))
        except (ValueError, UnicodeEncodeError):
            return None

    async def _purge(self, request: web.Request) -> web.Response:
        alias = self._alias_param(request)
        self.purged.append(alias)
        key = self._alias_hash.get(alias)
        if key is None:
            return self._alias_not_found(
                _json(400, {"msg": "No images associated with provided alias"})
            )
        removed = self._drop_hash(self._hashes[key])
        self.purged_aliases.extend(removed)
        return _json(200, {"msg": "ok", "aliases": removed})

    async def _delete_alias(self, request: web.Request) -> web.Response:
        if not self.has_hashes_endpoint:
            return web.Response(status=404)  # /internal/delete came with 0.5.0
        alias = self._alias_param(request)
        key = self._alias_hash.get(alias)
        if key is None:
            return web.Response(status=404)
        self._remove_alias(alias, key)
        return _json(200, {"msg": "ok"})

    def _remove_alias(self, alias: str, key: bytes) -> None:
        stored = self._hashes[key]
        stored.aliases.remove(alias)
        stored.delete_tokens.pop(alias, None)
        del self._alias_hash[alias]
        self.deleted.append(alias)
        # The file goes with its last alias.
        if not stored.aliases:
            del self._hashes[key]

    async def _aliases(self, request: web.Request) -> web.Response:
        alias = self._alias_param(request)
        key = self._alias_hash.get(alias)
        aliases = list(self._hashes[key].aliases) if key is not None else []
        return _json(200, {"msg": "ok", "aliases": aliases})

    async def _identifier(self, request: web.Request) -> web.Response:
        alias = self._alias_param(request)
        key = self._alias_hash.get(alias)
        if key is None:
            return self._alias_not_found(
                _json(404, {"msg": "No identifiers associated with provided alias"})
            )
        return _json(200, {"msg": "ok", "identifier": self._hashes[key].identifier})

    async def _prune_missing(self, request: web.Request) -> web.Response:
        total = len(self._hashes)
        first = not self._prune_started
        self._prune_started = True
        # The real job runs in the background; this one finishes before answering.
        for stored in [s for s in self._hashes.values() if s.file_missing]:
            self._drop_hash(stored)
        if first:
            return _json(200, {"complete": False, "progress": 0, "total": total})
        return _json(200, {"complete": True, "progress": total, "total": total})

    async def _variants(self, request: web.Request) -> web.Response:
        return web.Response(status=204)

    # -- public endpoints --------------------------------------------------------------------

    async def _healthz(self, request: web.Request) -> web.Response:
        return web.Response(status=200)

    async def _original(self, request: web.Request) -> web.Response:
        key = self._alias_hash.get(request.match_info["alias"])
        if key is None:
            return web.Response(status=404)
        stored = self._hashes[key]
        if stored.file_missing:
            return _json(404, {"msg": "Alias directed to missing file", "code": "lost-file"})
        return web.Response(body=stored.data, content_type=stored.media_type)

    async def _details(self, request: web.Request) -> web.Response:
        key = self._alias_hash.get(request.match_info["alias"])
        if key is None:
            return _json(
                404, {"msg": "Requested a file that doesn't exist", "code": "alias-not-found"}
            )
        return _json(200, self._hashes[key].details())

    async def _delete_by_token(self, request: web.Request) -> web.Response:
        alias = request.match_info["alias"]
        key = self._alias_hash.get(alias)
        if key is not None:
            if self._hashes[key].delete_tokens.get(alias) != request.match_info["token"]:
                return _json(
                    403,
                    {
                        "msg": "Provided token did not match expected token",
                        "code": "invalid-delete-token",
                    },
                )
            self._remove_alias(alias, key)
        return web.Response(status=204)

    async def _upload(self, request: web.Request) -> web.Response:
        """``POST /image``: multipart field ``images``, validated externally when configured."""
        if not request.content_type.startswith("multipart/"):
            return _json(400, {"msg": "Expected a multipart upload", "code": "file-upload-error"})
        uploads: list[bytes] = []
        reader = await request.multipart()
        while True:
            part = await reader.next()
            if part is None:
                break
            if isinstance(part, aiohttp.BodyPartReader) and part.name == "images":
                uploads.append(bytes(await part.read()))
        if not uploads:
            return _json(400, {"msg": "No files present in upload", "code": "validate-no-files"})
        files: list[dict[str, Any]] = []
        for data in uploads:
            sniffed = _sniff(data)
            if sniffed is None:
                return _json(400, {"msg": "Unsupported media type", "code": "media-disallowed"})
            ext = sniffed[0]
            rejection = await self._validate_externally(data, FORMATS[ext][1])
            if rejection is not None:
                return rejection
            alias = self.add_image(data, ext)
            stored = self._stored(alias)
            files.append(
                {
                    "file": alias,
                    "delete_token": stored.delete_tokens[alias],
                    "details": stored.details(),
                }
            )
        return _json(201, {"msg": "ok", "files": files})

    async def _validate_externally(self, data: bytes, content_type: str) -> web.Response | None:
        if self.external_validation is None:
            return None
        started = time.monotonic()
        try:
            async with aiohttp.ClientSession() as session:
                result = await validate_upload(
                    session,
                    self.external_validation,
                    data,
                    content_type,
                    timeout_s=self.validation_timeout,
                )
        except (TimeoutError, aiohttp.ClientError) as exc:
            # pict-rs fails closed: the upload is lost, with no retry.
            elapsed = time.monotonic() - started
            self.validations.append(
                ValidationRecord(content_type, len(data), None, elapsed, "error", repr(exc))
            )
            return _json(
                500, {"msg": f"Error in HTTP client: {exc!r}", "code": "http-client-error"}
            )
        accepted = 200 <= result.status < 300
        self.validations.append(
            ValidationRecord(
                content_type,
                len(data),
                result.status,
                result.elapsed_s,
                "accepted" if accepted else "rejected",
            )
        )
        if accepted:
            return None
        return _json(
            400, {"msg": "Failed external validation", "code": "failed-external-validation"}
        )
