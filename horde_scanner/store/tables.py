"""What every part of the store has in common: the base class, the database seam its
statements go to (store/database.py), and helpers for statements both dialects share.

The store is one object made of parts, one per concern (verdicts, jobs, audit, sweeps, hash
lists, review, kudos, cluster), each in its own module here with its tables (`sa.Table` on
store/metadata.py's `METADATA`) next to its queries (SQLAlchemy Core, compiled by each
dialect); `store.sqlite.Store` composes them, and `store.postgres.PgStore` is the same parts
on PostgreSQL. Nothing outside `store/` writes SQL: the rest of the code calls the parts'
methods and gets back plain rows (the dataclasses defined beside the queries). Schema changes
are Alembic revisions (store/migrations/).
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql as pg_dialect
from sqlalchemy.dialects import sqlite as sqlite_dialect

from horde_scanner.store.database import Database as SqlDatabase

if TYPE_CHECKING:
    from horde_scanner.store.outage import StoreHealth


@dataclass(frozen=True, slots=True)
class SchemaStep:
    """(Before Alembic; no longer applied, kept until the last parts drop their lists.) One
    named change to the schema, applied once per database, in name order.

    A released step is never edited or renamed (databases out there have applied it); a
    change is a new step with a later name."""

    name: str
    sql: str  # SQLite's dialect; PostgreSQL gets it translated (store.postgres.translate_ddl)
    postgres: str = ""  # what PostgreSQL needs besides (its triggers: SQLite's are dropped)


# What another process changed: ("verdict" | "list", sha256), ("hashes", ""), ("job", sha256),
# or ("reset", "") when changes may have been missed (a lost connection).
ChangeListener = Callable[[str, str], None]


# A statement that gives rows: a query (PRAGMA included, on SQLite), or a write RETURNING them.
QUERY = re.compile(r"^\s*(SELECT|WITH|VALUES|PRAGMA)\b", re.IGNORECASE)
RETURNING = re.compile(r"\sRETURNING\s", re.IGNORECASE)


class Database(Protocol):
    """The shared connection the parts' queries go to: SQLite's (sqlite.SharedConnection) or
    PostgreSQL's (postgres.PgDatabase). `execute` is awaited, or used as `async with ... as
    cur`; either way the statement has run to its end and `cur` holds its rows (`Rows`)."""

    def execute(self, sql: str, parameters: Iterable[Any] = ()) -> Any: ...

    async def execute_fetchall(self, sql: str, parameters: Iterable[Any] = ()) -> Any: ...

    async def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> Any: ...

    async def executescript(self, sql: str) -> Any: ...

    async def close(self) -> None: ...


class Tables:
    """The base of every part: the shared connection, and what the composed store provides."""

    _db: SqlDatabase
    holder: str  # names this process (host:pid) in rows other processes read
    health: StoreHealth  # away or not (store/outage.py)

    def aside(self) -> contextlib.AbstractAsyncContextManager[Any]:
        """A connection of its own (the composed store implements it)."""
        raise NotImplementedError


def upsert(dialect: str, table: sa.Table) -> tuple[Any, Any]:
    """`INSERT` of `dialect` that takes `.on_conflict_do_update` / `_do_nothing`, and its
    `excluded` (the row that was to be inserted)."""
    module = pg_dialect if dialect == "postgresql" else sqlite_dialect
    statement = module.insert(table)
    return statement, statement.excluded


def chunks(values: Sequence[Any], size: int | None = None) -> list[Sequence[Any]]:
    """`values` in pieces of at most `size` (IN_CHUNK), for `column.in_(piece)` lookups."""
    step = size or IN_CHUNK
    return [values[start : start + step] for start in range(0, len(values), step)]


# Values bound per `IN (...)` lookup: well under SQLite's bound-variable limit (32766).
IN_CHUNK = 500


async def rows_in(
    db: Database, query: str, values: Sequence[Any], *, before: Sequence[Any] = ()
) -> list[Any]:
    """Rows of `query` for all of `values`, looked up a chunk at a time: each `{in}` in the
    query stands for one chunk's placeholders, bound (after `before`) once per `{in}`."""
    found: list[Any] = []
    for start in range(0, len(values), IN_CHUNK):
        chunk = list(values[start : start + IN_CHUNK])
        sql = query.replace("{in}", ",".join("?" * len(chunk)))
        found += await db.execute_fetchall(sql, [*before, *(chunk * query.count("{in}"))])
    return found


async def write_in_batches(
    db: Database, statement: str, rows: Sequence[Sequence[object]], per_batch: int
) -> None:
    """`statement` for each of `rows`, `per_batch` rows to a transaction: a list of a million
    entries never holds the write lock for long (uploads wait on it to record verdicts)."""
    for start in range(0, len(rows), per_batch):
        await db.execute("BEGIN IMMEDIATE")
        try:
            await db.executemany(statement, rows[start : start + per_batch])
            await db.execute("COMMIT")
        except BaseException:
            await db.execute("ROLLBACK")
            raise
