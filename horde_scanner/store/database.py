"""The seam between the store's parts and the database: SQLAlchemy Core statements, run on an
async engine (aiosqlite for `sqlite+aiosqlite`, asyncpg for `postgresql+asyncpg`), each
dialect compiling its own SQL.

    rows = await db.execute(stmt)          # Rows, fetched whole: .all() .first() .scalar()
                                           # .rowcount (writes; RETURNING: rows returned)
    n = await db.executemany(stmt, params) # one statement, a list of parameter dicts
    async with db.transaction() as tx:     # BEGIN IMMEDIATE (SQLite) / BEGIN (PostgreSQL) on
        await tx.execute(...)              # one connection; COMMIT, or ROLLBACK on error
    async with store.aside() as db:        # a connection of its own (long reads, batches)
        async for batch in db.stream(stmt, 1000): ...   # plain tuples; server-side cursor
                                                        # on PostgreSQL
        await db.write_many(stmt, rows, keys, 5000)     # executemany, a transaction a batch
    db.dialect                             # "sqlite" | "postgresql"

Every statement autocommits unless inside `transaction()`. On SQLite the process shares one
connection (`Store.db`): a statement runs to its end, its rows fetched at once, so nothing
holds a read snapshot between awaits (see `SQLITE_SHARED`); long reads go to `aside()`. On
PostgreSQL each statement takes a pooled connection for its duration (`store.pool_size`).
The hot path's statements are `Prepared`: compiled once per dialect and sent to the driver
as they are (aiosqlite on the shared connection; asyncpg on a pooled one), past SQLAlchemy's
per-statement execution pipeline.

Every statement's failure is told to the store's `StoreHealth` (store/outage.py), and while
the store is away, every success too: the store's outage state is known without asking.

Statements are SQLAlchemy Core (`sa.select`, `sqlalchemy.dialects.<db>.insert(...)
.on_conflict_do_*`, `.returning`, `.with_for_update(skip_locked=True)`); a part that needs a
dialect's own construct branches on `db.dialect`. A plain string is passed to the driver as
it is (its own placeholders: `?` on SQLite, `$1` on PostgreSQL): for tests and tools that
read a table by hand, and for PRAGMAs. No part compiles a statement itself: the bulk paths
that go past SQLAlchemy's per-row work (`stream`, `write_many`) and the hot path's
`Prepared` statements are this seam's, each compiled here for the driver it runs on.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
from collections.abc import (
    AsyncGenerator,
    AsyncIterator,
    Callable,
    Generator,
    Iterator,
    Mapping,
    Sequence,
)
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql as pg_dialect
from sqlalchemy.dialects import sqlite as sqlite_dialect
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from sqlalchemy.util import greenlet_spawn

from horde_scanner.errors import InvalidInput
from horde_scanner.store.outage import StoreHealth, is_outage

SQLITE_SHARED = """A SQLite statement left open between trips (a cursor read row by row) keeps
a read transaction open on the connection; a write another coroutine sends meanwhile then
runs on that old snapshot, and if another process (server.processes) has committed since,
SQLite refuses it at once with "database is locked" (SQLITE_BUSY_SNAPSHOT: the busy timeout
does not cover it). So the shared connection fetches every result whole, and long reads take
a connection of their own (`Store.aside()`)."""


class StoreError(InvalidInput):
    """The database cannot be opened or is not ours (the message names the store and what to
    do)."""


def driver_error(exc: BaseException) -> BaseException:
    """The driver's own error inside SQLAlchemy's wrapping (for messages)."""
    inner = getattr(exc, "orig", None) or exc
    cause = inner.__cause__
    if cause is not None and type(inner).__module__.startswith("sqlalchemy"):
        return cause
    return inner


# Rows a stream hands over at a time unless told otherwise.
STREAM_BATCH = 1000
# Rows a PostgreSQL stream fetches from the server at a time (a round trip each), whatever the
# batch it hands over: see `_collector_paused`.
PG_FETCH = 1000


class Rows:
    """The rows of one statement, already fetched; with a cursor's methods as well
    (`fetchone`, `fetchall`, `fetchmany`, async iteration) for the parts not yet on Core."""

    __slots__ = ("_rows", "_at", "rowcount", "lastrowid")

    def __init__(
        self, rows: Sequence[Any], rowcount: int = -1, lastrowid: int | None = None
    ) -> None:
        self._rows = rows
        self._at = 0
        self.rowcount = rowcount
        self.lastrowid = lastrowid

    def all(self) -> Sequence[Any]:
        return self._rows

    def first(self) -> Any | None:
        return self._rows[0] if self._rows else None

    def scalar(self) -> Any:
        return self._rows[0][0] if self._rows else None

    def scalars(self) -> list[Any]:
        return [r[0] for r in self._rows]

    def __iter__(self) -> Iterator[Any]:
        return iter(self._rows)

    def __len__(self) -> int:
        return len(self._rows)

    def __getitem__(self, index: int) -> Any:
        return self._rows[index]

    def __bool__(self) -> bool:
        return bool(self._rows)

    # -- a cursor's methods ------------------------------------------------------------------

    async def fetchone(self) -> Any | None:
        if self._at >= len(self._rows):
            return None
        self._at += 1
        return self._rows[self._at - 1]

    async def fetchall(self) -> list[Any]:
        rows, self._at = list(self._rows[self._at :]), len(self._rows)
        return rows

    async def fetchmany(self, size: int) -> list[Any]:
        rows = list(self._rows[self._at : self._at + size])
        self._at += len(rows)
        return rows

    def __aiter__(self) -> AsyncIterator[Any]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[Any]:
        while self._at < len(self._rows):
            self._at += 1
            yield self._rows[self._at - 1]

    async def close(self) -> None:
        pass


class Prepared:
    """A statement built once (at module level, its values `sa.bindparam`s), run often.

    It is compiled once per dialect by SQLAlchemy and sent to the driver as it is: on the
    SQLite store's shared connection to aiosqlite, in one trip to its thread; on PostgreSQL
    to asyncpg on a connection of the engine's pool, whose own prepared-statement cache then
    parses and plans it once per connection. SQLAlchemy's execution pipeline (cache-key
    lookup, execution context, result objects, greenlet hand-overs) cost several times the
    statement itself on the hot path (a cache miss makes a dozen; measured with
    bench/store_work.py). Elsewhere (a connection held for `transaction()` or `aside()`) it
    runs as any Core statement."""

    __slots__ = ("statement", "write", "_sqlite", "_postgresql")

    def __init__(self, statement: sa.Executable) -> None:
        self.statement = statement
        self.write = not isinstance(statement, sa.Select | sa.CompoundSelect)
        self._sqlite: tuple[str, tuple[str, ...], dict[str, Any]] | None = None
        self._postgresql: _PgCompiled | None = None

    def for_sqlite(self, dialect: Any) -> tuple[str, tuple[str, ...], dict[str, Any]]:
        """(SQL with `?` placeholders, the bound names in their order, their defaults)."""
        if self._sqlite is None:
            compiled = self.statement.compile(dialect=dialect)  # type: ignore[attr-defined]
            self._sqlite = (compiled.string, tuple(compiled.positiontup or ()), compiled.params)
        return self._sqlite

    def for_postgresql(self, dialect: Any) -> _PgCompiled | None:
        """The asyncpg dialect's SQL (`$n` placeholders) and how to bind it; None where
        SQLAlchemy would convert a value or a result column on the way (then the statement
        runs as any Core statement, conversions and all)."""
        if self._postgresql is None:
            self._postgresql = _PgCompiled(self.statement.compile(dialect=dialect))  # type: ignore[attr-defined]
        return self._postgresql if self._postgresql.direct else None


class _PgCompiled:
    """One `Prepared` statement as compiled by the asyncpg dialect."""

    __slots__ = ("sql", "names", "defaults", "returns_rows", "direct")

    def __init__(self, compiled: Any) -> None:
        self.sql: str = compiled.string
        # `$n` is the n-th of these (a name bound twice is sent once).
        self.names: tuple[str, ...] = tuple(compiled.positiontup or ())
        self.defaults: dict[str, Any] = compiled.params
        statement = compiled.statement
        # Rows the caller asked for: a single-row INSERT compiled by the asyncpg dialect
        # carries an implicit RETURNING of its key (`compiled.returning` names it too), which
        # is no result of the caller's statement: it runs as a command, and its row count is
        # PostgreSQL's status ("INSERT 0 1"), as on SQLite and on the Core path (`_run_now`).
        self.returns_rows: bool = (
            isinstance(statement, sa.Select | sa.CompoundSelect)
            or bool(getattr(statement, "_returning", ()))
            or (isinstance(statement, sa.TextClause) and " RETURNING " in self.sql.upper())
        )
        types = [column[3] for column in compiled._result_columns or ()]
        self.direct = not compiled._bind_processors and all(map(_as_asyncpg_gives, types))


def _as_asyncpg_gives(column_type: Any) -> bool:
    """Whether SQLAlchemy returns a column of this type as asyncpg gives it (no conversion)."""
    if isinstance(column_type, sa.Float):
        return not column_type.asdecimal
    return isinstance(column_type, sa.String | sa.Integer | sa.LargeBinary | sa.Boolean)


def compiled_once(
    build: Callable[[str], sa.Executable], dialect: str, columns: tuple[str, ...]
) -> Prepared:
    """`build(dialect)`'s statement compiled once per dialect, as a `text()` SQLAlchemy caches.

    SQLAlchemy 2.0 compiles its dialect-specific `INSERT ... ON CONFLICT` (`upsert`) anew on
    every execution (those constructs have no cache key: `inherit_cache = False`), which cost
    a millisecond per verdict written. An upsert is built once here, with `columns` as its
    VALUES (bound by the column names) and `sa.bindparam`s for anything else, and compiled
    by the dialect itself; executed with a dict of those names."""
    return _compiled_once(build, dialect, columns)


@functools.cache
def _compiled_once(
    build: Callable[[str], sa.Executable], dialect: str, columns: tuple[str, ...]
) -> Prepared:
    # psycopg2's compiler: no `::TYPE` casts after the names (psycopg 3's, the default
    # PostgreSQL dialect from SQLAlchemy 2.1 on, writes `:name::VARCHAR`, which text() cannot
    # read back).
    named = (
        pg_dialect.psycopg2.dialect(paramstyle="named")
        if dialect == "postgresql"
        else sqlite_dialect.dialect(paramstyle="named")
    )
    statement: Any = build(dialect)
    compiled = statement.compile(dialect=named, column_keys=list(columns))
    text = sa.text(compiled.string)
    for name in columns:  # every column is given: none is left to a default
        text = text.bindparams(sa.bindparam(name))
    prepared = Prepared(text)
    prepared.write = True  # INSERT ... ON CONFLICT
    return prepared


Statement = sa.Executable | str | Prepared
Params = Mapping[str, Any] | Sequence[Any] | None


def _is_write(stmt: Statement) -> bool:
    if isinstance(stmt, Prepared):
        return stmt.write
    if isinstance(stmt, str):
        head = stmt.lstrip()[:7].upper()
        return not head.startswith(("SELECT", "PRAGMA", "WITH", "VALUES"))
    return not isinstance(stmt, sa.Select | sa.CompoundSelect)


class _Pending:
    """What `Database.execute` returns: awaited, the statement's `Rows`; or, for the parts not
    yet on Core, `async with db.execute(sql) as cur` (on `aside()`: a driver cursor read as
    asked for)."""

    __slots__ = ("_db", "_stmt", "_params", "_cursor")

    def __init__(self, db: Database, stmt: Statement, params: Params) -> None:
        self._db, self._stmt, self._params = db, stmt, params
        self._cursor: Any = None

    def __await__(self) -> Generator[Any, None, Rows]:
        return self._db._run(self._stmt, self._params).__await__()

    async def __aenter__(self) -> Any:
        db = self._db
        if (
            db.held is not None
            and not db.shared
            and isinstance(self._stmt, str)
            and not _is_write(self._stmt)
        ):
            self._cursor = await self._db._driver_cursor(self._stmt, self._params)
            return self._cursor
        return await self._db._run(self._stmt, self._params)

    async def __aexit__(self, *exc: object) -> None:
        if self._cursor is not None:
            await self._cursor.close()


class Database:
    """A store's way to its database: the pool (PostgreSQL), the one shared connection
    (SQLite), or a connection held for `aside()` / `transaction()` (`held`)."""

    def __init__(
        self,
        engine: AsyncEngine,
        health: StoreHealth,
        conn: AsyncConnection | None = None,
        *,
        shared: bool = False,
    ) -> None:
        self.engine = engine
        # The process's one shared connection (SQLite): results are always fetched whole.
        self.shared = shared
        self.dialect: str = engine.dialect.name
        self.health = health
        self._conn = conn
        self._driver: Any = None  # aiosqlite's connection under the shared one
        # `Prepared` statements go straight to asyncpg on a pooled connection.
        self._asyncpg = self.dialect == "postgresql" and engine.dialect.driver == "asyncpg"
        self._in_transaction = False
        self._owner: asyncio.Task[Any] | None = None  # the task inside `transaction()`
        # One transaction at a time on a held connection.
        self._lock = asyncio.Lock() if conn is not None else None

    @property
    def held(self) -> AsyncConnection | None:
        """The connection this one holds, or None (each statement takes the pool's)."""
        return self._conn

    def _owned(self) -> bool:
        """Whether the calling task is inside this connection's `transaction()`."""
        return self._in_transaction and asyncio.current_task() is self._owner

    @contextlib.asynccontextmanager
    async def _connection(self, owned: bool = False) -> AsyncIterator[AsyncConnection]:
        if self._conn is not None:
            # Statements of several tasks go to the held connection as they come, each on a
            # cursor of its own, queued by aiosqlite's thread as the first releases' were (a
            # lock around each would leave the thread idle between statements).
            yield self._conn
        else:
            async with self.engine.connect() as conn:
                yield conn

    def execute(self, stmt: Statement, params: Params = None) -> _Pending:
        return _Pending(self, stmt, params)

    def prepare(self, stmt: Prepared) -> None:
        """Compile `stmt` for this database's fast path now, not on its first use (a statement
        that takes SQLAlchemy long to compile, with the event loop held)."""
        if self.shared and self.dialect == "sqlite":
            stmt.for_sqlite(self.engine.dialect)
        elif self._asyncpg:
            stmt.for_postgresql(self.engine.dialect)

    async def _run(self, stmt: Statement, params: Params) -> Rows:
        if self.shared and isinstance(stmt, Prepared) and self.dialect == "sqlite":
            # Straight to aiosqlite (a cancelled caller leaves nothing half-done there).
            return await self._run_prepared(stmt, params)
        if self._conn is None:
            if self._asyncpg and isinstance(stmt, Prepared):
                compiled = stmt.for_postgresql(self.engine.dialect)
                if compiled is not None:
                    return await self._run_asyncpg(stmt, compiled, params)
            return await self._run_now(stmt, params)
        # A statement on a held connection runs to its end even when its caller is cancelled
        # (a stopping job runner, a timed-out request): SQLAlchemy gives up a connection
        # interrupted mid-statement, and this one is the whole process's.
        return await asyncio.shield(self._run_now(stmt, params, self._owned()))

    async def _run_now(self, stmt: Statement, params: Params, owned: bool = False) -> Rows:
        if isinstance(stmt, Prepared):
            if self.shared and self.dialect == "sqlite":
                return await self._run_prepared(stmt, params)
            stmt = stmt.statement
        try:
            async with self._connection(owned) as conn:
                if isinstance(stmt, str):
                    result = await conn.exec_driver_sql(stmt, _positional(params))
                else:
                    result = await conn.execute(stmt, params)  # type: ignore[arg-type]
                # A single-row INSERT on PostgreSQL gets an implicit RETURNING of its key, which
                # SQLAlchemy keeps for itself: that is no result of the caller's statement.
                implicit = isinstance(stmt, sa.Insert) and not stmt._returning
                if result.returns_rows and not implicit:
                    rows = result.all()
                    out = Rows(rows, len(rows) if _is_write(stmt) else -1)
                else:
                    out = Rows((), result.rowcount, getattr(result, "lastrowid", None))
        except Exception as exc:
            self.health.failed(exc, write=_is_write(stmt))
            raise
        if not self.health.available:
            self.health.succeeded(write=_is_write(stmt))
        return out

    async def _run_prepared(self, stmt: Prepared, params: Params) -> Rows:
        from horde_scanner.store.sqlite_driver import run_one

        sql, names, defaults = stmt.for_sqlite(self.engine.dialect)
        given: Mapping[str, Any] = params if isinstance(params, Mapping) else {}
        args = tuple(given[n] if n in given else defaults[n] for n in names)
        try:
            if self._driver is None:
                assert self._conn is not None
                self._driver = (await self._conn.get_raw_connection()).driver_connection
            driver = self._driver
            description, rows, rowcount, lastrowid = await driver._execute(
                run_one, driver._conn, sql, args, False
            )
        except Exception as exc:
            self.health.failed(exc, write=stmt.write)
            raise
        if not self.health.available:
            self.health.succeeded(write=stmt.write)
        if description is not None:
            return Rows(rows, len(rows) if stmt.write else -1)
        return Rows((), rowcount, lastrowid)

    async def _run_asyncpg(self, stmt: Prepared, compiled: _PgCompiled, params: Params) -> Rows:
        """A `Prepared` statement on a connection of the engine's pool, sent to asyncpg as
        compiled (its statement cache prepares it once per connection). A caller cancelled
        mid-statement gives the connection back as the previous release's pool did: asyncpg
        cancels the statement on the server and waits for that before the connection's next
        one. A connection that failed for want of the database is dropped, and with it every
        pooled one older than it, as SQLAlchemy does on a disconnect."""
        given: Mapping[str, Any] = params if isinstance(params, Mapping) else {}
        defaults = compiled.defaults
        args = [given[n] if n in given else defaults[n] for n in compiled.names]
        try:
            fairy = await self.engine.raw_connection()
            try:
                driver: Any = fairy.driver_connection
                if compiled.returns_rows:
                    records = await driver.fetch(compiled.sql, *args)
                    rows = [tuple(r) for r in records]
                    out = Rows(rows, len(rows) if stmt.write else -1)
                else:
                    out = Rows((), _status_count(await driver.execute(compiled.sql, *args)))
            except Exception as exc:
                if is_outage(exc):
                    pool: Any = self.engine.sync_engine.pool
                    await greenlet_spawn(pool._invalidate, fairy, exc)  # checks it in
                else:
                    await greenlet_spawn(fairy.close)
                raise
            except BaseException:
                await greenlet_spawn(fairy.close)
                raise
            await greenlet_spawn(fairy.close)
        except Exception as exc:
            self.health.failed(exc, write=stmt.write)
            raise
        if not self.health.available:
            self.health.succeeded(write=stmt.write)
        return out

    async def execute_fetchall(self, stmt: Statement, params: Params = None) -> list[Any]:
        return list((await self._run(stmt, params)).all())

    async def executemany(
        self, stmt: Statement, rows: Sequence[Mapping[str, Any]] | Sequence[Sequence[Any]]
    ) -> int:
        """`stmt` once per parameter set (dicts for Core statements); rows changed."""
        if not rows:
            return 0
        if self._conn is None:
            return await self._executemany_now(stmt, rows)
        return await asyncio.shield(self._executemany_now(stmt, rows, self._owned()))

    async def _executemany_now(
        self,
        stmt: Statement,
        rows: Sequence[Mapping[str, Any]] | Sequence[Sequence[Any]],
        owned: bool = False,
    ) -> int:
        try:
            async with self._connection(owned) as conn:
                if isinstance(stmt, str):
                    result = await conn.exec_driver_sql(stmt, [tuple(r) for r in rows])  # type: ignore[arg-type]
                else:
                    if isinstance(stmt, Prepared):
                        stmt = stmt.statement
                    result = await conn.execute(stmt, list(rows))  # type: ignore[arg-type]
                changed = result.rowcount
        except Exception as exc:
            self.health.failed(exc)
            raise
        if not self.health.available:
            self.health.succeeded(write=True)
        return changed

    async def executescript(self, sql: str) -> None:
        """Several statements in one string, as the driver runs them (tests, tools)."""
        async with self._connection(self._owned()) as conn:
            raw = await conn.get_raw_connection()
            driver = raw.driver_connection
            if self.dialect == "sqlite":
                await driver.executescript(sql)  # type: ignore[union-attr]
            else:
                await driver.execute(sql)  # type: ignore[union-attr]

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[Database]:
        """The block's statements in one transaction (SQLite: BEGIN IMMEDIATE, so it holds
        the write lock from the start and never fails half-way for want of it)."""
        if self._conn is None:
            async with self.engine.connect() as conn:
                held = Database(self.engine, self.health, conn)
                async with held.transaction() as tx:
                    yield tx
            return
        assert self._lock is not None
        async with self._lock:
            begin = "BEGIN IMMEDIATE" if self.dialect == "sqlite" else "BEGIN"
            try:
                await self._conn.exec_driver_sql(begin)
            except Exception as exc:
                self.health.failed(exc)
                raise
            self._in_transaction = True
            self._owner = asyncio.current_task()
            try:
                yield self
            except BaseException:
                self._in_transaction, self._owner = False, None
                with contextlib.suppress(Exception):
                    await self._conn.exec_driver_sql("ROLLBACK")
                raise
            self._in_transaction, self._owner = False, None
            try:
                await self._conn.exec_driver_sql("COMMIT")
            except Exception as exc:
                self.health.failed(exc)
                with contextlib.suppress(Exception):
                    await self._conn.exec_driver_sql("ROLLBACK")
                raise

    # -- bulk: long reads and batched writes, on a connection of its own -----------------------

    async def stream(
        self, stmt: sa.Executable, batch_rows: int = STREAM_BATCH
    ) -> AsyncGenerator[list[tuple[Any, ...]], None]:
        """The rows of a long read as plain tuples, `batch_rows` at a time, as they are asked
        for. Only on a connection of its own (`Store.aside()`: the shared SQLite connection
        fetches every result whole, see SQLITE_SHARED); close the iterator
        (`contextlib.aclosing`) when leaving early.

        SQLite reads through aiosqlite's cursor, a batch per trip to its thread; PostgreSQL
        through asyncpg's server-side cursor, in a read-only transaction of its own unless
        inside the caller's `transaction()`. Either way one batch is in memory at a time.

        Where every result column is plain (`is_plain`: text, integers, floats, bytes, as the
        driver gives them), the statement is compiled once and its rows are the driver's own
        tuples, past SQLAlchemy's result rows (those cost 3x the driver's on the hash index
        load, bench.hashlist_import). A column SQLAlchemy converts (Decimal, datetime, bool,
        JSON, an Enum) makes the whole read go through SQLAlchemy's streaming result instead,
        conversions and all (the same values, at that cost)."""
        if self._conn is None or self.shared:
            raise RuntimeError("stream() reads on a connection of its own: use Store.aside()")
        dialect = self.engine.dialect
        compiled = stmt.compile(  # type: ignore[attr-defined]
            dialect=dialect, compile_kwargs={"render_postcompile": True}
        )
        columns = compiled._result_columns or ()
        if not all(is_plain(column[3], dialect) for column in columns):
            async for rows in self._stream_rows(stmt, batch_rows):
                yield rows
            return
        values = compiled.construct_params()
        processors = compiled._bind_processors
        params = [
            processors[name](values[name]) if name in processors else values[name]
            for name in compiled.positiontup or ()
        ]
        try:
            cursor = await self._driver_cursor(compiled.string, params)
        except Exception as exc:
            self.health.failed(exc, write=False)
            raise
        try:
            while True:
                try:
                    rows = await cursor.fetchmany(batch_rows)
                except Exception as exc:
                    self.health.failed(exc, write=False)
                    raise
                if not rows:
                    return
                yield rows
        finally:
            await cursor.close()

    async def _stream_rows(
        self, stmt: sa.Executable, batch_rows: int
    ) -> AsyncGenerator[list[tuple[Any, ...]], None]:
        """`stream` through SQLAlchemy's result (its columns converted)."""
        assert self._conn is not None
        conn = self._conn
        own = self.dialect == "postgresql" and not self._in_transaction
        if own:
            await conn.exec_driver_sql("BEGIN READ ONLY")
        try:
            result = await conn.stream(stmt)
            try:
                async for batch in result.partitions(batch_rows):
                    yield [tuple(row) for row in batch]
            finally:
                await result.close()
        except Exception as exc:
            self.health.failed(exc, write=False)
            raise
        finally:
            if own:
                with contextlib.suppress(Exception):
                    await conn.exec_driver_sql("COMMIT")

    async def write_many(
        self,
        stmt: sa.Executable,
        rows: Sequence[Sequence[Any]],
        keys: tuple[str, ...],
        per_batch: int,
    ) -> None:
        """`stmt` once for each of `rows` (each row's values in the order of `keys`, the
        names `stmt` binds: an INSERT's column keys, or `sa.bindparam` names), `per_batch`
        rows to a transaction of their own. Only on a connection of its own
        (`Store.aside()`), outside `transaction()`.

        A list of a million entries never holds the write lock for long (uploads wait on it
        to record their verdicts), and a failure loses only its own batch: the ones before it
        are committed, the rest are not tried. Each batch runs to its end even when the
        caller is cancelled (the connection is never left mid-transaction).

        Where every bound column is plain (`is_plain`), the statement is compiled once per
        dialect and each batch goes to the driver's executemany as it is, in one trip:
        SQLite: BEGIN IMMEDIATE, the rows, COMMIT in aiosqlite's thread; PostgreSQL: asyncpg's
        executemany in a transaction. SQLAlchemy's per-row parameter processing (a dict per
        row, then its bind processing) cost ~17 us a row on the event loop, and made a
        million-entry import 1.7x slower than the plain SQL before it (bench.hashlist_import).
        A column SQLAlchemy converts (Decimal, datetime, bool, JSON, an Enum) sends the batches
        through SQLAlchemy's executemany instead, conversions and all. A failing batch raises
        the driver's own error on the fast path (as `Prepared` statements do), SQLAlchemy's on
        the other. A name `stmt` binds beyond `keys` (a literal in the statement) is a
        programming error: ValueError."""
        if self._conn is None or self.shared:
            raise RuntimeError("write_many() writes on a connection of its own: use aside()")
        if self._in_transaction:
            raise RuntimeError("write_many() commits its own batches: not inside transaction()")
        sql, order = _bulk_statement(self.engine.dialect, stmt, keys)
        for start in range(0, len(rows), per_batch):
            batch = rows[start : start + per_batch]
            if sql is None:
                async with self.transaction() as tx:
                    await tx.executemany(stmt, [dict(zip(keys, row, strict=True)) for row in batch])
                continue
            if order is not None:
                batch = [tuple(row[i] for i in order) for row in batch]
            assert self._lock is not None
            async with self._lock:
                try:
                    await asyncio.shield(self._write_batch(sql, batch))
                except Exception as exc:
                    self.health.failed(exc)
                    raise
            if not self.health.available:
                self.health.succeeded(write=True)

    async def _write_batch(self, sql: str, batch: Sequence[Sequence[Any]]) -> None:
        """One batch in a transaction of its own, as the driver takes it."""
        assert self._conn is not None
        raw = await self._conn.get_raw_connection()
        driver: Any = raw.driver_connection
        if self.dialect == "sqlite":
            from horde_scanner.store.sqlite_driver import run_batch

            await driver._execute(run_batch, driver._conn, sql, batch)
        else:
            async with driver.transaction():
                await driver.executemany(sql, batch)

    # -- strings (tests, tools, and the parts not yet on Core) -------------------------------

    async def _driver_cursor(self, sql: str, params: Params) -> Any:
        """A driver cursor on the held connection, read as asked for."""
        assert self._conn is not None
        raw = await self._conn.get_raw_connection()
        driver: Any = raw.driver_connection
        if self.dialect == "sqlite":
            return await driver.execute(sql, _positional(params) or ())
        return await PgStream.open(driver, sql, _positional(params) or ())

    async def close(self) -> None:
        if self._conn is not None:
            await self._conn.close()


class PgStream:
    """The rows of one query on a connection of its own (`Store.aside()`), read as they are
    asked for through a server-side cursor: a long read (the hash index, an export) holds
    one batch in memory, not the whole result. Outside a transaction of the caller's, the
    cursor gets a read-only one of its own, ended when the `async with` block ends."""

    rowcount = -1
    lastrowid: int | None = None

    def __init__(self, cursor: Any, transaction: Any) -> None:
        self._cursor = cursor
        self._transaction = transaction

    @classmethod
    async def open(cls, conn: Any, statement: str, params: Sequence[Any]) -> PgStream:
        transaction = None
        if not conn.is_in_transaction():
            transaction = conn.transaction(readonly=True)
            await transaction.start()
        try:
            cursor = await conn.cursor(statement, *params)
        except BaseException:
            if transaction is not None:
                await transaction.rollback()
            raise
        return cls(cursor, transaction)

    async def fetchone(self) -> tuple[Any, ...] | None:
        row = await self._cursor.fetchrow()
        return tuple(row) if row is not None else None

    async def fetchmany(self, size: int) -> list[tuple[Any, ...]]:
        """Up to `size` rows, PG_FETCH at a time from the server, each of those made into
        tuples with the collector paused (see `_collector_paused`)."""
        rows: list[tuple[Any, ...]] = []
        while len(rows) < size:
            want = min(PG_FETCH, size - len(rows))
            with _collector_paused():
                got = [tuple(r) for r in await self._cursor.fetch(want)]
            rows += got
            if len(got) < want:
                break
        return rows

    async def fetchall(self) -> list[tuple[Any, ...]]:
        rows: list[tuple[Any, ...]] = []
        while batch := await self.fetchmany(STREAM_BATCH):
            rows += batch
        return rows

    def __aiter__(self) -> AsyncIterator[tuple[Any, ...]]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[tuple[Any, ...]]:
        while batch := await self.fetchmany(STREAM_BATCH):
            for row in batch:
                yield row

    async def close(self) -> None:
        if self._transaction is not None:
            transaction, self._transaction = self._transaction, None
            await transaction.commit()


def _status_count(status: str) -> int:
    """The rows a PostgreSQL command changed, from its status ("DELETE 3", "INSERT 0 1")."""
    count = status.rpartition(" ")[2]
    return int(count) if count.isdigit() else -1


def _positional(params: Params) -> Any:
    if params is None:
        return None
    if isinstance(params, Mapping):
        return params
    return tuple(params)


@contextlib.contextmanager
def _collector_paused() -> Iterator[None]:
    """Python's cyclic garbage collector off while asyncpg makes PG_FETCH records and they
    are made into tuples (`PgStream.fetchmany`).

    asyncpg's records, unlike tuples of plain values, are never untracked. Fetched 50,000 at
    a time with the collector on, collections during the fetch found them all alive and
    promoted them, and once the oldest generation had grown by a quarter every object in the
    process was traversed again: about one full collection a batch. With SQLAlchemy loaded
    the process holds twice the objects of the previous release, and on a million-row read
    those collections were most of the index read's time and all of its regression against
    2fa284f (bench.hashlist_import; counted with `gc.callbacks`). Paused, the records go by
    reference count before any collection sees them, and the tuples (plain values) are
    untracked by the next young collection. Fetches of 1,000 (the previous release's batch)
    keep that collection small: after paused fetches of 50,000, each young collection over
    the batch cost more than the paused one saved on a refresh's read. Other coroutines run
    meanwhile without collections for the length of one fetch; their cycles wait for the next
    one. (SQLite's rows are tuples of plain values already, untracked young: pausing there
    cost more than it saved.) Leaves the collector off when something else turned it off."""
    if not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def is_plain(column_type: Any, dialect: sa.Dialect) -> bool:
    """Whether values of this type go to the driver, and come back from it, as Python has
    them, with nothing for SQLAlchemy to convert: text, integers, floats, bytes (and NULL).
    What `Database.stream` and `Database.write_many` take as they are."""
    impl = column_type.dialect_impl(dialect)  # variants resolved (store.metadata's Int, Real)
    if isinstance(impl, sa.Float):
        return not impl.asdecimal
    if isinstance(impl, sa.Enum | sa.Numeric):
        return False
    return isinstance(impl, sa.String | sa.Integer | sa.LargeBinary)


@functools.lru_cache(maxsize=64)
def _bulk_statement(
    dialect: sa.Dialect, stmt: sa.Executable, keys: tuple[str, ...]
) -> tuple[str | None, tuple[int, ...] | None]:
    """`stmt` as `dialect`'s SQL for parameters named `keys` (None where a bound column is not
    plain: SQLAlchemy must convert its values), and where each placeholder's value sits in a
    row of `keys` (None: in the same order)."""
    compiled = stmt.compile(dialect=dialect, column_keys=list(keys))  # type: ignore[attr-defined]
    names = tuple(compiled.positiontup or ())
    unknown = set(names) - set(keys)
    if unknown:  # a programming error: a literal bound in a bulk statement
        raise ValueError(f"bulk statement binds {sorted(unknown)} beyond its rows' {keys}")
    if not all(is_plain(compiled.binds[name].type, dialect) for name in names):
        return None, None
    order = tuple(keys.index(name) for name in names)
    return compiled.string, None if order == tuple(range(len(keys))) else order
