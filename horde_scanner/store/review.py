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
from horde_scanner.store.tables import SchemaStep, Tables

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

STEPS = [
    SchemaStep(
        "0700-admin",
        """
    CREATE INDEX verdicts_judged ON verdicts(judged_at);
    CREATE TABLE quarantine (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        sha256 TEXT NOT NULL,
        origin TEXT NOT NULL,
        identifier TEXT NOT NULL,
        path TEXT NOT NULL,
        size INTEGER,
        state TEXT NOT NULL DEFAULT 'held' CHECK (state IN ('held', 'released', 'deleted')),
        quarantined_at REAL NOT NULL,
        updated_at REAL NOT NULL,
        updated_by TEXT,
        detail TEXT
    );
    CREATE INDEX quarantine_sha ON quarantine(sha256, state);
    """,
    ),
]


_COLUMNS = (
    "id, sha256, origin, identifier, path, size, state, quarantined_at, updated_at, updated_by,"
    " detail"
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
        async with self._db.execute(
            f"INSERT INTO quarantine (sha256, origin, identifier, path, size, state,"
            f" quarantined_at, updated_at, updated_by, detail) VALUES (?,?,?,?,?,?,?,?,?,?)"
            f" RETURNING {_COLUMNS}",
            (
                sha256,
                origin,
                identifier,
                str(path),
                size,
                HELD,
                now,
                now,
                by,
                json.dumps(detail or {}),
            ),
        ) as cur:
            row = await cur.fetchone()
        assert row is not None
        return _item(row)

    async def quarantine_items(self, sha256: str) -> list[QuarantineItem]:
        """Every copy of these bytes ever admitted, in any state, oldest first."""
        async with self._db.execute(
            f"SELECT {_COLUMNS} FROM quarantine WHERE sha256=? ORDER BY id", (sha256,)
        ) as cur:
            return [_item(r) for r in await cur.fetchall()]

    async def quarantine_held_among(self, hashes: list[str]) -> set[str]:
        """Which of `hashes` have a copy held (one query for a page of items)."""
        if not hashes:
            return set()
        marks = ",".join("?" * len(hashes))
        async with self._db.execute(
            f"SELECT DISTINCT sha256 FROM quarantine WHERE state='held' AND sha256 IN ({marks})",
            hashes,
        ) as cur:
            return {r[0] for r in await cur.fetchall()}

    async def count_quarantine(self) -> dict[str, int]:
        """{state: n}."""
        async with self._db.execute("SELECT state, COUNT(*) FROM quarantine GROUP BY state") as cur:
            return {state: n for state, n in await cur.fetchall()}

    async def set_quarantine_state(self, item_id: int, state: str, by: str) -> None:
        await self._db.execute(
            "UPDATE quarantine SET state=?, updated_at=?, updated_by=? WHERE id=?",
            (state, time.time(), by, item_id),
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
