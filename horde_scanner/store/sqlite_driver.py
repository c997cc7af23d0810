"""SQLAlchemy's aiosqlite dialect, with a statement's whole trip in one call to the database
thread (`sqlite+hs_aiosqlite`).

The stock adapter makes four trips per statement to aiosqlite's thread (open a cursor,
execute, fetch, close), each a queue hand-over and a wake-up of the event loop; the store's
statements are small (a row by key), so those trips were most of their cost (bench/
store_work.py: a miss's store work ran at a fraction of the previous release's rate). Here
one function does all four in the thread, as `aiosqlite.Connection.execute_fetchall` does:
rows, description, rowcount and lastrowid come back together. Server-side cursors (streams on
`aside()`) are the stock adapter's.
"""

from __future__ import annotations

from collections import deque
from typing import Any

from sqlalchemy.dialects import registry
from sqlalchemy.dialects.sqlite.aiosqlite import (
    AsyncAdapt_aiosqlite_connection,
    AsyncAdapt_aiosqlite_cursor,
    AsyncAdapt_aiosqlite_dbapi,
    AsyncAdapt_aiosqlite_ss_cursor,
    SQLiteDialect_aiosqlite,
)

NAME = "hs_aiosqlite"


def run_one(connection: Any, operation: str, parameters: Any, many: bool) -> tuple[Any, ...]:
    """In aiosqlite's thread: the statement, start to end."""
    cursor = connection.cursor()
    try:
        if many:
            cursor.executemany(operation, parameters)
        else:
            cursor.execute(operation, () if parameters is None else parameters)
        if cursor.description:
            return cursor.description, cursor.fetchall(), -1, -1
        return None, None, cursor.rowcount, cursor.lastrowid
    finally:
        cursor.close()


def run_batch(connection: Any, operation: str, rows: Any) -> None:
    """In aiosqlite's thread: one batch of a bulk write (`Database.write_many`) in a
    transaction of its own, start to end: nothing else on the connection runs in between,
    and the connection is never left inside the transaction."""
    connection.execute("BEGIN IMMEDIATE")
    try:
        connection.executemany(operation, rows).close()
        connection.execute("COMMIT")
    except BaseException:
        if connection.in_transaction:
            connection.execute("ROLLBACK")
        raise


class _OneTripCursor(AsyncAdapt_aiosqlite_cursor):
    __slots__ = ()

    def _trip(self, operation: str, parameters: Any, many: bool) -> None:
        connection = self._connection
        try:
            description, rows, rowcount, lastrowid = self.await_(
                connection._execute(run_one, connection._conn, operation, parameters, many)
            )
        except Exception as error:
            self._adapt_connection._handle_exception(error)
        self.description = description
        self._rows = deque(rows) if rows is not None else deque()
        self.rowcount = rowcount
        self.lastrowid = lastrowid

    def execute(self, operation: Any, parameters: Any = None) -> Any:
        self._trip(operation, parameters, False)

    def executemany(self, operation: Any, seq_of_parameters: Any) -> Any:
        self._trip(operation, seq_of_parameters, True)


class _Connection(AsyncAdapt_aiosqlite_connection):
    __slots__ = ()

    def cursor(self, server_side: bool = False) -> AsyncAdapt_aiosqlite_cursor:
        if server_side:
            return AsyncAdapt_aiosqlite_ss_cursor(self)
        return _OneTripCursor(self)


class _DBAPI(AsyncAdapt_aiosqlite_dbapi):
    def connect(self, *arg: Any, **kw: Any) -> _Connection:
        stock = super().connect(*arg, **kw)
        return _Connection(self, stock._connection)


class OneTripDialect(SQLiteDialect_aiosqlite):
    driver = NAME
    supports_statement_cache = True

    @classmethod
    def import_dbapi(cls) -> _DBAPI:  # type: ignore[override]
        return _DBAPI(__import__("aiosqlite"), __import__("sqlite3"))


def register() -> None:
    """Make `sqlite+hs_aiosqlite://` known to SQLAlchemy (idempotent)."""
    registry.register(f"sqlite.{NAME}", __name__, "OneTripDialect")
