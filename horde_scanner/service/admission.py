"""Admission: the slots complete uploads take to be hashed, looked up and persisted
(`server.max_concurrent_uploads`), and the uploads answered before they got one.

When no admission slot comes free before the deadline (a burst past
`server.max_concurrent_uploads`), the upload is answered by `validation.on_timeout` at once,
but its body is not dropped: it waits here, in the memory and spool budgets it already holds,
for a slot without a deadline, and is then admitted like any upload whose answer came before
its verdict (hashed, looked up, persisted as a job, judged; a late positive is enforced).

The budgets bound what waits here: while they are full, new uploads are refused with
`503 busy`, which pict-rs treats as a rejection. A stop waits `_STOP_WAIT_S` for those still
waiting, then drops them (each was already written to the audit log as `unjudged`).
"""

from __future__ import annotations

import asyncio
import logging

from horde_scanner.judging.judge import Judge
from horde_scanner.service.upload_body import UploadBody
from horde_scanner.tasks import cancel_and_wait

log = logging.getLogger(__name__)

_STOP_WAIT_S = 5.0


class LateAdmissions:
    def __init__(self, gate: asyncio.Semaphore, judge: Judge) -> None:
        self._gate = gate
        self._judge = judge
        self._tasks: set[asyncio.Task[None]] = set()
        self.admitted = 0  # read by tests and logs

    def take(self, upload: UploadBody, *, source: str, answered: str) -> None:
        """Own `upload` from now on (the caller must not close it) and admit it when a slot
        comes free; `answered` is what the caller answered, for late-positive enforcement."""
        task = asyncio.get_running_loop().create_task(
            self._admit(upload, source, answered), name="late-admission"
        )
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _admit(self, upload: UploadBody, source: str, answered: str) -> None:
        slot = Slot(self._gate, upload)
        try:
            await slot.acquire()
            data = await upload.data()
            await self._judge.evaluate(
                data,
                sha256=upload.sha256,
                source=source,
                within_s=0.0,
                answer_if_late=answered,
                on_admitted=slot.release,
            )
            self.admitted += 1
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("an upload answered while overloaded could not be admitted later")
        finally:
            slot.release()

    async def aclose(self) -> None:
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=_STOP_WAIT_S)
        if self._tasks:
            log.warning(
                "stopping: %d uploads answered while overloaded were never admitted (see the "
                "audit log's unjudged events)",
                len(self._tasks),
            )
        await cancel_and_wait(list(self._tasks))


class Slot:
    """One admission slot and the body it admits, given back together and once: by
    `release()` as soon as the body is persisted (so the next upload need not wait for the
    judgement), or at the end at the latest."""

    def __init__(self, gate: asyncio.Semaphore, body: UploadBody) -> None:
        self._gate = gate
        self._body = body
        self._held = False

    async def acquire(self, deadline: float | None = None) -> bool:
        """Wait for a slot, until `deadline` (the event loop's clock) if given; False when
        none came free by then."""
        try:
            async with asyncio.timeout_at(deadline):
                await self._gate.acquire()
        except TimeoutError:
            return False
        self._held = True
        return True

    def release(self) -> None:
        self._body.close()
        if self._held:
            self._held = False
            self._gate.release()
