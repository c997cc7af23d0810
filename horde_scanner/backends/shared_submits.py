"""The AI Horde submit budget, kept in the store: shared by every replica on one PostgreSQL
store, by the processes of one host on one SQLite file, and by a process and the one that
replaces it after a restart.

The Horde limits submits per IP address and keeps counting them when we restart: a new process
that started with an empty window would send a full burst into a window the Horde still counts
as full, and get 429s. So the window lives in the store's `horde_submits` table (PostgreSQL:
taken under an advisory lock, by the database's clock; SQLite: by one statement, by the host's
clock); the rule is `SubmitWindow`'s (at most `limit` requests in any `period_s`, a slot
counting from when it is taken until `period_s` after its answer), now across processes and
restarts. A process killed mid-request leaves an open slot, counted until `stale_s`. Within
one process waiters still go oldest image first.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Protocol, runtime_checkable

log = logging.getLogger(__name__)


@runtime_checkable
class SubmitTables(Protocol):
    """The part of a store that keeps the submit window (store/cluster.py)."""

    async def take_submit(
        self, limit: int, period_s: float, stale_s: float
    ) -> tuple[int | None, float]: ...

    async def finish_submit(self, slot: int | None) -> None: ...


class SharedSubmitWindow:
    def __init__(
        self, store: SubmitTables, limit: int, period_s: float = 60.0, *, stale_s: float = 180.0
    ) -> None:
        if limit < 1:
            raise ValueError("limit must be at least 1")
        self._store = store
        self.limit = limit
        self.period_s = period_s
        self.stale_s = stale_s
        self._heap: list[tuple[float, int]] = []
        self._seq = itertools.count()
        self._turn = asyncio.Condition()

    @property
    def waiting(self) -> int:
        return len(self._heap)

    @asynccontextmanager
    async def slot(self, priority: float) -> AsyncIterator[None]:
        entry = (priority, next(self._seq))
        heapq.heappush(self._heap, entry)
        slot_id: int | None = None
        try:
            async with self._turn:
                await self._turn.wait_for(lambda: self._heap[0] == entry)
            while slot_id is None:
                try:
                    slot_id, retry_in = await self._store.take_submit(
                        self.limit, self.period_s, self.stale_s
                    )
                except Exception as exc:  # the store is down: wait, as for a full window
                    log.warning("shared AI Horde submit budget unavailable: %s", exc)
                    retry_in = 1.0
                if slot_id is None:
                    # Woken early when one of ours finishes; else look again (at most 1/s).
                    async with self._turn:
                        try:
                            async with asyncio.timeout(min(max(retry_in, 0.05), 1.0)):
                                await self._turn.wait()
                        except TimeoutError:
                            pass
        finally:
            self._heap.remove(entry)
            heapq.heapify(self._heap)
            async with self._turn:
                self._turn.notify_all()
        try:
            yield
        finally:
            await asyncio.shield(self._store.finish_submit(slot_id))
            async with self._turn:
                self._turn.notify_all()
