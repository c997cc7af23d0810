"""Quarantine: files taken out of storage but kept, so that a false positive can be put back.

The contract, for sweeps and anything else that quarantines:

- Quarantined files live in ONE local directory (`quarantine.dir`), content-addressed as
  `<dir>/<sha256[:2]>/<sha256>` (mode 0600, directories 0700). Identical bytes found in two
  places are held once.
- The `quarantine` table (store/review.py) records each place a file came from: `origin` is
  the kind of storage ("local", "s3", "ssh", ...; free text, it selects the Restorer) and
  `identifier` is the file's original identifier there (an absolute path for "local", a
  bucket/key for "s3", "host:/path" for "ssh"). `detail` is free JSON (e.g.
  {"instance": "lemmy.example"}).
- To quarantine, move the bytes into the directory and record them in one call:
  `await quarantine.admit_file(sha, path, origin="local", identifier=str(path))` moves a local
  file; `await quarantine.admit_bytes(sha, data, origin="s3", identifier="bucket/key")` writes
  bytes already read (the caller then deletes the original). Both write an audit record.
- `release(sha)` (an admin allowed the image) puts every held copy back through the Restorer
  registered for its origin (`quarantine.register_restorer("s3", restorer)`). "local" has a
  built-in one: it copies the file back to its original path unless something is there now.
  Without a restorer the row is marked released and the file stays in the directory; the
  result says where, so an admin can restore it by hand.
- `discard(sha)` (an admin confirmed the positive) deletes the held file.

Rows are never deleted: `state` goes held -> released | deleted, with who and when.

Holders: the admin's decisions reach every quarantine
-----------------------------------------------------
This module's `Quarantine` is one *holder* of quarantined copies; storage sweeps
(`horde-scanner scan --action quarantine`) are another (`scan/holder.py`: copies moved into
the sweep's own quarantine area next to the storage, recorded in `scan_actions`). Review
(review.py) asks every registered holder, in order, through this small contract
(`QuarantineHolder`):

- `name` names the holder ("admin", "sweep"); it is shown with each copy.
- `copies(sha256)` lists every copy this holder has ever had of those bytes, in any state,
  as `HeldCopy` (metadata only, never bytes). `state` is "held" while it is in quarantine.
- `held_among(hashes)` says which of `hashes` it holds now (one query for a page of items).
- `held_bytes(sha256)` returns the bytes of a held copy it can read here, or None. Used for
  blurred previews and fresh backend calls only; a holder may answer None for copies it
  cannot read cheaply (the sweep holder reads local sweep quarantines only).
- `release(sha256, by=, note=)` (an admin allowed the image) puts every held copy back where
  it was found and records that in the holder's own records and the audit log. One failed
  copy does not stop the others; the `ReleaseResult` lists both. The caller allow-lists.
- `discard(sha256, by=, note=)` (an admin confirmed the positive) returns how many held
  copies it deleted. A holder may keep its copies as evidence (the sweep holder does): it
  then records the decision and returns 0, and the copies stay "held".
- `counts()` gives {state: n} for the stats page.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from horde_scanner.errors import FinalError
from horde_scanner.store.interfaces import AuditStore, ReviewStore

# The quarantine table's states and rows (store/review.py), for this module's users too.
from horde_scanner.store.review import DELETED as DELETED
from horde_scanner.store.review import HELD as HELD
from horde_scanner.store.review import RELEASED as RELEASED
from horde_scanner.store.review import QuarantineItem as QuarantineItem


class QuarantineStore(ReviewStore, AuditStore, Protocol):
    """What the admin's quarantine records."""


log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class HeldCopy:
    """One copy of some bytes in some holder's quarantine, as an admin may see it."""

    holder: str
    origin: str  # local | s3 | ssh | ...
    identifier: str  # where it was found
    state: str  # held | released | deleted (a holder may add its own)
    size: int | None
    quarantined_at: float
    updated_at: float
    updated_by: str | None
    location: str | None = None  # where it is held now, when the holder says
    detail: dict[str, Any] = field(default_factory=dict)

    def public(self) -> dict[str, Any]:
        """What an admin may see (no file contents)."""
        return {
            "holder": self.holder,
            "origin": self.origin,
            "identifier": self.identifier,
            "state": self.state,
            "size": self.size,
            "location": self.location,
            "quarantined_at": self.quarantined_at,
            "updated_at": self.updated_at,
            "updated_by": self.updated_by,
            "detail": self.detail,
        }


class QuarantineHolder(Protocol):
    """Something that holds quarantined copies; the contract is in the module docstring."""

    name: str

    async def copies(self, sha256: str) -> list[HeldCopy]: ...

    async def held_among(self, hashes: list[str]) -> set[str]: ...

    async def held_bytes(self, sha256: str) -> bytes | None: ...

    async def release(self, sha256: str, *, by: str, note: str = "") -> ReleaseResult: ...

    async def discard(self, sha256: str, *, by: str, note: str = "") -> int: ...

    async def counts(self) -> dict[str, int]: ...


class Restorer(Protocol):
    """Puts one quarantined copy back where it was found. Raise to report a failure."""

    async def restore(self, item: QuarantineItem, held_file: Path) -> str:
        """Return a short description of what was done (kept in the audit log)."""
        ...


class LocalRestorer:
    """Copies a held file back to its original absolute path (never over an existing file)."""

    async def restore(self, item: QuarantineItem, held_file: Path) -> str:
        target = Path(item.identifier)
        if not target.is_absolute():
            raise QuarantineError(f"local identifier {item.identifier!r} is not an absolute path")
        return await asyncio.to_thread(_copy_back, held_file, target)


def _copy_back(held_file: Path, target: Path) -> str:
    if target.exists():
        return f"left alone: {target} exists"
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.restoring")
    shutil.copyfile(held_file, tmp)
    os.replace(tmp, target)
    return f"restored to {target}"


class QuarantineError(FinalError):
    """A quarantine operation failed; the message says which file and why."""


@dataclass
class ReleaseResult:
    released: list[dict[str, Any]] = field(default_factory=list)
    failed: list[dict[str, Any]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {"released": self.released, "failed": self.failed}


class Quarantine:
    """The admin's own holder: one content-addressed directory and the `quarantine` table."""

    name = "admin"

    def __init__(self, store: QuarantineStore, directory: Path) -> None:
        self._store = store
        self.directory = Path(directory)
        self._restorers: dict[str, Restorer] = {"local": LocalRestorer()}

    def register_restorer(self, origin: str, restorer: Restorer) -> None:
        self._restorers[origin] = restorer

    def held_path(self, sha256: str) -> Path:
        return self.directory / sha256[:2] / sha256

    # -- admitting -----------------------------------------------------------------------------

    async def admit_bytes(
        self,
        sha256: str,
        data: bytes,
        *,
        origin: str,
        identifier: str,
        by: str = "sweep",
        detail: dict[str, Any] | None = None,
    ) -> QuarantineItem:
        path = self.held_path(sha256)
        await asyncio.to_thread(_write_private, path, data)
        return await self._admitted(
            await self._store.add_quarantined(
                sha256, path, len(data), origin=origin, identifier=identifier, by=by, detail=detail
            )
        )

    async def admit_file(
        self,
        sha256: str,
        source: Path,
        *,
        origin: str = "local",
        identifier: str | None = None,
        by: str = "sweep",
        detail: dict[str, Any] | None = None,
    ) -> QuarantineItem:
        """Move a local file into quarantine (copy + unlink across file systems)."""
        path = self.held_path(sha256)
        size = await asyncio.to_thread(_move_private, Path(source), path)
        return await self._admitted(
            await self._store.add_quarantined(
                sha256,
                path,
                size,
                origin=origin,
                identifier=identifier or str(source),
                by=by,
                detail=detail,
            )
        )

    async def _admitted(self, item: QuarantineItem) -> QuarantineItem:
        await self._store.audit(
            "quarantined",
            sha256=item.sha256,
            action="quarantine",
            source=item.updated_by,
            detail={"origin": item.origin, "identifier": item.identifier},
        )
        return item

    # -- reading ---------------------------------------------------------------------------------

    async def items(self, sha256: str) -> list[QuarantineItem]:
        return await self._store.quarantine_items(sha256)

    async def copies(self, sha256: str) -> list[HeldCopy]:
        return [
            HeldCopy(
                self.name, i.origin, i.identifier, i.state, i.size, i.quarantined_at,
                i.updated_at, i.updated_by, str(i.path) if i.state == HELD else None, i.detail,
            )
            for i in await self.items(sha256)
        ]  # fmt: skip

    async def held(self, sha256: str) -> list[QuarantineItem]:
        return [i for i in await self.items(sha256) if i.state == HELD]

    async def held_among(self, hashes: list[str]) -> set[str]:
        """Which of `hashes` have a copy held (one query for a page of items)."""
        return await self._store.quarantine_held_among(hashes)

    async def held_bytes(self, sha256: str) -> bytes | None:
        """The held file's bytes, only while the item is in quarantine."""
        if not await self.held(sha256):
            return None
        try:
            return await asyncio.to_thread(self.held_path(sha256).read_bytes)
        except OSError as exc:
            log.warning("quarantined %s: cannot read held file: %s", sha256[:12], exc)
            return None

    async def counts(self) -> dict[str, int]:
        return await self._store.count_quarantine()

    # -- decisions ---------------------------------------------------------------------------------

    async def release(self, sha256: str, *, by: str, note: str = "") -> ReleaseResult:
        """Put every held copy back (see the module docstring); the held file goes when all did."""
        result = ReleaseResult()
        held = await self.held(sha256)
        held_file = self.held_path(sha256)
        for item in held:
            restorer = self._restorers.get(item.origin)
            if restorer is None:
                what = f"no restorer for origin {item.origin!r}; file kept at {held_file}"
                result.failed.append({"identifier": item.identifier, "why": what})
                await self._store.set_quarantine_state(item.id, RELEASED, by)
                continue
            try:
                what = await restorer.restore(item, held_file)
            except Exception as exc:  # one failed copy must not block the others
                log.error("quarantine release of %s failed: %s", item.identifier, exc)
                result.failed.append({"identifier": item.identifier, "why": str(exc)})
                continue
            await self._store.set_quarantine_state(item.id, RELEASED, by)
            result.released.append({"identifier": item.identifier, "what": what})
        if held and not result.failed:
            await asyncio.to_thread(_unlink, held_file)
        return result

    async def discard(self, sha256: str, *, by: str, note: str = "") -> int:
        """Delete the held file of a confirmed positive; returns the copies it stood for."""
        held = await self.held(sha256)
        for item in held:
            await self._store.set_quarantine_state(item.id, DELETED, by)
        if held:
            await asyncio.to_thread(_unlink, self.held_path(sha256))
        return len(held)


def _private_dir(path: Path) -> None:
    path.mkdir(mode=0o700, parents=True, exist_ok=True)


def _write_private(path: Path, data: bytes) -> None:
    _private_dir(path.parent)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".in-")
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        _unlink(Path(tmp))
        raise


def _move_private(source: Path, path: Path) -> int:
    _private_dir(path.parent)
    size = source.stat().st_size
    try:
        os.replace(source, path)
    except OSError:
        # Another file system: copy, then remove the original.
        _write_private(path, source.read_bytes())
        source.unlink()
    os.chmod(path, 0o600)
    return size


def _unlink(path: Path) -> None:
    try:
        path.unlink()
    except FileNotFoundError:
        pass
