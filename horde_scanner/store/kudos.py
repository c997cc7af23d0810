"""The AI Horde's daily kudos budget (backends/kudos.py): what was spent on each UTC day, so a
restart does not hand out the day's budget again.

Data lifecycle: one row per day, added to as kudos are charged (by every replica sharing the
store: the row is the day's spend of them all); it only grows. Old days' rows are kept and
never read.
"""

from __future__ import annotations

import time

from horde_scanner.store.tables import SchemaStep, Tables

STEPS = [
    SchemaStep(
        "1100-horde-kudos",
        """
    CREATE TABLE horde_kudos (
        day TEXT PRIMARY KEY,
        spent REAL NOT NULL,
        updated_at REAL NOT NULL
    );
    """,
    ),
]


class KudosTables(Tables):
    async def kudos_spent(self, day: str) -> float | None:
        """What was spent on `day` (YYYY-MM-DD, UTC); None when nothing was recorded."""
        async with self._db.execute("SELECT spent FROM horde_kudos WHERE day=?", (day,)) as cur:
            row = await cur.fetchone()
        return float(row[0]) if row is not None else None

    async def add_kudos_spent(self, day: str, charged: float) -> float:
        """Book `charged` kudos on `day` and return the day's total, as every process sharing
        the store booked it (one atomic statement: replicas never overwrite each other)."""
        rows = await self._db.execute_fetchall(
            "INSERT INTO horde_kudos (day, spent, updated_at) VALUES (?,?,?)"
            " ON CONFLICT(day) DO UPDATE SET spent=horde_kudos.spent + excluded.spent,"
            " updated_at=excluded.updated_at RETURNING spent",
            (day, charged, time.time()),
        )
        return float(next(iter(rows))[0])
