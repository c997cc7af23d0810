"""Stopping background tasks, written once for every part that runs one."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable

log = logging.getLogger(__name__)

# A library may turn a cancellation into an error of its own (aiohttp's request timeout firing
# at the same moment does), and a loop that outlives errors then runs on: cancel again.
_RECANCEL_S = 0.5


async def cancel_and_wait(tasks: Iterable[asyncio.Task[object] | None]) -> None:
    """Cancel `tasks` and wait until every one has ended.

    Unlike awaiting each under `suppress(CancelledError)`, a cancellation of the *caller*
    still reaches the caller, and a task that swallowed its cancellation is cancelled again.
    A task that had already failed is not re-raised here (the caller reads its own tasks'
    results where it cares); it is logged at debug level."""
    pending = {task for task in tasks if task is not None}
    ended = list(pending)
    while pending:
        for task in pending:
            task.cancel()
        _, pending = await asyncio.wait(pending, timeout=_RECANCEL_S)
        for task in pending:
            log.warning("background task %s ignored its cancellation; cancelling again", task)
    for task in ended:
        if not task.cancelled() and task.exception() is not None:
            log.debug("background task %s had failed", task.get_name(), exc_info=task.exception())
