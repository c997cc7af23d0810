"""Wake waiting jobs the moment a judging path comes back.

Jobs that failed while a path was down wait with a growing backoff (seconds to minutes); when
any path turns live again (the AI Horde answers its probe, a worker polls again), they are
made due at once instead of waiting out their backoff.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from horde_scanner.backends.base import Backend, Readiness, describe_paths
from horde_scanner.tasks import cancel_and_wait

log = logging.getLogger(__name__)


class RecoveryWatch:
    def __init__(
        self,
        backend: Backend,
        on_recovered: Callable[[list[str]], Awaitable[None]],
        *,
        interval_s: float = 0.25,
    ) -> None:
        self._backend = backend
        self._on_recovered = on_recovered
        self._interval = interval_s
        self._seen: dict[str, Readiness] = {}
        self._task: asyncio.Task[None] | None = None

    def _states(self) -> dict[str, Readiness]:
        return {r.name: r for r in describe_paths(self._backend)}

    def check(self) -> list[str]:
        """Paths that turned live since the last check, including those that went down and
        came back in between (seen by their recovery count)."""
        now = self._states()
        back = []
        for name, state in now.items():
            before = self._seen.get(name)
            if before is None or not state.live:
                continue
            if not before.live or state.recoveries > before.recoveries:
                back.append(name)
        self._seen = now
        return back

    async def start(self) -> None:
        self._seen = self._states()
        self._task = asyncio.create_task(self._watch(), name="recovery-watch")

    async def stop(self) -> None:
        await cancel_and_wait([self._task])
        self._task = None

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            try:
                back = self.check()
                if back:
                    await self._on_recovered(back)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("recovery watch failed")
