"""Admin review: quarantined copies and what became of them (the admin's own holder,
review/quarantine.py, keeps the files; this part keeps the rows).

Data lifecycle: a copy taken out of storage is admitted `held` -> an admin's allow makes it
`released` (put back, or left for a person to put back) | a confirmed positive makes it
`deleted`. Rows are never deleted: each records who moved it last and when.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from horde_scanner.store.metadata import Int, Real, Text, metadata
from horde_scanner.store.tables import Tables

HELD, RELEASED, DELETED = "held", "released", "deleted"

# (Step 0700 also made the index verdicts_judged on verdicts(judged_at): it is declared with
# the verdicts table, store/verdicts.py.)
quarantine = sa.Table(
    "quarantine",
    metadata,
    sa.Column("id", Int, sa.Identity(), primary_key=True),
    sa.Column("sha256", Text, nullable=False),
    sa.Column("origin", Text, nullable=False),
    sa.Column("identifier", Text, nullable=False),
    sa.Column("path", Text, nullable=False),
    sa.Column("size", Int),
    sa.Column("state", Text, nullable=False, server_default=HELD),
    sa.Column("quarantined_at", Real, nullable=False),
    sa.Column("updated_at", Real, nullable=False),
    sa.Column("updated_by", Text),
    sa.Column("detail", Text),
    sa.CheckConstraint("state IN ('held', 'released', 'deleted')", name="state"),
    sa.Index("quarantine_sha", "sha256", "state"),
    sqlite_autoincrement=True,
)


_COLUMNS = (
    quarantine.c.id,
    quarantine.c.sha256,
    quarantine.c.origin,
    quarantine.c.identifier,
    quarantine.c.path,
    quarantine.c.size,
    quarantine.c.state,
    quarantine.c.quarantined_at,
    quarantine.c.updated_at,
    quarantine.c.updated_by,
    quarantine.c.detail,
)


@dataclass(frozen=True, slots=True)
class QuarantineItem:
    """One place a quarantined file came from, and its state."""

    id: int
    sha256: str
    origin: str  # the kind of storage: local | s3 | ssh | ...
    identifier: str  # where in it
    path: Path  # the held file
    size: int | None
    state: str  # held | released | deleted
    quarantined_at: float
    updated_at: float
    updated_by: str | None
    detail: dict[str, Any]


class ReviewTables(Tables):
    # -- quarantine ------------------------------------------------------------------------

    async def add_quarantined(
        self,
        sha256: str,
        path: Path,
        size: int,
        *,
        origin: str,
        identifier: str,
        by: str,
        detail: dict[str, Any] | None,
    ) -> QuarantineItem:
        """Record a copy just admitted (held)."""
        now = time.time()
        stmt = (
            sa.insert(quarantine)
            .values(
                sha256=sha256,
                origin=origin,
                identifier=identifier,
                path=str(path),
                size=size,
                state=HELD,
                quarantined_at=now,
                updated_at=now,
                updated_by=by,
                detail=json.dumps(detail or {}),
            )
            .returning(*_COLUMNS)
        )
        row = (await self._db.execute(stmt)).first()
        assert row is not None
        return _item(row)

    async def quarantine_items(self, sha256: str) -> list[QuarantineItem]:
        """Every copy of these bytes ever admitted, in any state, oldest first."""
        stmt = sa.select(*_COLUMNS).where(quarantine.c.sha256 == sha256).order_by(quarantine.c.id)
        return [_item(r) for r in (await self._db.execute(stmt)).all()]

    async def quarantine_held_among(self, hashes: list[str]) -> set[str]:
        """Which of `hashes` have a copy held (one query for a page of items)."""
        if not hashes:
            return set()
        stmt = (
            sa.select(quarantine.c.sha256)
            .distinct()
            .where(quarantine.c.state == HELD, quarantine.c.sha256.in_(hashes))
        )
        return {r[0] for r in (await self._db.execute(stmt)).all()}

    async def count_quarantine(self) -> dict[str, int]:
        """{state: n}."""
        stmt = sa.select(quarantine.c.state, sa.func.count()).group_by(quarantine.c.state)
        return {state: n for state, n in (await self._db.execute(stmt)).all()}

    async def set_quarantine_state(self, item_id: int, state: str, by: str) -> None:
        await self._db.execute(
            sa.update(quarantine)
            .where(quarantine.c.id == item_id)
            .values(state=state, updated_at=time.time(), updated_by=by),
        )


def _item(row: Any) -> QuarantineItem:
    return QuarantineItem(
        row[0],
        row[1],
        row[2],
        row[3],
        Path(row[4]),
        row[5],
        row[6],
        row[7],
        row[8],
        row[9],
        json.loads(row[10] or "{}"),
    )
