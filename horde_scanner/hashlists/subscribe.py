"""Subscribing to other instances' hash lists.

Each configured source is fetched every `refresh_s` seconds with a conditional request
(If-None-Match with the ETag of the copy we hold), so a refresh that changed nothing moves no
data. A good copy replaces the source's entries in one transaction; a source that is down,
answers an error, sends more than `max_list_bytes` or sends something that is not a hash list
keeps its last good copy, and the problem is logged and recorded (`hashes subscriptions`).
Bad rows inside a good list are skipped and counted.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import aiohttp

from horde_scanner.config import HashesSettings, HashSubscription
from horde_scanner.hashlists.format import ListFormatError, parse
from horde_scanner.hashlists.matcher import HashMatcher
from horde_scanner.media.hashing import sha256_hex

log = logging.getLogger(__name__)

CHANGED = "changed"
UNCHANGED = "unchanged"
FAILED = "failed"


class _Refused(Exception):
    def __init__(self, status: int | None, reason: str, nbytes: int = 0) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason
        self.nbytes = nbytes


class Subscriber:
    def __init__(
        self, matcher: HashMatcher, settings: HashesSettings, session: aiohttp.ClientSession
    ) -> None:
        self._matcher = matcher
        self._hashes = matcher.hashes
        self._settings = settings
        self._session = session
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._loop(sub), name=f"hash-subscription-{sub.name}")
            for sub in self._settings.subscriptions
        ]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []

    async def _loop(self, sub: HashSubscription) -> None:
        store = self._matcher.store
        while True:
            try:
                # Replicas on one database: one of them refreshes per period, the others
                # see the entries in the shared tables (and reload on the notification).
                turn = f"subscription:{sub.name}:{sha256_hex(sub.url.encode())[:16]}"
                if await store.take_turn(turn, sub.refresh_s * 0.9):
                    await self.refresh(sub)
            except asyncio.CancelledError:
                raise
            except Exception:  # a bug must not end the subscription
                log.exception("hash subscription %s: refresh failed", sub.name)
            await asyncio.sleep(sub.refresh_s)

    async def refresh(self, sub: HashSubscription) -> str:
        """Fetch one source once: CHANGED, UNCHANGED (304) or FAILED (last copy kept)."""
        state = await self._hashes.subscription(sub.name)
        headers = {"Accept": "application/json, text/csv;q=0.5"}
        if state is not None and state.etag and state.url == sub.url:
            headers["If-None-Match"] = state.etag
        if sub.token:
            headers["Authorization"] = f"Bearer {sub.token}"
        try:
            status, body, etag, content_type = await self._fetch(sub, headers)
        except _Refused as exc:
            log.warning("hash subscription %s: %s; keeping the last good copy", sub.name, exc)
            await self._hashes.record_fetch(
                sub.name, sub.url, status=exc.status, error=exc.reason, nbytes=exc.nbytes
            )
            return FAILED
        if status == 304:
            await self._hashes.record_fetch(sub.name, sub.url, status=304, error=None)
            return UNCHANGED
        fmt = "csv" if "csv" in content_type else None
        loop = asyncio.get_running_loop()
        try:
            entries, errors = await loop.run_in_executor(None, parse, body, fmt)
        except ListFormatError as exc:
            entries, errors = [], []
            problem: str | None = f"not a hash list: {exc}"
        else:
            # Every row bad is garbage, not an empty list: keep what we had.
            problem = f"no usable row; first: {errors[0]}" if errors and not entries else None
        if problem is not None:
            log.warning("hash subscription %s: %s; keeping the last good copy", sub.name, problem)
            await self._hashes.record_fetch(
                sub.name, sub.url, status=status, error=problem, nbytes=len(body)
            )
            return FAILED
        if errors:
            log.warning(
                "hash subscription %s: skipped %d bad rows (first: %s)",
                sub.name,
                len(errors),
                errors[0],
            )
        await self._hashes.replace_origin(sub.name, entries)
        await self._hashes.record_fetch(
            sub.name,
            sub.url,
            status=status,
            error=None,
            nbytes=len(body),
            etag=etag,
            entries=len(entries),
            skipped=len(errors),
        )
        log.info(
            "hash subscription %s: %d entries (%d skipped)", sub.name, len(entries), len(errors)
        )
        await self._matcher.reload()
        return CHANGED

    async def _fetch(
        self, sub: HashSubscription, headers: dict[str, str]
    ) -> tuple[int, bytes, str | None, str]:
        limit = self._settings.max_list_bytes
        try:
            async with self._session.get(
                sub.url, headers=headers, timeout=aiohttp.ClientTimeout(total=sub.timeout_s)
            ) as resp:
                if resp.status == 304:
                    return 304, b"", resp.headers.get("ETag"), ""
                if resp.status != 200:
                    raise _Refused(resp.status, f"HTTP {resp.status} from {sub.url}")
                if resp.content_length is not None and resp.content_length > limit:
                    raise _Refused(200, f"list of {resp.content_length} bytes exceeds {limit}")
                body = bytearray()
                async for chunk in resp.content.iter_chunked(1 << 16):
                    body += chunk
                    if len(body) > limit:
                        raise _Refused(200, f"list exceeds max_list_bytes ({limit})", len(body))
                return 200, bytes(body), resp.headers.get("ETag"), resp.content_type
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise _Refused(None, f"cannot fetch {sub.url}: {exc or type(exc).__name__}") from None
