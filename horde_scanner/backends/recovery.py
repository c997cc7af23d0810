"""Wake waiting jobs the moment a judging path comes back.

Jobs that failed while a path was down wait with a growing backoff (seconds to minutes); when
any path turns live again (the AI Horde answers its probe, a worker polls again), they are
made due at once instead of waiting out their backoff.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

from horde_scanner.backends.base import Backend, describe_paths

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
        self._live: dict[str, bool] = {}
        self._task: asyncio.Task[None] | None = None

    def _states(self) -> dict[str, bool]:
        return {r.name: r.live for r in describe_paths(self._backend)}

    def check(self) -> list[str]:
        """Paths that turned live since the last check."""
        now = self._states()
        back = [name for name, live in now.items() if live and self._live.get(name) is False]
        self._live = now
        return back

    async def start(self) -> None:
        self._live = self._states()
        self._task = asyncio.create_task(self._watch(), name="recovery-watch")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
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
