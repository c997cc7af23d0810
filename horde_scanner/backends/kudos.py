"""An optional daily kudos budget for the AI Horde (`horde.max_kudos_per_day`).

Kudos are charged per form on delivery (price + burn), and for a form cancelled while a worker
was processing it; a form cancelled while waiting, or faulted, is free
(`horde/classes/stable/interrogation.py`). We reserve a request's full price before sending it,
so that requests in flight can never take the day past the budget, and settle what was charged
when it ends. Days are UTC days. What was spent today is kept in the store, so a restart does
not hand out the day's budget again, and replicas sharing a store book into one day's total:
each learns the others' spend with its own bookings (it may overshoot by what the others have
in flight at that moment, at most their reservations).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from horde_scanner.store.interfaces import KudosStore

log = logging.getLogger(__name__)

WallClock = Callable[[], float]


def utc_day(now: float) -> str:
    return datetime.fromtimestamp(now, UTC).strftime("%Y-%m-%d")


def seconds_to_next_day(now: float) -> float:
    moment = datetime.fromtimestamp(now, UTC)
    tomorrow = (moment + timedelta(days=1)).replace(hour=0, minute=0, second=0, microsecond=0)
    return max(1.0, (tomorrow - moment).total_seconds())


class KudosBudget:
    """Spent and reserved kudos for the current UTC day; `limit` None means no budget."""

    def __init__(self, limit: float | None, *, clock: WallClock = time.time) -> None:
        self.limit = limit
        self._clock = clock
        self.day = utc_day(clock())
        self.spent = 0.0
        self.reserved = 0.0
        # Misses refused because the day's budget was spent (read by /metrics).
        self.refused = 0
        self._store: KudosStore | None = None
        self._saving: set[asyncio.Future[None]] = set()

    async def attach(self, store: KudosStore) -> None:
        """Keep the day's spend in the store."""
        self._store = store
        spent = await store.kudos_spent(self.day)
        if spent is not None:
            self.spent = max(self.spent, spent)
            if self.limit is not None:
                log.info(
                    "AI Horde kudos budget: %.0f of %.0f already spent today (UTC)",
                    self.spent,
                    self.limit,
                )

    def _roll(self) -> None:
        today = utc_day(self._clock())
        if today != self.day:
            self.day, self.spent = today, 0.0

    def can_afford(self, cost: float) -> bool:
        if self.limit is None:
            return True
        self._roll()
        return self.spent + self.reserved + cost <= self.limit

    def renews_in_s(self) -> float:
        return seconds_to_next_day(self._clock())

    def reserve(self, cost: float) -> bool:
        if not self.can_afford(cost):
            self.refused += 1
            return False
        self.reserved += cost
        return True

    def settle(self, reserved: float, charged: float) -> None:
        """A request ended: release its reservation, book what it cost (saved in the
        background, so that a cancelled caller still books it)."""
        self._roll()
        self.reserved = max(0.0, self.reserved - reserved)
        if charged <= 0:
            return
        self.spent += charged
        if self._store is not None and self.limit is not None:
            task = asyncio.ensure_future(self._book(self._store, self.day, charged))
            self._saving.add(task)
            task.add_done_callback(self._saving.discard)

    async def _book(self, store: KudosStore, day: str, charged: float) -> None:
        try:
            total = await store.add_kudos_spent(day, charged)
        except Exception as exc:  # the spend is still counted in memory
            log.warning("could not save the day's kudos spend: %s", exc)
            return
        if day == self.day:
            # What the other replicas spent comes back with our own booking.
            self.spent = max(self.spent, total)

    async def flush(self) -> None:
        if self._saving:
            await asyncio.gather(*self._saving, return_exceptions=True)

    def describe(self) -> dict[str, Any]:
        self._roll()
        return {
            "max_per_day": self.limit,
            "spent_today": round(self.spent, 1),
            "reserved": round(self.reserved, 1),
            "refused": self.refused,
            "renews_in_s": round(self.renews_in_s()),
        }
