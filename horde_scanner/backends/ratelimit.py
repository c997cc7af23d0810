"""Our side of the AI Horde's rate limits, so that we never learn them from 429s.

The Horde (flask-limiter, strategy "fixed-window") counts per IP in windows that open at the
first request the server sees and last the limit's period: 90 submits per minute, and 10 status
calls per second for each ip + method + path (so per request id, GET and DELETE apart). We do
not know where its windows start, so both limiters here keep a stronger rule that is safe
whatever the alignment: never more than `limit` requests in any `period_s` of *server* time.

The server sees a request somewhere between our sending it and our reading its answer. So a
slot counts from the moment it is taken until `period_s` after its answer came back (an
unanswered request counts the whole time). Two requests `limit` slots apart are then always at
least `period_s` apart on the server's clock, so no server window can hold `limit + 1` of them.
Within that rule a burst goes out at once.

`SubmitWindow` is the shared submit budget (one per process today; an implementation backed by
the store can share it between replicas by keeping the same `slot()` interface).
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Protocol

Clock = Callable[[], float]


class SubmitBudget(Protocol):
    """What the Horde client needs from a submit limiter."""

    @property
    def waiting(self) -> int: ...

    def slot(self, priority: float) -> AbstractAsyncContextManager[None]: ...


class _Window:
    """Finished slots (time of their answer) and the count of unanswered ones."""

    __slots__ = ("done", "open")

    def __init__(self) -> None:
        self.done: deque[float] = deque()
        self.open = 0

    def used(self, now: float, period_s: float) -> int:
        while self.done and now - self.done[0] >= period_s:
            self.done.popleft()
        return self.open + len(self.done)

    def free_at(self, now: float, period_s: float, limit: int) -> float | None:
        """When a slot frees up: now, a time in the future, or None (wait for an answer)."""
        if self.used(now, period_s) < limit:
            return now
        if not self.done or self.used(now, period_s) - len(self.done) >= limit:
            return None
        # The oldest finished slot that must expire before we are under the limit again.
        excess = self.used(now, period_s) - limit
        return self.done[excess] + period_s


class SubmitWindow:
    """At most `limit` requests in any `period_s` of server time; waiters go lowest
    `priority` first (the time their image arrived), so a burst is sent oldest first."""

    def __init__(
        self, limit: int, period_s: float = 60.0, *, clock: Clock = time.monotonic
    ) -> None:
        if limit < 1:
            raise ValueError("limit must be at least 1")
        self.limit = limit
        self.period_s = period_s
        self._clock = clock
        self._window = _Window()
        self._heap: list[tuple[float, int, asyncio.Future[None]]] = []
        self._seq = itertools.count()
        self._timer: asyncio.TimerHandle | None = None

    @property
    def waiting(self) -> int:
        return sum(1 for _, _, fut in self._heap if not fut.done())

    def used(self) -> int:
        return self._window.used(self._clock(), self.period_s)

    @asynccontextmanager
    async def slot(self, priority: float) -> AsyncIterator[None]:
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._heap, (priority, next(self._seq), fut))
        self._grant()
        try:
            await fut
        except BaseException:
            if fut.done() and not fut.cancelled():
                # Granted just as we were cancelled: nothing was sent, give the slot back.
                self._window.open -= 1
                self._grant()
            else:
                fut.cancel()
            raise
        try:
            yield
        finally:
            self._window.open -= 1
            self._window.done.append(self._clock())
            self._grant()

    def _grant(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        while self._heap:
            _, _, fut = self._heap[0]
            if fut.done():
                heapq.heappop(self._heap)
                continue
            now = self._clock()
            at = self._window.free_at(now, self.period_s, self.limit)
            if at is None:
                return  # an answer will call us again
            if at > now:
                loop = asyncio.get_running_loop()
                self._timer = loop.call_later(at - now, self._grant)
                return
            heapq.heappop(self._heap)
            self._window.open += 1
            fut.set_result(None)


class PathLimiter:
    """The same rule per key (the Horde's ip + method + path): at most `limit` calls on one key
    in any `period_s` of server time. Calls on one key are few and mostly one at a time, so
    waiters simply sleep until their key has room."""

    def __init__(self, limit: int, period_s: float = 1.0, *, clock: Clock = time.monotonic) -> None:
        if limit < 1:
            raise ValueError("limit must be at least 1")
        self.limit = limit
        self.period_s = period_s
        self._clock = clock
        self._keys: dict[str, _Window] = {}
        self._changed: dict[str, asyncio.Event] = {}

    def __len__(self) -> int:
        return len(self._keys)

    @asynccontextmanager
    async def slot(self, key: str) -> AsyncIterator[None]:
        window = self._keys.setdefault(key, _Window())
        while True:
            now = self._clock()
            at = window.free_at(now, self.period_s, self.limit)
            if at is not None and at <= now:
                break
            event = self._changed.setdefault(key, asyncio.Event())
            try:
                async with asyncio.timeout(None if at is None else at - now):
                    await event.wait()
            except TimeoutError:
                pass
        window.open += 1
        try:
            yield
        finally:
            window.open -= 1
            window.done.append(self._clock())
            woken = self._changed.pop(key, None)
            if woken is not None:
                woken.set()
            self._prune(key)

    def _prune(self, key: str) -> None:
        # Keys live only as long as they count; a finished request's id is dropped.
        window = self._keys.get(key)
        if window is not None and window.used(self._clock(), self.period_s) == 0:
            del self._keys[key]
        if len(self._keys) > 1024:
            now = self._clock()
            for name in [k for k, w in self._keys.items() if w.used(now, self.period_s) == 0]:
                del self._keys[name]


class TokenBucket:
    """A plain token bucket (what the client used before the window limiters; benchmarks
    still compare against it)."""

    def __init__(self, rate_per_s: float, burst: float | None = None) -> None:
        self.rate = rate_per_s
        self.capacity = burst if burst is not None else max(1.0, rate_per_s)
        self._tokens = self.capacity
        self._stamp = time.monotonic()
        self._lock = asyncio.Lock()

    def _refill(self) -> None:
        now = time.monotonic()
        self._tokens = min(self.capacity, self._tokens + (now - self._stamp) * self.rate)
        self._stamp = now

    async def acquire(self) -> None:
        # The lock makes waiters queue in order instead of all waking for the same token.
        async with self._lock:
            self._refill()
            if self._tokens < 1.0:
                await asyncio.sleep((1.0 - self._tokens) / self.rate)
                self._refill()
            self._tokens -= 1.0
