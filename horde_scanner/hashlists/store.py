"""Storage of perceptual hashes and hash lists (tables from the store's "0500-hashes" step).

    verdict_pdq        PDQ of every judged image (by sha256 and frame), kept with its verdict
    hash_entries       deny entries by origin: `local` (imported by an admin) or a subscription
    hash_subscriptions what each subscribed source last gave (ETag, counts, errors)
    hash_flags         matches against `review` sources, for an admin to look at
    hash_generation    a counter bumped by every change to what the index must hold

What the index holds is derived from these and the core tables: machine positives (`csam`
verdicts a backend gave, reviewed or not), the admin deny list (by sha256, with the PDQ of the
image when it was seen), and imported entries; an admin allow removes an image and every deny
entry within the match distance of its PDQ. What this instance publishes is what a person
confirmed: the deny list (an admin's confirm puts a positive there) and imported entries, each
with who added it and when; unreviewed machine positives only with hashes.publish_unreviewed.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiosqlite
import numpy as np

from horde_scanner.hashlists.format import HashEntry
from horde_scanner.hashlists.index import hex_to_words
from horde_scanner.media.hashing import PdqHash
from horde_scanner.store.sqlite import Store
from horde_scanner.verdict import VerdictRoute

LOCAL = "local"  # entries an admin imported
VERDICT = "verdict"  # this instance's own confirmed positives and deny list
# Verdicts given by a hash-list match: never evidence on their own (a chain of near-copies
# would drift away from the original), so they are neither indexed nor published.
# The backend name a hash-match verdict shows (what it rests on is its route, VerdictRoute.MATCH).
MATCH_BACKEND = "hashlist"
_ROWS_PER_BATCH = 5000
_BULK_CACHE_KIB = 128 * 1024
_INDEX_ROWS_PER_FETCH = 50_000


@dataclass(frozen=True, slots=True)
class SourcedEntry:
    origin: str
    entry: HashEntry
    # For the origin `verdict`: the image the hash was taken from.
    sha256: str | None = None


@dataclass(frozen=True, slots=True)
class SubscriptionState:
    name: str
    url: str
    etag: str | None
    entries: int
    skipped: int
    last_ok: float | None
    last_checked: float | None
    last_status: int | None
    last_error: str | None
    bytes_fetched: int


@dataclass(frozen=True, slots=True)
class Flag:
    sha256: str
    origin: str
    signal: str
    value: str
    distance: int
    source: str | None
    flagged_at: float


class HashStore:
    def __init__(self, store: Store) -> None:
        self._store = store
        self._db = store.db

    @property
    def path(self) -> Path:
        return self._store.path

    # -- generation ------------------------------------------------------------------------

    async def generation(self) -> int:
        async with self._db.execute("SELECT n FROM hash_generation WHERE id=1") as cur:
            row = await cur.fetchone()
        return int(row[0]) if row else 0

    async def bump(self) -> None:
        await self._db.execute("UPDATE hash_generation SET n = n + 1 WHERE id=1")

    # -- PDQ of judged images ----------------------------------------------------------------

    async def save_pdq(self, sha256: str, hashes: Sequence[PdqHash]) -> None:
        if not hashes:
            return
        await self._db.execute(
            "INSERT INTO verdict_pdq (sha256, frame, pdq, quality) VALUES "
            + ",".join(["(?,?,?,?)"] * len(hashes))
            + " ON CONFLICT (sha256, frame) DO UPDATE SET pdq=excluded.pdq,"
            " quality=excluded.quality",
            [v for h in hashes for v in (sha256, h.frame, h.hex, h.quality)],
        )

    async def pdq_of(self, sha256: str) -> list[PdqHash]:
        async with self._db.execute(
            "SELECT pdq, quality, frame FROM verdict_pdq WHERE sha256=? ORDER BY frame", (sha256,)
        ) as cur:
            return [PdqHash(r[0], int(r[1]), int(r[2])) async for r in cur]

    # -- what the index holds ----------------------------------------------------------------

    async def index_rows(self, min_quality: int) -> AsyncIterator[tuple[list[str], list[str]]]:
        """(PDQ values, origin of each) of every deny entry, allowed images left out, in
        chunks: a million Python strings at once would double the memory a load needs."""
        # Read on a connection (and so a thread) of our own: a million rows take seconds, and
        # the shared connection must keep answering uploads meanwhile.
        async with self._store.aside() as db:
            query = "SELECT value, origin FROM hash_entries WHERE signal='pdq'"
            async with db.execute(query) as cur:
                while rows := await cur.fetchmany(_INDEX_ROWS_PER_FETCH):
                    yield [r[0] for r in rows], [r[1] for r in rows]
            async with db.execute(_OWN_PDQ, (VerdictRoute.MATCH.value, min_quality)) as cur:
                while rows := await cur.fetchmany(_INDEX_ROWS_PER_FETCH):
                    values = [r[0] for r in rows]
                    yield values, [VERDICT] * len(values)

    async def keep_frames(self, sha256: str, frames: Sequence[int]) -> None:
        """Drop the PDQ of an animation's other frames: a positive's harmless frames must not
        become deny entries (in the index, or in what this instance publishes)."""
        marks = ",".join("?" * len(frames))
        await self._db.execute(
            f"DELETE FROM verdict_pdq WHERE sha256=? AND frame NOT IN ({marks})",
            (sha256, *frames),
        )

    async def allowed_pdq(self, min_quality: int) -> list[str]:
        """PDQ of the images an admin allowed: deny entries near them are overridden."""
        async with self._db.execute(
            "SELECT p.pdq FROM verdict_pdq p JOIN lists l ON l.sha256 = p.sha256"
            " WHERE l.kind='allow' AND p.quality >= ?",
            (min_quality,),
        ) as cur:
            return [r[0] async for r in cur]

    async def sha256_entries(self, sha256: str) -> list[SourcedEntry]:
        async with self._db.execute(
            "SELECT origin, signal, value, label, source, first_seen, note FROM hash_entries"
            " WHERE signal='sha256' AND value=?",
            (sha256,),
        ) as cur:
            return [_sourced(r) async for r in cur]

    async def describe_pdq(self, value: str) -> list[SourcedEntry]:
        """Every entry with this exact PDQ value: imported or subscribed, or our own images."""
        async with self._db.execute(
            "SELECT origin, signal, value, label, source, first_seen, note FROM hash_entries"
            " WHERE signal='pdq' AND value=?",
            (value,),
        ) as cur:
            found = [_sourced(r) async for r in cur]
        async with self._db.execute(
            "SELECT p.sha256, COALESCE(v.first_seen, l.added_at),"
            " CASE WHEN l.kind = 'deny' THEN 'deny list' ELSE 'confirmed positive' END"
            " FROM verdict_pdq p LEFT JOIN verdicts v ON v.sha256 = p.sha256"
            " LEFT JOIN lists l ON l.sha256 = p.sha256 WHERE p.pdq = ?"
            " AND (l.kind = 'deny' OR (v.label = 'csam' AND v.route != ?))"
            " AND COALESCE(l.kind, '') != 'allow'",
            (value, VerdictRoute.MATCH.value),
        ) as cur:
            async for r in cur:
                entry = HashEntry("pdq", value, "csam", "", r[1], r[2])
                found.append(SourcedEntry(VERDICT, entry, r[0]))
        return found

    # -- what this instance publishes ----------------------------------------------------------

    async def own_entries(
        self, source: str, min_quality: int, *, unreviewed: bool = False
    ) -> list[HashEntry]:
        """What a person confirmed: the admin's deny list (sha256 and PDQ; an admin's confirm
        puts a hash there) and imported entries, each with who added it and when. With
        `unreviewed`, machine positives no admin has decided on too (confirmed_by empty)."""
        entries: list[HashEntry] = []
        async with self._db.execute(
            "SELECT l.sha256, COALESCE(v.first_seen, l.added_at), l.added_by, l.added_at"
            " FROM lists l LEFT JOIN verdicts v ON v.sha256 = l.sha256 WHERE l.kind='deny'"
        ) as cur:
            async for r in cur:
                entries.append(_confirmed("sha256", r, source))
        async with self._db.execute(_DENIED_PDQ, (min_quality,)) as cur:
            async for r in cur:
                entries.append(_confirmed("pdq", r, source))
        async with self._db.execute(
            "SELECT signal, value, label, source, first_seen, note, added_by, added_at"
            " FROM hash_entries WHERE origin=? AND NOT (signal='sha256' AND value IN"
            " (SELECT sha256 FROM lists WHERE kind='allow'))",
            (LOCAL,),
        ) as cur:
            async for r in cur:
                entry = _sourced((LOCAL, *r[:6])).entry
                entries.append(
                    dataclasses.replace(entry, confirmed_by=str(r[6] or ""), confirmed_at=r[7])
                )
        if not unreviewed:
            return entries
        note = "unreviewed machine verdict"
        async with self._db.execute(
            "SELECT sha256, first_seen, backend, signals FROM verdicts v WHERE label='csam'"
            " AND route != ? AND sha256 NOT IN (SELECT sha256 FROM lists)",
            (VerdictRoute.MATCH.value,),
        ) as cur:
            async for r in cur:
                if _is_evidence(r[3]):
                    entries.append(
                        HashEntry("sha256", r[0], "csam", source, r[1], f"{note} ({r[2]})")
                    )
        first_seen: dict[str, float] = {}
        params = (VerdictRoute.MATCH.value, min_quality)
        async with self._db.execute(_UNREVIEWED_PDQ, params) as cur:
            async for pdq, seen, signals in cur:
                if _is_evidence(signals):
                    first_seen[pdq] = min(seen, first_seen.get(pdq, seen))
        entries.extend(HashEntry("pdq", v, "csam", source, t, note) for v, t in first_seen.items())
        return entries

    async def published(
        self, source: str, min_quality: int, max_distance: int, *, unreviewed: bool = False
    ) -> list[HashEntry]:
        """This instance's own entries, de-duplicated and sorted, with every entry an admin's
        allow overrides left out: what `GET /api/v1/hashes` serves and `hashes export` writes.
        A confirmed entry wins over an unreviewed one for the same value."""
        unique: dict[tuple[str, str], HashEntry] = {}
        for entry in await self.own_entries(source, min_quality, unreviewed=unreviewed):
            unique.setdefault((entry.signal, entry.value), entry)
        result = sorted(unique.values(), key=lambda e: (e.signal, e.value))
        allowed = await self.allowed_pdq(min_quality)
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

    async def all_entries(self) -> list[SourcedEntry]:
        async with self._db.execute(
            "SELECT origin, signal, value, label, source, first_seen, note FROM hash_entries"
            " ORDER BY origin, signal, value"
        ) as cur:
            return [_sourced(r) async for r in cur]

    # -- changing entries ----------------------------------------------------------------------

    async def add_entries(self, origin: str, entries: Iterable[HashEntry], *, by: str = "") -> int:
        """Upsert entries under `origin` (the earliest first-seen is kept), noting who added
        them and when. Returns rows written."""
        return await self._bulk(origin, entries, replace=False, by=by)

    async def replace_origin(self, origin: str, entries: Iterable[HashEntry]) -> int:
        """Make `origin`'s entries exactly these (a subscription refresh). Returns the number
        of rows added, changed or removed."""
        return await self._bulk(origin, entries, replace=True)

    async def remove_entry(self, origin: str, signal: str, value: str) -> bool:
        cur = await self._db.execute(
            "DELETE FROM hash_entries WHERE origin=? AND signal=? AND value=?",
            (origin, signal, value),
        )
        if cur.rowcount:
            await self.bump()
        return cur.rowcount > 0

    async def drop_origins_except(self, keep: Iterable[str]) -> list[str]:
        """Forget entries of subscriptions no longer configured."""
        keep = {LOCAL, *keep}
        async with self._db.execute("SELECT DISTINCT origin FROM hash_entries") as cur:
            stale = [r[0] async for r in cur if r[0] not in keep]
        for origin in stale:
            await self._db.execute("DELETE FROM hash_entries WHERE origin=?", (origin,))
            await self._db.execute("DELETE FROM hash_subscriptions WHERE name=?", (origin,))
        if stale:
            await self.bump()
        return stale

    async def _bulk(
        self, origin: str, entries: Iterable[HashEntry], *, replace: bool, by: str = ""
    ) -> int:
        """Write entries in short transactions on a connection of our own.

        A list can hold a million rows, and one transaction over all of them would hold the
        write lock for tens of seconds while uploads wait to record their verdicts. So a
        replacement writes only the difference to what the origin holds (usually small), in
        batches; readers see each entry either as it was or as it is now."""
        new = {(e.signal, e.value): (e.label, e.source, e.first_seen, e.note) for e in entries}
        async with self._store.aside() as db:
            await db.execute(f"PRAGMA cache_size=-{_BULK_CACHE_KIB}")
            stale: list[tuple[str, str]] = []
            if replace:
                async with db.execute(
                    "SELECT signal, value, label, source, first_seen, note FROM hash_entries"
                    " WHERE origin=?",
                    (origin,),
                ) as cur:
                    async for r in cur:
                        key = (r[0], r[1])
                        if key not in new:
                            stale.append(key)
                        elif new[key] == (r[2], r[3], r[4], r[5]):
                            del new[key]  # unchanged: nothing to write
            # In key order, the B-tree grows at its end instead of splitting pages all over.
            added = time.time()
            rows = sorted((origin, *key, *fields, by, added) for key, fields in new.items())
            for start in range(0, len(stale), _ROWS_PER_BATCH):
                await _in_transaction(
                    db,
                    "DELETE FROM hash_entries WHERE origin=? AND signal=? AND value=?",
                    [(origin, *key) for key in stale[start : start + _ROWS_PER_BATCH]],
                )
            for start in range(0, len(rows), _ROWS_PER_BATCH):
                await _in_transaction(
                    db,
                    "INSERT INTO hash_entries (origin, signal, value, label, source,"
                    " first_seen, note, added_by, added_at) VALUES (?,?,?,?,?,?,?,?,?)"
                    " ON CONFLICT(signal, value, origin) DO UPDATE SET label=excluded.label,"
                    " source=excluded.source, note=excluded.note,"
                    " first_seen=CASE WHEN excluded.first_seen < hash_entries.first_seen"
                    " THEN excluded.first_seen"
                    " ELSE COALESCE(hash_entries.first_seen, excluded.first_seen) END",
                    rows[start : start + _ROWS_PER_BATCH],
                )
            if stale or rows:
                await db.execute("UPDATE hash_generation SET n = n + 1 WHERE id=1")
        return len(rows) + len(stale)

    # -- subscriptions -------------------------------------------------------------------------

    async def subscription(self, name: str) -> SubscriptionState | None:
        async with self._db.execute(_SUBSCRIPTION_SELECT + " WHERE name=?", (name,)) as cur:
            row = await cur.fetchone()
        return SubscriptionState(*row) if row else None

    async def subscriptions(self) -> list[SubscriptionState]:
        async with self._db.execute(_SUBSCRIPTION_SELECT + " ORDER BY name") as cur:
            return [SubscriptionState(*r) async for r in cur]

    async def record_fetch(
        self,
        name: str,
        url: str,
        *,
        status: int | None,
        error: str | None,
        nbytes: int = 0,
        etag: str | None = None,
        entries: int | None = None,
        skipped: int | None = None,
    ) -> None:
        """Record one refresh. Counts and ETag change only on a good copy (entries given)."""
        now = time.time()
        good = entries is not None
        await self._db.execute(
            "INSERT INTO hash_subscriptions (name, url, etag, entries, skipped, last_ok,"
            " last_checked, last_status, last_error, bytes_fetched)"
            " VALUES (?,?,?,?,?,?,?,?,?,?) ON CONFLICT(name) DO UPDATE SET url=excluded.url,"
            " etag=CASE WHEN ? THEN excluded.etag ELSE hash_subscriptions.etag END,"
            " entries=CASE WHEN ? THEN excluded.entries ELSE hash_subscriptions.entries END,"
            " skipped=CASE WHEN ? THEN excluded.skipped ELSE hash_subscriptions.skipped END,"
            " last_ok=COALESCE(excluded.last_ok, hash_subscriptions.last_ok),"
            " last_checked=excluded.last_checked, last_status=excluded.last_status,"
            " last_error=excluded.last_error,"
            " bytes_fetched=hash_subscriptions.bytes_fetched + excluded.bytes_fetched",
            (
                name,
                url,
                etag,
                entries or 0,
                skipped or 0,
                now if error is None else None,
                now,
                status,
                error,
                nbytes,
                good,
                good,
                good,
            ),
        )

    # -- review flags --------------------------------------------------------------------------

    async def flag(
        self, sha256: str, origin: str, signal: str, value: str, distance: int, source: str | None
    ) -> bool:
        cur = await self._db.execute(
            "INSERT OR IGNORE INTO hash_flags (sha256, origin, signal, value, distance, source,"
            " flagged_at) VALUES (?,?,?,?,?,?,?)",
            (sha256, origin, signal, value, distance, source, time.time()),
        )
        return cur.rowcount > 0

    async def flags(self, limit: int | None = None) -> list[Flag]:
        query = (
            "SELECT sha256, origin, signal, value, distance, source, flagged_at FROM hash_flags"
            " ORDER BY flagged_at DESC"
        )
        params: tuple[int, ...] = ()
        if limit is not None:
            query += " LIMIT ?"
            params = (limit,)
        async with self._db.execute(query, params) as cur:
            return [Flag(*r) async for r in cur]


# PDQ of this instance's machine positives and deny-listed images, allowed images excluded:
# what the local index holds (an unreviewed positive blocks its near copies here).
_OWN_PDQ = (
    "SELECT p.pdq FROM verdict_pdq p WHERE p.quality >= ?2"
    " AND p.sha256 NOT IN (SELECT sha256 FROM lists WHERE kind='allow')"
    " AND (p.sha256 IN (SELECT sha256 FROM verdicts WHERE label='csam' AND route != ?1)"
    " OR p.sha256 IN (SELECT sha256 FROM lists WHERE kind='deny'))"
)
# PDQ of deny-listed (admin-confirmed) images, with who confirmed and when (the first to).
# (Window functions, not SQLite's bare columns beside MIN: PostgreSQL runs this too.)
_DENIED_PDQ = (
    "SELECT pdq, first_seen, added_by, added_at FROM ("
    " SELECT p.pdq AS pdq, MIN(COALESCE(v.first_seen, l.added_at)) OVER w AS first_seen,"
    " l.added_by AS added_by, l.added_at AS added_at,"
    " ROW_NUMBER() OVER (PARTITION BY p.pdq ORDER BY l.added_at, l.sha256) AS n"
    " FROM verdict_pdq p JOIN lists l ON l.sha256 = p.sha256 AND l.kind = 'deny'"
    " LEFT JOIN verdicts v ON v.sha256 = p.sha256 WHERE p.quality >= ?1"
    " WINDOW w AS (PARTITION BY p.pdq)) firsts WHERE n = 1"
)
# PDQ of machine positives on neither list (published only with hashes.publish_unreviewed),
# one row per image: whether its signals are evidence is decided in Python (_is_evidence).
_UNREVIEWED_PDQ = (
    "SELECT p.pdq, v.first_seen, v.signals FROM verdict_pdq p JOIN verdicts v"
    " ON v.sha256 = p.sha256 WHERE p.quality >= ?2 AND v.label = 'csam' AND v.route != ?1"
    " AND p.sha256 NOT IN (SELECT sha256 FROM lists)"
)


def _is_evidence(signals: str | None) -> bool:
    """False for a verdict whose signals say they are no evidence for others (a remote
    worker's bare yes/no answer: `extra.evidence = false`)."""
    try:
        extra = json.loads(signals or "{}").get("extra") or {}
    except (ValueError, AttributeError):
        return True
    return extra.get("evidence", True) is not False


_SUBSCRIPTION_SELECT = (
    "SELECT name, url, etag, entries, skipped, last_ok, last_checked, last_status, last_error,"
    " bytes_fetched FROM hash_subscriptions"
)


async def _in_transaction(
    db: aiosqlite.Connection, statement: str, rows: Sequence[Sequence[object]]
) -> None:
    await db.execute("BEGIN IMMEDIATE")
    try:
        await db.executemany(statement, rows)
        await db.execute("COMMIT")
    except BaseException:
        await db.execute("ROLLBACK")
        raise


def _confirmed(signal: str, row: Sequence[Any], source: str) -> HashEntry:
    value, first_seen, by, at = row
    return HashEntry(
        signal, str(value), "csam", source, first_seen, confirmed_by=str(by or ""), confirmed_at=at
    )


def _sourced(row: Sequence[object]) -> SourcedEntry:
    origin, signal, value, label, source, first_seen, note = row
    entry = HashEntry(
        str(signal),
        str(value),
        str(label),
        str(source or ""),
        float(first_seen) if isinstance(first_seen, int | float) else None,
        str(note or ""),
    )
    return SourcedEntry(str(origin), entry)
