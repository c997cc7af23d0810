"""AI Horde requests still live on the Horde (backends/horde.py), so that a process killed
while it waited for one polls it again after the restart instead of submitting the image a
second time (and paying for it twice).

Data lifecycle: a row is written when the Horde accepts a submission and deleted when that
request ends (done, faulted, expired, given up on and cancelled). A row whose request must have
expired on the Horde (`_FORGET_AFTER_S`: the Horde's 20 minutes, with room) is dropped when
rows are next read; so the table holds at most the requests in flight, and rows of a process
killed mid-request for 30 minutes at most.
"""

from __future__ import annotations

import time

from horde_scanner.store.tables import SchemaStep, Tables

# The Horde deletes a request 20 minutes after its last event; past this it is surely gone.
_FORGET_AFTER_S = 30 * 60.0

STEPS = [
    SchemaStep(
        "2000-horde-requests",
        """
    CREATE TABLE horde_requests (
        image_key TEXT PRIMARY KEY,
        request_id TEXT NOT NULL,
        submitted_at REAL NOT NULL,
        holder TEXT NOT NULL
    );
    """,
    ),
]


class HordeRequestTables(Tables):
    async def live_horde_request(self, image_key: str) -> tuple[str, float] | None:
        """(request id, when it was submitted, epoch seconds) of the request held for this
        image (a digest of what was sent), if one may still be live."""
        now = time.time()
        await self._db.execute(
            "DELETE FROM horde_requests WHERE submitted_at < ?", (now - _FORGET_AFTER_S,)
        )
        async with self._db.execute(
            "SELECT request_id, submitted_at FROM horde_requests WHERE image_key=?", (image_key,)
        ) as cur:
            row = await cur.fetchone()
        return (str(row[0]), float(row[1])) if row is not None else None

    async def hold_horde_request(
        self, image_key: str, request_id: str, submitted_at: float
    ) -> None:
        await self._db.execute(
            "INSERT INTO horde_requests (image_key, request_id, submitted_at, holder)"
            " VALUES (?,?,?,?) ON CONFLICT(image_key) DO UPDATE SET"
            " request_id=excluded.request_id, submitted_at=excluded.submitted_at,"
            " holder=excluded.holder",
            (image_key, request_id, submitted_at, self.holder),
        )

    async def drop_horde_request(self, image_key: str, request_id: str) -> None:
        await self._db.execute(
            "DELETE FROM horde_requests WHERE image_key=? AND request_id=?",
            (image_key, request_id),
        )
