"""What every part of the store has in common: how a part declares its tables, and the
connection its queries go to.

The store is one object made of parts, one per concern (verdicts, jobs, audit, sweeps, hash
lists, review, kudos, cluster), each in its own module here with its schema steps next to its
queries; `store.sqlite.Store` composes them, and `store.postgres.PgStore` is the same parts on
PostgreSQL. Nothing outside `store/` writes SQL: the rest of the code calls the parts'
methods and gets back plain rows (the dataclasses defined beside the queries).

Queries are written once, in the portable subset `store.postgres.PgDatabase` translates
(`?` placeholders, `ON CONFLICT ... excluded.`, `RETURNING`, no SQLite-only functions).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import aiosqlite


@dataclass(frozen=True, slots=True)
class SchemaStep:
    """One named change to the schema, applied once per database, in name order.

    A released step is never edited or renamed (databases out there have applied it); a
    change is a new step with a later name."""

    name: str
    sql: str  # SQLite's dialect; PostgreSQL gets it translated (store.postgres.translate_ddl)
    postgres: str = ""  # what PostgreSQL needs besides (its triggers: SQLite's are dropped)


# What another process changed: ("verdict" | "list", sha256), ("hashes", ""), ("job", sha256),
# or ("reset", "") when changes may have been missed (a lost connection).
ChangeListener = Callable[[str, str], None]


class Tables:
    """The base of every part: the shared connection, and what the composed store provides."""

    _db: aiosqlite.Connection
    holder: str  # names this process (host:pid) in rows other processes read
    dialect: str

    def aside(self) -> contextlib.AbstractAsyncContextManager[Any]:
        """A connection of its own (the composed store implements it)."""
        raise NotImplementedError

    async def flush_audit(self) -> None:
        raise NotImplementedError
