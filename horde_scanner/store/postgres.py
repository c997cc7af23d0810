"""PostgreSQL behind the store's database seam (SQLAlchemy's asyncpg dialect; extra
`[postgres]`): the same parts and revisions as SQLite, for any number of replicas.

Jobs are claimed with `FOR UPDATE SKIP LOCKED` and held for `job_lease_s` (store/jobs.py);
changes other replicas make (verdicts, lists, hash lists, new jobs) arrive over LISTEN/NOTIFY
on a driver connection of its own (asyncpg's `add_listener`), those this process made itself
left out.

`PgStream` reads a long query through asyncpg's server-side cursor, as plain tuples
(`Database`'s driver cursor on `aside()`, for the hash and embedding index loads).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.ext.asyncio import create_async_engine

from horde_scanner.store import schema
from horde_scanner.store.composed import ComposedStore
from horde_scanner.store.database import Database, PgStream, StoreError, driver_error
from horde_scanner.store.outage import StoreHealth

__all__ = ["CHANNEL", "PgStore", "PgStream", "redact"]

log = logging.getLogger(__name__)

CHANNEL = "horde_scanner"


def redact(url: str) -> str:
    """The URL without its password (for logs, /readyz and errors)."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    if parts.port is not None:
        host += f":{parts.port}"
    netloc = f"{parts.username}:***@{host}" if parts.username else f"***@{host}"
    return urlunsplit(parts._replace(netloc=netloc))


class PgStore(ComposedStore):
    """The store on PostgreSQL: same interface as the SQLite one, for any number of replicas."""

    dialect = "postgresql"
    shared = True

    def __init__(self, db: Database, url: str, job_lease_s: float) -> None:
        super().__init__(db, redact(url), db.health)
        self._url = url
        self.job_lease_s = job_lease_s
        self._own_pids: set[int] = set()
        self._listener: Any = None
        self._resets = 0
        self._closing = False
        self._reconnect: asyncio.Task[None] | None = None

    @classmethod
    async def connect(cls, url: str, *, job_lease_s: float = 30.0, pool_size: int = 10) -> PgStore:
        try:
            import asyncpg
        except ImportError:
            raise StoreError(
                "a postgresql:// store needs asyncpg: pip install 'horde-scanner[postgres]'"
            ) from None
        where = redact(url)
        try:
            engine_url = sa.engine.make_url(url).set(drivername="postgresql+asyncpg")
        except sa.exc.ArgumentError as exc:
            raise StoreError(f"cannot open store {where}: {exc}") from None
        engine = create_async_engine(
            engine_url,
            isolation_level="AUTOCOMMIT",  # transactions: Database.transaction()
            pool_size=pool_size,
            max_overflow=0,
            connect_args={"command_timeout": 60},
        )
        own: set[int] = set()

        @event.listens_for(engine.sync_engine, "connect")
        def _mine(dbapi_connection: Any, record: Any) -> None:
            # Notifications this process caused itself are not news to it.
            own.add(dbapi_connection.driver_connection.get_server_pid())

        try:
            async with engine.connect() as conn:
                await schema.upgrade(conn, where)
        except StoreError:
            await engine.dispose()
            raise
        except (OSError, asyncpg.PostgresError, sa.exc.DBAPIError, ValueError) as exc:
            await engine.dispose()
            raise StoreError(f"cannot open store {where}: {driver_error(exc)}") from None
        except BaseException:
            await engine.dispose()
            raise
        health = StoreHealth(where)
        store = cls(Database(engine, health), url, job_lease_s)
        store._own_pids = own
        try:
            await store._listen()
        except (OSError, asyncpg.PostgresError) as exc:
            await engine.dispose()
            raise StoreError(f"cannot open store {where}: {exc}") from None
        return store

    async def close(self) -> None:
        self._closing = True
        await self.health.close()
        with contextlib.suppress(Exception):  # a store that is away keeps what it could not write
            await self.flush_audit()
        if self._reconnect is not None:
            self._reconnect.cancel()
        if self._listener is not None and not self._listener.is_closed():
            await self._listener.close()
        await self._db.engine.dispose()

    # -- notifications ---------------------------------------------------------------------

    async def _listen(self) -> None:
        import asyncpg

        self._listener = await asyncpg.connect(self._url)
        self._listener.add_termination_listener(self._lost)
        await self._listener.add_listener(CHANNEL, self._heard)

    def _heard(self, conn: Any, pid: int, channel: str, payload: str) -> None:
        if pid in self._own_pids:
            return
        kind, _, key = payload.partition(":")
        self._changed(kind, key)

    def _lost(self, conn: Any) -> None:
        if not self._closing and (self._reconnect is None or self._reconnect.done()):
            self._reconnect = asyncio.get_running_loop().create_task(self._relisten())

    async def _relisten(self) -> None:
        delay = 0.25
        while not self._closing:
            try:
                await self._listen()
            except Exception as exc:
                # A restart or a fail-over: as soon as it is back (the store's probe paces
                # itself the same way), so that replicas hear each other again within seconds.
                self.health.failed(exc, write=False)
                log.warning("store notifications lost (%s); retrying in %.1f s", exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)
                continue
            # What was said while nobody listened is gone: everyone starts afresh.
            self._resets += 1
            self._changed("reset", "")
            return

    async def data_version(self) -> int:
        return self._resets

    async def probe(self) -> None:
        """One small write through the pool: whether the store can write right now."""
        await self._db.execute(sa.text("UPDATE alembic_version SET version_num = version_num"))
