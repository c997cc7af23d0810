"""The sweeps' quarantine as a `QuarantineHolder` (contract in
horde_scanner/review/quarantine.py), so that an admin's decision on the /admin page or the admin
API reaches what sweeps quarantined.

- copies: every `scan_actions` row with action=quarantine for the hash; state "done" is shown
  as "held", "released" stays "released" (a "started" one is mid-move and shown as such).
- release: the same as `horde-scanner release SHA256`: each held object goes back through its
  sweep Source (local, S3, SSH, opened from the settings like the CLI does), its row becomes
  "released", the file record forgets the action, and an audit "released" record names who.
- discard: sweep copies are evidence and stay where they are; the decision is noted in each
  row's detail and in an audit "quarantine_kept" record.
- held_bytes: read from a LOCAL sweep quarantine only (a path on this host), and only when the
  bytes still hash to the sha256; S3/SSH copies are not fetched for previews.
"""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path
from typing import Protocol
from urllib.parse import urlsplit

from horde_scanner.config import Settings
from horde_scanner.judging.judge import Judge
from horde_scanner.media.hashing import sha256_hex
from horde_scanner.review.decisions import DecisionStore, Review
from horde_scanner.review.quarantine import (
    HELD,
    HeldCopy,
    Quarantine,
    QuarantineStore,
    ReleaseResult,
)
from horde_scanner.sources.address import make_source
from horde_scanner.store.interfaces import SweepStore
from horde_scanner.store.sweeps import ScanAction
from horde_scanner.sweep.actions import Action, release


class SweepHolderStore(SweepStore, QuarantineStore, DecisionStore, Protocol):
    """What the sweep's quarantine holder records (and the admin's quarantine and review it
    builds)."""


log = logging.getLogger(__name__)

_ORIGINS = {"file": "local", "s3": "s3", "ssh": "ssh", "sftp": "ssh"}


def _origin(source_url: str) -> str:
    scheme = urlsplit(source_url).scheme.lower()
    return _ORIGINS.get(scheme, scheme or "local")


class SweepQuarantine:
    name = "sweep"

    def __init__(self, store: SweepHolderStore, settings: Settings) -> None:
        self._store = store
        self._settings = settings

    async def _rows(self, sha256: str, state: str | None = None) -> list[ScanAction]:
        rows = await self._store.scan_actions_for(sha256, state=state)
        return [r for r in rows if r.action == Action.QUARANTINE]

    async def copies(self, sha256: str) -> list[HeldCopy]:
        return [
            HeldCopy(
                holder=self.name,
                origin=_origin(r.source),
                identifier=f"{r.source.rstrip('/')}/{r.identifier}",
                state=HELD if r.state == "done" else r.state,
                size=r.size,
                quarantined_at=r.created_at,
                updated_at=r.updated_at,
                updated_by=r.detail.get("decided_by") or r.detail.get("by"),
                location=r.location,
                detail={"action_id": r.id, **r.detail},
            )
            for r in await self._rows(sha256)
        ]

    async def held_among(self, hashes: list[str]) -> set[str]:
        return await self._store.scan_quarantined_among(hashes)

    async def held_bytes(self, sha256: str) -> bytes | None:
        for row in await self._rows(sha256, state="done"):
            if _origin(row.source) != "local" or not row.location:
                continue
            data = await asyncio.to_thread(_read_if_same, Path(row.location), sha256)
            if data is not None:
                return data
        return None

    async def release(self, sha256: str, *, by: str, note: str = "") -> ReleaseResult:
        result = ReleaseResult()
        for row in await self._rows(sha256, state="done"):
            where = f"{row.source.rstrip('/')}/{row.identifier}"
            try:
                source = make_source(row.source, self._settings)
                await source.open()
                try:
                    restored = await release(self._store, row, source, note=note, by=by)
                finally:
                    await source.close()
            except Exception as exc:  # one failed copy must not block the others
                log.error("release of sweep quarantine #%d (%s) failed: %s", row.id, where, exc)
                result.failed.append(
                    {"holder": self.name, "identifier": where, "action_id": row.id,
                     "why": str(exc) or type(exc).__name__}
                )  # fmt: skip
                continue
            result.released.append(
                {"holder": self.name, "identifier": restored, "action_id": row.id,
                 "what": f"restored from {row.location}"}
            )  # fmt: skip
        return result

    async def discard(self, sha256: str, *, by: str, note: str = "") -> int:
        now = time.time()
        for row in await self._rows(sha256, state="done"):
            decision = {"decision": "confirm", "decided_by": by, "decided_at": now, "note": note}
            await self._store.set_scan_action_detail(row.id, {**row.detail, **decision})
            await self._store.audit(
                "quarantine_kept",
                sha256=sha256,
                label=row.label,
                action="keep",
                source=row.source,
                detail={
                    "identifier": row.identifier,
                    "at": row.location,
                    "action_id": row.id,
                    "by": by,
                    "note": note,
                    "why": "confirmed positive: the sweep copy stays in quarantine as evidence",
                },
            )
        return 0

    async def counts(self) -> dict[str, int]:
        counts = await self._store.scan_quarantine_counts()
        if "done" in counts:
            counts[HELD] = counts.pop("done")
        return counts


def review_for(
    settings: Settings,
    store: SweepHolderStore,
    judge: Judge | None = None,
    quarantine: Quarantine | None = None,
) -> Review:
    """The decisions over every holder this installation has: the admin's quarantine first,
    then the sweeps'. The service passes its Judge; the CLI decides without one."""
    quarantine = quarantine or Quarantine(store, settings.quarantine.dir)
    return Review(store, judge, quarantine, [SweepQuarantine(store, settings)])


def _read_if_same(path: Path, sha256: str) -> bytes | None:
    try:
        data = path.read_bytes()
    except OSError as exc:
        log.warning("sweep quarantine %s: cannot read %s: %s", sha256[:12], path, exc)
        return None
    # The location came from our records; the hash check makes sure it still is that image.
    return data if sha256_hex(data) == sha256 else None
