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

import time
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import sqlalchemy as sa

from horde_scanner.store.hashes import BUMP_HASH_GENERATION, LOCAL, VERDICT
from horde_scanner.store.metadata import Blob, Int, Real, Text, metadata
from horde_scanner.store.tables import SchemaStep, Tables, write_in_batches
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

STEPS = [
    SchemaStep(
        "2400-embeddings",
        """
    CREATE TABLE verdict_embeddings (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        sha256 TEXT NOT NULL,
        model TEXT NOT NULL,
        vector BLOB NOT NULL,
        UNIQUE (sha256, model)
    );
    CREATE TABLE embedding_entries (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        origin TEXT NOT NULL,
        model TEXT NOT NULL,
        digest TEXT NOT NULL,
        vector BLOB NOT NULL,
        label TEXT NOT NULL,
        source TEXT NOT NULL DEFAULT '',
        first_seen REAL,
        note TEXT NOT NULL DEFAULT '',
        added_by TEXT NOT NULL DEFAULT '',
        added_at REAL,
        UNIQUE (origin, model, digest)
    );
    CREATE INDEX embedding_entries_model ON embedding_entries(model, origin);
    """,
    ),
]


class NewEmbedding(Protocol):
    """What the store reads of an entry it is given (signals.embedding_list.EmbeddingEntry)."""

    @property
    def digest(self) -> str: ...
    @property
    def blob(self) -> bytes: ...
    @property
    def label(self) -> str: ...
    @property
    def source(self) -> str: ...
    @property
    def first_seen(self) -> float | None: ...
    @property
    def note(self) -> str: ...


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
        await self._db.execute(
            "INSERT INTO verdict_embeddings (sha256, model, vector) VALUES (?,?,?)"
            " ON CONFLICT (sha256, model) DO UPDATE SET vector=excluded.vector",
            (sha256, model, vector),
        )
        async with self._db.execute(
            "SELECT id FROM verdict_embeddings WHERE sha256=? AND model=?", (sha256, model)
        ) as cur:
            row = await cur.fetchone()
        return int(row[0]) if row else 0

    async def embedding_of(self, sha256: str, model: str) -> tuple[int, bytes] | None:
        async with self._db.execute(
            "SELECT id, vector FROM verdict_embeddings WHERE sha256=? AND model=?",
            (sha256, model),
        ) as cur:
            row = await cur.fetchone()
        return (int(row[0]), bytes(row[1])) if row else None

    # -- what the index holds ------------------------------------------------------------------

    async def embedding_index_keys(
        self, model: str
    ) -> AsyncIterator[tuple[str, list[int], list[str]]]:
        """("entry" | "own", row ids, origin of each) of everything the index should hold for
        `model`, in chunks: list entries of every origin (the caller drops origins it does not
        trust), then this instance's positives and deny-listed images, allowed ones left out."""
        async with self.aside() as db:
            async with db.execute(
                "SELECT id, origin FROM embedding_entries WHERE model=?", (model,)
            ) as cur:
                while rows := await cur.fetchmany(_KEYS_PER_FETCH):
                    yield "entry", [int(r[0]) for r in rows], [r[1] for r in rows]
            async with db.execute(_OWN, (VerdictRoute.MATCH.value, model)) as cur:
                while rows := await cur.fetchmany(_KEYS_PER_FETCH):
                    yield "own", [int(r[0]) for r in rows], [VERDICT] * len(rows)

    async def embedding_vectors(self, kind: str, ids: Sequence[int]) -> list[tuple[int, bytes]]:
        """(id, vector) of these rows of embedding_entries ("entry") or verdict_embeddings."""
        table = "embedding_entries" if kind == "entry" else "verdict_embeddings"
        found: list[tuple[int, bytes]] = []
        async with self.aside() as db:
            for start in range(0, len(ids), _IN_CHUNK):
                chunk = list(ids[start : start + _IN_CHUNK])
                marks = ",".join("?" * len(chunk))
                async with db.execute(
                    f"SELECT id, vector FROM {table} WHERE id IN ({marks})", chunk
                ) as cur:
                    found += [(int(r[0]), bytes(r[1])) for r in await cur.fetchall()]
        return found

    async def allowed_embeddings(self, model: str) -> list[bytes]:
        """Embeddings of images an admin allowed: entries near them are overridden."""
        async with self._db.execute(
            "SELECT e.vector FROM verdict_embeddings e JOIN lists l ON l.sha256 = e.sha256"
            " WHERE l.kind='allow' AND e.model=?",
            (model,),
        ) as cur:
            return [bytes(r[0]) async for r in cur]

    async def embedding_entry(self, entry_id: int) -> EmbeddingRow | None:
        async with self._db.execute(
            f"SELECT {_ENTRY_COLUMNS} FROM embedding_entries WHERE id=?", (entry_id,)
        ) as cur:
            row = await cur.fetchone()
        return _entry(row) if row else None

    async def own_embedding(self, row_id: int) -> EmbeddingRow | None:
        """One of our own images' embedding, as an entry (None once it no longer counts)."""
        async with self._db.execute(
            "SELECT e.sha256, e.vector, COALESCE(v.first_seen, l.added_at),"
            " CASE WHEN l.kind = 'deny' THEN 'deny list' ELSE 'confirmed positive' END"
            " FROM verdict_embeddings e LEFT JOIN verdicts v ON v.sha256 = e.sha256"
            " LEFT JOIN lists l ON l.sha256 = e.sha256 WHERE e.id = ?"
            " AND (l.kind = 'deny' OR (v.label = 'csam' AND v.route != ?))"
            " AND COALESCE(l.kind, '') != 'allow'",
            (row_id, VerdictRoute.MATCH.value),
        ) as cur:
            row = await cur.fetchone()
        if row is None:
            return None
        return EmbeddingRow(
            VERDICT, bytes(row[1]), first_seen=row[2], note=str(row[3]), sha256=str(row[0])
        )

    async def embedding_entry_count(self, model: str) -> int:
        async with self._db.execute(
            "SELECT COUNT(*) FROM embedding_entries WHERE model=?", (model,)
        ) as cur:
            row = await cur.fetchone()
        return int(row[0]) if row else 0

    # -- what this instance publishes ----------------------------------------------------------

    async def own_embedding_entries(self, model: str, source: str) -> list[EmbeddingRow]:
        """What a person confirmed, for `model`: embeddings of deny-listed images (with who
        confirmed and when) and imported entries; allowed images left out."""
        entries: list[EmbeddingRow] = []
        async with self._db.execute(
            "SELECT e.sha256, e.vector, COALESCE(v.first_seen, l.added_at), l.added_by,"
            " l.added_at FROM verdict_embeddings e JOIN lists l ON l.sha256 = e.sha256"
            " AND l.kind = 'deny' LEFT JOIN verdicts v ON v.sha256 = e.sha256"
            " WHERE e.model = ? ORDER BY e.id",
            (model,),
        ) as cur:
            async for r in cur:
                entries.append(
                    EmbeddingRow(
                        VERDICT,
                        bytes(r[1]),
                        "csam",
                        source,
                        r[2],
                        "",
                        str(r[3] or ""),
                        r[4],
                        sha256=str(r[0]),
                    )
                )
        async with self._db.execute(
            f"SELECT {_ENTRY_COLUMNS} FROM embedding_entries WHERE origin=? AND model=?"
            " ORDER BY id",
            (LOCAL, model),
        ) as cur:
            entries += [_entry(r) async for r in cur]
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
        async with self._db.execute("SELECT DISTINCT origin FROM embedding_entries") as cur:
            stale = [r[0] async for r in cur if r[0] not in keep]
        for origin in stale:
            await self._db.execute("DELETE FROM embedding_entries WHERE origin=?", (origin,))
            await self._db.execute("DELETE FROM hash_subscriptions WHERE name=?", (origin,))
        if stale:
            await self._db.execute(BUMP_HASH_GENERATION)
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
        async with self.aside() as db:
            stale: list[str] = []
            unchanged: set[str] = set()
            async with db.execute(
                "SELECT digest, label, source, first_seen, note FROM embedding_entries"
                " WHERE origin=? AND model=?",
                (origin, model),
            ) as cur:
                for r in await cur.fetchall():
                    entry = new.get(r[0])
                    if entry is None:
                        if replace:
                            stale.append(r[0])
                    elif (entry.label, entry.source, entry.first_seen, entry.note) == tuple(r[1:]):
                        unchanged.add(r[0])
            added = time.time()
            rows = [
                (origin, model, d, e.blob, e.label, e.source, e.first_seen, e.note, by, added)
                for d, e in sorted(new.items())
                if d not in unchanged
            ]
            await write_in_batches(
                db,
                "DELETE FROM embedding_entries WHERE origin=? AND model=? AND digest=?",
                [(origin, model, d) for d in stale],
                _ROWS_PER_BATCH,
            )
            await write_in_batches(
                db,
                "INSERT INTO embedding_entries (origin, model, digest, vector, label, source,"
                " first_seen, note, added_by, added_at) VALUES (?,?,?,?,?,?,?,?,?,?)"
                " ON CONFLICT (origin, model, digest) DO UPDATE SET label=excluded.label,"
                " source=excluded.source, note=excluded.note,"
                " first_seen=excluded.first_seen",
                rows,
                _ROWS_PER_BATCH,
            )
            if stale or rows:
                await db.execute(BUMP_HASH_GENERATION)
        return len(rows) + len(stale)


_ENTRY_COLUMNS = "origin, vector, label, source, first_seen, note, added_by, added_at, digest"
# This instance's machine positives and deny-listed images, allowed images excluded.
_OWN = (
    "SELECT e.id FROM verdict_embeddings e WHERE e.model = ?2"
    " AND e.sha256 NOT IN (SELECT sha256 FROM lists WHERE kind='allow')"
    " AND (e.sha256 IN (SELECT sha256 FROM verdicts WHERE label='csam' AND route != ?1)"
    " OR e.sha256 IN (SELECT sha256 FROM lists WHERE kind='deny'))"
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
