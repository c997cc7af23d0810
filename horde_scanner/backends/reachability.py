"""Whether a remote path (the AI Horde) can be reached at all.

A few failed calls in a row (refused, DNS, timeout, 5xx), or one call that failed after all its
retries, mark the path down, so that /readyz, the `backend_up` metric and the down webhook say
so, and uploads are answered by `on_timeout` at once instead of after the deadline. While down,
one cheap probe runs every `probe_interval_s`; the first success of any call marks the path up
again.

Flaky is not down. A path that fails some of its calls at random strings short runs of
failures together by chance (at 30 % failed calls, three in a row come every ~50 calls), so
the run that marks it down grows with the share of recent calls that failed: as many failures
in a row as such a path would string together by chance only once in `_CHANCE` runs, at least
`down_after` and at most `_MAX_FACTOR` times that. After a clean recent history (or none) it is
`down_after`, so an outage of a healthy path is seen as quickly as ever; a path that fails 30 %
of its calls needs 10 in a row. Likewise one call failing all its retries marks the path down
only after a clean recent history.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections import deque
from collections.abc import Awaitable, Callable

from horde_scanner.tasks import cancel_and_wait

log = logging.getLogger(__name__)

# A run of failures that a path failing calls at random would string together this rarely
# (per run) is taken for an outage.
_CHANCE = 1e-5
# The run that marks a flaky path down is at most this many times `down_after`.
_MAX_FACTOR = 4
# Recent outcomes (before the current run of failures) that say how flaky the path is: the
# last _HISTORY calls of the last _HISTORY_S seconds, and at least _MIN_SAMPLE of them.
_HISTORY = 200
_HISTORY_S = 120.0
_MIN_SAMPLE = 10


class Reachability:
    def __init__(
        self,
        name: str,
        probe: Callable[[], Awaitable[object]],
        *,
        down_after: int = 3,
        probe_interval_s: float = 1.0,
    ) -> None:
        self.name = name
        self._probe = probe
        self.down_after = down_after
        self.probe_interval_s = probe_interval_s
        self.failures = 0
        self.down_since: float | None = None
        self.last_error = ""
        self.recoveries = 0  # times it came back (see Readiness.recoveries)
        self._task: asyncio.Task[None] | None = None
        # (monotonic time, succeeded) of calls before the current run of failures.
        self._history: deque[tuple[float, bool]] = deque(maxlen=_HISTORY)
        self._up = asyncio.Event()
        self._up.set()

    @property
    def down(self) -> bool:
        return self.down_since is not None

    def detail(self) -> str:
        since = time.strftime("%H:%M:%S", time.localtime(self.down_since or 0))
        return (
            f"{self.name} unreachable since {since} ({self.failures} failed calls in a row: "
            f"{self.last_error}); probing every {self.probe_interval_s:g} s"
        )

    def failed_share(self) -> float:
        """The share of recent calls (before the current run of failures) that failed; 0 when
        too few calls were seen to tell."""
        now = time.monotonic()
        recent = [ok for at, ok in self._history if now - at <= _HISTORY_S]
        if len(recent) < _MIN_SAMPLE:
            return 0.0
        return recent.count(False) / len(recent)

    def needed(self) -> int:
        """Failed calls in a row that mark the path down, given how flaky it has been."""
        share = self.failed_share()
        if share <= 0.0:
            return self.down_after
        if share >= 1.0:
            return self.down_after * _MAX_FACTOR
        by_chance = math.ceil(math.log(_CHANCE) / math.log(share))
        return max(self.down_after, min(by_chance, self.down_after * _MAX_FACTOR))

    def ok(self) -> None:
        now = time.monotonic()
        for _ in range(min(self.failures, _HISTORY)):
            self._history.append((now, False))
        self._history.append((now, True))
        self.failures = 0
        if self.down_since is not None:
            log.warning("%s reachable again after %.0f s", self.name, time.time() - self.down_since)
            self.down_since = None
            self.recoveries += 1
            self._up.set()

    def failed(self, error: str, *, gave_up: bool = False) -> None:
        """One failed call; `gave_up`: a call failed after all its retries (down at once,
        unless recent calls failed at random too: then the run must be long enough)."""
        if not gave_up:
            self.failures += 1
            self.last_error = error
        needed = self.needed()
        sure = gave_up and needed == self.down_after
        if self.down_since is None and (sure or self.failures >= needed):
            self.down_since = time.time()
            self._up.clear()
            log.warning("%s is unreachable: %s", self.name, error)
            self._start_probe()

    async def wait_up(self, timeout_s: float) -> bool:
        """Wait until the path is up again (at most `timeout_s`); whether it is."""
        if not self.down:
            return True
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(max(0.0, timeout_s)):
                await self._up.wait()
        return not self.down

    def _start_probe(self) -> None:
        if self._task is not None and not self._task.done():
            return
        try:
            self._task = asyncio.get_running_loop().create_task(
                self._probe_loop(), name=f"{self.name}-probe"
            )
        except RuntimeError:  # no loop (called from a thread): the next call probes instead
            self._task = None

    async def _probe_loop(self) -> None:
        while self.down:
            await asyncio.sleep(self.probe_interval_s)
            # The probe reports through ok()/failed() itself; anything it raises is a failure
            # already counted.
            with contextlib.suppress(Exception):
                await self._probe()

    async def aclose(self) -> None:
        await cancel_and_wait([self._task])
        self._task = None
