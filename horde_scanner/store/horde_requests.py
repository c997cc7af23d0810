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

import sqlalchemy as sa

from horde_scanner.store.database import Prepared
from horde_scanner.store.metadata import Real, Text, metadata
from horde_scanner.store.tables import Tables, compiled_once, upsert

# The Horde deletes a request 20 minutes after its last event; past this it is surely gone.
_FORGET_AFTER_S = 30 * 60.0

horde_requests = sa.Table(
    "horde_requests",
    metadata,
    sa.Column("image_key", Text, primary_key=True),  # a digest of what was sent
    sa.Column("request_id", Text, nullable=False),
    sa.Column("submitted_at", Real, nullable=False),
    sa.Column("holder", Text, nullable=False),  # host:pid
)
_r = horde_requests.c
_FORGET = Prepared(sa.delete(horde_requests).where(_r.submitted_at < sa.bindparam("before")))
_LIVE = Prepared(
    sa.select(_r.request_id, _r.submitted_at).where(_r.image_key == sa.bindparam("key"))
)
_DROP = Prepared(
    sa.delete(horde_requests).where(
        _r.image_key == sa.bindparam("key"), _r.request_id == sa.bindparam("request_id")
    )
)
_HOLD_KEYS = ("image_key", "request_id", "submitted_at", "holder")


def _hold(dialect: str) -> sa.Executable:
    insert, new = upsert(dialect, horde_requests)
    return insert.on_conflict_do_update(
        index_elements=[_r.image_key],
        set_={name: new[name] for name in ("request_id", "submitted_at", "holder")},
    )


class HordeRequestTables(Tables):
    async def live_horde_request(self, image_key: str) -> tuple[str, float] | None:
        """(request id, when it was submitted, epoch seconds) of the request held for this
        image (a digest of what was sent), if one may still be live."""
        now = time.time()
        await self._db.execute(_FORGET, {"before": now - _FORGET_AFTER_S})
        row = (await self._db.execute(_LIVE, {"key": image_key})).first()
        return (str(row[0]), float(row[1])) if row is not None else None

    async def hold_horde_request(
        self, image_key: str, request_id: str, submitted_at: float
    ) -> None:
        await self._db.execute(
            compiled_once(_hold, self._db.dialect, _HOLD_KEYS),
            {
                "image_key": image_key,
                "request_id": request_id,
                "submitted_at": submitted_at,
                "holder": self.holder,
            },
        )

    async def drop_horde_request(self, image_key: str, request_id: str) -> None:
        await self._db.execute(_DROP, {"key": image_key, "request_id": request_id})
