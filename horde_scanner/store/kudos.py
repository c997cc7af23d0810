"""The AI Horde's daily kudos budget (backends/kudos.py): what was spent on each UTC day, so a
restart does not hand out the day's budget again.

Data lifecycle: one row per day, added to as kudos are charged (by every replica sharing the
store: the row is the day's spend of them all); it only grows. Old days' rows are kept and
never read.
"""

from __future__ import annotations

import time

import sqlalchemy as sa

from horde_scanner.store.metadata import Real, Text, metadata
from horde_scanner.store.tables import Tables, compiled_once, upsert

horde_kudos = sa.Table(
    "horde_kudos",
    metadata,
    sa.Column("day", Text, primary_key=True),  # YYYY-MM-DD, UTC
    sa.Column("spent", Real, nullable=False),
    sa.Column("updated_at", Real, nullable=False),
)


class KudosTables(Tables):
    async def kudos_spent(self, day: str) -> float | None:
        """What was spent on `day` (YYYY-MM-DD, UTC); None when nothing was recorded."""
        query = sa.select(horde_kudos.c.spent).where(horde_kudos.c.day == day)
        spent = (await self._db.execute(query)).scalar()
        return float(spent) if spent is not None else None

    async def add_kudos_spent(self, day: str, charged: float) -> float:
        """Book `charged` kudos on `day` and return the day's total, as every process sharing
        the store booked it (one atomic statement: replicas never overwrite each other)."""
        statement = compiled_once(_book, self._db.dialect, ("day", "spent", "updated_at"))
        row = {"day": day, "spent": charged, "updated_at": time.time()}
        return float((await self._db.execute(statement, row)).scalar())


def _book(dialect: str) -> sa.Executable:
    insert, new = upsert(dialect, horde_kudos)
    return insert.on_conflict_do_update(
        index_elements=[horde_kudos.c.day],
        set_={"spent": horde_kudos.c.spent + new.spent, "updated_at": new.updated_at},
    ).returning(horde_kudos.c.spent)
