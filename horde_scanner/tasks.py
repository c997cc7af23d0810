"""Stopping background tasks, written once for every part that runs one."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable

log = logging.getLogger(__name__)


async def cancel_and_wait(tasks: Iterable[asyncio.Task[object] | None]) -> None:
    """Cancel `tasks` and wait until every one has ended.

    Unlike awaiting each under `suppress(CancelledError)`, a cancellation of the *caller*
    still reaches the caller. A task that had already failed is not re-raised here (the
    caller reads its own tasks' results where it cares); it is logged at debug level."""
    pending = [task for task in tasks if task is not None]
    for task in pending:
        task.cancel()
    if not pending:
        return
    await asyncio.wait(pending)
    for task in pending:
        if not task.cancelled() and task.exception() is not None:
            log.debug("background task %s had failed", task.get_name(), exc_info=task.exception())
