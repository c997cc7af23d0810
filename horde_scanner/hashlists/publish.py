"""This instance's own hash list, rendered once per change of the store's hash generation.

Only this instance's own entries (confirmed positives, deny list, imported entries; never what
it subscribed to, so lists do not echo around a ring of instances), in the JSON exchange format,
with a strong ETag so an unchanged list costs a subscriber a 304 and no body.
"""

from __future__ import annotations

import asyncio
import hashlib

from horde_scanner.config import HashesSettings
from horde_scanner.hashlists.format import HashEntry, dump_json
from horde_scanner.hashlists.store import HashStore


class Publisher:
    def __init__(self, hashes: HashStore, settings: HashesSettings) -> None:
        self._hashes = hashes
        self._settings = settings
        self._lock = asyncio.Lock()
        self._generation: int | None = None
        self._body = b""
        self._etag = ""

    async def current(self) -> tuple[bytes, str]:
        """(body, ETag) of the list as it is now."""
        async with self._lock:
            generation = await self._hashes.generation()
            if generation != self._generation:
                entries = await self._hashes.published(
                    self._settings.publish_source,
                    self._settings.pdq_min_quality,
                    self._settings.pdq_max_distance,
                    unreviewed=self._settings.publish_unreviewed,
                )
                loop = asyncio.get_running_loop()
                self._body = await loop.run_in_executor(None, _render, entries)
                self._etag = '"' + hashlib.sha256(self._body).hexdigest()[:40] + '"'
                self._generation = generation
            return self._body, self._etag


def _render(entries: list[HashEntry]) -> bytes:
    return dump_json(entries).encode()
