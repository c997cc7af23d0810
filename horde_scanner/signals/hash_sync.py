"""Keeping an in-memory index of list entries in step with the store, written once for the
PDQ index (signals/hash_matcher.py) and the embedding index (signals/embeddings.py).

Any change to what such an index must hold bumps the store's hash generation, and another
replica's change arrives as a `hashes` (or `reset`) notice. The loop waits for a notice or a
pause, compares the generation the index was built at with the store's, and reloads when they
differ. It outlives every error: an outage (the store away) is said once, by the store's
health, not as a traceback per try; anything else is logged with its traceback.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Protocol

from horde_scanner.store.interfaces import HashBankStore, StoreLifecycle
from horde_scanner.tasks import cancel_and_wait


class HashSyncStore(HashBankStore, StoreLifecycle, Protocol):
    """What keeping the hash index in step watches."""


log = logging.getLogger(__name__)

# A big index takes seconds to load: spend at most a tenth of the time loading.
_WAIT_PER_LOAD = 9


class IndexSync:
    def __init__(
        self,
        store: HashSyncStore,
        what: str,
        *,
        interval_s: float,
        generation: Callable[[], int],
        reload: Callable[[], Awaitable[None]],
        last_load_s: Callable[[], float],
    ) -> None:
        """`what` names the index in logs and in the task's name; `generation` is the store
        generation the index holds now, `reload` brings it to the store's, `last_load_s` how
        long the last reload took."""
        self._store = store
        self._what = what
        self._interval_s = interval_s
        self._generation = generation
        self._reload = reload
        self._last_load_s = last_load_s
        # Set when another replica changed what the index holds (PostgreSQL notifications).
        self._changed = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Listen for changes, load the index once, then keep it in step."""
        self._store.subscribe(self._store_changed)
        await self._reload()
        name = self._what.replace(" ", "-") + "-sync"
        self._task = asyncio.create_task(self._loop(), name=name)

    async def stop(self) -> None:
        await cancel_and_wait([self._task])
        self._task = None

    def _store_changed(self, kind: str, key: str) -> None:
        if kind in ("hashes", "reset"):
            self._changed.set()

    async def _loop(self) -> None:
        while True:
            pause = max(self._interval_s, _WAIT_PER_LOAD * self._last_load_s())
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(pause):
                    await self._changed.wait()
            self._changed.clear()
            try:
                if await self._store.hash_generation() != self._generation():
                    await self._reload()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if not self._store.health.failed(exc):  # an outage is said once, by the store
                    log.exception("%s sync failed", self._what)
