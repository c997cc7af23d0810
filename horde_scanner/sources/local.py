"""A directory on this machine (pict-rs's `files` directory, or any tree of media).

Directory listing, stat and file reads are blocking system calls: they run in the default
thread pool so the event loop keeps serving the other files of the sweep.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import shutil
import threading
from collections.abc import AsyncIterator, Callable
from functools import partial
from pathlib import Path
from typing import TypeVar

from horde_scanner.sources.layout import DirItem, walk_new_sync, walk_sync
from horde_scanner.sources.source import Denied, Entry, ItemError, SourceError, Vanished

log = logging.getLogger(__name__)

T = TypeVar("T")

_BATCH = 512
_BATCHES_AHEAD = 8


class LocalSource:
    kind = "local"

    def __init__(self, root: Path, quarantine_dir: Path) -> None:
        self.root = root.resolve()
        self.url = self.root.as_uri()
        self.quarantine_dir = quarantine_dir.resolve()
        # The quarantine's path relative to the root when it lies inside (then never listed).
        self._quarantine_rel: str | None = None
        if self.root in self.quarantine_dir.parents:
            self._quarantine_rel = self.quarantine_dir.relative_to(self.root).as_posix()
        self._root_str = str(self.root)
        # Directories that could not be listed (logged); the sweep reports the count.
        self.list_errors = 0
        self.listed = 0

    async def _call(self, fn: Callable[..., T], *args: object) -> T:
        return await asyncio.get_running_loop().run_in_executor(None, partial(fn, *args))

    async def open(self) -> None:
        if not self.root.exists():
            raise SourceError(f"{self.root}: no such directory")
        if not self.root.is_dir():
            raise SourceError(f"{self.root}: not a directory")
        if not os.access(self.root, os.R_OK | os.X_OK):
            raise SourceError(f"{self.root}: permission denied (cannot list it)")

    async def close(self) -> None:
        return None

    def _skip(self, rel: str) -> bool:
        q = self._quarantine_rel
        return q is not None and (rel == q or rel.startswith(q + "/"))

    def _listdir_sync(self, rel: str) -> list[DirItem]:
        items: list[DirItem] = []
        files = 0
        try:
            with os.scandir(os.path.join(self._root_str, rel) if rel else self._root_str) as it:
                for de in it:
                    try:
                        # d_type answers these without a system call; links are never
                        # followed out of the store.
                        if de.is_dir(follow_symlinks=False):
                            items.append(DirItem(de.name, True, 0, 0.0))
                        elif de.is_file(follow_symlinks=False):
                            st = de.stat(follow_symlinks=False)
                            items.append(DirItem(de.name, False, st.st_size, st.st_mtime))
                            files += 1
                    except FileNotFoundError:
                        continue  # went away while we listed
        except FileNotFoundError:
            return []
        except PermissionError:
            self.list_errors += 1
            log.warning("cannot list %s: permission denied", self.root / rel)
            return []
        self.listed += files
        return items

    async def list(self, start_after: str | None = None) -> AsyncIterator[Entry]:
        # The whole walk runs in one thread and hands over batches: pict-rs 0.5.7+ trees have
        # about one directory per file, and a thread hop per directory would cost more than
        # the listing itself.
        loop = asyncio.get_running_loop()
        batches: asyncio.Queue[list[Entry] | BaseException | None] = asyncio.Queue()
        credit = threading.Semaphore(_BATCHES_AHEAD)
        stop = threading.Event()

        def hand_over(item: list[Entry] | BaseException | None) -> bool:
            while not credit.acquire(timeout=0.1):
                if stop.is_set():
                    return False
            loop.call_soon_threadsafe(batches.put_nowait, item)
            return True

        def produce() -> None:
            try:
                batch: list[Entry] = []
                for entry in walk_sync(self._listdir_sync, start_after, self._skip):
                    batch.append(entry)
                    if len(batch) >= _BATCH and not hand_over(batch):
                        return
                    if len(batch) >= _BATCH:
                        batch = []
                if batch and not hand_over(batch):
                    return
                hand_over(None)
            except BaseException as exc:  # re-raised on the loop side
                hand_over(exc)

        thread = threading.Thread(target=produce, name="scan-list", daemon=True)
        thread.start()
        try:
            while True:
                item = await batches.get()
                credit.release()
                if item is None:
                    return
                if isinstance(item, BaseException):
                    raise item
                for entry in item:
                    yield entry
        finally:
            stop.set()

    async def list_new(self, since: float, *, time_ordered: bool) -> AsyncIterator[Entry]:
        found = await self._call(walk_new_sync, self._listdir_sync, since, time_ordered, self._skip)
        for entry in found:
            yield entry

    def _path(self, identifier: str) -> Path:
        path = (self.root / identifier).resolve()
        if self.root not in path.parents:
            raise ItemError(f"{identifier!r} is outside {self.root}")
        return path

    async def stat(self, identifier: str) -> Entry | None:
        def go() -> Entry | None:
            try:
                st = self._path(identifier).stat()
            except FileNotFoundError:
                return None
            except PermissionError as exc:
                raise Denied(f"{identifier}: permission denied") from exc
            return Entry(identifier, st.st_size, st.st_mtime)

        return await self._call(go)

    async def read(self, entry: Entry, limit: int | None = None) -> bytes:
        def go() -> bytes:
            try:
                with open(self._path(entry.identifier), "rb") as fh:
                    return fh.read(-1 if limit is None else limit)
            except (FileNotFoundError, IsADirectoryError) as exc:
                raise Vanished(f"{entry.identifier}: no longer there") from exc
            except PermissionError as exc:
                raise Denied(f"{entry.identifier}: permission denied") from exc

        return await self._call(go)

    def _ensure_quarantine(self) -> None:
        self.quarantine_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        # mkdir's mode is filtered by the umask, and the directory may have existed before.
        os.chmod(self.quarantine_dir, 0o700)

    def quarantine_location(self, name: str) -> str:
        return str(self.quarantine_dir / name)

    async def quarantine(self, identifier: str, name: str) -> str:
        def go() -> str:
            self._ensure_quarantine()
            dest = Path(self.quarantine_location(name))
            _move(self._path(identifier), dest, identifier)
            return str(dest)

        return await self._call(go)

    async def restore(self, location: str, identifier: str) -> None:
        def go() -> None:
            target = self._path(identifier)
            if target.exists():
                raise ItemError(f"{target} exists already; not overwriting it")
            target.parent.mkdir(parents=True, exist_ok=True)
            _move(Path(location), target, location)

        await self._call(go)

    async def delete(self, identifier: str) -> None:
        def go() -> None:
            try:
                self._path(identifier).unlink()
            except FileNotFoundError as exc:
                raise Vanished(f"{identifier}: no longer there") from exc
            except PermissionError as exc:
                raise Denied(f"{identifier}: permission denied") from exc

        await self._call(go)


def _move(src: Path, dest: Path, label: str) -> None:
    try:
        os.replace(src, dest)
        return
    except FileNotFoundError as exc:
        raise Vanished(f"{label}: no longer there") from exc
    except PermissionError as exc:
        raise Denied(f"{label}: permission denied") from exc
    except OSError as exc:
        if exc.errno != errno.EXDEV:
            raise ItemError(f"{label}: {exc.strerror}") from exc
    # Another filesystem: copy completely, then remove the original.
    tmp = dest.with_name(dest.name + ".part")
    try:
        shutil.copy2(src, tmp)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, dest)
        src.unlink()
    except FileNotFoundError as exc:
        raise Vanished(f"{label}: no longer there") from exc
    except PermissionError as exc:
        raise Denied(f"{label}: permission denied") from exc
