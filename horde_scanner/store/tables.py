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
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql as pg_dialect
from sqlalchemy.dialects import sqlite as sqlite_dialect

from horde_scanner.store.database import Database as SqlDatabase
from horde_scanner.store.database import compiled_once

if TYPE_CHECKING:
    from horde_scanner.store.outage import StoreHealth


# What another process changed: ("verdict" | "list", sha256), ("hashes", ""), ("job", sha256),
# or ("reset", "") when changes may have been missed (a lost connection).
ChangeListener = Callable[[str, str], None]


# The seam every part's statements go to (store/database.py), and its statements compiled
# once (for the parts' upserts).
Database = SqlDatabase
__all__ = ["Database", "Tables", "chunks", "compiled_once", "upsert"]


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


def row_limit(value: int, name: str = "limit") -> int:
    """A caller's LIMIT or OFFSET, checked: SQLite reads a negative one as "no limit" (or no
    offset), PostgreSQL refuses it; every store refuses it alike (interfaces.py)."""
    if value < 0:
        raise ValueError(f"{name} must be 0 or more, not {value}")
    return value


def refuse_nul(*texts: str | None) -> None:
    """Text with a NUL character: PostgreSQL's text cannot hold one (the statement fails, a
    batch of a list import half-written), SQLite's can. Every store refuses it alike, before
    writing anything (ValueError)."""
    for text in texts:
        if text and "\x00" in text:
            raise ValueError(f"text with a NUL character cannot be stored: {text[:40]!r}")


def chunks(values: Sequence[Any], size: int | None = None) -> list[Sequence[Any]]:
    """`values` in pieces of at most `size` (IN_CHUNK), for `column.in_(piece)` lookups."""
    step = size or IN_CHUNK
    return [values[start : start + step] for start in range(0, len(values), step)]


# Values bound per `IN (...)` lookup: well under SQLite's bound-variable limit (32766).
IN_CHUNK = 500
