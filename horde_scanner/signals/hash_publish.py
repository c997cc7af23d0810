"""This instance's own hash list, rendered once per change of the store's hash generation.

Only this instance's own entries (confirmed positives, deny list, imported entries; never what
it subscribed to, so lists do not echo around a ring of instances), in the JSON exchange format,
with a strong ETag so an unchanged list costs a subscriber a 304 and no body.
"""

from __future__ import annotations

import asyncio
import hashlib
from abc import ABC, abstractmethod

import numpy as np

from horde_scanner.config import HashesSettings
from horde_scanner.signals.hash_index import hex_to_words
from horde_scanner.signals.hash_list import HashEntry, dump_json
from horde_scanner.store.hashes import HashRow
from horde_scanner.store.interfaces import HashBankStore


class RenderedList(ABC):
    """A list body rendered once per change of the store's hash generation, with a strong
    ETag (an unchanged list costs a subscriber a 304). Hash and embedding lists render their
    own entries (`_render`)."""

    def __init__(self, store: HashBankStore) -> None:
        self._store = store
        self._lock = asyncio.Lock()
        self._generation: int | None = None
        self._body = b""
        self._etag = ""

    async def current(self) -> tuple[bytes, str]:
        """(body, ETag) of the list as it is now."""
        async with self._lock:
            generation = await self._store.hash_generation()
            if generation != self._generation:
                self._body = await self._render()
                self._etag = '"' + hashlib.sha256(self._body).hexdigest()[:40] + '"'
                self._generation = generation
            return self._body, self._etag

    @abstractmethod
    async def _render(self) -> bytes:
        """The list's body as it is now."""


class Publisher(RenderedList):
    def __init__(self, store: HashBankStore, settings: HashesSettings) -> None:
        super().__init__(store)
        self._settings = settings

    async def _render(self) -> bytes:
        entries = await published(
            self._store,
            self._settings.publish_source,
            self._settings.pdq_min_quality,
            self._settings.pdq_max_distance,
            unreviewed=self._settings.publish_unreviewed,
        )
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(None, _render, entries)


async def published(
    store: HashBankStore,
    source: str,
    min_quality: int,
    max_distance: int,
    *,
    unreviewed: bool = False,
) -> list[HashEntry]:
    """This instance's own entries, de-duplicated and sorted, with every entry an admin's
    allow overrides left out: what `GET /api/v1/hashes` serves and `hashes export` writes.
    A confirmed entry wins over an unreviewed one for the same value."""
    unique: dict[tuple[str, str], HashEntry] = {}
    for row in await store.own_hash_entries(source, min_quality, unreviewed=unreviewed):
        unique.setdefault((row.signal, row.value), entry_of(row))
    result = sorted(unique.values(), key=lambda e: (e.signal, e.value))
    allowed = await store.allowed_pdq(min_quality)
    if not allowed:
        return result
    pdq = [i for i, e in enumerate(result) if e.signal == "pdq"]
    words = hex_to_words([result[i].value for i in pdq])
    near = np.zeros(len(pdq), dtype=bool)
    for value in allowed:
        distances = np.bitwise_count(words ^ hex_to_words([value])[0]).sum(axis=1)
        near |= distances <= max_distance
    dropped = {pdq[i] for i in np.flatnonzero(near)}
    return [e for i, e in enumerate(result) if i not in dropped]


def entry_of(row: HashRow) -> HashEntry:
    """A stored entry as the exchange format writes it (who added it: who confirmed it)."""
    return HashEntry(
        row.signal,
        row.value,
        row.label,
        row.source,
        row.first_seen,
        row.note,
        confirmed_by=row.added_by,
        confirmed_at=row.added_at,
    )


def _render(entries: list[HashEntry]) -> bytes:
    return dump_json(entries).encode()
