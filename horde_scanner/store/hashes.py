"""Perceptual hashes of judged images and the shared hash lists: entries by origin (our own
confirmed verdicts, imports, subscriptions), subscription state, and near-match flags.

    verdict_pdq        PDQ of every judged image (by sha256 and frame), kept with its verdict
    hash_entries       deny entries by origin: `local` (imported by an admin) or a subscription
    hash_subscriptions what each subscribed source last gave (ETag, counts, errors)
    hash_flags         matches against `review` sources, for an admin to look at
    hash_generation    a counter bumped by every change to what the index must hold

Data lifecycle:

    decoded image ──save_pdq──────────────────► verdict_pdq (of a positive, only the frames
                                                 that carried it: keep_frames)
    hashes import ──add_hash_entries──────────► hash_entries, origin `local`
    subscription refresh ──replace_hash_origin► hash_entries, origin = its name
                        └──record_hash_fetch──► hash_subscriptions
    subscription gone from the config ──drop_hash_origins_except──► its entries and state go

    verdict_pdq, hash_entries, lists, verdicts ──hash_index_rows, allowed_pdq──► the index
        a hit ──describe_pdq, sha256_entries──► HashRow (signals/hash_matcher.py: a Match)
        ──own_hash_entries──► what this instance publishes (signals/hash_publish.py)
    a review source's hit ──flag_hash──► hash_flags ──hash_flags──► `hashes flagged`
    every write here, and triggers on lists and verdicts ──► hash_generation + 1

What the index holds is derived from these and the core tables: machine positives (`csam`
verdicts a backend gave, reviewed or not), the admin deny list (by sha256, with the PDQ of the
image when it was seen), and imported entries; an admin allow removes an image and every deny
entry within the match distance of its PDQ. What this instance publishes is what a person
confirmed: the deny list (an admin's confirm puts a positive there) and imported entries, each
with who added it and when; unreviewed machine positives only with hashes.publish_unreviewed
(signals/hash_publish.py leaves out what an allow overrides). A verdict given by a hash-list
match (route `match`) is never evidence on its own (a chain of near-copies would drift away
from the original): it is neither indexed nor published.

`hash_generation` is bumped by every change that can alter the set of hashes to match
against (triggers on lists and verdicts, and the writes here), so each process can tell
cheaply when to reload its in-memory index (signals/hash_index.py).
"""

from __future__ import annotations

import contextlib
import functools
import json
import time
from collections.abc import AsyncGenerator, AsyncIterator, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import sqlalchemy as sa

from horde_scanner.media.hashing import PdqHash
from horde_scanner.store.database import Database
from horde_scanner.store.metadata import Int, Real, Text, metadata
from horde_scanner.store.tables import Tables, refuse_nul, row_limit, upsert
from horde_scanner.store.verdicts import lists as _lists
from horde_scanner.store.verdicts import own_positives
from horde_scanner.store.verdicts import verdicts as _verdicts
from horde_scanner.verdict import VerdictRoute

LOCAL = "local"  # the origin of entries an admin imported
VERDICT = "verdict"  # this instance's own confirmed positives and deny list
_ROWS_PER_BATCH = 5000
_BULK_CACHE_KIB = 128 * 1024
_INDEX_ROWS_PER_FETCH = 50_000


# -- tables ----------------------------------------------------------------------------------

verdict_pdq = sa.Table(
    "verdict_pdq",
    metadata,
    sa.Column("sha256", Text, nullable=False),
    sa.Column("frame", Int, nullable=False, server_default=sa.text("0")),
    sa.Column("pdq", Text, nullable=False),
    sa.Column("quality", Int, nullable=False),
    sa.PrimaryKeyConstraint("sha256", "frame"),
    sa.Index("verdict_pdq_value", "pdq"),
)

hash_entries = sa.Table(
    "hash_entries",
    metadata,
    sa.Column("origin", Text, nullable=False),
    sa.Column("signal", Text, nullable=False),
    sa.Column("value", Text, nullable=False),
    sa.Column("label", Text, nullable=False),
    sa.Column("source", Text, nullable=False, server_default=""),
    sa.Column("first_seen", Real),
    sa.Column("note", Text, nullable=False, server_default=""),
    # Added by step 0710 (so they come last).
    sa.Column("added_by", Text, nullable=False, server_default=""),
    sa.Column("added_at", Real),
    # In (signal, value) order: loading the index and matching read along the key.
    sa.PrimaryKeyConstraint("signal", "value", "origin"),
    sa.CheckConstraint("signal IN ('sha256', 'pdq')", name="signal"),
    sa.Index("hash_entries_origin", "origin"),
    sqlite_with_rowid=False,
)

hash_subscriptions = sa.Table(
    "hash_subscriptions",
    metadata,
    sa.Column("name", Text, primary_key=True),
    sa.Column("url", Text, nullable=False),
    sa.Column("etag", Text),
    sa.Column("entries", Int, nullable=False, server_default=sa.text("0")),
    sa.Column("skipped", Int, nullable=False, server_default=sa.text("0")),
    sa.Column("last_ok", Real),
    sa.Column("last_checked", Real),
    sa.Column("last_status", Int),
    sa.Column("last_error", Text),
    sa.Column("bytes_fetched", Int, nullable=False, server_default=sa.text("0")),
)

hash_flags = sa.Table(
    "hash_flags",
    metadata,
    sa.Column("sha256", Text, nullable=False),
    sa.Column("origin", Text, nullable=False),
    sa.Column("signal", Text, nullable=False),
    sa.Column("value", Text, nullable=False),
    sa.Column("distance", Int, nullable=False),
    sa.Column("source", Text),
    sa.Column("flagged_at", Real, nullable=False),
    sa.PrimaryKeyConstraint("sha256", "origin", "signal", "value"),
)

# Bumped by every change that can alter the set of hashes to match against, so that each
# process can tell cheaply when to reload its in-memory index. One row, id 1; the triggers on
# lists and verdicts that bump it (and, on PostgreSQL, notify the other replicas) are made by
# the migrations (store/migrations/versions/0001_baseline.py), as is the row.
hash_generation = sa.Table(
    "hash_generation",
    metadata,
    sa.Column("id", Int, primary_key=True, autoincrement=False),
    sa.Column("n", Int, nullable=False),
    sa.CheckConstraint("id = 1", name="id"),
)


@dataclass(frozen=True, slots=True)
class HashRow:
    """One deny entry as stored: on an origin's list (`local`, a subscription's name) or, for
    the origin `verdict`, one of this instance's own images (`sha256`)."""

    origin: str
    signal: str  # sha256 | pdq
    value: str
    label: str = "csam"
    source: str = ""
    first_seen: float | None = None
    note: str = ""
    # Who put it on the list and when (published as who confirmed it).
    added_by: str = ""
    added_at: float | None = None
    sha256: str | None = None


class NewEntry(Protocol):
    """What the store reads of any list entry it is given, whatever its signal."""

    @property
    def label(self) -> str: ...
    @property
    def source(self) -> str: ...
    @property
    def first_seen(self) -> float | None: ...
    @property
    def note(self) -> str: ...


class NewHash(NewEntry, Protocol):
    """A hash entry (signals.hash_list.HashEntry is one)."""

    @property
    def signal(self) -> str: ...
    @property
    def value(self) -> str: ...


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
class HashFlag:
    sha256: str
    origin: str
    signal: str
    value: str
    distance: int
    source: str | None
    flagged_at: float


class HashTables(Tables):
    # -- generation ------------------------------------------------------------------------

    async def hash_generation(self) -> int:
        stmt = sa.select(hash_generation.c.n).where(hash_generation.c.id == 1)
        row = (await self._db.execute(stmt)).first()
        return int(row[0]) if row else 0

    async def bump_hash_generation(self) -> None:
        await self._db.execute(BUMP)

    # -- PDQ of judged images ----------------------------------------------------------------

    async def save_pdq(self, sha256: str, hashes: Sequence[PdqHash]) -> None:
        if not hashes:
            return
        stmt = upsert(self._db.dialect, verdict_pdq)[0].values(
            [
                {"sha256": sha256, "frame": h.frame, "pdq": h.hex, "quality": h.quality}
                for h in hashes
            ]
        )
        stmt = stmt.on_conflict_do_update(
            index_elements=[verdict_pdq.c.sha256, verdict_pdq.c.frame],
            set_={"pdq": stmt.excluded.pdq, "quality": stmt.excluded.quality},
        )
        await self._db.execute(stmt)

    async def pdq_of(self, sha256: str) -> list[PdqHash]:
        p = verdict_pdq
        stmt = sa.select(p.c.pdq, p.c.quality, p.c.frame).where(p.c.sha256 == sha256)
        rows = (await self._db.execute(stmt.order_by(p.c.frame))).all()
        return [PdqHash(r[0], int(r[1]), int(r[2])) for r in rows]

    async def keep_frames(self, sha256: str, frames: Sequence[int]) -> None:
        """Drop the PDQ of an animation's other frames: a positive's harmless frames must not
        become deny entries (in the index, or in what this instance publishes)."""
        await self._db.execute(
            sa.delete(verdict_pdq).where(
                verdict_pdq.c.sha256 == sha256, verdict_pdq.c.frame.not_in(list(frames))
            ),
        )

    # -- what the index holds ----------------------------------------------------------------

    async def hash_index_rows(self, min_quality: int) -> AsyncIterator[tuple[list[str], list[str]]]:
        """(PDQ values, origin of each) of every deny entry, allowed images left out, in
        chunks: a million Python strings at once would double the memory a load needs."""
        # Read on a connection (and so a thread) of our own: a million rows take seconds, and
        # the shared connection must keep answering uploads meanwhile.
        async with self.aside() as db:
            async with contextlib.aclosing(_listed_pdq(db)) as listed:
                async for values, origins in listed:
                    yield values, origins
            own = db.stream(_own_pdq(min_quality), _INDEX_ROWS_PER_FETCH)
            async with contextlib.aclosing(own) as batches:
                async for rows in batches:
                    values = [r[0] for r in rows]
                    yield values, [VERDICT] * len(values)

    async def allowed_pdq(self, min_quality: int) -> list[str]:
        """PDQ of the images an admin allowed: deny entries near them are overridden."""
        p, lists = verdict_pdq, _lists
        stmt = (
            sa.select(p.c.pdq)
            .select_from(p.join(lists, lists.c.sha256 == p.c.sha256))
            .where(lists.c.kind == "allow", p.c.quality >= min_quality)
        )
        return [r[0] for r in (await self._db.execute(stmt)).all()]

    async def sha256_entries(self, sha256: str) -> list[HashRow]:
        stmt = sa.select(*_ENTRY_COLUMNS).where(
            hash_entries.c.signal == "sha256", hash_entries.c.value == sha256
        )
        return [_entry(r) for r in (await self._db.execute(stmt)).all()]

    async def describe_pdq(self, value: str) -> list[HashRow]:
        """Every entry with this exact PDQ value: imported or subscribed, or our own images."""
        stmt = sa.select(*_ENTRY_COLUMNS).where(
            hash_entries.c.signal == "pdq", hash_entries.c.value == value
        )
        found = [_entry(r) for r in (await self._db.execute(stmt)).all()]
        mine = own_positives(verdict_pdq)
        own = (
            sa.select(verdict_pdq.c.sha256, mine.first_seen, mine.note)
            .select_from(mine.source)
            .where(verdict_pdq.c.pdq == value, mine.counts)
        )
        for r in (await self._db.execute(own)).all():
            found.append(HashRow(VERDICT, "pdq", value, first_seen=r[1], note=r[2], sha256=r[0]))
        return found

    async def hash_entries(self) -> list[HashRow]:
        """Every listed entry (imported and subscribed), by origin, signal and value."""
        e = hash_entries
        stmt = sa.select(*_ENTRY_COLUMNS).order_by(e.c.origin, e.c.signal, e.c.value)
        return [_entry(r) for r in (await self._db.execute(stmt)).all()]

    # -- what this instance publishes ----------------------------------------------------------

    async def own_hash_entries(
        self, source: str, min_quality: int, *, unreviewed: bool = False
    ) -> list[HashRow]:
        """What a person confirmed: the admin's deny list (sha256 and PDQ; an admin's confirm
        puts a hash there; origin `verdict`) and imported entries (origin `local`), each with
        who added it and when. With `unreviewed`, machine positives no admin has decided on
        too (added_by empty). Rows may repeat a value; `source` names this instance."""
        v, lists, e = _verdicts, _lists, hash_entries
        denied = (
            sa.select(
                lists.c.sha256,
                sa.func.coalesce(v.c.first_seen, lists.c.added_at),
                lists.c.added_by,
                lists.c.added_at,
            )
            .select_from(lists.outerjoin(v, v.c.sha256 == lists.c.sha256))
            .where(lists.c.kind == "deny")
        )
        entries = [_confirmed("sha256", r, source) for r in (await self._db.execute(denied)).all()]
        rows = (await self._db.execute(_denied_pdq(min_quality))).all()
        entries += [_confirmed("pdq", r, source) for r in rows]
        allowed = sa.select(lists.c.sha256).where(lists.c.kind == "allow")
        local = sa.select(*_ENTRY_COLUMNS, e.c.added_by, e.c.added_at).where(
            e.c.origin == LOCAL, ~((e.c.signal == "sha256") & e.c.value.in_(allowed))
        )
        entries += [_entry(r) for r in (await self._db.execute(local)).all()]
        if not unreviewed:
            return entries
        note = "unreviewed machine verdict"
        machine = sa.select(v.c.sha256, v.c.first_seen, v.c.backend, v.c.signals).where(
            v.c.label == "csam",
            v.c.route != VerdictRoute.MATCH.value,
            v.c.sha256.not_in(sa.select(lists.c.sha256)),
        )
        for r in (await self._db.execute(machine)).all():
            if _is_evidence(r[3]):
                entries.append(
                    HashRow(VERDICT, "sha256", r[0], "csam", source, r[1], f"{note} ({r[2]})")
                )
        first_seen: dict[str, float] = {}
        for pdq, seen, signals in (await self._db.execute(_unreviewed_pdq(min_quality))).all():
            if _is_evidence(signals):
                first_seen[pdq] = min(seen, first_seen.get(pdq, seen))
        entries.extend(
            HashRow(VERDICT, "pdq", v, "csam", source, t, note) for v, t in first_seen.items()
        )
        return entries

    # -- changing entries ----------------------------------------------------------------------

    async def add_hash_entries(
        self, origin: str, entries: Iterable[NewHash], *, by: str = ""
    ) -> int:
        """Upsert entries under `origin` (the earliest first-seen is kept), noting who added
        them and when. Returns rows written."""
        return await self._bulk(origin, entries, replace=False, by=by)

    async def replace_hash_origin(self, origin: str, entries: Iterable[NewHash]) -> int:
        """Make `origin`'s entries exactly these (a subscription refresh). Returns the number
        of rows added, changed or removed."""
        return await self._bulk(origin, entries, replace=True)

    async def remove_hash_entry(self, origin: str, signal: str, value: str) -> bool:
        e = hash_entries
        cur = await self._db.execute(
            sa.delete(e).where(e.c.origin == origin, e.c.signal == signal, e.c.value == value),
        )
        if cur.rowcount:
            await self.bump_hash_generation()
        return cur.rowcount > 0

    async def drop_hash_origins_except(self, keep: Iterable[str]) -> list[str]:
        """Forget entries of subscriptions no longer configured (`local` is always kept)."""
        keep = {LOCAL, *keep}
        stmt = sa.select(hash_entries.c.origin).distinct()
        stale = [r[0] for r in (await self._db.execute(stmt)).all() if r[0] not in keep]
        for origin in stale:
            await self._db.execute(sa.delete(hash_entries).where(hash_entries.c.origin == origin))
            await self._db.execute(
                sa.delete(hash_subscriptions).where(hash_subscriptions.c.name == origin)
            )
        if stale:
            await self.bump_hash_generation()
        return stale

    async def _bulk(
        self, origin: str, entries: Iterable[NewHash], *, replace: bool, by: str = ""
    ) -> int:
        """Write entries in short transactions on a connection of our own.

        A list can hold a million rows, and one transaction over all of them would hold the
        write lock for tens of seconds while uploads wait to record their verdicts. So a
        replacement writes only the difference to what the origin holds (usually small), in
        batches; readers see each entry either as it was or as it is now."""
        # By signal, then value, each the row as it is read back: a row held is looked up by
        # its value and compared whole, with no tuple made for it (a million in a refresh;
        # keyed by (signal, value) pairs this loop took twice as long).
        new: dict[str, dict[str, tuple[Any, ...]]] = {}
        for entry in entries:
            by_value = new.get(entry.signal)
            if by_value is None:
                by_value = new[entry.signal] = {}
            by_value[entry.value] = (
                entry.signal, entry.value, entry.label, entry.source, entry.first_seen, entry.note
            )  # fmt: skip
        refuse_nul(by)
        for by_value in new.values():
            for signal, value, label, source, _, note in by_value.values():
                refuse_nul(signal, value, label, source, note)
        async with self.aside() as db, _bulk_cache(db):
            stale: list[tuple[str, str, str]] = []
            if replace:
                e = hash_entries
                held = sa.select(
                    e.c.signal, e.c.value, e.c.label, e.c.source, e.c.first_seen, e.c.note
                ).where(e.c.origin == origin)
                none: dict[str, tuple[Any, ...]] = {}
                held_rows = db.stream(held, _INDEX_ROWS_PER_FETCH)
                async with contextlib.aclosing(held_rows) as batches:
                    async for part in batches:
                        for r in part:
                            wanted = new.get(r[0], none).get(r[1])
                            if wanted is None:
                                stale.append((origin, r[0], r[1]))
                            elif wanted == r:
                                del new[r[0]][r[1]]  # unchanged: nothing to write
            # In key order (signal, value), the B-tree grows at its end instead of splitting
            # pages all over. Sorted as strings, not as rows: tuples compare element by element
            # (a million of them took seconds).
            added = time.time()
            rows = [
                (origin, *by_value[value], by, added)
                for signal in sorted(new)
                for by_value in (new[signal],)
                for value in sorted(by_value)
            ]
            await db.write_many(_DELETE_ENTRY, stale, _DELETE_KEYS, _ROWS_PER_BATCH)
            await db.write_many(_upsert_entries(db.dialect), rows, _ENTRY_KEYS, _ROWS_PER_BATCH)
            if stale or rows:
                await db.execute(BUMP)
        return len(rows) + len(stale)

    # -- subscriptions -------------------------------------------------------------------------

    async def hash_subscription(self, name: str) -> SubscriptionState | None:
        stmt = sa.select(*_SUBSCRIPTION_COLUMNS).where(hash_subscriptions.c.name == name)
        row = (await self._db.execute(stmt)).first()
        return SubscriptionState(*row) if row else None

    async def hash_subscriptions(self) -> list[SubscriptionState]:
        stmt = sa.select(*_SUBSCRIPTION_COLUMNS).order_by(hash_subscriptions.c.name)
        return [SubscriptionState(*r) for r in (await self._db.execute(stmt)).all()]

    async def record_hash_fetch(
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
        s = hash_subscriptions
        stmt = upsert(self._db.dialect, s)[0].values(
            name=name, url=url, etag=etag, entries=entries or 0, skipped=skipped or 0,
            last_ok=now if error is None else None, last_checked=now, last_status=status,
            last_error=error, bytes_fetched=nbytes,
        )  # fmt: skip
        new = stmt.excluded
        # On a failed refresh, the last good copy's ETag and counts stay.
        kept = {} if good else {"etag": s.c.etag, "entries": s.c.entries, "skipped": s.c.skipped}
        stmt = stmt.on_conflict_do_update(
            index_elements=[s.c.name],
            set_={
                "url": new.url, "etag": new.etag, "entries": new.entries,
                "skipped": new.skipped, **kept,
                "last_ok": sa.func.coalesce(new.last_ok, s.c.last_ok),
                "last_checked": new.last_checked, "last_status": new.last_status,
                "last_error": new.last_error,
                "bytes_fetched": s.c.bytes_fetched + new.bytes_fetched,
            },
        )  # fmt: skip
        await self._db.execute(stmt)

    # -- review flags --------------------------------------------------------------------------

    async def flag_hash(
        self, sha256: str, origin: str, signal: str, value: str, distance: int, source: str | None
    ) -> bool:
        """Note that an image matched a `review` source's entry; False when it was noted."""
        stmt = (
            upsert(self._db.dialect, hash_flags)[0]
            .values(
                sha256=sha256, origin=origin, signal=signal, value=value, distance=distance,
                source=source, flagged_at=time.time(),
            )
            .on_conflict_do_nothing()
        )  # fmt: skip
        return (await self._db.execute(stmt)).rowcount > 0

    async def hash_flags(self, limit: int | None = None) -> list[HashFlag]:
        """Flagged matches, newest first."""
        f = hash_flags
        stmt = sa.select(
            f.c.sha256, f.c.origin, f.c.signal, f.c.value, f.c.distance, f.c.source, f.c.flagged_at
        ).order_by(f.c.flagged_at.desc())
        if limit is not None:
            stmt = stmt.limit(row_limit(limit))
        return [HashFlag(*r) for r in (await self._db.execute(stmt)).all()]


BUMP = sa.update(hash_generation).where(hash_generation.c.id == 1).values(n=hash_generation.c.n + 1)
# An entry's columns, in _entry's order (added_by, added_at may follow).
_ENTRY_COLUMNS = tuple(
    hash_entries.c[name]
    for name in ("origin", "signal", "value", "label", "source", "first_seen", "note")
)
_ENTRY_KEYS = (
    "origin", "signal", "value", "label", "source", "first_seen", "note", "added_by", "added_at",
)  # fmt: skip
_DELETE_KEYS = ("o", "s", "v")
_DELETE_ENTRY = sa.delete(hash_entries).where(
    hash_entries.c.origin == sa.bindparam("o"),
    hash_entries.c.signal == sa.bindparam("s"),
    hash_entries.c.value == sa.bindparam("v"),
)
_SUBSCRIPTION_COLUMNS = tuple(
    hash_subscriptions.c[name]
    for name in (
        "name", "url", "etag", "entries", "skipped", "last_ok", "last_checked", "last_status",
        "last_error", "bytes_fetched",
    )
)  # fmt: skip


@functools.cache
def _upsert_entries(dialect: str) -> Any:
    """An entry written over the one of the same origin, signal and value; the earliest
    first-seen of the two is kept."""
    stmt = upsert(dialect, hash_entries)[0]
    new, old = stmt.excluded, hash_entries.c
    return stmt.on_conflict_do_update(
        index_elements=[old.signal, old.value, old.origin],
        set_={
            "label": new.label,
            "source": new.source,
            "note": new.note,
            "first_seen": sa.case(
                (new.first_seen < old.first_seen, new.first_seen),
                else_=sa.func.coalesce(old.first_seen, new.first_seen),
            ),
        },
    )


@contextlib.asynccontextmanager
async def _bulk_cache(db: Database) -> AsyncIterator[None]:
    """A large SQLite page cache while a list is written (the B-tree of a million entries
    stays in memory), given back afterwards: aside() connections are pooled now, and a cache
    left at 128 MiB would keep that memory for the life of the process."""
    if db.dialect != "sqlite":
        yield
        return
    before = (await db.execute("PRAGMA cache_size")).scalar()
    await db.execute(f"PRAGMA cache_size=-{_BULK_CACHE_KIB}")
    try:
        yield
    finally:
        with contextlib.suppress(Exception):  # a store gone away: the connection goes too
            await db.execute(f"PRAGMA cache_size={int(before)}")


async def _listed_pdq(db: Database) -> AsyncGenerator[tuple[list[str], list[str]], None]:
    """(PDQ values, origin of each) of every listed entry, in chunks, on `db` (aside()).

    SQLite reads each origin's values from the index on origin, which holds them (it is
    (origin, signal, value), the key appended): no table row is touched and no origin
    string is made per row, a third of one scan's time on a million entries (bench.
    hashlist_import). PostgreSQL reads the table once: a read per origin would scan it once
    per origin."""
    e = hash_entries
    if db.dialect != "sqlite":
        listed = sa.select(e.c.value, e.c.origin).where(e.c.signal == "pdq")
        async with contextlib.aclosing(db.stream(listed, _INDEX_ROWS_PER_FETCH)) as batches:
            async for rows in batches:
                yield [r[0] for r in rows], [r[1] for r in rows]
        return
    origins = (await db.execute(sa.select(e.c.origin).distinct())).scalars()
    for origin in origins:
        listed = sa.select(e.c.value).where(e.c.origin == origin, e.c.signal == "pdq")
        async with contextlib.aclosing(db.stream(listed, _INDEX_ROWS_PER_FETCH)) as batches:
            async for rows in batches:
                yield [r[0] for r in rows], [origin] * len(rows)


def _own_pdq(min_quality: int) -> sa.Select[Any]:
    """PDQ of this instance's machine positives and deny-listed images, allowed images
    excluded: what the local index holds (an unreviewed positive blocks its near copies)."""
    p, v, lists = verdict_pdq, _verdicts, _lists
    return sa.select(p.c.pdq).where(
        p.c.quality >= min_quality,
        p.c.sha256.not_in(sa.select(lists.c.sha256).where(lists.c.kind == "allow")),
        p.c.sha256.in_(
            sa.select(v.c.sha256).where(v.c.label == "csam", v.c.route != VerdictRoute.MATCH.value)
        )
        | p.c.sha256.in_(sa.select(lists.c.sha256).where(lists.c.kind == "deny")),
    )


def _denied_pdq(min_quality: int) -> sa.Select[Any]:
    """PDQ of deny-listed (admin-confirmed) images, with who confirmed and when (the first
    to): window functions, where SQLite would allow bare columns beside MIN."""
    p, v, lists = verdict_pdq, _verdicts, _lists
    firsts = (
        sa.select(
            p.c.pdq.label("pdq"),
            sa.func.min(sa.func.coalesce(v.c.first_seen, lists.c.added_at))
            .over(partition_by=p.c.pdq)
            .label("first_seen"),
            lists.c.added_by.label("added_by"),
            lists.c.added_at.label("added_at"),
            sa.func.row_number()
            .over(partition_by=p.c.pdq, order_by=(lists.c.added_at, lists.c.sha256))
            .label("n"),
        )
        .select_from(
            p.join(lists, (lists.c.sha256 == p.c.sha256) & (lists.c.kind == "deny")).outerjoin(
                v, v.c.sha256 == p.c.sha256
            )
        )
        .where(p.c.quality >= min_quality)
        .subquery("firsts")
    )
    return sa.select(firsts.c.pdq, firsts.c.first_seen, firsts.c.added_by, firsts.c.added_at).where(
        firsts.c.n == 1
    )


def _unreviewed_pdq(min_quality: int) -> sa.Select[Any]:
    """PDQ of machine positives on neither list (published only with
    hashes.publish_unreviewed), one row per image: whether its signals are evidence is
    decided in Python (_is_evidence)."""
    p, v, lists = verdict_pdq, _verdicts, _lists
    return (
        sa.select(p.c.pdq, v.c.first_seen, v.c.signals)
        .select_from(p.join(v, v.c.sha256 == p.c.sha256))
        .where(
            p.c.quality >= min_quality,
            v.c.label == "csam",
            v.c.route != VerdictRoute.MATCH.value,
            p.c.sha256.not_in(sa.select(lists.c.sha256)),
        )
    )


def _is_evidence(signals: str | None) -> bool:
    """False for a verdict whose signals say they are no evidence for others (a remote
    worker's bare yes/no answer: `extra.evidence = false`)."""
    try:
        extra = json.loads(signals or "{}").get("extra") or {}
    except (ValueError, AttributeError):
        return True
    return extra.get("evidence", True) is not False


def _confirmed(signal: str, row: Sequence[Any], source: str) -> HashRow:
    """A deny-list row (value, first seen, added_by, added_at) as this instance's entry."""
    value, first_seen, by, at = row
    return HashRow(VERDICT, signal, str(value), "csam", source, first_seen, "", str(by or ""), at)


def _entry(row: Sequence[Any]) -> HashRow:
    """A row of _ENTRY_SELECT, with or without added_by and added_at."""
    origin, signal, value, label, source, first_seen, note, *added = row
    by, at = added or ("", None)
    return HashRow(
        str(origin),
        str(signal),
        str(value),
        str(label),
        str(source or ""),
        float(first_seen) if isinstance(first_seen, int | float) else None,
        str(note or ""),
        str(by or ""),
        at,
    )
