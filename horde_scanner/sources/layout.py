"""pict-rs storage layouts, and the tree walks that local and SSH sources share.

From 0.5.7 pict-rs names files by a UUIDv7 (`01/90/4f/.../3a/9c1e2f7a0b11.webp`): ten
directories of two hex characters, the first six of which spell the creation time in
milliseconds. Walking those in reverse name order is walking newest first, and a directory
whose time prefix is older than a moment holds nothing newer, so `walk_new` skips it unread.
Older layouts (0.4: UUIDv4 names without extension) carry no time; there only mtime tells.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Awaitable, Callable, Generator, Iterator
from typing import NamedTuple

from horde_scanner.sources.source import Entry

_V7_RE = re.compile(r"^(?:[0-9a-f]{2}/){10}[0-9a-f]{12}(?:\.[a-z0-9]+)?$")
_HEX2_RE = re.compile(r"^[0-9a-f]{2}$")
# Directory levels that spell the 48-bit millisecond timestamp (12 hex characters).
_TIME_LEVELS = 6


class DirItem(NamedTuple):
    # A tuple, not a dataclass: a pict-rs 0.5.7+ tree has ~6 directories per file, and
    # building these is a good part of walking it.
    name: str
    is_dir: bool
    size: int
    mtime: float


# Lists one directory, given as a path relative to the root ("" for the root itself).
Lister = Callable[[str], Awaitable[list[DirItem]]]
SyncLister = Callable[[str], list[DirItem]]


def is_v7_identifier(identifier: str) -> bool:
    """True for a pict-rs >= 0.5.7 identifier (UUIDv7 path), whatever the root prefix."""
    tail = "/".join(identifier.split("/")[-11:])
    if not _V7_RE.match(tail):
        return False
    return tail.replace("/", "")[12] == "7"


def v7_time_prefix(ts: float) -> str:
    """The 12 hex characters a UUIDv7 made at `ts` (epoch seconds) starts with."""
    return f"{max(0, int(ts * 1000)) & ((1 << 48) - 1):012x}"


def v7_key_prefix(ts: float) -> str:
    """The first six directories of a UUIDv7 path made at `ts`, e.g. `01/90/4f/3a/2b/1c`."""
    hx = v7_time_prefix(ts)
    return "/".join(hx[i : i + 2] for i in range(0, 12, 2))


def _join(parent: str, name: str) -> str:
    return f"{parent}/{name}" if parent else name


def _before(here: list[str], after: list[str] | None, is_dir: bool) -> bool:
    """True when `here` is wholly at or before the checkpoint `after` (done already)."""
    if after is None:
        return False
    bound = after[: len(here)]
    return here < bound or (here == bound and not is_dir)


async def walk(
    listdir: Lister, start_after: str | None, skip: Callable[[str], bool]
) -> AsyncIterator[Entry]:
    """Every file under the root, in component-wise name order, after `start_after`."""
    after = start_after.split("/") if start_after else None

    async def visit(rel: str, parts: list[str]) -> AsyncIterator[Entry]:
        for item in sorted(await listdir(rel), key=lambda item: item.name):
            here = [*parts, item.name]
            path = _join(rel, item.name)
            if _before(here, after, item.is_dir) or skip(path):
                continue
            if item.is_dir:
                async for entry in visit(path, here):
                    yield entry
            else:
                yield Entry(path, item.size, item.mtime)

    async for entry in visit("", []):
        yield entry


def walk_sync(
    listdir: SyncLister, start_after: str | None, skip: Callable[[str], bool]
) -> Iterator[Entry]:
    """`walk` for a blocking lister (a local disk, walked from one thread)."""
    after = start_after.split("/") if start_after else None

    def visit(rel: str, parts: list[str]) -> Iterator[Entry]:
        # Tuples sort by name first: names in a directory are unique.
        for name, is_dir, size, mtime in sorted(listdir(rel)):
            path = f"{rel}/{name}" if rel else name
            if after is not None:
                here = [*parts, name]
                if _before(here, after, is_dir):
                    continue
            else:
                here = parts
            if skip(path):
                continue
            if is_dir:
                yield from visit(path, here if after is None else [*parts, name])
            else:
                yield Entry(path, size, mtime)

    yield from visit("", [])


def _prune(path: str, floor: str) -> bool:
    """A UUIDv7 time directory older than `floor` (12 hex characters of milliseconds)."""
    spelled = path.replace("/", "")
    return spelled < floor[: len(spelled)]


def _time_dir(name: str, depth: int, v7: bool) -> bool:
    return v7 and depth < _TIME_LEVELS and bool(_HEX2_RE.match(name))


class _NewWalk:
    """The walk of `walk_new` without the listing itself, so that one walk serves the async
    and the blocking lister: `wanted` is the directory to list next (None once done), `give`
    hands over its listing, and `found` then holds the files, newest first."""

    def __init__(self, since: float, time_ordered: bool, skip: Callable[[str], bool]) -> None:
        self.found: list[Entry] = []
        self._since, self._floor = since, v7_time_prefix(since)
        self._time_ordered, self._skip = time_ordered, skip
        self._steps = self._visit("", 0, True)
        self.wanted: str | None = next(self._steps)

    def give(self, listing: list[DirItem]) -> None:
        try:
            self.wanted = self._steps.send(listing)
        except StopIteration:
            self.wanted = None
            self.found.sort(key=lambda e: e.mtime, reverse=True)

    def _visit(self, rel: str, depth: int, v7: bool) -> Generator[str, list[DirItem], None]:
        listing = yield rel
        for item in sorted(listing, key=lambda item: item.name, reverse=True):
            path = _join(rel, item.name)
            if self._skip(path):
                continue
            if item.is_dir:
                timed = _time_dir(item.name, depth, v7)
                if self._time_ordered and timed and _prune(path, self._floor):
                    break  # reverse order: every later sibling is older still
                yield from self._visit(path, depth + 1, v7 and bool(_HEX2_RE.match(item.name)))
            elif item.mtime >= self._since:
                self.found.append(Entry(path, item.size, item.mtime))


async def walk_new(
    listdir: Lister, since: float, time_ordered: bool, skip: Callable[[str], bool]
) -> list[Entry]:
    """Files written at or after `since`, newest first.

    With `time_ordered`, UUIDv7 directories older than `since` are not listed at all; other
    directories are walked and filtered by mtime.
    """
    walk = _NewWalk(since, time_ordered, skip)
    while walk.wanted is not None:
        walk.give(await listdir(walk.wanted))
    return walk.found


def walk_new_sync(
    listdir: SyncLister, since: float, time_ordered: bool, skip: Callable[[str], bool]
) -> list[Entry]:
    """`walk_new` for a blocking lister."""
    walk = _NewWalk(since, time_ordered, skip)
    while walk.wanted is not None:
        walk.give(listdir(walk.wanted))
    return walk.found
