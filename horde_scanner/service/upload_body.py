"""Reading an upload's body without letting a slow or huge sender hold the service.

Two limits work together. A pace: the body must be complete by the validation deadline, and
after a short grace the sender must keep up an average of `server.upload_min_bytes_per_s`;
a sender that falls behind is cut off (`UploadCut`, answered 408). A byte budget: bodies
being read are held in memory while their sum stays under `server.upload_memory_bytes`; past
that, a body goes to a temporary file (itself bounded by `server.upload_spool_bytes`). So the
number of open connections costs sockets, not memory, and a connection that sends nothing
holds nothing that a real upload needs.

The pace is kept by one timer per body, not one per chunk: it fires when the bytes received
so far say the sender must have sent more, and either sets itself again for the next such
moment or cuts the read off (cancelling it, answered 408). Most bodies end before it fires
once. The body is hashed (sha256) as it arrives, so a cache hit needs nothing more: its bytes
are copied out of the buffer (`data()`) only for an upload that must be judged.
"""

from __future__ import annotations

import asyncio
import hashlib
import tempfile
import time
from pathlib import Path
from typing import IO

import aiohttp
from aiohttp import web

from horde_scanner.errors import FinalError
from horde_scanner.service.errors import RequestError

_CHUNK = 1 << 16


class UploadCut(FinalError):
    """The body did not arrive in time (too slow, or past the deadline): answered 408."""

    def __init__(self, reason: str, detail: str, received: int) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail
        self.received = received


class ByteBudget:
    """Bytes held by bodies being read, against a limit (memory, or the spool on disk)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0

    def take(self, n: int) -> bool:
        if self.used + n > self.limit:
            return False
        self.used += n
        return True

    def force(self, n: int) -> None:
        self.used += n

    def give(self, n: int) -> None:
        self.used = max(0, self.used - n)


class Pace:
    """When the next bytes must have arrived, given how many came so far; `watch` keeps a
    body's reading to it."""

    def __init__(self, deadline: float, min_rate: float, grace_s: float) -> None:
        self.started = time.monotonic()
        self.deadline = deadline  # time.monotonic() clock
        self.min_rate = min_rate
        self.grace_s = grace_s
        self.cut: UploadCut | None = None  # set when the timer cut the read off
        self._body: UploadBody | None = None
        self._task: asyncio.Task[object] | None = None
        self._timer: asyncio.TimerHandle | None = None

    def cutoff(self, received: int) -> float:
        # At t seconds in, at least min_rate * (t - grace) bytes must have come.
        return min(self.deadline, self.started + self.grace_s + received / self.min_rate)

    def watch(self, body: UploadBody) -> None:
        """Hold the current task's reading of `body` to the pace until `stop()`: when it falls
        behind, the task is cancelled and `cut` says why (read_body turns that into UploadCut)."""
        self._body = body
        self._task = asyncio.current_task()
        self._arm()

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _arm(self) -> None:
        assert self._body is not None
        loop = asyncio.get_running_loop()
        at = loop.time() + (self.cutoff(self._body.size) - time.monotonic())
        self._timer = loop.call_at(at, self._check)

    def _check(self) -> None:
        assert self._body is not None and self._task is not None
        self._timer = None
        received = self._body.size
        cutoff = self.cutoff(received)
        if time.monotonic() < cutoff:
            self._arm()  # the sender kept up: the next moment it must have sent more
            return
        elapsed = time.monotonic() - self.started
        if cutoff >= self.deadline:
            self.cut = UploadCut(
                "read_deadline",
                f"the body was not complete by the validation deadline "
                f"({received} bytes in {elapsed:.1f} s)",
                received,
            )
        else:
            self.cut = UploadCut(
                "too_slow",
                f"the body arrived slower than server.upload_min_bytes_per_s "
                f"({self.min_rate:.0f}): {received} bytes in {elapsed:.1f} s",
                received,
            )
        self._task.cancel()


class UploadBody:
    """One body being read: in memory while the budget allows, else in a temporary file."""

    def __init__(
        self, limit: int, memory: ByteBudget, spool: ByteBudget, spool_dir: Path | None
    ) -> None:
        self.limit = limit
        self.size = 0
        self._memory = memory
        self._spool = spool
        self._spool_dir = spool_dir
        self._buf = bytearray()
        self._sha = hashlib.sha256()
        self._in_memory = 0  # bytes reserved from the memory budget
        self._on_disk = 0  # bytes reserved from the spool budget
        self._file: IO[bytes] | None = None

    @property
    def spooled(self) -> bool:
        return self._file is not None

    @property
    def sha256(self) -> str:
        """Hex sha256 of the body read so far (the whole body once read)."""
        return self._sha.hexdigest()

    async def add(self, chunk: bytes) -> None:
        self.size += len(chunk)
        if self.size > self.limit:
            raise RequestError(
                413, "too_large", f"body exceeds server.max_body_bytes ({self.limit})"
            )
        # Slices of at most a read's size: none holds the event loop for long.
        self._sha.update(chunk)
        if self._file is None and self._memory.take(len(chunk)):
            self._in_memory += len(chunk)
            self._buf += chunk
            return
        if not self._spool.take(len(chunk) + self._in_memory):
            raise RequestError(
                503,
                "busy",
                "too many upload bytes in flight (server.upload_memory_bytes and "
                "server.upload_spool_bytes are both full); try again",
            )
        self._on_disk += len(chunk) + self._in_memory
        # Written on the loop: a 64 KiB write lands in the page cache in microseconds, and a
        # thread hop per chunk measured worse (queued chunks and per-thread malloc arenas
        # grew the process by more than the budget saved, in a burst of 1,000 uploads).
        if self._file is None:
            self._file = self._open()
            self._file.write(self._buf)
            self._buf = bytearray()
            self._memory.give(self._in_memory)
            self._in_memory = 0
        self._file.write(chunk)

    def _open(self) -> IO[bytes]:
        return tempfile.TemporaryFile(prefix="upload-", dir=self._spool_dir)

    async def data(self) -> bytes:
        """The whole body in memory (a spooled one is read back and counted again)."""
        if self._file is None:
            data = bytes(self._buf)
            self._buf = bytearray()
            return data
        self._memory.force(self.size)
        self._in_memory += self.size
        self._file.seek(0)
        return self._file.read()

    def close(self) -> None:
        """Give back what this body holds; safe to call more than once."""
        self._buf = bytearray()
        self._memory.give(self._in_memory)
        self._in_memory = 0
        self._spool.give(self._on_disk)
        self._on_disk = 0
        if self._file is not None:
            self._file.close()
            self._file = None


async def read_body(request: web.Request, body: UploadBody, pace: Pace) -> None:
    """Read the raw body, or the `file` field of a multipart body, into `body`."""
    if request.content_length is not None and request.content_length > body.limit:
        raise RequestError(
            413,
            "too_large",
            f"body of {request.content_length} bytes exceeds server.max_body_bytes ({body.limit})",
        )
    pace.watch(body)
    try:
        if request.content_type == "multipart/form-data":
            await _read_multipart(request, body)
        else:
            content = request.content
            while chunk := await content.readany():
                await body.add(chunk)
    except asyncio.CancelledError:
        # The pace's timer cut the read off (anything else cancelling us goes on up). Nothing
        # between the reads and the stop below awaits, so the timer fires only inside them.
        cut = pace.cut
        if cut is None:
            raise
        task = asyncio.current_task()
        if task is not None:
            task.uncancel()
        raise cut from None
    finally:
        pace.stop()
    if not body.size:
        raise RequestError(400, "empty_body", "the request carried no image bytes")


async def _read_multipart(request: web.Request, body: UploadBody) -> None:
    try:
        reader = await request.multipart()
        while True:
            part = await reader.next()
            if part is None:
                break
            if isinstance(part, aiohttp.BodyPartReader) and part.name == "file":
                while chunk := await part.read_chunk(_CHUNK):
                    await body.add(chunk)
                return
            if isinstance(part, aiohttp.BodyPartReader):
                while await part.read_chunk(_CHUNK):
                    pass  # another field: read past it, within the same pace
    except ValueError as exc:
        raise RequestError(400, "bad_multipart", f"cannot read multipart body: {exc}") from None
    raise RequestError(400, "missing_file", "multipart body has no `file` field")
