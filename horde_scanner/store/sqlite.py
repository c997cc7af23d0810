"""The store that remembers everything: one SQLite file (aiosqlite, WAL) by default, or a
PostgreSQL database shared by replicas (store/postgres.py, same interface and schema steps).

Data lifecycle:

    upload / file ──sha256──► lists (allow | deny) ──hit──► answer, audit
                                   │ miss
                                   ▼
                               verdicts (by sha256, with raw signals and policy version)
                                   │ miss
                                   ▼
                    jobs (pending, with the backend-ready image) ──judged──► verdicts
                                   │                                     └─► late_positives
                                   ▼                                          (enforced or not)
                                 audit (every decision and action, append-only)

A job row holds everything needed to judge again, so a restart loses no work: rows left
`running` by a dead process are set back to `pending` when the store opens (SQLite), or are
claimed again once their lease lapses (PostgreSQL, where other replicas may be running them).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import sqlite3
import time
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiosqlite

from horde_scanner.config import StoreSettings
from horde_scanner.verdict import Label, Signals, Verdict, VerdictRoute

log = logging.getLogger(__name__)
# How long a SQLite statement waits for another process's lock: at start-up, and once open.
STARTUP_BUSY_S = 60.0
OPEN_BUSY_MS = 5000

# Named schema steps, applied once each in this order. A concern that needs tables of its own
# appends a step here with a new name and keeps the queries in its own module (see `db`).
_MIGRATIONS: list[tuple[str, str]] = [
    (
        "0001-core",
        """
    CREATE TABLE verdicts (
        sha256 TEXT PRIMARY KEY,
        label TEXT NOT NULL,
        reasons TEXT NOT NULL,
        signals TEXT,
        backend TEXT NOT NULL,
        policy_version TEXT NOT NULL,
        media_type TEXT,
        size INTEGER,
        source TEXT,
        first_seen REAL NOT NULL,
        judged_at REAL NOT NULL
    );
    CREATE INDEX verdicts_label ON verdicts(label, judged_at);
    CREATE TABLE lists (
        sha256 TEXT PRIMARY KEY,
        kind TEXT NOT NULL CHECK (kind IN ('allow', 'deny')),
        note TEXT,
        added_by TEXT,
        added_at REAL NOT NULL
    );
    CREATE TABLE audit (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        ts REAL NOT NULL,
        sha256 TEXT,
        event TEXT NOT NULL,
        label TEXT,
        action TEXT,
        source TEXT,
        detail TEXT
    );
    CREATE INDEX audit_sha ON audit(sha256);
    CREATE TABLE jobs (
        sha256 TEXT PRIMARY KEY,
        payload BLOB NOT NULL,
        media_type TEXT,
        size INTEGER,
        source TEXT,
        answered TEXT,
        state TEXT NOT NULL DEFAULT 'pending',
        attempts INTEGER NOT NULL DEFAULT 0,
        not_before REAL NOT NULL DEFAULT 0,
        last_error TEXT,
        created_at REAL NOT NULL
    );
    CREATE INDEX jobs_ready ON jobs(state, not_before, created_at);
    CREATE TABLE late_positives (
        sha256 TEXT PRIMARY KEY,
        label TEXT NOT NULL,
        found_at REAL NOT NULL,
        enforcement TEXT NOT NULL,
        detail TEXT,
        updated_at REAL NOT NULL
    );
    """,
    ),
    # Storage sweeps; the queries are in horde_scanner/sweep/records.py.
    (
        "0300-scan",
        """
    CREATE TABLE scan_files (
        source TEXT NOT NULL,
        identifier TEXT NOT NULL,
        size INTEGER NOT NULL,
        mtime REAL NOT NULL,
        sha256 TEXT,
        media_type TEXT,
        status TEXT NOT NULL,
        label TEXT,
        reasons TEXT,
        seen_at REAL NOT NULL,
        judged_at REAL,
        action TEXT,
        PRIMARY KEY (source, identifier)
    ) WITHOUT ROWID;
    CREATE INDEX scan_files_sha ON scan_files(sha256);
    CREATE INDEX scan_files_label ON scan_files(label, judged_at);
    CREATE TABLE scan_runs (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        source TEXT NOT NULL,
        action TEXT NOT NULL,
        follow INTEGER NOT NULL DEFAULT 0,
        state TEXT NOT NULL,
        phase TEXT NOT NULL DEFAULT 'sweep',
        cursor TEXT,
        watermark REAL,
        time_ordered INTEGER NOT NULL DEFAULT 0,
        started_at REAL NOT NULL,
        updated_at REAL NOT NULL,
        counts TEXT
    );
    CREATE INDEX scan_runs_source ON scan_runs(source, state);
    CREATE TABLE scan_actions (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        source TEXT NOT NULL,
        identifier TEXT NOT NULL,
        sha256 TEXT NOT NULL,
        size INTEGER,
        mtime REAL,
        action TEXT NOT NULL,
        state TEXT NOT NULL,
        label TEXT,
        reasons TEXT,
        location TEXT,
        detail TEXT,
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL,
        UNIQUE (source, identifier, sha256)
    );
    CREATE INDEX scan_actions_state ON scan_actions(source, state);
    """,
    ),
    (
        # Perceptual hashes and shared hash lists; queries in horde_scanner/hashlists/store.py.
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
    -- Verdicts given by a hash-list match (backend 'hashlist') never enter the index.
    CREATE TRIGGER hashgen_verdicts_insert AFTER INSERT ON verdicts
        WHEN NEW.label = 'csam' AND NEW.backend != 'hashlist'
        BEGIN UPDATE hash_generation SET n = n + 1; END;
    CREATE TRIGGER hashgen_verdicts_update AFTER UPDATE OF label, backend ON verdicts
        WHEN (OLD.label = 'csam' AND OLD.backend != 'hashlist')
          OR (NEW.label = 'csam' AND NEW.backend != 'hashlist')
        BEGIN UPDATE hash_generation SET n = n + 1; END;
    CREATE TRIGGER hashgen_verdicts_delete AFTER DELETE ON verdicts
        WHEN OLD.label = 'csam' AND OLD.backend != 'hashlist'
        BEGIN UPDATE hash_generation SET n = n + 1; END;
    """,
    ),
    (
        # Admin review (queries in quarantine.py and review.py).
        "0700-admin",
        """
    CREATE INDEX verdicts_judged ON verdicts(judged_at);
    CREATE TABLE quarantine (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        sha256 TEXT NOT NULL,
        origin TEXT NOT NULL,
        identifier TEXT NOT NULL,
        path TEXT NOT NULL,
        size INTEGER,
        state TEXT NOT NULL DEFAULT 'held' CHECK (state IN ('held', 'released', 'deleted')),
        quarantined_at REAL NOT NULL,
        updated_at REAL NOT NULL,
        updated_by TEXT,
        detail TEXT
    );
    CREATE INDEX quarantine_sha ON quarantine(sha256, state);
    """,
    ),
    (
        # Who put an entry on the list and when: an imported entry is published with them.
        "0710-hash-entries-added",
        """
    ALTER TABLE hash_entries ADD COLUMN added_by TEXT NOT NULL DEFAULT '';
    ALTER TABLE hash_entries ADD COLUMN added_at REAL;
    """,
    ),
    (
        # The AI Horde's daily kudos budget (queries in backends/kudos.py).
        "1100-horde-kudos",
        """
    CREATE TABLE horde_kudos (
        day TEXT PRIMARY KEY,
        spent REAL NOT NULL,
        updated_at REAL NOT NULL
    );
    """,
    ),
    (
        # What a verdict rests on (verdict.VerdictRoute) gets a column of its own: hash-list
        # matches were told apart by their backend name. Rows from a match are marked, and the
        # triggers of 0500-hashes read the column.
        "1300-verdict-route",
        """
    ALTER TABLE verdicts ADD COLUMN route TEXT NOT NULL DEFAULT 'judged';
    UPDATE verdicts SET route = 'match' WHERE backend = 'hashlist';
    DROP TRIGGER hashgen_verdicts_insert;
    DROP TRIGGER hashgen_verdicts_update;
    DROP TRIGGER hashgen_verdicts_delete;
    -- Verdicts given by a hash-list match never enter the index.
    CREATE TRIGGER hashgen_verdicts_insert AFTER INSERT ON verdicts
        WHEN NEW.label = 'csam' AND NEW.route != 'match'
        BEGIN UPDATE hash_generation SET n = n + 1; END;
    CREATE TRIGGER hashgen_verdicts_update AFTER UPDATE OF label, route ON verdicts
        WHEN (OLD.label = 'csam' AND OLD.route != 'match')
          OR (NEW.label = 'csam' AND NEW.route != 'match')
        BEGIN UPDATE hash_generation SET n = n + 1; END;
    CREATE TRIGGER hashgen_verdicts_delete AFTER DELETE ON verdicts
        WHEN OLD.label = 'csam' AND OLD.route != 'match'
        BEGIN UPDATE hash_generation SET n = n + 1; END;
    """,
    ),
    (
        # Replicas on one PostgreSQL database: a claimed job is held until `lease_until`
        # (renewed while judged); a dead replica's jobs are taken over when it lapses.
        # PostgreSQL also gets change notifications here (store/postgres.py PG_EXTRA).
        "1500-replicas",
        """
    ALTER TABLE jobs ADD COLUMN lease_until REAL NOT NULL DEFAULT 0;
    -- Periodic work done once per cluster, not once per process: whoever takes the turn.
    CREATE TABLE cluster_turns (
        name TEXT PRIMARY KEY,
        holder TEXT NOT NULL,
        taken_at REAL NOT NULL,
        until REAL NOT NULL
    );
    -- The AI Horde submit budget of all replicas behind one address (backends/shared_submits.py).
    CREATE TABLE horde_submits (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        holder TEXT NOT NULL,
        taken_at REAL NOT NULL,
        done_at REAL
    );
    """,
    ),
]


# 7 columns x 500 rows stays under SQLite's 32766 bound variables.
_AUDIT_ROWS_PER_INSERT = 500


@dataclass(frozen=True, slots=True)
class StoredVerdict:
    sha256: str
    verdict: Verdict
    media_type: str | None
    size: int | None
    source: str | None
    first_seen: float


@dataclass(frozen=True, slots=True)
class Job:
    sha256: str
    payload: bytes
    media_type: str | None
    size: int | None
    source: str | None
    answered: str | None
    attempts: int


@dataclass(frozen=True, slots=True)
class AuditRecord:
    id: int
    ts: float
    sha256: str | None
    event: str
    label: str | None
    action: str | None
    source: str | None
    detail: dict[str, Any]


class StoreError(Exception):
    """The database cannot be opened or is not ours."""


# What another process changed: ("verdict" | "list", sha256), ("hashes", ""), ("job", sha256),
# or ("reset", "") when changes may have been missed (a lost connection).
ChangeListener = Callable[[str, str], None]


def sqlite_path(url: str) -> Path:
    """`sqlite:///relative.db` or `sqlite:////absolute/path.db` (as SQLAlchemy writes them)."""
    if not url.startswith("sqlite:///"):
        raise StoreError(f"not a SQLite store URL (want sqlite:///path): {url}")
    rest = url[len("sqlite:///") :]
    if not rest:
        raise StoreError(f"SQLite store URL without a path: {url}")
    return Path(rest)


def _probe_open(path: Path) -> None:
    try:
        sqlite3.connect(str(path)).close()
    except (sqlite3.Error, OSError) as exc:
        raise StoreError(f"cannot open store {path}: {exc}") from None


class Store:
    """The SQLite store; `store.postgres.PgStore` is the PostgreSQL one (same interface)."""

    dialect = "sqlite"
    # Several replicas share this store's jobs and caches (PostgreSQL).
    shared = False
    # Claimed jobs are leased only where replicas share them (0: no lease to renew).
    job_lease_s = 0.0

    def __init__(self, db: aiosqlite.Connection, path: Path) -> None:
        self._db = db
        self.path = path
        self.where = str(path)  # for messages: never holds a password
        # Audit rows are buffered and written in one transaction per flush: one commit per
        # validation answer would cost more than the answer itself.
        self._audit_buffer: list[tuple[Any, ...]] = []
        self._listeners: list[ChangeListener] = []
        # Names this process in cluster_turns (host and pid: what an admin can look up).
        self.holder = f"{socket.gethostname()}:{os.getpid()}"

    @classmethod
    async def open(cls, target: Path | str | StoreSettings) -> Store:
        """`target`: the store settings, a path, `sqlite:///path` or `postgresql://...`."""
        settings = target if isinstance(target, StoreSettings) else StoreSettings()
        text = target.target if isinstance(target, StoreSettings) else str(target)
        if text.startswith(("postgresql://", "postgres://")):
            from horde_scanner.store.postgres import PgStore

            return await PgStore.connect(
                text, job_lease_s=settings.job_lease_s, pool_size=settings.pool_size
            )
        if "://" in text:
            if not text.startswith("sqlite:"):
                raise StoreError(
                    f"unknown store URL scheme in {text.split('://')[0]}://"
                    " (want sqlite:///path or postgresql://...)"
                )
            return await cls._open_sqlite(sqlite_path(text))
        return await cls._open_sqlite(Path(text))

    @classmethod
    async def _open_sqlite(cls, path: Path) -> Store:
        if str(path) != ":memory:":
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise StoreError(
                    f"cannot create the directory of store {path}: {exc.strerror or exc}"
                ) from None
            # Opened once without aiosqlite first: when aiosqlite's own connect fails, its
            # thread reports to the event loop later, after asyncio.run closed it (a traceback
            # after the right message).
            await asyncio.to_thread(_probe_open, path)
        try:
            # Processes starting together (server.processes) wait for each other's WAL switch
            # and schema steps, which take a while on a loaded machine; once open, a query
            # waits at most OPEN_BUSY_MS for a lock.
            db = await aiosqlite.connect(str(path), isolation_level=None, timeout=STARTUP_BUSY_S)
        except (aiosqlite.Error, OSError) as exc:
            raise StoreError(f"cannot open store {path}: {exc}") from None
        try:
            await db.execute("PRAGMA journal_mode=WAL")
            await db.execute("PRAGMA synchronous=NORMAL")
            store = cls(db, path)
            try:
                await store._migrate()
                # A process that died mid-judgement left these: work to do, not work done.
                await db.execute("UPDATE jobs SET state='pending' WHERE state='running'")
                await db.execute(f"PRAGMA busy_timeout={OPEN_BUSY_MS}")
            except BaseException:
                await db.close()
                raise
        except aiosqlite.DatabaseError as exc:
            await db.close()
            raise StoreError(f"cannot open store {path}: {exc}") from None
        except BaseException:
            await db.close()
            raise
        return store

    async def close(self) -> None:
        await self.flush_audit()
        await self._db.close()

    async def __aenter__(self) -> Store:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def db(self) -> aiosqlite.Connection:
        """The shared connection, for modules that keep their own tables in this store. On
        PostgreSQL an object with the same methods (store.postgres.PgDatabase): write portable SQL
        (`?` placeholders, `ON CONFLICT`, no SQLite-only functions)."""
        return self._db

    @contextlib.asynccontextmanager
    async def aside(self) -> AsyncIterator[aiosqlite.Connection]:
        """A connection of its own, for long reads and batched transactions that must not hold
        up the shared one (`BEGIN IMMEDIATE` / `COMMIT` work on both stores)."""
        db = await aiosqlite.connect(str(self.path), isolation_level=None)
        try:
            await db.execute("PRAGMA busy_timeout=10000")
            await db.execute("PRAGMA synchronous=NORMAL")  # as the shared connection (WAL)
            yield db
        finally:
            await db.close()

    def subscribe(self, listener: ChangeListener) -> None:
        """Hear of changes other processes make (PostgreSQL: LISTEN/NOTIFY). SQLite has no such
        channel: its users watch `data_version` instead."""
        self._listeners.append(listener)

    def _changed(self, kind: str, key: str) -> None:
        for listener in list(self._listeners):
            try:
                listener(kind, key)
            except Exception:
                log.exception("store change listener failed")

    async def take_turn(self, name: str, period_s: float) -> bool:
        """True for exactly one process sharing this store per `period_s` (for work such as
        a subscription refresh that every replica would otherwise repeat)."""
        now = time.time()
        cur = await self._db.execute(
            "INSERT INTO cluster_turns (name, holder, taken_at, until) VALUES (?,?,?,?)"
            " ON CONFLICT(name) DO UPDATE SET holder=excluded.holder,"
            " taken_at=excluded.taken_at, until=excluded.until WHERE cluster_turns.until <= ?",
            (name, self.holder, now, now + period_s, now),
        )
        return cur.rowcount > 0

    async def renew_jobs(self, sha256s: Iterable[str]) -> None:
        """Extend the lease of jobs this process is judging (only replicas need leases)."""

    async def release_jobs(self, sha256s: Iterable[str]) -> None:
        """Hand back jobs claimed but not judged (a stopping process), for anyone to take."""
        held = list(sha256s)
        for start in range(0, len(held), 500):
            chunk = held[start : start + 500]
            await self._db.execute(
                "UPDATE jobs SET state='pending', lease_until=0 WHERE state='running'"
                f" AND sha256 IN ({','.join('?' * len(chunk))})",
                chunk,
            )

    async def _migrate(self) -> None:
        await self._db.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations (name TEXT PRIMARY KEY, applied_at REAL)"
        )
        async with self._db.execute("SELECT name FROM schema_migrations") as cur:
            applied = {row[0] async for row in cur}
        known = {name for name, _ in _MIGRATIONS}
        if applied - known:
            raise StoreError(
                f"store {self.path} was written by a newer horde-scanner (schema steps "
                f"{', '.join(sorted(applied - known))}); upgrade horde-scanner"
            )
        for name, sql in _MIGRATIONS:
            if name in applied:
                continue
            # The step's name goes in first, under the write lock: a process opening the same
            # new file at the same moment (server.processes) fails there, before any DDL, and
            # skips the step the other one applied.
            try:
                await self._db.executescript(
                    f"BEGIN IMMEDIATE;INSERT INTO schema_migrations VALUES ('{name}',"
                    f" {time.time()});{sql};COMMIT;"
                )
            except sqlite3.IntegrityError:
                with contextlib.suppress(sqlite3.Error):
                    await self._db.execute("ROLLBACK")

    async def ping(self) -> None:
        async with self._db.execute("SELECT 1") as cur:
            await cur.fetchone()

    async def data_version(self) -> int:
        """Changes whenever another connection (another process) commits."""
        async with self._db.execute("PRAGMA data_version") as cur:
            row = await cur.fetchone()
        return int(row[0]) if row else 0

    # -- verdicts --------------------------------------------------------------------------

    async def get_verdict(self, sha256: str) -> StoredVerdict | None:
        # execute_fetchall: one hop to the database thread instead of three (hot path).
        rows = await self._db.execute_fetchall(
            "SELECT sha256, label, reasons, signals, backend, policy_version, media_type, size,"
            " source, first_seen, judged_at, route FROM verdicts WHERE sha256=?",
            (sha256,),
        )
        return _verdict_from_row(next(iter(rows))) if rows else None

    async def put_verdict(
        self,
        sha256: str,
        verdict: Verdict,
        *,
        media_type: str | None = None,
        size: int | None = None,
        source: str | None = None,
    ) -> None:
        now = time.time()
        signals = verdict.signals.model_dump_json() if verdict.signals else None
        await self._db.execute(
            "INSERT INTO verdicts (sha256, label, reasons, signals, backend, policy_version,"
            " media_type, size, source, first_seen, judged_at, route)"
            " VALUES (?,?,?,?,?,?,?,?,?,?,?,?)"
            " ON CONFLICT(sha256) DO UPDATE SET label=excluded.label, reasons=excluded.reasons,"
            " signals=COALESCE(excluded.signals, verdicts.signals), backend=excluded.backend,"
            " route=excluded.route,"
            " policy_version=excluded.policy_version,"
            " media_type=COALESCE(excluded.media_type, verdicts.media_type),"
            " size=COALESCE(excluded.size, verdicts.size),"
            " source=COALESCE(verdicts.source, excluded.source), judged_at=excluded.judged_at",
            (
                sha256,
                verdict.label.value,
                json.dumps(verdict.reasons),
                signals,
                verdict.backend,
                verdict.policy_version,
                media_type,
                size,
                source,
                now,
                verdict.judged_at,
                verdict.route.value,
            ),
        )

    async def iter_verdicts(
        self,
        *,
        labels: Iterable[Label] | None = None,
        since: float | None = None,
        limit: int | None = None,
    ) -> AsyncIterator[StoredVerdict]:
        query = (
            "SELECT sha256, label, reasons, signals, backend, policy_version, media_type, size,"
            " source, first_seen, judged_at, route FROM verdicts WHERE 1=1"
        )
        params: list[Any] = []
        label_list = [label.value for label in labels] if labels else []
        if label_list:
            query += f" AND label IN ({','.join('?' * len(label_list))})"
            params += label_list
        if since is not None:
            query += " AND judged_at >= ?"
            params.append(since)
        query += " ORDER BY judged_at DESC"
        if limit is not None:
            query += " LIMIT ?"
            params.append(limit)
        async with self._db.execute(query, params) as cur:
            async for row in cur:
                yield _verdict_from_row(row)

    async def count_verdicts(self) -> dict[str, int]:
        async with self._db.execute("SELECT label, COUNT(*) FROM verdicts GROUP BY label") as cur:
            return {label: n async for label, n in cur}

    # -- allow / deny lists ----------------------------------------------------------------

    async def list_kind(self, sha256: str) -> str | None:
        rows = await self._db.execute_fetchall("SELECT kind FROM lists WHERE sha256=?", (sha256,))
        return str(next(iter(rows))[0]) if rows else None

    async def set_list(self, sha256: str, kind: str, *, note: str = "", by: str = "") -> None:
        await self._db.execute(
            "INSERT INTO lists (sha256, kind, note, added_by, added_at) VALUES (?,?,?,?,?)"
            " ON CONFLICT(sha256) DO UPDATE SET kind=excluded.kind, note=excluded.note,"
            " added_by=excluded.added_by, added_at=excluded.added_at",
            (sha256, kind, note, by, time.time()),
        )

    async def remove_list(self, sha256: str) -> bool:
        cur = await self._db.execute("DELETE FROM lists WHERE sha256=?", (sha256,))
        return cur.rowcount > 0

    async def iter_list(self, kind: str) -> AsyncIterator[tuple[str, str, str, float]]:
        async with self._db.execute(
            "SELECT sha256, note, added_by, added_at FROM lists WHERE kind=? ORDER BY added_at",
            (kind,),
        ) as cur:
            async for row in cur:
                yield row[0], row[1] or "", row[2] or "", row[3]

    # -- audit -----------------------------------------------------------------------------

    async def audit(
        self,
        event: str,
        *,
        sha256: str | None = None,
        label: str | None = None,
        action: str | None = None,
        source: str | None = None,
        detail: dict[str, Any] | None = None,
    ) -> None:
        self._audit_buffer.append(
            (time.time(), sha256, event, label, action, source, json.dumps(detail or {}))
        )
        if len(self._audit_buffer) >= 500:
            await self.flush_audit()

    async def flush_audit(self) -> None:
        if not self._audit_buffer:
            return
        rows, self._audit_buffer = self._audit_buffer, []
        # One multi-row INSERT is one atomic statement: no BEGIN/COMMIT pair that other
        # coroutines' statements could slip into while we await.
        for start in range(0, len(rows), _AUDIT_ROWS_PER_INSERT):
            batch = rows[start : start + _AUDIT_ROWS_PER_INSERT]
            await self._db.execute(
                "INSERT INTO audit (ts, sha256, event, label, action, source, detail) VALUES "
                + ",".join(["(?,?,?,?,?,?,?)"] * len(batch)),
                [value for row in batch for value in row],
            )

    async def audit_trail(self, sha256: str) -> list[AuditRecord]:
        await self.flush_audit()
        async with self._db.execute(
            "SELECT id, ts, sha256, event, label, action, source, detail FROM audit"
            " WHERE sha256=? ORDER BY id",
            (sha256,),
        ) as cur:
            rows = await cur.fetchall()
        return [
            AuditRecord(r[0], r[1], r[2], r[3], r[4], r[5], r[6], json.loads(r[7] or "{}"))
            for r in rows
        ]

    # -- pending jobs ----------------------------------------------------------------------

    async def add_job(
        self,
        sha256: str,
        payload: bytes,
        *,
        media_type: str | None,
        size: int | None,
        source: str | None,
    ) -> bool:
        """Persist a judgement to do; False when one for this hash is already pending."""
        cur = await self._db.execute(
            "INSERT INTO jobs (sha256, payload, media_type, size, source, created_at)"
            " VALUES (?,?,?,?,?,?) ON CONFLICT DO NOTHING",
            (sha256, payload, media_type, size, source, time.time()),
        )
        return cur.rowcount > 0

    async def set_job_answers(self, answers: dict[str, str]) -> None:
        """Record what was answered for jobs still running ('accept' is never overwritten)."""
        await self._db.executemany(
            "UPDATE jobs SET answered=? WHERE sha256=?"
            " AND (answered IS NULL OR answered != 'accept')",
            [(answer, sha) for sha, answer in answers.items()],
        )

    async def claim_jobs(self, limit: int) -> list[Job]:
        """Take up to `limit` ready jobs (oldest first), marking them running in one statement
        so that two processes sharing the file never take the same job."""
        async with self._db.execute(
            "UPDATE jobs SET state='running' WHERE sha256 IN (SELECT sha256 FROM jobs"
            " WHERE state='pending' AND not_before <= ? ORDER BY created_at LIMIT ?)"
            " RETURNING sha256, payload, media_type, size, source, answered, attempts",
            (time.time(), limit),
        ) as cur:
            rows = await cur.fetchall()
        return [Job(r[0], r[1], r[2], r[3], r[4], r[5], r[6]) for r in rows]

    async def finish_job(self, sha256: str) -> str | None:
        """Remove a judged job; returns what the validation endpoint answered meanwhile."""
        async with self._db.execute("SELECT answered FROM jobs WHERE sha256=?", (sha256,)) as cur:
            row = await cur.fetchone()
        await self._db.execute("DELETE FROM jobs WHERE sha256=?", (sha256,))
        return row[0] if row else None

    async def retry_job(self, sha256: str, *, delay_s: float, error: str) -> None:
        await self._db.execute(
            "UPDATE jobs SET state='pending', attempts=attempts+1, not_before=?, last_error=?"
            " WHERE sha256=?",
            (time.time() + delay_s, error, sha256),
        )

    async def sha256_by_prefix(self, prefix: str, limit: int = 2) -> list[str]:
        """Known sha256 values (verdicts, lists, audit) starting with a hex `prefix`."""
        bound = prefix + "g"  # just past every hex continuation: an index range scan
        found: set[str] = set()
        for table in ("verdicts", "lists", "audit"):
            async with self._db.execute(
                f"SELECT DISTINCT sha256 FROM {table} WHERE sha256 >= ? AND sha256 < ? LIMIT ?",
                (prefix, bound, limit),
            ) as cur:
                found.update([row[0] async for row in cur])
        return sorted(found)[:limit]

    async def wake_jobs(self) -> int:
        """Make every pending job due now; returns how many were waiting for later."""
        cur = await self._db.execute(
            "UPDATE jobs SET not_before=0 WHERE state='pending' AND not_before > ?",
            (time.time(),),
        )
        return max(0, cur.rowcount)

    async def count_jobs(self) -> int:
        async with self._db.execute("SELECT COUNT(*) FROM jobs") as cur:
            row = await cur.fetchone()
        return int(row[0]) if row else 0

    async def next_job_time(self) -> float | None:
        async with self._db.execute(
            "SELECT MIN(not_before) FROM jobs WHERE state='pending'"
        ) as cur:
            row = await cur.fetchone()
        return float(row[0]) if row and row[0] is not None else None

    # -- late positives --------------------------------------------------------------------

    async def record_late_positive(
        self, sha256: str, label: Label, enforcement: str, detail: dict[str, Any]
    ) -> None:
        now = time.time()
        await self._db.execute(
            "INSERT INTO late_positives (sha256, label, found_at, enforcement, detail, updated_at)"
            " VALUES (?,?,?,?,?,?) ON CONFLICT(sha256) DO UPDATE SET"
            " enforcement=excluded.enforcement, detail=excluded.detail,"
            " updated_at=excluded.updated_at",
            (sha256, label.value, now, enforcement, json.dumps(detail), now),
        )

    async def late_positives(self) -> list[dict[str, Any]]:
        async with self._db.execute(
            "SELECT sha256, label, found_at, enforcement, detail, updated_at FROM late_positives"
            " ORDER BY found_at DESC"
        ) as cur:
            rows = await cur.fetchall()
        return [
            {
                "sha256": r[0],
                "label": r[1],
                "found_at": r[2],
                "enforcement": r[3],
                "detail": json.loads(r[4] or "{}"),
                "updated_at": r[5],
            }
            for r in rows
        ]


def _verdict_from_row(row: Any) -> StoredVerdict:
    signals = Signals.model_validate_json(row[3]) if row[3] else None
    verdict = Verdict(
        label=Label(row[1]),
        reasons=json.loads(row[2]),
        signals=signals,
        backend=row[4],
        route=VerdictRoute(row[11]),
        policy_version=row[5],
        judged_at=row[10],
    )
    return StoredVerdict(row[0], verdict, row[6], row[7], row[8], row[9])
