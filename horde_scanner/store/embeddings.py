"""Image embeddings of judged images and the shared embedding lists.

    verdict_embeddings  the embedding of every image judged (by sha256 and model), kept with
                        its verdict like its PDQ (store/hashes.py: verdict_pdq)
    embedding_entries   entries by origin (`local`: imported by an admin; or a subscription's
                        name) and model, each vector with its label, source and who added it

Data lifecycle:

    a miss's embedding ──save_embedding──► verdict_embeddings
    embeddings import ──add_embedding_entries──► embedding_entries, origin `local`
    subscription refresh ──replace_embedding_origin──► embedding_entries, origin = its name
    subscription gone from the config ──drop_embedding_origins_except──► its entries go

    both tables, lists, verdicts ──embedding_index_keys, embedding_vectors──► the index
        (signals/embeddings.py); a hit ──embedding_entry, own_embedding──► what it is
    lists (deny) + verdict_embeddings, local entries ──own_embedding_entries──► published

What the index holds follows the PDQ rules (store/hashes.py): this instance's machine
positives (csam verdicts not from a match) and deny-listed images, less allowed ones, and the
entries of configured origins. What is published is what a person confirmed: embeddings of
deny-listed images (an admin's confirm puts a positive there) and imported entries.
Every write to embedding_entries bumps hash_generation (as the lists and verdict triggers do),
so each process, and each replica through its notification, knows to bring its index in step.
"""

from __future__ import annotations

import contextlib
import functools
import time
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import sqlalchemy as sa

from horde_scanner.store.hashes import (
    BUMP,
    LOCAL,
    VERDICT,
    NewEntry,
    hash_subscriptions,
)
from horde_scanner.store.metadata import Blob, Int, Real, Text, metadata
from horde_scanner.store.tables import Tables, refuse_nul, upsert
from horde_scanner.store.verdicts import lists as _lists
from horde_scanner.store.verdicts import own_positives
from horde_scanner.store.verdicts import verdicts as _verdicts
from horde_scanner.verdict import VerdictRoute

_ROWS_PER_BATCH = 2000
_KEYS_PER_FETCH = 50_000
_IN_CHUNK = 500

verdict_embeddings = sa.Table(
    "verdict_embeddings",
    metadata,
    sa.Column("id", Int, sa.Identity(), primary_key=True),
    sa.Column("sha256", Text, nullable=False),
    sa.Column("model", Text, nullable=False),
    sa.Column("vector", Blob, nullable=False),
    sa.UniqueConstraint("sha256", "model"),
    sqlite_autoincrement=True,
)

embedding_entries = sa.Table(
    "embedding_entries",
    metadata,
    sa.Column("id", Int, sa.Identity(), primary_key=True),
    sa.Column("origin", Text, nullable=False),
    sa.Column("model", Text, nullable=False),
    sa.Column("digest", Text, nullable=False),
    sa.Column("vector", Blob, nullable=False),
    sa.Column("label", Text, nullable=False),
    sa.Column("source", Text, nullable=False, server_default=""),
    sa.Column("first_seen", Real),
    sa.Column("note", Text, nullable=False, server_default=""),
    sa.Column("added_by", Text, nullable=False, server_default=""),
    sa.Column("added_at", Real),
    sa.UniqueConstraint("origin", "model", "digest"),
    sa.Index("embedding_entries_model", "model", "origin"),
    sqlite_autoincrement=True,
)


class NewEmbedding(NewEntry, Protocol):
    """An embedding entry (signals.embedding_list.EmbeddingEntry is one)."""

    @property
    def digest(self) -> str: ...
    @property
    def blob(self) -> bytes: ...


@dataclass(frozen=True, slots=True)
class EmbeddingRow:
    """An indexed vector as stored: a list entry, or one of our own images (origin `verdict`)."""

    origin: str
    vector: bytes
    label: str = "csam"
    source: str = ""
    first_seen: float | None = None
    note: str = ""
    added_by: str = ""
    added_at: float | None = None
    sha256: str | None = None
    digest: str = ""


class EmbeddingTables(Tables):
    # -- our own images ------------------------------------------------------------------------

    async def save_embedding(self, sha256: str, model: str, vector: bytes) -> int:
        """Keep an image's embedding; returns its row id (the index key's base)."""
        stmt = upsert(self._db.dialect, verdict_embeddings)[0].values(
            sha256=sha256, model=model, vector=vector
        )
        stmt = stmt.on_conflict_do_update(
            index_elements=[verdict_embeddings.c.sha256, verdict_embeddings.c.model],
            set_={"vector": stmt.excluded.vector},
        ).returning(verdict_embeddings.c.id)
        row = (await self._db.execute(stmt)).first()
        return int(row[0]) if row else 0

    async def embedding_of(self, sha256: str, model: str) -> tuple[int, bytes] | None:
        e = verdict_embeddings
        stmt = sa.select(e.c.id, e.c.vector).where(e.c.sha256 == sha256, e.c.model == model)
        row = (await self._db.execute(stmt)).first()
        return (int(row[0]), bytes(row[1])) if row else None

    # -- what the index holds ------------------------------------------------------------------

    async def embedding_index_keys(
        self, model: str
    ) -> AsyncIterator[tuple[str, list[int], list[str]]]:
        """("entry" | "own", row ids, origin of each) of everything the index should hold for
        `model`, in chunks: list entries of every origin (the caller drops origins it does not
        trust), then this instance's positives and deny-listed images, allowed ones left out."""
        entries = sa.select(embedding_entries.c.id, embedding_entries.c.origin).where(
            embedding_entries.c.model == model
        )
        async with self.aside() as db:
            async with contextlib.aclosing(db.stream(entries, _KEYS_PER_FETCH)) as batches:
                async for rows in batches:
                    yield "entry", [int(r[0]) for r in rows], [r[1] for r in rows]
            async with contextlib.aclosing(db.stream(_own(model), _KEYS_PER_FETCH)) as batches:
                async for rows in batches:
                    yield "own", [int(r[0]) for r in rows], [VERDICT] * len(rows)

    async def embedding_vectors(self, kind: str, ids: Sequence[int]) -> list[tuple[int, bytes]]:
        """(id, vector) of these rows of embedding_entries ("entry") or verdict_embeddings."""
        table = embedding_entries if kind == "entry" else verdict_embeddings
        found: list[tuple[int, bytes]] = []
        async with self.aside() as db:
            for start in range(0, len(ids), _IN_CHUNK):
                stmt = sa.select(table.c.id, table.c.vector).where(
                    table.c.id.in_(ids[start : start + _IN_CHUNK])
                )
                found += [(int(r[0]), bytes(r[1])) for r in (await db.execute(stmt)).all()]
        return found

    async def allowed_embeddings(self, model: str) -> list[bytes]:
        """Embeddings of images an admin allowed: entries near them are overridden."""
        e, lists = verdict_embeddings, _lists
        stmt = (
            sa.select(e.c.vector)
            .select_from(e.join(lists, lists.c.sha256 == e.c.sha256))
            .where(lists.c.kind == "allow", e.c.model == model)
        )
        return [bytes(r[0]) for r in (await self._db.execute(stmt)).all()]

    async def embedding_entry(self, entry_id: int) -> EmbeddingRow | None:
        stmt = sa.select(*_ENTRY_COLUMNS).where(embedding_entries.c.id == entry_id)
        row = (await self._db.execute(stmt)).first()
        return _entry(row) if row else None

    async def own_embedding(self, row_id: int) -> EmbeddingRow | None:
        """One of our own images' embedding, as an entry (None once it no longer counts)."""
        e, mine = verdict_embeddings, own_positives(verdict_embeddings)
        stmt = (
            sa.select(e.c.sha256, e.c.vector, mine.first_seen, mine.note)
            .select_from(mine.source)
            .where(e.c.id == row_id, mine.counts)
        )
        row = (await self._db.execute(stmt)).first()
        if row is None:
            return None
        return EmbeddingRow(
            VERDICT, bytes(row[1]), first_seen=row[2], note=str(row[3]), sha256=str(row[0])
        )

    async def embedding_entry_count(self, model: str) -> int:
        stmt = sa.select(sa.func.count()).where(embedding_entries.c.model == model)
        row = (await self._db.execute(stmt)).first()
        return int(row[0]) if row else 0

    # -- what this instance publishes ----------------------------------------------------------

    async def own_embedding_entries(self, model: str, source: str) -> list[EmbeddingRow]:
        """What a person confirmed, for `model`: embeddings of deny-listed images (with who
        confirmed and when) and imported entries; allowed images left out."""
        e, v, lists = verdict_embeddings, _verdicts, _lists
        denied = (
            sa.select(
                e.c.sha256,
                e.c.vector,
                sa.func.coalesce(v.c.first_seen, lists.c.added_at),
                lists.c.added_by,
                lists.c.added_at,
            )
            .select_from(
                e.join(lists, (lists.c.sha256 == e.c.sha256) & (lists.c.kind == "deny")).outerjoin(
                    v, v.c.sha256 == e.c.sha256
                )
            )
            .where(e.c.model == model)
            .order_by(e.c.id)
        )
        entries = [
            EmbeddingRow(
                VERDICT, bytes(r[1]), "csam", source, r[2], "", str(r[3] or ""), r[4],
                sha256=str(r[0]),
            )
            for r in (await self._db.execute(denied)).all()
        ]  # fmt: skip
        local = (
            sa.select(*_ENTRY_COLUMNS)
            .where(embedding_entries.c.origin == LOCAL, embedding_entries.c.model == model)
            .order_by(embedding_entries.c.id)
        )
        entries += [_entry(r) for r in (await self._db.execute(local)).all()]
        return entries

    # -- changing entries ----------------------------------------------------------------------

    async def add_embedding_entries(
        self, origin: str, model: str, entries: Iterable[NewEmbedding], *, by: str = ""
    ) -> int:
        return await self._bulk_embeddings(origin, model, entries, replace=False, by=by)

    async def replace_embedding_origin(
        self, origin: str, model: str, entries: Iterable[NewEmbedding]
    ) -> int:
        """Make `origin`'s entries for `model` exactly these (a subscription refresh)."""
        return await self._bulk_embeddings(origin, model, entries, replace=True)

    async def drop_embedding_origins_except(self, keep: Iterable[str]) -> list[str]:
        keep = {LOCAL, *keep}
        stmt = sa.select(embedding_entries.c.origin).distinct()
        stale = [r[0] for r in (await self._db.execute(stmt)).all() if r[0] not in keep]
        for origin in stale:
            await self._db.execute(
                sa.delete(embedding_entries).where(embedding_entries.c.origin == origin)
            )
            await self._db.execute(
                sa.delete(hash_subscriptions).where(hash_subscriptions.c.name == origin)
            )
        if stale:
            await self._db.execute(BUMP)
        return stale

    async def _bulk_embeddings(
        self,
        origin: str,
        model: str,
        entries: Iterable[NewEmbedding],
        *,
        replace: bool,
        by: str = "",
    ) -> int:
        """Write only the difference to what the origin holds, in short transactions on a
        connection of our own (as store/hashes.py does for hash lists)."""
        new = {e.digest: e for e in entries}
        refuse_nul(by)
        for given in new.values():
            refuse_nul(given.label, given.source, given.note)
        t = embedding_entries
        async with self.aside() as db:
            stale: list[tuple[str, str, str]] = []
            unchanged: set[str] = set()
            held = sa.select(t.c.digest, t.c.label, t.c.source, t.c.first_seen, t.c.note).where(
                t.c.origin == origin, t.c.model == model
            )
            async with contextlib.aclosing(db.stream(held, _KEYS_PER_FETCH)) as batches:
                async for part in batches:
                    for r in part:
                        entry = new.get(r[0])
                        if entry is None:
                            if replace:
                                stale.append((origin, model, r[0]))
                        elif (entry.label, entry.source, entry.first_seen, entry.note) == r[1:]:
                            unchanged.add(r[0])
            added = time.time()
            rows = [
                (origin, model, d, e.blob, e.label, e.source, e.first_seen, e.note, by, added)
                for d, e in sorted(new.items())
                if d not in unchanged
            ]
            await db.write_many(_DELETE_ENTRY, stale, _DELETE_KEYS, _ROWS_PER_BATCH)
            await db.write_many(_upsert_entries(db.dialect), rows, _ENTRY_KEYS, _ROWS_PER_BATCH)
            if stale or rows:
                await db.execute(BUMP)
        return len(rows) + len(stale)


_ENTRY_COLUMNS = tuple(
    embedding_entries.c[name]
    for name in (
        "origin", "vector", "label", "source", "first_seen", "note", "added_by", "added_at",
        "digest",
    )
)  # fmt: skip
_ENTRY_KEYS = (
    "origin", "model", "digest", "vector", "label", "source", "first_seen", "note", "added_by",
    "added_at",
)  # fmt: skip
_DELETE_KEYS = ("o", "m", "d")
_DELETE_ENTRY = sa.delete(embedding_entries).where(
    embedding_entries.c.origin == sa.bindparam("o"),
    embedding_entries.c.model == sa.bindparam("m"),
    embedding_entries.c.digest == sa.bindparam("d"),
)


@functools.cache
def _upsert_entries(dialect: str) -> Any:
    """An entry written over the one of the same origin, model and digest (its vector kept:
    the digest names it)."""
    stmt = upsert(dialect, embedding_entries)[0]
    new = stmt.excluded
    return stmt.on_conflict_do_update(
        index_elements=[
            embedding_entries.c.origin, embedding_entries.c.model, embedding_entries.c.digest
        ],
        set_={
            "label": new.label, "source": new.source, "note": new.note,
            "first_seen": new.first_seen,
        },
    )  # fmt: skip


def _own(model: str) -> sa.Select[Any]:
    """This instance's machine positives and deny-listed images, allowed images excluded."""
    e, v, lists = verdict_embeddings, _verdicts, _lists
    return sa.select(e.c.id).where(
        e.c.model == model,
        e.c.sha256.not_in(sa.select(lists.c.sha256).where(lists.c.kind == "allow")),
        e.c.sha256.in_(
            sa.select(v.c.sha256).where(v.c.label == "csam", v.c.route != VerdictRoute.MATCH.value)
        )
        | e.c.sha256.in_(sa.select(lists.c.sha256).where(lists.c.kind == "deny")),
    )


def _entry(row: Sequence[Any]) -> EmbeddingRow:
    origin, vector, label, source, first_seen, note, by, at, digest = row
    return EmbeddingRow(
        str(origin),
        bytes(vector),
        str(label),
        str(source or ""),
        float(first_seen) if isinstance(first_seen, int | float) else None,
        str(note or ""),
        str(by or ""),
        at,
        digest=str(digest),
    )
