"""Publishing this instance's embedding list and subscribing to other instances' lists, the
way hash lists travel (hashlists/publish.py, hashlists/subscribe.py).

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
import io
import logging

import aiohttp
import numpy as np

from horde_scanner.config import EmbeddingsSettings, HashSubscription
from horde_scanner.hashlists.format import ListFormatError, ParseReport, TooManyRows
from horde_scanner.hashlists.publish import RenderedList
from horde_scanner.hashlists.subscribe import CHANGED, FAILED, Subscriber, _Fetched
from horde_scanner.signals.embedding_list import (
    EmbeddingEntry,
    Model,
    OtherModel,
    dump_json,
    read_entries,
)
from horde_scanner.signals.embeddings import EmbeddingMatcher
from horde_scanner.signals.vectors import from_blob
from horde_scanner.store.sqlite import Store

log = logging.getLogger(__name__)


async def published(
    store: Store, model: Model, source: str, threshold: float
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
    def __init__(self, store: Store, settings: EmbeddingsSettings, source: str) -> None:
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

    async def _apply(self, sub: HashSubscription, fetched: _Fetched) -> str:
        loop = asyncio.get_running_loop()
        settings = self._settings
        report = ParseReport(max_errors=settings.max_row_errors)
        problem: str | None = None
        try:
            entries = await loop.run_in_executor(
                None, self._read, fetched, report, settings.max_list_rows
            )
        except (TooManyRows, OtherModel) as exc:
            entries, problem = [], f"{exc} ({fetched.describe()})"
        except ListFormatError:
            entries, problem = [], f"not an embedding list ({fetched.describe()})"
        else:
            if report.skipped and not entries:
                problem = f"no usable row in {report.rows} rows ({fetched.describe()})"
        if problem is not None:
            log.warning(
                "embedding subscription %s: %s; keeping the last good copy", sub.name, problem
            )
            await self._store.record_hash_fetch(
                sub.name, sub.url, status=fetched.status, error=problem, nbytes=fetched.nbytes
            )
            return FAILED
        if report.skipped:
            first = report.errors[0] if report.errors else None
            log.warning(
                "embedding subscription %s: skipped %d bad rows (first: %s)",
                sub.name,
                report.skipped,
                first,
            )
        await self._store.replace_embedding_origin(sub.name, self._model.model, entries)
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
            "embedding subscription %s: %d entries (%d skipped)",
            sub.name,
            len(entries),
            report.skipped,
        )
        await self._embeddings.sync()
        return CHANGED

    def _read(self, fetched: _Fetched, report: ParseReport, max_rows: int) -> list[EmbeddingEntry]:
        if fetched.file is None:
            return []
        fetched.file.seek(0)
        text = io.TextIOWrapper(fetched.file, encoding="utf-8-sig", newline="")
        try:
            return list(read_entries(text, "json", self._model, report, max_rows=max_rows))
        finally:
            text.detach()
