"""The store that remembers everything: one SQLite file (aiosqlite, WAL) by default, or a
PostgreSQL database shared by replicas (store/postgres.py: the same parts and revisions).

`Store` is its parts (store/tables.py draws them) on one database seam (store/database.py),
plus what only the whole can do: open the file, bring the schema to the newest Alembic
revision (store/schema.py), hand out a connection of its own (`aside`), and tell listeners
what other processes changed.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from horde_scanner.config import StoreSettings
from horde_scanner.store import schema, sqlite_driver
from horde_scanner.store.composed import ComposedStore
from horde_scanner.store.database import Database, StoreError
from horde_scanner.store.jobs import jobs
from horde_scanner.store.outage import StoreHealth

__all__ = ["Store", "StoreError", "sqlite_path"]

log = logging.getLogger(__name__)
# How long a SQLite statement waits for another process's lock: at start-up, and once open
# (the shared connection; a connection of its own, `aside()`, waits ASIDE_BUSY_MS).
STARTUP_BUSY_S = 60.0
OPEN_BUSY_MS = 5000
ASIDE_BUSY_MS = 10000


def sqlite_path(url: str) -> Path:
    """`sqlite:///relative.db` or `sqlite:////absolute/path.db` (as SQLAlchemy writes them)."""
    if not url.startswith("sqlite:///"):
        raise StoreError(f"not a SQLite store URL (want sqlite:///path): {url}")
    rest = url[len("sqlite:///") :]
    if not rest:
        raise StoreError(f"SQLite store URL without a path: {url}")
    return Path(rest)


def _is_locked(exc: BaseException) -> bool:
    return "locked" in str(getattr(exc, "orig", exc))


async def _switch_to_wal(conn: AsyncConnection) -> None:
    """`PRAGMA journal_mode=WAL`, waiting for other processes opening the same file.

    The switch answers "database is locked" at once, without the busy timeout, while another
    connection is switching or reading it (processes starting together, server.processes):
    try again, for up to STARTUP_BUSY_S."""
    deadline = time.monotonic() + STARTUP_BUSY_S
    pause = 0.01
    while True:
        try:
            await conn.exec_driver_sql("PRAGMA journal_mode=WAL")
            return
        except sa.exc.OperationalError as exc:
            if not _is_locked(exc) or time.monotonic() + pause > deadline:
                raise
        await asyncio.sleep(pause)
        pause = min(pause * 2, 0.5)


def _probe_write(path: Path) -> None:
    db = sqlite3.connect(str(path), timeout=0.1, isolation_level=None)
    try:
        db.execute("UPDATE alembic_version SET version_num = version_num")
    finally:
        db.close()


def _probe_open(path: Path) -> None:
    try:
        sqlite3.connect(str(path)).close()
    except (sqlite3.Error, OSError) as exc:
        raise StoreError(f"cannot open store {path}: {exc}") from None


def sqlite_engine(path: Path) -> AsyncEngine:
    """The engine of a SQLite store: every connection autocommits (transactions are
    `Database.transaction()`'s BEGIN IMMEDIATE), writes ahead (WAL), and waits ASIDE_BUSY_MS
    for another's lock unless told otherwise."""
    sqlite_driver.register()
    engine = create_async_engine(
        f"sqlite+{sqlite_driver.NAME}:///{path}",
        isolation_level="AUTOCOMMIT",
        connect_args={"timeout": STARTUP_BUSY_S},
    )

    @event.listens_for(engine.sync_engine, "connect")
    def _settings(dbapi_connection: Any, record: Any) -> None:
        cursor = dbapi_connection.cursor()
        cursor.execute(f"PRAGMA busy_timeout={ASIDE_BUSY_MS}")
        cursor.execute("PRAGMA synchronous=NORMAL")  # safe with WAL: a crash loses no commit
        cursor.close()

    return engine


class Store(ComposedStore):
    """The SQLite store (one file, WAL); `store.postgres.PgStore` is the PostgreSQL one. Both
    are the same parts (store/composed.py)."""

    dialect = "sqlite"

    def __init__(self, db: Database, path: Path, health: StoreHealth | None = None) -> None:
        self.path = path
        super().__init__(db, str(path), health)

    @classmethod
    async def open(cls, target: Path | str | StoreSettings) -> ComposedStore:
        """`target`: the store settings, a path, `sqlite:///path` or `postgresql://...`."""
        settings = target if isinstance(target, StoreSettings) else StoreSettings()
        text = target.target if isinstance(target, StoreSettings) else str(target)
        if text.startswith(("postgresql://", "postgres://", "postgresql+asyncpg://")):
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
        engine = sqlite_engine(path)
        try:
            conn = await engine.connect()
        except (sa.exc.DBAPIError, OSError) as exc:
            await engine.dispose()
            raise StoreError(f"cannot open store {path}: {getattr(exc, 'orig', exc)}") from None
        try:
            # Processes starting together (server.processes) wait for each other's WAL switch
            # and migrations, which take a while on a loaded machine; once open, a statement
            # waits at most OPEN_BUSY_MS for a lock.
            await conn.exec_driver_sql(f"PRAGMA busy_timeout={int(STARTUP_BUSY_S * 1000)}")
            await _switch_to_wal(conn)
            await schema.upgrade(conn, str(path))
            # A process that died mid-judgement left these: work to do, not work done.
            await conn.execute(
                sa.update(jobs).where(jobs.c.state == "running").values(state="pending")
            )
            await conn.exec_driver_sql(f"PRAGMA busy_timeout={OPEN_BUSY_MS}")
        except BaseException as exc:
            await conn.close()
            await engine.dispose()
            if isinstance(exc, sa.exc.DBAPIError):
                raise StoreError(f"cannot open store {path}: {exc.orig}") from None
            raise
        health = StoreHealth(str(path))
        return cls(Database(engine, health, conn, shared=True), path, health)

    async def probe(self) -> None:
        """One small committed write, on a connection of its own that waits for no lock (the
        shared one would queue every other statement behind a locked write): whether the
        store can write right now (store/outage.py)."""
        await asyncio.to_thread(_probe_write, self.path)

    async def data_version(self) -> int:
        """Changes whenever another connection (another process) commits."""
        return int((await self._db.execute("PRAGMA data_version")).scalar() or 0)
