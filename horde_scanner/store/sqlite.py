"""The store that remembers everything: one SQLite file (aiosqlite, WAL) by default, or a
PostgreSQL database shared by replicas (store/postgres.py, the same parts and schema steps).

`Store` is its parts (store/tables.py draws them) on one connection, plus what only the
whole can do: open the file, apply every part's schema steps, hand out a connection of its
own (`aside`), and tell listeners what other processes changed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import sqlite3
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Generator, Iterable, Sequence
from pathlib import Path
from typing import Any

import aiosqlite

from horde_scanner.config import StoreSettings
from horde_scanner.errors import InvalidInput
from horde_scanner.store.audit import AuditTables
from horde_scanner.store.cluster import ClusterTables
from horde_scanner.store.embeddings import EmbeddingTables
from horde_scanner.store.hashes import HashTables
from horde_scanner.store.horde_requests import HordeRequestTables
from horde_scanner.store.jobs import JobTables
from horde_scanner.store.kudos import KudosTables
from horde_scanner.store.outage import StoreHealth
from horde_scanner.store.provenance import ProvenanceTables
from horde_scanner.store.review import ReviewTables
from horde_scanner.store.schema import schema_steps
from horde_scanner.store.sweeps import SweepTables
from horde_scanner.store.tables import QUERY, RETURNING, ChangeListener, Database, Rows, SchemaStep
from horde_scanner.store.verdicts import VerdictTables

log = logging.getLogger(__name__)
# How long a SQLite statement waits for another process's lock: at start-up, and once open.
STARTUP_BUSY_S = 60.0
OPEN_BUSY_MS = 5000


class StoreError(InvalidInput):
    """The database cannot be opened or is not ours."""


def missing_steps(applied: set[str], where: object) -> list[SchemaStep]:
    """The schema steps a store has yet to apply, in order. A store with steps this version
    does not know was written by a newer horde-scanner, and is refused."""
    steps = schema_steps()
    unknown = applied - {step.name for step in steps}
    if unknown:
        raise StoreError(
            f"store {where} was written by a newer horde-scanner (schema steps "
            f"{', '.join(sorted(unknown))}); upgrade horde-scanner"
        )
    return [step for step in steps if step.name not in applied]


@contextlib.asynccontextmanager
async def setting_up(
    where: object, close: Callable[[], Awaitable[None]], errors: tuple[type[Exception], ...]
) -> AsyncIterator[None]:
    """A store's first steps on a new connection (settings, schema steps): whatever fails
    closes the connection again, and the database's own errors (`errors`) become a
    StoreError naming the store."""
    try:
        yield
    except errors as exc:
        await close()
        raise StoreError(f"cannot open store {where}: {exc}") from None
    except BaseException:
        await close()
        raise


class _Statement:
    """What `SharedConnection.execute` returns: awaited, or used as `async with ... as cur`."""

    def __init__(self, run: Awaitable[Rows]) -> None:
        self._run = run

    def __await__(self) -> Generator[Any, None, Rows]:
        return self._run.__await__()

    async def __aenter__(self) -> Rows:
        return await self._run

    async def __aexit__(self, *exc: object) -> None:
        pass


class SharedConnection:
    """The one aiosqlite connection every coroutine of a process shares, as the parts see it:
    each statement runs to its end in one trip to the database thread, its rows fetched then.

    A statement left open between trips (a cursor read row by row) keeps a read transaction
    open on the connection; a write another coroutine sends meanwhile then runs on that old
    snapshot, and if another process (server.processes) has committed since, SQLite refuses
    it at once with "database is locked" (SQLITE_BUSY_SNAPSHOT: the busy timeout does not
    cover it). Long reads take a connection of their own (`Store.aside()`)."""

    def __init__(self, db: aiosqlite.Connection, health: StoreHealth | None = None) -> None:
        self._db = db
        # Told of every statement that fails for want of the database (locked, disk full),
        # and, while it is away, of those that work (store/outage.py).
        self.health = health or StoreHealth("sqlite")

    def execute(self, sql: str, parameters: Iterable[Any] = ()) -> _Statement:
        return _Statement(self._run(sql, tuple(parameters)))

    async def _run(self, sql: str, parameters: tuple[Any, ...]) -> Rows:
        query = QUERY.match(sql) is not None
        try:
            if query or RETURNING.search(sql):
                rows = [tuple(r) for r in await self._db.execute_fetchall(sql, parameters)]
                result = Rows(rows, -1 if query else len(rows))
            else:
                cur = await self._db.execute(sql, parameters)
                try:
                    result = Rows([], cur.rowcount, cur.lastrowid)
                finally:
                    await cur.close()
        except sqlite3.Error as exc:
            self.health.failed(exc, write=not query)
            raise
        if not self.health.available:
            self.health.succeeded(write=not query)
        return result

    async def execute_fetchall(self, sql: str, parameters: Iterable[Any] = ()) -> list[Any]:
        try:
            rows = list(await self._db.execute_fetchall(sql, tuple(parameters)))
        except sqlite3.Error as exc:
            self.health.failed(exc, write=False)
            raise
        if not self.health.available:
            self.health.succeeded(write=False)
        return rows

    async def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        try:
            cur = await self._db.executemany(sql, rows)
        except sqlite3.Error as exc:
            self.health.failed(exc)
            raise
        await cur.close()
        if not self.health.available:
            self.health.succeeded(write=True)

    async def executescript(self, sql: str) -> None:
        cur = await self._db.executescript(sql)
        await cur.close()

    async def close(self) -> None:
        await self._db.close()


def sqlite_path(url: str) -> Path:
    """`sqlite:///relative.db` or `sqlite:////absolute/path.db` (as SQLAlchemy writes them)."""
    if not url.startswith("sqlite:///"):
        raise StoreError(f"not a SQLite store URL (want sqlite:///path): {url}")
    rest = url[len("sqlite:///") :]
    if not rest:
        raise StoreError(f"SQLite store URL without a path: {url}")
    return Path(rest)


async def _switch_to_wal(db: aiosqlite.Connection) -> None:
    """`PRAGMA journal_mode=WAL`, waiting for other processes opening the same file.

    The switch answers "database is locked" at once, without the busy timeout, while another
    connection is switching or reading it (processes starting together, server.processes):
    try again, for up to STARTUP_BUSY_S."""
    deadline = time.monotonic() + STARTUP_BUSY_S
    pause = 0.01
    while True:
        try:
            await db.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() + pause > deadline:
                raise
        await asyncio.sleep(pause)
        pause = min(pause * 2, 0.5)


def _probe_write(path: Path) -> None:
    db = sqlite3.connect(str(path), timeout=0.1, isolation_level=None)
    try:
        db.execute("UPDATE schema_migrations SET applied_at = applied_at WHERE name = '0001-core'")
    finally:
        db.close()


def _probe_open(path: Path) -> None:
    try:
        sqlite3.connect(str(path)).close()
    except (sqlite3.Error, OSError) as exc:
        raise StoreError(f"cannot open store {path}: {exc}") from None


class Store(
    VerdictTables,
    JobTables,
    AuditTables,
    SweepTables,
    HashTables,
    EmbeddingTables,
    ReviewTables,
    KudosTables,
    ClusterTables,
    HordeRequestTables,
    ProvenanceTables,
):
    """The SQLite store; `store.postgres.PgStore` is the PostgreSQL one (same parts)."""

    dialect = "sqlite"
    # Several replicas share this store's jobs and caches (PostgreSQL).
    shared = False
    # Claimed jobs are leased only where replicas share them (0: no lease to renew).
    job_lease_s = 0.0

    def __init__(self, db: Database, path: Path, health: StoreHealth | None = None) -> None:
        self._db = db
        self.path = path
        self.where = str(path)  # for messages: never holds a password
        # Away or not (a restart, a full disk, a lock): the connection reports to it.
        self.health = health or StoreHealth(self.where)
        self.health.bind(self.probe)
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
        async with setting_up(path, db.close, (aiosqlite.DatabaseError,)):
            await _switch_to_wal(db)
            await db.execute("PRAGMA synchronous=NORMAL")
            health = StoreHealth(str(path))
            store = cls(SharedConnection(db, health), path, health)
            await store._migrate()
            # A process that died mid-judgement left these: work to do, not work done.
            await db.execute("UPDATE jobs SET state='pending' WHERE state='running'")
            await db.execute(f"PRAGMA busy_timeout={OPEN_BUSY_MS}")
        return store

    async def close(self) -> None:
        await self.health.close()
        with contextlib.suppress(Exception):  # a store that is away keeps what it could not write
            await self.flush_audit()
        await self._db.close()

    async def __aenter__(self) -> Store:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def db(self) -> Database:
        """The shared connection (SharedConnection; on PostgreSQL store.postgres.PgDatabase),
        for tests and store/migrate.py: the rest of the code calls the parts' methods."""
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

    async def _migrate(self) -> None:
        await self._db.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations (name TEXT PRIMARY KEY, applied_at REAL)"
        )
        async with self._db.execute("SELECT name FROM schema_migrations") as cur:
            applied = {row[0] async for row in cur}
        for step in missing_steps(applied, self.path):
            name, sql = step.name, step.sql
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

    async def probe(self) -> None:
        """One small committed write, on a connection of its own that waits for no lock (the
        shared one would queue every other statement behind a locked write): whether the
        store can write right now (store/outage.py)."""
        await asyncio.to_thread(_probe_write, self.path)

    async def data_version(self) -> int:
        """Changes whenever another connection (another process) commits."""
        async with self._db.execute("PRAGMA data_version") as cur:
            row = await cur.fetchone()
        return int(row[0]) if row else 0
