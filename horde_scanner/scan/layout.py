"""pict-rs storage layouts, and the tree walks that local and SSH sources share.

From 0.5.7 pict-rs names files by a UUIDv7 (`01/90/4f/.../3a/9c1e2f7a0b11.webp`): ten
directories of two hex characters, the first six of which spell the creation time in
milliseconds. Walking those in reverse name order is walking newest first, and a directory
whose time prefix is older than a moment holds nothing newer, so `walk_new` skips it unread.
Older layouts (0.4: UUIDv4 names without extension) carry no time; there only mtime tells.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

from horde_scanner.scan.source import Entry

_V7_RE = re.compile(r"^(?:[0-9a-f]{2}/){10}[0-9a-f]{12}(?:\.[a-z0-9]+)?$")
_HEX2_RE = re.compile(r"^[0-9a-f]{2}$")
# Directory levels that spell the 48-bit millisecond timestamp (12 hex characters).
_TIME_LEVELS = 6


@dataclass(frozen=True, slots=True)
class DirItem:
    name: str
    is_dir: bool
    size: int
    mtime: float


# Lists one directory, given as a path relative to the root ("" for the root itself).
Lister = Callable[[str], Awaitable[list[DirItem]]]


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


async def walk(
    listdir: Lister, start_after: str | None, skip: Callable[[str], bool]
) -> AsyncIterator[Entry]:
    """Every file under the root, in component-wise name order, after `start_after`."""
    after = start_after.split("/") if start_after else None

    async def visit(rel: str, parts: list[str]) -> AsyncIterator[Entry]:
        items = sorted(await listdir(rel), key=lambda item: item.name)
        for item in items:
            here = [*parts, item.name]
            path = _join(rel, item.name)
            if after is not None:
                bound = after[: len(here)]
                # Wholly before the checkpoint, or the checkpointed file itself: done already.
                if here < bound or (here == bound and not item.is_dir):
                    continue
            if skip(path):
                continue
            if item.is_dir:
                async for entry in visit(path, here):
                    yield entry
            else:
                yield Entry(path, item.size, item.mtime)

    async for entry in visit("", []):
        yield entry


async def walk_new(
    listdir: Lister, since: float, time_ordered: bool, skip: Callable[[str], bool]
) -> list[Entry]:
    """Files written at or after `since`, newest first.

    With `time_ordered`, UUIDv7 directories older than `since` are not listed at all; other
    directories are walked and filtered by mtime.
    """
    floor = v7_time_prefix(since)
    found: list[Entry] = []

    async def visit(rel: str, depth: int, v7: bool) -> None:
        items = sorted(await listdir(rel), key=lambda item: item.name, reverse=True)
        for item in items:
            path = _join(rel, item.name)
            if skip(path):
                continue
            if item.is_dir:
                hex_dir = v7 and bool(_HEX2_RE.match(item.name))
                if time_ordered and hex_dir and depth < _TIME_LEVELS:
                    spelled = path.replace("/", "")
                    if spelled < floor[: len(spelled)]:
                        # Reverse order: every later sibling is older still.
                        break
                await visit(path, depth + 1, hex_dir)
            elif item.mtime >= since:
                found.append(Entry(path, item.size, item.mtime))

    await visit("", 0, True)
    found.sort(key=lambda e: e.mtime, reverse=True)
    return found
