"""TEMPORARY (STORE-B, until STORE-A's SQLAlchemy seam lands): run a Core statement on the
store's current connection (store/tables.Database: sqlite.SharedConnection, an aiosqlite
connection from `aside()`, or postgres.PgDatabase).

The statement is compiled by SQLAlchemy for the connection's dialect (placeholders, upserts,
RETURNING, expanded IN lists) and handed over as SQL text with positional parameters. When
the seam lands these three calls become `conn.execute(stmt)`, `conn.execute(stmt, rows)`
and `conn.stream(stmt)`, and this module goes.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Mapping, Sequence
from functools import lru_cache
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

_DIALECTS: dict[str, sa.Dialect] = {
    "sqlite": sqlite.dialect(paramstyle="qmark"),
    # PgDatabase turns `?` into `$n` (outside string literals).
    "postgresql": postgresql.dialect(paramstyle="qmark"),
}


def dialect_of(db: Any) -> str:
    """The dialect of one of the store's connections."""
    return "postgresql" if type(db).__name__ == "PgDatabase" else "sqlite"


def compiled(db: Any, stmt: sa.Executable) -> tuple[str, list[Any]]:
    """`stmt` as SQL text for `db`'s dialect, with its parameters in placeholder order."""
    c = stmt.compile(  # type: ignore[attr-defined]
        dialect=_DIALECTS[dialect_of(db)], compile_kwargs={"render_postcompile": True}
    )
    params = c.construct_params()
    return str(c), [params[name] for name in c.positiontup or ()]


@lru_cache(maxsize=256)
def _many(dialect: str, stmt: sa.Executable, keys: tuple[str, ...]) -> tuple[str, list[str]]:
    c = stmt.compile(dialect=_DIALECTS[dialect], column_keys=list(keys))  # type: ignore[attr-defined]
    return str(c), list(c.positiontup or ())


async def run(db: Any, stmt: sa.Executable) -> Any:
    """Run one statement; its rows (fetchone / fetchall) and rowcount, fetched at once."""
    sql, params = compiled(db, stmt)
    return await db.execute(sql, params)


async def run_many(db: Any, stmt: sa.Executable, rows: Sequence[Mapping[str, Any]]) -> None:
    """`stmt` once per row (executemany); every row has the keys of the first."""
    if not rows:
        return
    sql, order = _many(dialect_of(db), stmt, tuple(rows[0]))
    await db.executemany(sql, [[row[name] for name in order] for row in rows])


@contextlib.asynccontextmanager
async def stream(db: Any, stmt: sa.Executable) -> AsyncIterator[Any]:
    """A long read on a connection of its own (`aside()`): a cursor to `fetchmany` from
    (PostgreSQL: a server-side cursor; SQLite: the connection's own thread)."""
    sql, params = compiled(db, stmt)
    async with db.execute(sql, params) as cur:
        yield cur


def insert(db: Any, table: Any) -> Any:
    """The INSERT of `db`'s dialect, with `on_conflict_do_nothing` / `on_conflict_do_update`
    (sqlite.insert and postgresql.insert take the same arguments)."""
    name = db if isinstance(db, str) else dialect_of(db)
    return postgresql.insert(table) if name == "postgresql" else sqlite.insert(table)


async def write_batches(
    db: Any, stmt: sa.Executable, rows: Sequence[Sequence[Any]], keys: Sequence[str], per_batch: int
) -> None:
    """`stmt` for each of `rows` (values in the order of `keys`), `per_batch` rows to a
    transaction: a list of a million entries never holds the write lock for long (uploads
    wait on it to record verdicts). Parameter dicts are made a batch at a time."""
    for start in range(0, len(rows), per_batch):
        batch = [dict(zip(keys, row, strict=True)) for row in rows[start : start + per_batch]]
        await db.execute("BEGIN IMMEDIATE")
        try:
            await run_many(db, stmt, batch)
            await db.execute("COMMIT")
        except BaseException:
            await db.execute("ROLLBACK")
            raise
