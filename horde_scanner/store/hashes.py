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
        a hit ──describe_pdq, sha256_entries──► HashRow (hashlists/matcher.py: a Match)
        ──own_hash_entries──► what this instance publishes (hashlists/publish.py)
    a review source's hit ──flag_hash──► hash_flags ──hash_flags──► `hashes flagged`
    every write here, and triggers on lists and verdicts ──► hash_generation + 1

What the index holds is derived from these and the core tables: machine positives (`csam`
verdicts a backend gave, reviewed or not), the admin deny list (by sha256, with the PDQ of the
image when it was seen), and imported entries; an admin allow removes an image and every deny
entry within the match distance of its PDQ. What this instance publishes is what a person
confirmed: the deny list (an admin's confirm puts a positive there) and imported entries, each
with who added it and when; unreviewed machine positives only with hashes.publish_unreviewed
(hashlists/publish.py leaves out what an allow overrides). A verdict given by a hash-list
match (route `match`) is never evidence on its own (a chain of near-copies would drift away
from the original): it is neither indexed nor published.

`hash_generation` is bumped by every change that can alter the set of hashes to match
against (triggers on lists and verdicts, and the writes here), so each process can tell
cheaply when to reload its in-memory index (hashlists/index.py).
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import sqlalchemy as sa

from horde_scanner.media.hashing import PdqHash
from horde_scanner.store.metadata import Int, Real, Text, metadata
from horde_scanner.store.tables import SchemaStep, Tables, write_in_batches
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
# process can tell cheaply when to reload its in-memory index. One row, id 1 (GENERATION_SEED).
hash_generation = sa.Table(
    "hash_generation",
    metadata,
    sa.Column("id", Int, primary_key=True, autoincrement=False),
    sa.Column("n", Int, nullable=False),
    sa.CheckConstraint("id = 1", name="id"),
)

# STORE-A's tables, as far as the queries of STORE-B's parts read them (until the seam's
# sa.Tables replace these).
_lists = sa.table("lists", *(sa.column(n) for n in ("sha256", "kind", "added_at", "added_by")))
_verdicts = sa.table(
    "verdicts",
    *(
        sa.column(n)
        for n in (
            "sha256",
            "label",
            "route",
            "first_seen",
            "judged_at",
            "backend",
            "signals",
            "size",
            "media_type",
        )
    ),
)

# The row hash_generation is created with.
GENERATION_SEED = "INSERT INTO hash_generation (id, n) VALUES (1, 0)"


def generation_triggers(dialect: str) -> list[str]:
    """The triggers (and, on PostgreSQL, their functions) that keep hash_generation in step
    with `lists` and the `verdicts` that feed the index, as the schema steps left them (step
    1300: a verdict from a match is told by its `route`). On PostgreSQL every bump also
    notifies the other replicas (`hashes:`). Statements one by one, for a migration."""
    postgres = dialect == "postgresql"
    if postgres:
        head = [
            "CREATE FUNCTION hs_hashgen_bump() RETURNS trigger LANGUAGE plpgsql AS $$"
            " BEGIN UPDATE hash_generation SET n = n + 1; RETURN NULL; END $$",
            "CREATE FUNCTION hs_hashgen_notify() RETURNS trigger LANGUAGE plpgsql AS $$"
            " BEGIN PERFORM pg_notify('horde_scanner', 'hashes:'); RETURN NULL; END $$",
            "CREATE TRIGGER hashgen_notify AFTER UPDATE ON hash_generation"
            " FOR EACH STATEMENT EXECUTE FUNCTION hs_hashgen_notify()",
            "CREATE TRIGGER hashgen_lists AFTER INSERT OR UPDATE OR DELETE ON lists"
            " FOR EACH ROW EXECUTE FUNCTION hs_hashgen_bump()",
        ]
    else:
        head = [
            f"CREATE TRIGGER hashgen_lists_{event.lower()} AFTER {event} ON lists"
            " BEGIN UPDATE hash_generation SET n = n + 1; END"
            for event in ("INSERT", "UPDATE", "DELETE")
        ]
    return head + _index_trigger_list("route", "match", postgres=postgres)


# Every trigger generation_triggers makes, by name (with its table: PostgreSQL's DROP TRIGGER
# needs it), and PostgreSQL's functions: what a downgrade drops.
GENERATION_TRIGGER_NAMES = {
    "sqlite": [(f"hashgen_lists_{e}", "lists") for e in ("insert", "update", "delete")]
    + [(f"hashgen_verdicts_{e}", "verdicts") for e in ("insert", "update", "delete")],
    "postgresql": [("hashgen_notify", "hash_generation"), ("hashgen_lists", "lists")]
    + [(f"hashgen_verdicts_{e}", "verdicts") for e in ("insert", "update", "delete")],
}
GENERATION_FUNCTIONS = ["hs_hashgen_bump", "hs_hashgen_notify"]


def _index_triggers(column: str, match: str, *, postgres: bool) -> str:
    """Triggers that bump hash_generation when a verdict that feeds the index (csam, and not
    itself from a hash-list match) comes, changes or goes. `column` = `match` marks a verdict
    from a match (step 0500 read the backend's name; 1300 gave it a column of its own)."""
    return "\n".join(s + ";" for s in _index_trigger_list(column, match, postgres=postgres))


def _index_trigger_list(column: str, match: str, *, postgres: bool) -> list[str]:
    def feeds(row: str) -> str:
        return f"{row}.label = 'csam' AND {row}.{column} != '{match}'"

    events = {
        "insert": ("INSERT", feeds("NEW")),
        "update": (f"UPDATE OF label, {column}", f"({feeds('OLD')}) OR ({feeds('NEW')})"),
        "delete": ("DELETE", feeds("OLD")),
    }
    out = []
    for name, (event, when) in events.items():
        if postgres:
            out.append(
                f"CREATE TRIGGER hashgen_verdicts_{name} AFTER {event} ON verdicts FOR EACH ROW"
                f" WHEN ({when}) EXECUTE FUNCTION hs_hashgen_bump()"
            )
        else:
            out.append(
                f"CREATE TRIGGER hashgen_verdicts_{name} AFTER {event} ON verdicts WHEN {when}"
                " BEGIN UPDATE hash_generation SET n = n + 1; END"
            )
    return out


def _drop_index_triggers(*, postgres: bool) -> str:
    on = " ON verdicts" if postgres else ""
    return "".join(
        f"DROP TRIGGER hashgen_verdicts_{name}{on};" for name in ("insert", "update", "delete")
    )


STEPS = [
    SchemaStep(
        "0500-hashes",
        """
    CREATE TABLE verdict_pdq (
        sha256 TEXT NOT NULL,
        frame INTEGER NOT NULL DEFAULT 0,
        pdq TEXT NOT NULL,
        quality INTEGER NOT NULL,
        PRIMARY KEY (sha256, frame)
    );
    CREATE INDEX verdict_pdq_value ON verdict_pdq(pdq);
    CREATE TABLE hash_entries (
        origin TEXT NOT NULL,
        signal TEXT NOT NULL CHECK (signal IN ('sha256', 'pdq')),
        value TEXT NOT NULL,
        label TEXT NOT NULL,
        source TEXT NOT NULL DEFAULT '',
        first_seen REAL,
        note TEXT NOT NULL DEFAULT '',
        -- In (signal, value) order: loading the index and matching read along the key.
        PRIMARY KEY (signal, value, origin)
    ) WITHOUT ROWID;
    CREATE INDEX hash_entries_origin ON hash_entries(origin);
    CREATE TABLE hash_subscriptions (
        name TEXT PRIMARY KEY,
        url TEXT NOT NULL,
        etag TEXT,
        entries INTEGER NOT NULL DEFAULT 0,
        skipped INTEGER NOT NULL DEFAULT 0,
        last_ok REAL,
        last_checked REAL,
        last_status INTEGER,
        last_error TEXT,
        bytes_fetched INTEGER NOT NULL DEFAULT 0
    );
    CREATE TABLE hash_flags (
        sha256 TEXT NOT NULL,
        origin TEXT NOT NULL,
        signal TEXT NOT NULL,
        value TEXT NOT NULL,
        distance INTEGER NOT NULL,
        source TEXT,
        flagged_at REAL NOT NULL,
        PRIMARY KEY (sha256, origin, signal, value)
    );
    -- Bumped by every change that can alter the set of hashes to match against, so that
    -- each process can tell cheaply when to reload its in-memory index.
    CREATE TABLE hash_generation (id INTEGER PRIMARY KEY CHECK (id = 1), n INTEGER NOT NULL);
    INSERT INTO hash_generation VALUES (1, 0);
    CREATE TRIGGER hashgen_lists_insert AFTER INSERT ON lists
        BEGIN UPDATE hash_generation SET n = n + 1; END;
    CREATE TRIGGER hashgen_lists_update AFTER UPDATE ON lists
        BEGIN UPDATE hash_generation SET n = n + 1; END;
    CREATE TRIGGER hashgen_lists_delete AFTER DELETE ON lists
        BEGIN UPDATE hash_generation SET n = n + 1; END;
"""
        + _index_triggers("backend", "hashlist", postgres=False),
        postgres="""
    CREATE FUNCTION hs_hashgen_bump() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN UPDATE hash_generation SET n = n + 1; RETURN NULL; END $$;
    CREATE FUNCTION hs_hashgen_notify() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN PERFORM pg_notify('horde_scanner', 'hashes:'); RETURN NULL; END $$;
    CREATE TRIGGER hashgen_notify AFTER UPDATE ON hash_generation
        FOR EACH STATEMENT EXECUTE FUNCTION hs_hashgen_notify();
    CREATE TRIGGER hashgen_lists AFTER INSERT OR UPDATE OR DELETE ON lists
        FOR EACH ROW EXECUTE FUNCTION hs_hashgen_bump();
"""
        + _index_triggers("backend", "hashlist", postgres=True),
    ),
    # Who put an entry on the list and when: an imported entry is published with them.
    SchemaStep(
        "0710-hash-entries-added",
        """
    ALTER TABLE hash_entries ADD COLUMN added_by TEXT NOT NULL DEFAULT '';
    ALTER TABLE hash_entries ADD COLUMN added_at REAL;
    """,
    ),
    # What a verdict rests on (verdict.VerdictRoute) gets a column of its own: hash-list
    # matches were told apart by their backend name. Rows from a match are marked, and the
    # index triggers read the column.
    SchemaStep(
        "1300-verdict-route",
        """
    ALTER TABLE verdicts ADD COLUMN route TEXT NOT NULL DEFAULT 'judged';
    UPDATE verdicts SET route = 'match' WHERE backend = 'hashlist';
    """
        + _drop_index_triggers(postgres=False)
        + _index_triggers("route", "match", postgres=False),
        postgres=_drop_index_triggers(postgres=True)
        + _index_triggers("route", "match", postgres=True),
    ),
]


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


class NewHash(Protocol):
    """What the store reads of an entry it is given (hashlists.format.HashEntry is one)."""

    @property
    def signal(self) -> str: ...
    @property
    def value(self) -> str: ...
    @property
    def label(self) -> str: ...
    @property
    def source(self) -> str: ...
    @property
    def first_seen(self) -> float | None: ...
    @property
    def note(self) -> str: ...


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
        async with self._db.execute("SELECT n FROM hash_generation WHERE id=1") as cur:
            row = await cur.fetchone()
        return int(row[0]) if row else 0

    async def bump_hash_generation(self) -> None:
        await self._db.execute(BUMP_HASH_GENERATION)

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

    async def keep_frames(self, sha256: str, frames: Sequence[int]) -> None:
        """Drop the PDQ of an animation's other frames: a positive's harmless frames must not
        become deny entries (in the index, or in what this instance publishes)."""
        marks = ",".join("?" * len(frames))
        await self._db.execute(
            f"DELETE FROM verdict_pdq WHERE sha256=? AND frame NOT IN ({marks})",
            (sha256, *frames),
        )

    # -- what the index holds ----------------------------------------------------------------

    async def hash_index_rows(self, min_quality: int) -> AsyncIterator[tuple[list[str], list[str]]]:
        """(PDQ values, origin of each) of every deny entry, allowed images left out, in
        chunks: a million Python strings at once would double the memory a load needs."""
        # Read on a connection (and so a thread) of our own: a million rows take seconds, and
        # the shared connection must keep answering uploads meanwhile.
        async with self.aside() as db:
            query = "SELECT value, origin FROM hash_entries WHERE signal='pdq'"
            async with db.execute(query) as cur:
                while rows := await cur.fetchmany(_INDEX_ROWS_PER_FETCH):
                    yield [r[0] for r in rows], [r[1] for r in rows]
            async with db.execute(_OWN_PDQ, (VerdictRoute.MATCH.value, min_quality)) as cur:
                while rows := await cur.fetchmany(_INDEX_ROWS_PER_FETCH):
                    values = [r[0] for r in rows]
                    yield values, [VERDICT] * len(values)

    async def allowed_pdq(self, min_quality: int) -> list[str]:
        """PDQ of the images an admin allowed: deny entries near them are overridden."""
        async with self._db.execute(
            "SELECT p.pdq FROM verdict_pdq p JOIN lists l ON l.sha256 = p.sha256"
            " WHERE l.kind='allow' AND p.quality >= ?",
            (min_quality,),
        ) as cur:
            return [r[0] async for r in cur]

    async def sha256_entries(self, sha256: str) -> list[HashRow]:
        async with self._db.execute(
            _ENTRY_SELECT + " WHERE signal='sha256' AND value=?", (sha256,)
        ) as cur:
            return [_entry(r) async for r in cur]

    async def describe_pdq(self, value: str) -> list[HashRow]:
        """Every entry with this exact PDQ value: imported or subscribed, or our own images."""
        async with self._db.execute(
            _ENTRY_SELECT + " WHERE signal='pdq' AND value=?", (value,)
        ) as cur:
            found = [_entry(r) async for r in cur]
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
                found.append(
                    HashRow(VERDICT, "pdq", value, first_seen=r[1], note=r[2], sha256=r[0])
                )
        return found

    async def hash_entries(self) -> list[HashRow]:
        """Every listed entry (imported and subscribed), by origin, signal and value."""
        async with self._db.execute(_ENTRY_SELECT + " ORDER BY origin, signal, value") as cur:
            return [_entry(r) async for r in cur]

    # -- what this instance publishes ----------------------------------------------------------

    async def own_hash_entries(
        self, source: str, min_quality: int, *, unreviewed: bool = False
    ) -> list[HashRow]:
        """What a person confirmed: the admin's deny list (sha256 and PDQ; an admin's confirm
        puts a hash there; origin `verdict`) and imported entries (origin `local`), each with
        who added it and when. With `unreviewed`, machine positives no admin has decided on
        too (added_by empty). Rows may repeat a value; `source` names this instance."""
        entries: list[HashRow] = []
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
            f"SELECT {_ENTRY_COLUMNS}, added_by, added_at FROM hash_entries WHERE origin=? AND"
            " NOT (signal='sha256' AND value IN (SELECT sha256 FROM lists WHERE kind='allow'))",
            (LOCAL,),
        ) as cur:
            entries += [_entry(r) async for r in cur]
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
                        HashRow(VERDICT, "sha256", r[0], "csam", source, r[1], f"{note} ({r[2]})")
                    )
        first_seen: dict[str, float] = {}
        params = (VerdictRoute.MATCH.value, min_quality)
        async with self._db.execute(_UNREVIEWED_PDQ, params) as cur:
            async for pdq, seen, signals in cur:
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
        cur = await self._db.execute(
            "DELETE FROM hash_entries WHERE origin=? AND signal=? AND value=?",
            (origin, signal, value),
        )
        if cur.rowcount:
            await self.bump_hash_generation()
        return cur.rowcount > 0

    async def drop_hash_origins_except(self, keep: Iterable[str]) -> list[str]:
        """Forget entries of subscriptions no longer configured (`local` is always kept)."""
        keep = {LOCAL, *keep}
        async with self._db.execute("SELECT DISTINCT origin FROM hash_entries") as cur:
            stale = [r[0] async for r in cur if r[0] not in keep]
        for origin in stale:
            await self._db.execute("DELETE FROM hash_entries WHERE origin=?", (origin,))
            await self._db.execute("DELETE FROM hash_subscriptions WHERE name=?", (origin,))
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
        new = {(e.signal, e.value): (e.label, e.source, e.first_seen, e.note) for e in entries}
        async with self.aside() as db:
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
            await write_in_batches(
                db,
                "DELETE FROM hash_entries WHERE origin=? AND signal=? AND value=?",
                [(origin, *key) for key in stale],
                _ROWS_PER_BATCH,
            )
            await write_in_batches(
                db,
                "INSERT INTO hash_entries (origin, signal, value, label, source,"
                " first_seen, note, added_by, added_at) VALUES (?,?,?,?,?,?,?,?,?)"
                " ON CONFLICT(signal, value, origin) DO UPDATE SET label=excluded.label,"
                " source=excluded.source, note=excluded.note,"
                " first_seen=CASE WHEN excluded.first_seen < hash_entries.first_seen"
                " THEN excluded.first_seen"
                " ELSE COALESCE(hash_entries.first_seen, excluded.first_seen) END",
                rows,
                _ROWS_PER_BATCH,
            )
            if stale or rows:
                await db.execute(BUMP_HASH_GENERATION)
        return len(rows) + len(stale)

    # -- subscriptions -------------------------------------------------------------------------

    async def hash_subscription(self, name: str) -> SubscriptionState | None:
        async with self._db.execute(_SUBSCRIPTION_SELECT + " WHERE name=?", (name,)) as cur:
            row = await cur.fetchone()
        return SubscriptionState(*row) if row else None

    async def hash_subscriptions(self) -> list[SubscriptionState]:
        async with self._db.execute(_SUBSCRIPTION_SELECT + " ORDER BY name") as cur:
            return [SubscriptionState(*r) async for r in cur]

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

    async def flag_hash(
        self, sha256: str, origin: str, signal: str, value: str, distance: int, source: str | None
    ) -> bool:
        """Note that an image matched a `review` source's entry; False when it was noted."""
        cur = await self._db.execute(
            "INSERT OR IGNORE INTO hash_flags (sha256, origin, signal, value, distance, source,"
            " flagged_at) VALUES (?,?,?,?,?,?,?)",
            (sha256, origin, signal, value, distance, source, time.time()),
        )
        return cur.rowcount > 0

    async def hash_flags(self, limit: int | None = None) -> list[HashFlag]:
        """Flagged matches, newest first."""
        query = (
            "SELECT sha256, origin, signal, value, distance, source, flagged_at FROM hash_flags"
            " ORDER BY flagged_at DESC"
        )
        params: tuple[int, ...] = ()
        if limit is not None:
            query += " LIMIT ?"
            params = (limit,)
        async with self._db.execute(query, params) as cur:
            return [HashFlag(*r) async for r in cur]


BUMP_HASH_GENERATION = "UPDATE hash_generation SET n = n + 1 WHERE id=1"
# An entry's columns, in _entry's order (added_by, added_at may follow).
_ENTRY_COLUMNS = "origin, signal, value, label, source, first_seen, note"
_ENTRY_SELECT = f"SELECT {_ENTRY_COLUMNS} FROM hash_entries"
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
_SUBSCRIPTION_SELECT = (
    "SELECT name, url, etag, entries, skipped, last_ok, last_checked, last_status, last_error,"
    " bytes_fetched FROM hash_subscriptions"
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
