"""Subscribing to other instances' hash lists.

Each configured source is fetched every `refresh_s` seconds with a conditional request
(If-None-Match with the ETag of the copy we hold), so a refresh that changed nothing moves no
data. A good copy replaces the source's entries in one transaction; a source that is down,
answers an error, sends more than `max_list_bytes` or sends something that is not a hash list
keeps its last good copy, and the problem is logged and recorded (`hashes subscriptions`).
Bad rows inside a good list are skipped and counted.

A list is received into a temporary file and read from it as a stream, rows capped
(`max_list_rows`): memory holds the entries, never the document. What a source sends is never
echoed into logs or the recorded state, only its status, content type and size. Redirects are
followed only within the source's origin, unless its `redirect_origins` names another.
"""

from __future__ import annotations

import asyncio
import io
import logging
import re
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import IO, Any, TextIO, TypeVar

import aiohttp
from yarl import URL

from horde_scanner.config import HashesSettings, HashSubscription
from horde_scanner.errors import FinalError
from horde_scanner.media.hashing import sha256_hex
from horde_scanner.signals.hash_list import (
    ListFormatError,
    ParseReport,
    TooManyRows,
    read_entries,
)
from horde_scanner.signals.hash_matcher import HashMatcher
from horde_scanner.tasks import cancel_and_wait

log = logging.getLogger(__name__)

CHANGED = "changed"
UNCHANGED = "unchanged"
FAILED = "failed"

T = TypeVar("T")


class _Refused(FinalError):
    def __init__(self, status: int | None, reason: str, nbytes: int = 0) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason
        self.nbytes = nbytes


class Subscriber:
    # Names in logs and in the recorded problem.
    _what = "hash subscription"
    _a_list = "a hash list"
    # Refusals whose message is ours and safe to record (not the source's words).
    _refusals: tuple[type[ListFormatError], ...] = (TooManyRows,)

    def __init__(
        self, matcher: HashMatcher, settings: HashesSettings, session: aiohttp.ClientSession
    ) -> None:
        self._matcher = matcher
        self._store = matcher.store
        self._settings = settings
        self._session = session
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._loop(sub), name=f"hash-subscription-{sub.name}")
            for sub in self._settings.subscriptions
        ]

    async def stop(self) -> None:
        await cancel_and_wait(self._tasks)
        self._tasks = []

    async def _loop(self, sub: HashSubscription) -> None:
        while True:
            try:
                # Replicas on one database: one of them refreshes per period, the others
                # see the entries in the shared tables (and reload on the notification).
                turn = f"subscription:{sub.name}:{sha256_hex(sub.url.encode())[:16]}"
                if await self._store.take_turn(turn, sub.refresh_s * 0.9):
                    await self.refresh(sub)
            except asyncio.CancelledError:
                raise
            except Exception:  # a bug must not end the subscription
                log.exception("hash subscription %s: refresh failed", sub.name)
            await asyncio.sleep(sub.refresh_s)

    async def refresh(self, sub: HashSubscription) -> str:
        """Fetch one source once: CHANGED, UNCHANGED (304) or FAILED (last copy kept)."""
        state = await self._store.hash_subscription(sub.name)
        headers = {"Accept": "application/json, text/csv;q=0.5"}
        if state is not None and state.etag and state.url == sub.url:
            headers["If-None-Match"] = state.etag
        try:
            fetched = await self._fetch(sub, headers)
        except _Refused as exc:
            log.warning("hash subscription %s: %s; keeping the last good copy", sub.name, exc)
            await self._store.record_hash_fetch(
                sub.name, sub.url, status=exc.status, error=exc.reason, nbytes=exc.nbytes
            )
            return FAILED
        if fetched.status == 304:
            await self._store.record_hash_fetch(sub.name, sub.url, status=304, error=None)
            return UNCHANGED
        try:
            return await self._apply(sub, fetched)
        finally:
            fetched.close()

    async def _apply(self, sub: HashSubscription, fetched: _Fetched) -> str:
        loop = asyncio.get_running_loop()
        settings = self._settings
        report = ParseReport(max_errors=settings.max_row_errors)
        problem: str | None = None
        try:
            entries = await loop.run_in_executor(
                None, self._read, fetched, report, settings.max_list_rows
            )
        except self._refusals as exc:
            entries, problem = [], f"{exc} ({fetched.describe()})"
        except ListFormatError:
            # What the source sent is never echoed (logs, `hashes subscriptions`): only a
            # description that cannot carry its words.
            entries, problem = [], f"not {self._a_list} ({fetched.describe()})"
        else:
            if report.skipped and not entries:
                # Every row bad is garbage, not an empty list: keep what we had.
                problem = f"no usable row in {report.rows} rows ({fetched.describe()})"
        if problem is not None:
            log.warning("%s %s: %s; keeping the last good copy", self._what, sub.name, problem)
            await self._store.record_hash_fetch(
                sub.name, sub.url, status=fetched.status, error=problem, nbytes=fetched.nbytes
            )
            return FAILED
        if report.skipped:
            first = report.errors[0].line if report.errors else None
            log.warning(
                "%s %s: skipped %d bad rows (first at line %s)",
                self._what,
                sub.name,
                report.skipped,
                first,
            )
        await self._replace(sub, entries)
        await self._store.record_hash_fetch(
            sub.name,
            sub.url,
            status=fetched.status,
            error=None,
            nbytes=fetched.nbytes,
            etag=fetched.etag,
            entries=len(entries),
            skipped=report.skipped,
        )
        log.info(
            "%s %s: %d entries (%d skipped)", self._what, sub.name, len(entries), report.skipped
        )
        await self._reload()
        return CHANGED

    # What a list of another kind (embeddings) changes: how it is read, stored and loaded.
    def _read(self, fetched: _Fetched, report: ParseReport, max_rows: int) -> list[Any]:
        """The entries of the received list (blocking: run in a worker thread)."""
        fmt = "csv" if "csv" in fetched.content_type else None
        return fetched.entries(lambda text: read_entries(text, fmt, report, max_rows=max_rows))

    async def _replace(self, sub: HashSubscription, entries: list[Any]) -> None:
        await self._store.replace_hash_origin(sub.name, entries)

    async def _reload(self) -> None:
        await self._matcher.reload()

    async def _fetch(self, sub: HashSubscription, headers: dict[str, str]) -> _Fetched:
        """GET the list into a temporary file, following redirects only within the source's
        origin (or to `redirect_origins`); the token goes to the source's own origin only."""
        url = URL(sub.url)
        home = _origin(url)
        allowed = {home, *(_origin(URL(o)) for o in sub.redirect_origins)}
        for _ in range(_MAX_REDIRECTS + 1):
            sent = dict(headers)
            if sub.token and _origin(url) == home:
                sent["Authorization"] = f"Bearer {sub.token}"
            try:
                async with self._session.get(
                    url,
                    headers=sent,
                    allow_redirects=False,
                    timeout=aiohttp.ClientTimeout(total=sub.timeout_s),
                ) as resp:
                    if resp.status in _REDIRECTS:
                        url = _redirect_target(url, resp, allowed)
                        continue
                    return await self._receive(sub, resp)
            except (aiohttp.ClientError, TimeoutError) as exc:
                raise _Refused(
                    None, f"cannot fetch {sub.url}: {exc or type(exc).__name__}"
                ) from None
        raise _Refused(None, f"more than {_MAX_REDIRECTS} redirects from {sub.url}")

    async def _receive(self, sub: HashSubscription, resp: aiohttp.ClientResponse) -> _Fetched:
        limit = self._settings.max_list_bytes
        content_type = _safe_text(resp.content_type)
        if resp.status == 304:
            return _Fetched(304, None, 0, resp.headers.get("ETag"), "")
        if resp.status != 200:
            raise _Refused(resp.status, f"HTTP {resp.status} from {sub.url} ({content_type})")
        if resp.content_length is not None and resp.content_length > limit:
            raise _Refused(200, f"list of {resp.content_length} bytes exceeds {limit}")
        loop = asyncio.get_running_loop()
        file = await loop.run_in_executor(None, tempfile.TemporaryFile)
        nbytes = 0
        try:
            # Decompressed bytes count (aiohttp undoes Content-Encoding): a small gzip of a
            # huge document is refused at the limit, never held.
            async for chunk in resp.content.iter_chunked(1 << 16):
                nbytes += len(chunk)
                if nbytes > limit:
                    raise _Refused(200, f"list exceeds max_list_bytes ({limit})", nbytes)
                await loop.run_in_executor(None, file.write, chunk)
        except BaseException:
            file.close()
            raise
        return _Fetched(200, file, nbytes, resp.headers.get("ETag"), content_type)


_MAX_REDIRECTS = 5
_REDIRECTS = frozenset({301, 302, 303, 307, 308})
_UNSAFE = re.compile(r"[^A-Za-z0-9/.+;=_ -]")


@dataclass
class _Fetched:
    status: int
    file: IO[bytes] | None
    nbytes: int
    etag: str | None
    content_type: str

    def describe(self) -> str:
        """Status, type and size: enough to tell an HTML error page from a list."""
        return f"HTTP {self.status}, {self.content_type or 'no content type'}, {self.nbytes} bytes"

    def entries(self, read: Callable[[TextIO], Iterable[T]]) -> list[T]:
        """What `read` finds in the received list, read as UTF-8 text (blocking)."""
        if self.file is None:
            return []
        self.file.seek(0)
        text = io.TextIOWrapper(self.file, encoding="utf-8-sig", newline="")
        try:
            return list(read(text))
        finally:
            text.detach()

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
            self.file = None


def _safe_text(value: str, limit: int = 64) -> str:
    return _UNSAFE.sub("?", value[:limit])


def _origin(url: URL) -> tuple[str, str, int | None]:
    return (url.scheme.lower(), (url.host or "").lower(), url.explicit_port or url.port)


def _redirect_target(
    url: URL, resp: aiohttp.ClientResponse, allowed: set[tuple[str, str, int | None]]
) -> URL:
    location = resp.headers.get("Location")
    if not location:
        raise _Refused(resp.status, f"HTTP {resp.status} without a Location")
    target = url.join(URL(location))
    if _origin(target) not in allowed:
        scheme, host, port = _origin(target)
        raise _Refused(
            resp.status,
            f"redirect to another origin ({_safe_text(scheme)}://{_safe_text(host)}:{port}) "
            "refused; list it in redirect_origins to follow it",
        )
    return target
