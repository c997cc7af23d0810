"""Reading an upload's body without letting a slow or huge sender hold the service.

Two limits work together. A pace: the body must be complete by the validation deadline, and
after a short grace the sender must keep up an average of `server.upload_min_bytes_per_s`;
a sender that falls behind is cut off (`UploadCut`, answered 408). A byte budget: bodies
being read are held in memory while their sum stays under `server.upload_memory_bytes`; past
that, a body goes to a temporary file (itself bounded by `server.upload_spool_bytes`). So the
number of open connections costs sockets, not memory, and a connection that sends nothing
holds nothing that a real upload needs.
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from collections.abc import Awaitable
from pathlib import Path
from typing import IO, TypeVar

import aiohttp
from aiohttp import web

from horde_scanner.service.errors import RequestError

T = TypeVar("T")
_CHUNK = 1 << 16


class UploadCut(Exception):
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
    """When the next bytes must have arrived, given how many came so far."""

    def __init__(self, deadline: float, min_rate: float, grace_s: float) -> None:
        self.started = time.monotonic()
        self.deadline = deadline  # time.monotonic() clock
        self.min_rate = min_rate
        self.grace_s = grace_s

    def cutoff(self, received: int) -> float:
        # At t seconds in, at least min_rate * (t - grace) bytes must have come.
        return min(self.deadline, self.started + self.grace_s + received / self.min_rate)

    async def within(self, step: Awaitable[T], received: int) -> T:
        cutoff = self.cutoff(received)
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout_at(loop.time() + (cutoff - time.monotonic())):
                return await step
        except TimeoutError:
            elapsed = time.monotonic() - self.started
            if cutoff >= self.deadline:
                raise UploadCut(
                    "read_deadline",
                    f"the body was not complete by the validation deadline "
                    f"({received} bytes in {elapsed:.1f} s)",
                    received,
                ) from None
            raise UploadCut(
                "too_slow",
                f"the body arrived slower than server.upload_min_bytes_per_s "
                f"({self.min_rate:.0f}): {received} bytes in {elapsed:.1f} s",
                received,
            ) from None


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
        self._in_memory = 0  # bytes reserved from the memory budget
        self._on_disk = 0  # bytes reserved from the spool budget
        self._file: IO[bytes] | None = None

    @property
    def spooled(self) -> bool:
        return self._file is not None

    async def add(self, chunk: bytes) -> None:
        self.size += len(chunk)
        if self.size > self.limit:
            raise RequestError(
                413, "too_large", f"body exceeds server.max_body_bytes ({self.limit})"
            )
        if self._file is None and self._memory.take(len(chunk)):
            self._in_memory += len(chunk)
            self._buf += chunk
            return
        if not self._spool.take(len(chunk) + len(self._buf)):
            raise RequestError(
                503,
                "busy",
                "too many upload bytes in flight (server.upload_memory_bytes and "
                "server.upload_spool_bytes are both full); try again",
            )
        self._on_disk += len(chunk) + len(self._buf)
        # Written on the loop: a 64 KiB write lands in the page cache in microseconds, and a
        # thread hop per chunk measured worse (queued chunks and per-thread malloc arenas
        # grew the process by more than the budget saved, in a burst of 1,000 uploads).
        if self._file is None:
            self._file = self._open()
            if self._buf:
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
    if request.content_type == "multipart/form-data":
        await _read_multipart(request, body, pace)
    else:
        while chunk := await pace.within(request.content.readany(), body.size):
            await body.add(chunk)
    if not body.size:
        raise RequestError(400, "empty_body", "the request carried no image bytes")


async def _read_multipart(request: web.Request, body: UploadBody, pace: Pace) -> None:
    try:
        reader = await request.multipart()
        while True:
            part = await pace.within(reader.next(), body.size)
            if part is None:
                break
            if isinstance(part, aiohttp.BodyPartReader) and part.name == "file":
                while chunk := await pace.within(part.read_chunk(_CHUNK), body.size):
                    await body.add(chunk)
                return
            if isinstance(part, aiohttp.BodyPartReader):
                while await pace.within(part.read_chunk(_CHUNK), body.size):
                    pass  # another field: read past it, within the same pace
    except ValueError as exc:
        raise RequestError(400, "bad_multipart", f"cannot read multipart body: {exc}") from None
    raise RequestError(400, "missing_file", "multipart body has no `file` field")
