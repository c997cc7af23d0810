"""Dynamic batching: concurrent requests become one model call.

The first request of a batch waits up to `wait_s` for company, or until `batch_size` requests
are there; the batch then runs on a single dedicated thread (the model is not re-entrant and a
GPU gains nothing from two callers). Requests arriving while a batch runs queue up and form the
next one at once, so under load batches fill without any waiting. The queue is bounded: beyond
`max_queue` waiting requests, `submit` refuses with BackendUnavailable (back-pressure).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Generic, TypeVar

from horde_scanner.backends.base import BackendUnavailable
from horde_scanner.tasks import cancel_and_wait

In = TypeVar("In")
Out = TypeVar("Out")


class DynamicBatcher(Generic[In, Out]):
    def __init__(
        self,
        run_batch: Callable[[list[In]], list[Out]],
        *,
        batch_size: int,
        wait_s: float,
        max_queue: int,
        name: str = "batch",
    ) -> None:
        self._run_batch = run_batch
        self.batch_size = batch_size
        self.wait_s = wait_s
        self._queue: asyncio.Queue[tuple[In, asyncio.Future[Out]]] = asyncio.Queue(max_queue)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=name)
        self._task: asyncio.Task[None] | None = None
        self.batches = 0
        self.items = 0
        self.largest_batch = 0
        self.busy_s = 0.0

    @property
    def queued(self) -> int:
        return self._queue.qsize()

    @property
    def full(self) -> bool:
        return self._queue.full()

    async def submit(self, item: In) -> Out:
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._loop(), name="dynamic-batcher")
        fut: asyncio.Future[Out] = asyncio.get_running_loop().create_future()
        try:
            self._queue.put_nowait((item, fut))
        except asyncio.QueueFull:
            raise BackendUnavailable(
                f"local model busy ({self._queue.maxsize} requests queued)", retry_after_s=1.0
            ) from None
        return await fut

    async def _collect(self) -> list[tuple[In, asyncio.Future[Out]]]:
        batch = [await self._queue.get()]
        deadline = time.monotonic() + self.wait_s
        while len(batch) < self.batch_size:
            try:
                batch.append(self._queue.get_nowait())
                continue
            except asyncio.QueueEmpty:
                pass
            left = deadline - time.monotonic()
            if left <= 0:
                break
            try:
                async with asyncio.timeout(left):
                    batch.append(await self._queue.get())
            except TimeoutError:
                break
        # Callers that gave up (deadline, cancellation) cost nothing.
        return [(item, fut) for item, fut in batch if not fut.done()]

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._collect()
            if not batch:
                continue
            started = time.monotonic()
            try:
                results = await loop.run_in_executor(
                    self._executor, self._run_batch, [item for item, _ in batch]
                )
            except Exception as exc:
                for _, fut in batch:
                    if not fut.done():
                        fut.set_exception(exc)
                continue
            finally:
                self.busy_s += time.monotonic() - started
            self.batches += 1
            self.items += len(batch)
            self.largest_batch = max(self.largest_batch, len(batch))
            for (_, fut), result in zip(batch, results, strict=True):
                if not fut.done():
                    fut.set_result(result)

    async def run_exclusive(self, fn: Callable[[], None]) -> None:
        """Run `fn` on the model's thread, between batches (e.g. new phrases to embed)."""
        await asyncio.get_running_loop().run_in_executor(self._executor, fn)

    async def aclose(self) -> None:
        await cancel_and_wait([self._task])
        while not self._queue.empty():
            _, fut = self._queue.get_nowait()
            fut.cancel()
        self._executor.shutdown(wait=False, cancel_futures=True)
