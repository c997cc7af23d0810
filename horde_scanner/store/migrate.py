"""Copy a SQLite store into an empty PostgreSQL one (`horde-scanner store migrate --to URL`).

Every table of the metadata (store/metadata.py: what the revisions made, on both sides at the
same revision, since both stores upgraded on opening) is copied in one transaction on the
target, read as a stream from the source and written in batches; then the rows of each table
are counted on both sides and must agree, or nothing is kept. Identity columns (`id`)
continue after the highest copied id.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import sqlalchemy as sa

from horde_scanner.store.composed import ComposedStore
from horde_scanner.store.database import Database, StoreError
from horde_scanner.store.metadata import all_tables

log = logging.getLogger(__name__)

_BATCH = 2000
# Copied last: the triggers on `lists` and `verdicts` bump it while those are copied.
_LAST = "hash_generation"


@dataclass(frozen=True, slots=True)
class TableCopy:
    table: str
    source: int
    target: int


async def _count(db: Database, table: sa.Table) -> int:
    return int((await db.execute(sa.select(sa.func.count()).select_from(table))).scalar() or 0)


def _tables() -> list[sa.Table]:
    tables = list(all_tables().sorted_tables)
    return [t for t in tables if t.name != _LAST] + [t for t in tables if t.name == _LAST]


async def migrate(
    source: ComposedStore,
    target: ComposedStore,
    *,
    progress: Callable[[str, int], None] | None = None,
) -> list[TableCopy]:
    if source.dialect != "sqlite":
        raise StoreError("the source must be a SQLite store")
    if target.dialect != "postgresql":
        raise StoreError("the target must be a PostgreSQL store (postgresql://...)")
    await source.flush_audit()
    tables = _tables()
    for table in tables:
        # The baseline seeds hash_generation; any other row means the target is in use.
        if table.name != _LAST and await _count(target.db, table):
            raise StoreError(
                f"the target is not empty (table {table.name} has rows);"
                " migrate into a new database"
            )
    copies: list[TableCopy] = []
    async with source.aside() as src, target.aside() as dst, dst.transaction() as tx:
        for table in tables:
            if table.name == _LAST:
                await tx.execute(sa.delete(table))
            copied = 0
            insert = sa.insert(table)
            names = table.c.keys()
            async for batch in src.stream(sa.select(table), _BATCH):
                await tx.executemany(insert, [dict(zip(names, row, strict=True)) for row in batch])
                copied += len(batch)
                if progress is not None:
                    progress(table.name, copied)
            identity = table.c.get("id")
            if identity is not None and identity.identity is not None:
                highest = sa.select(sa.func.coalesce(sa.func.max(identity), 0) + 1)
                sequence = sa.func.pg_get_serial_sequence(table.name, "id")
                await tx.execute(
                    sa.select(sa.func.setval(sequence, highest.scalar_subquery(), False))
                )
            copies.append(TableCopy(table.name, await _count(src, table), await _count(tx, table)))
        wrong = [c for c in copies if c.source != c.target]
        if wrong:
            raise StoreError(
                "counts differ after the copy: "
                + ", ".join(f"{c.table} {c.source} vs {c.target}" for c in wrong)
            )
    return copies
