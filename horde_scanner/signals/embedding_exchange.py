"""Publishing this instance's embedding list and subscribing to other instances' lists, the
way hash lists travel (signals/hash_publish.py, signals/hash_subscribe.py).

Published (`GET /api/v1/embeddings`, with hashes.publish and its token): what a person
confirmed, for this instance's model: embeddings of deny-listed images (an admin's confirm
puts a positive there), with who confirmed it and when, and imported entries; never what it
subscribed to, never an unreviewed machine verdict, never an entry an admin's allow overrides.
The body is rendered once per change of the store's hash generation, with a strong ETag.

Subscribed (`embeddings.subscriptions`): fetched like hash lists (conditional requests, size
cap while receiving, redirects within the origin, the last good copy kept on any problem),
then read as a stream with a row cap. A list of another model or preprocessing is refused by
name, keeping the last good copy.
"""

from __future__ import annotations

import asyncio
from typing import Protocol

import aiohttp
import numpy as np

from horde_scanner.config import EmbeddingsSettings, HashSubscription
from horde_scanner.signals.embedding_list import (
    EmbeddingEntry,
    Model,
    OtherModel,
    dump_json,
    read_entries,
)
from horde_scanner.signals.embeddings import EmbeddingMatcher, EmbeddingMatchStore
from horde_scanner.signals.hash_list import ParseReport, TooManyRows
from horde_scanner.signals.hash_matcher import HashMatchStore
from horde_scanner.signals.hash_publish import RenderedList
from horde_scanner.signals.hash_subscribe import Subscriber, _Fetched
from horde_scanner.signals.vectors import from_blob
from horde_scanner.store.interfaces import EmbeddingStore, HashBankStore


class EmbeddingListStore(EmbeddingStore, HashBankStore, Protocol):
    """What publishing the embedding list reads (rendered again as the hash generation moves)."""


class EmbeddingSubscriptionStore(HashMatchStore, EmbeddingMatchStore, Protocol):
    """What an embedding subscription reads and records."""


async def published(
    store: EmbeddingStore, model: Model, source: str, threshold: float
) -> list[EmbeddingEntry]:
    """This instance's confirmed entries, one per vector, those an allow overrides left out."""
    unique: dict[bytes, EmbeddingEntry] = {}
    for row in await store.own_embedding_entries(model.model, source):
        unique.setdefault(
            row.vector,
            EmbeddingEntry(
                from_blob(row.vector).copy(),
                row.label,
                row.source,
                row.first_seen,
                row.note,
                row.added_by,
                row.added_at,
            ),
        )
    entries = list(unique.values())
    allowed = await store.allowed_embeddings(model.model)
    if not allowed or not entries:
        return entries
    vectors = np.stack([e.vector for e in entries])
    near = np.zeros(len(entries), dtype=bool)
    for blob in allowed:
        near |= vectors @ from_blob(blob) >= threshold
    return [e for e, drop in zip(entries, near, strict=True) if not drop]


class EmbeddingPublisher(RenderedList):
    _store: EmbeddingListStore

    def __init__(
        self, store: EmbeddingListStore, settings: EmbeddingsSettings, source: str
    ) -> None:
        super().__init__(store)
        self._settings = settings
        self._source = source
        self._model = Model(settings.model_id, settings.preprocess, settings.dim)

    async def _render(self) -> bytes:
        entries = await published(self._store, self._model, self._source, self._settings.threshold)
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(None, lambda: dump_json(self._model, entries).encode())


class EmbeddingSubscriber(Subscriber):
    """Hash-list subscriptions' fetching, with the embedding list's reading and storing."""

    _what = "embedding subscription"
    _a_list = "an embedding list"
    _refusals = (TooManyRows, OtherModel)
    _store: EmbeddingSubscriptionStore

    def __init__(
        self,
        matcher: EmbeddingMatcher,
        settings: EmbeddingsSettings,
        session: aiohttp.ClientSession,
    ) -> None:
        self._embeddings = matcher
        self._model = matcher.model
        # The base class reads subscriptions, caps and the store from these.
        super().__init__(matcher, settings, session)  # type: ignore[arg-type]

    async def start(self) -> None:
        if not self._embeddings.enabled:
            return  # lists of vectors nothing here can compare with
        await super().start()

    async def _replace(self, sub: HashSubscription, entries: list[EmbeddingEntry]) -> None:
        await self._store.replace_embedding_origin(sub.name, self._model.model, entries)

    async def _reload(self) -> None:
        await self._embeddings.sync()

    def _read(self, fetched: _Fetched, report: ParseReport, max_rows: int) -> list[EmbeddingEntry]:
        return fetched.entries(
            lambda text: read_entries(text, "json", self._model, report, max_rows=max_rows)
        )
