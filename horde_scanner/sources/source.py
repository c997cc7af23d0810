"""The one small interface every storage a sweep can walk implements (local.py, s3.py, ssh.py).

Contract of a `Source`:

- `url` is the canonical address of the scanned root (`file:///abs/path`, `s3://bucket/prefix`,
  `ssh://user@host:port/abs/path`). Records, checkpoints and audit rows are keyed by it.
- An *identifier* is the path of an object relative to that root, with `/` separators (for
  pict-rs, exactly its own identifier when the root is its files directory or bucket root).
- `open()` connects and checks credentials, host key and that the root exists, *before any
  work*; it raises `SourceError` with a message an admin can act on. `close()` is always safe.
- `list(start_after)` yields every object under the root in one stable order of the source's
  own choosing, skipping the source's quarantine area. With `start_after` (an identifier it
  yielded before) it yields exactly the objects that come after it in that order, so an
  interrupted sweep resumes without walking what it finished.
- `list_new(since, time_ordered)` yields objects written at or after `since` (epoch seconds,
  by the store's own clock), newest first where the store allows it. `time_ordered` says the
  tree uses pict-rs >= 0.5.7's UUIDv7 layout, so branches older than `since` need no listing.
- `stat(identifier)` returns the object's Entry, or None when it does not exist.
- `read(entry, limit)` returns the object's bytes (the first `limit` bytes when given).
- `quarantine_location(name)` says, without touching anything, where `quarantine(identifier,
  name)` will put an object; `quarantine` moves the object into the source's quarantine area
  (on the same host or bucket, never readable by others) and returns that location.
  `restore(location, identifier)` moves it back and refuses to overwrite; `delete(identifier)`
  removes it.
- `list_errors` counts directories that could not be listed (logged, not fatal).
- Per-object failures raise `Vanished` (it went away) or `Denied` (no permission): the sweep
  counts them and carries on. Anything else fatal to the whole source raises `SourceError`.
- Every method may be called concurrently from several tasks.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Protocol

from horde_scanner.errors import FinalError


@dataclass(frozen=True, slots=True)
class Entry:
    identifier: str
    size: int
    mtime: float


class SourceError(FinalError):
    """The source cannot be used at all (address, credentials, host key, missing root)."""


class ItemError(FinalError):
    """One object could not be handled; the sweep counts it and goes on."""


class Vanished(ItemError):
    """The object disappeared between listing and reading or acting."""


class Denied(ItemError):
    """The object exists but we may not read, move or delete it."""


class Source(Protocol):
    url: str
    kind: str
    list_errors: int

    async def open(self) -> None: ...

    async def close(self) -> None: ...

    def list(self, start_after: str | None = None) -> AsyncIterator[Entry]: ...

    def list_new(self, since: float, *, time_ordered: bool) -> AsyncIterator[Entry]: ...

    async def stat(self, identifier: str) -> Entry | None: ...

    async def read(self, entry: Entry, limit: int | None = None) -> bytes: ...

    def quarantine_location(self, name: str) -> str: ...

    async def quarantine(self, identifier: str, name: str) -> str: ...

    async def restore(self, location: str, identifier: str) -> None: ...

    async def delete(self, identifier: str) -> None: ...
