"""Copy a SQLite store into an empty PostgreSQL one (`horde-scanner store migrate --to URL`).

Every table the schema steps made is copied in one transaction on the target, in batches;
then the rows of each table are counted on both sides and must agree, or nothing is kept.
Identity columns (`id`) continue after the highest copied id.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from horde_scanner.store.sqlite import Store, StoreError

log = logging.getLogger(__name__)

_BATCH = 2000
# Kept by each store itself (schema steps, SQLite's AUTOINCREMENT counters).
_SKIP = {"schema_migrations", "sqlite_sequence", "sqlite_stat1"}


@dataclass(frozen=True, slots=True)
class TableCopy:
    table: str
    source: int
    target: int


async def _tables(source: Store) -> list[str]:
    rows = await source.db.execute_fetchall(
        "SELECT name FROM sqlite_master WHERE type='table' ORDER BY rowid"
    )
    return [str(r[0]) for r in rows if r[0] not in _SKIP]


async def _count(db: object, table: str) -> int:
    rows = await db.execute_fetchall(f'SELECT COUNT(*) FROM "{table}"')  # type: ignore[attr-defined]
    return int(next(iter(rows))[0])


async def migrate(
    source: Store, target: Store, *, progress: Callable[[str, int], None] | None = None
) -> list[TableCopy]:
    if source.dialect != "sqlite":
        raise StoreError("the source must be a SQLite store")
    if target.dialect != "postgresql":
        raise StoreError("the target must be a PostgreSQL store (postgresql://...)")
    await source.flush_audit()
    tables = await _tables(source)
    target_tables = {
        str(r[0])
        for r in await target.db.execute_fetchall(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = current_schema()"
        )
    }
    missing = [t for t in tables if t not in target_tables]
    if missing:
        raise StoreError(f"the target has no table {', '.join(missing)}: is it older?")
    for table in tables:
        # The schema steps seed hash_generation; any other row means the target is in use.
        if table != "hash_generation" and await _count(target.db, table):
            raise StoreError(
                f"the target is not empty (table {table} has rows); migrate into a new database"
            )
    copies: list[TableCopy] = []
    async with source.aside() as src, target.aside() as dst:
        await dst.execute("BEGIN")
        try:
            await dst.execute("DELETE FROM hash_generation")
            for table in tables:
                columns = [
                    str(r[1]) for r in await src.execute_fetchall(f'PRAGMA table_info("{table}")')
                ]
                names = ", ".join(f'"{c}"' for c in columns)
                insert = f'INSERT INTO "{table}" ({names}) VALUES ({", ".join("?" * len(columns))})'
                copied = 0
                async with src.execute(f'SELECT {names} FROM "{table}"') as cur:
                    while rows := list(await cur.fetchmany(_BATCH)):
                        await dst.executemany(insert, rows)
                        copied += len(rows)
                        if progress is not None:
                            progress(table, copied)
                if "id" in columns:
                    await dst.execute(
                        f"SELECT setval(pg_get_serial_sequence('{table}', 'id'),"
                        f' COALESCE((SELECT MAX(id) FROM "{table}"), 0) + 1, false)'
                    )
                copies.append(TableCopy(table, await _count(src, table), await _count(dst, table)))
            wrong = [c for c in copies if c.source != c.target]
            if wrong:
                raise StoreError(
                    "counts differ after the copy: "
                    + ", ".join(f"{c.table} {c.source} vs {c.target}" for c in wrong)
                )
            await dst.execute("COMMIT")
        except BaseException:
            await dst.execute("ROLLBACK")
            raise
    return copies
