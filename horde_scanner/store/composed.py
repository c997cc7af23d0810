"""The store as a whole: every part (store/<part>.py) composed on one database seam, with what
only the whole can do (close, hand out a connection of its own, tell listeners what other
processes changed, bring the schema to the newest revision).

`store.sqlite.Store` (one SQLite file) and `store.postgres.PgStore` (a database shared by
replicas) are its two implementations; each adds only how it opens, probes and notices other
processes' writes. Neither builds on the other.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
from collections.abc import AsyncIterator
from typing import Any, Self

import sqlalchemy as sa

from horde_scanner.store import schema
from horde_scanner.store.audit import AuditTables
from horde_scanner.store.cluster import ClusterTables
from horde_scanner.store.database import Database
from horde_scanner.store.embeddings import EmbeddingTables
from horde_scanner.store.hashes import HashTables
from horde_scanner.store.horde_requests import HordeRequestTables
from horde_scanner.store.jobs import JobTables
from horde_scanner.store.kudos import KudosTables
from horde_scanner.store.outage import StoreHealth
from horde_scanner.store.provenance import ProvenanceTables
from horde_scanner.store.review import ReviewTables
from horde_scanner.store.sweeps import SweepTables
from horde_scanner.store.tables import ChangeListener
from horde_scanner.store.verdicts import VerdictTables

log = logging.getLogger(__name__)


class ComposedStore(
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
    """Every part on one database seam; the SQLite and PostgreSQL stores derive from it."""

    dialect = "sqlite"
    # Several replicas share this store's jobs and caches (PostgreSQL).
    shared = False
    # Claimed jobs are leased only where replicas share them (0: no lease to renew).
    job_lease_s = 0.0

    def __init__(self, db: Database, where: str, health: StoreHealth | None = None) -> None:
        self._db = db
        self.where = where  # for messages: never holds a password
        # Away or not (a restart, a full disk, a lock): the connection reports to it.
        self.health = health or db.health
        self.health.bind(self.probe)
        # Audit rows are buffered and written in one transaction per flush: one commit per
        # validation answer would cost more than the answer itself.
        self._audit_buffer: list[tuple[Any, ...]] = []
        self.prepare_audit()
        self._listeners: list[ChangeListener] = []
        # Names this process in cluster_turns (host and pid: what an admin can look up).
        self.holder = f"{socket.gethostname()}:{os.getpid()}"

    async def close(self) -> None:
        await self.health.close()
        with contextlib.suppress(Exception):  # a store that is away keeps what it could not write
            await self.flush_audit()
        await self._db.close()
        await self._db.engine.dispose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def db(self) -> Database:
        """The database seam (store/database.py), for tests, tools and store/migrate.py: the
        rest of the code calls the parts' methods."""
        return self._db

    @contextlib.asynccontextmanager
    async def aside(self) -> AsyncIterator[Database]:
        """A connection of its own, for long reads (`Database.stream`) and batched
        transactions (`Database.transaction()`) that must not hold up the shared one (see
        store.database.SQLITE_SHARED)."""
        conn = await self._db.engine.connect()
        held = Database(self._db.engine, self.health, conn)
        try:
            yield held
        finally:
            if conn.dialect.name == "postgresql":
                with contextlib.suppress(Exception):
                    raw = await conn.get_raw_connection()
                    if raw.driver_connection.is_in_transaction():  # type: ignore[union-attr]
                        await conn.exec_driver_sql("ROLLBACK")
            await conn.close()

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

    async def upgrade(self) -> list[str]:
        """Bring the schema to the newest revision (done at open): the revisions applied."""
        async with self.aside() as db:
            assert db.held is not None
            return await schema.upgrade(db.held, self.where)

    async def ping(self) -> None:
        await self._db.execute(sa.select(1))

    async def probe(self) -> None:
        """One small committed write that waits for no lock: whether the store can write
        right now (store/outage.py)."""
        raise NotImplementedError

    async def data_version(self) -> int:
        """Changes whenever another process may have changed the store."""
        raise NotImplementedError
