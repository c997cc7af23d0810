"""Whether a remote path (the AI Horde) can be reached at all.

A few connection failures in a row (refused, DNS, timeout, 5xx), or one call that failed after
all its retries, mark the path down, so that
/readyz, the `backend_up` metric and the down webhook say so, and uploads are answered by
`on_timeout` at once instead of after the deadline. While down, one cheap probe runs every
`probe_interval_s`; the first success of any call marks the path up again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable

from horde_scanner.tasks import cancel_and_wait

log = logging.getLogger(__name__)


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

    @property
    def down(self) -> bool:
        return self.down_since is not None

    def detail(self) -> str:
        since = time.strftime("%H:%M:%S", time.localtime(self.down_since or 0))
        return (
            f"{self.name} unreachable since {since} ({self.failures} failed calls in a row: "
            f"{self.last_error}); probing every {self.probe_interval_s:g} s"
        )

    def ok(self) -> None:
        self.failures = 0
        if self.down_since is not None:
            log.warning("%s reachable again after %.0f s", self.name, time.time() - self.down_since)
            self.down_since = None
            self.recoveries += 1

    def failed(self, error: str, *, gave_up: bool = False) -> None:
        """One failed call; `gave_up`: a call failed after all its retries (down at once)."""
        if not gave_up:
            self.failures += 1
            self.last_error = error
        if self.down_since is None and (gave_up or self.failures >= self.down_after):
            self.down_since = time.time()
            log.warning("%s is unreachable: %s", self.name, error)
            self._start_probe()

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
