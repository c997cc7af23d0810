"""One process-wide memory budget that every decode draws from.

A pixel bomb under `media.max_pixels` (a 7,999 x 7,999 one-colour PNG is ~200 KB on the wire)
still costs hundreds of megabytes to decode, and several at once would take a small machine
past its memory. So before a file is decoded its cost is estimated from its header
(`decode.decode_cost`), and that many bytes are taken from this budget for as long as the
decode runs. A decode that does not fit waits (in the job, never in a pool thread) until others
give their bytes back; the upload it belongs to meanwhile reaches its deadline and is answered
by `on_timeout`, as for any slow judgement. A file whose decode alone needs more than the whole
budget could never fit: it is unreadable, and the reason names the setting.

Waiters are served in order of arrival, so a large decode is not starved by small ones.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass

from horde_scanner.media.types import UnreadableMedia

MIB = 1 << 20


class DecodeMemory:
    """Bytes that decodes may hold at once. Safe to share between event loops and threads."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0
        # Most bytes ever held at once, and how many decodes had to wait (for tests, metrics).
        self.peak = 0
        self.waited = 0
        self._lock = threading.Lock()
        self._waiters: deque[_Waiter] = deque()

    def check(self, cost: int, what: str) -> None:
        """Raise UnreadableMedia when `cost` could never fit, however long it waited."""
        if cost > self.limit:
            raise UnreadableMedia(
                f"{what}: decoding needs about {_mib(cost)} of memory, more than "
                f"media.decode_memory_bytes ({_mib(self.limit)}) allows for all decodes at once"
            )

    @contextlib.asynccontextmanager
    async def hold(self, cost: int, what: str) -> AsyncIterator[None]:
        """Hold `cost` bytes while the block runs, waiting for them first if need be."""
        self.check(cost, what)
        await self._take(cost)
        try:
            yield
        finally:
            self._give(cost)

    async def _take(self, cost: int) -> None:
        loop = asyncio.get_running_loop()
        with self._lock:
            if not self._waiters and self.used + cost <= self.limit:
                self._grant(cost)
                return
            waiter = _Waiter(cost, loop.create_future())
            self._waiters.append(waiter)
            self.waited += 1
        try:
            await waiter.fut
        except BaseException:
            with self._lock:
                if waiter.granted:
                    # Granted just as we were cancelled: give the bytes back.
                    self.used -= cost
                with contextlib.suppress(ValueError):
                    self._waiters.remove(waiter)
                self._wake()
            raise

    def _give(self, cost: int) -> None:
        with self._lock:
            self.used -= cost
            self._wake()

    def _grant(self, cost: int) -> None:
        self.used += cost
        self.peak = max(self.peak, self.used)

    def _wake(self) -> None:
        # Called with the lock held: grant waiters in order while the first one fits.
        while self._waiters:
            waiter = self._waiters[0]
            if waiter.fut.done():
                self._waiters.popleft()
                continue
            if self.used + waiter.cost > self.limit:
                return
            self._waiters.popleft()
            self._grant(waiter.cost)
            waiter.granted = True
            waiter.fut.get_loop().call_soon_threadsafe(_resolve, waiter.fut)

    @property
    def waiting(self) -> int:
        return len(self._waiters)


@dataclass(eq=False, slots=True)
class _Waiter:
    cost: int
    fut: asyncio.Future[None]
    granted: bool = False


def _resolve(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


def _mib(n: int) -> str:
    return f"{n / MIB:.0f} MiB"
