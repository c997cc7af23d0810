"""Acting on a positive: quarantine (restorable) or delete, exactly once, always audited.

Every action is first written to `scan_actions` as `started`, with the quarantine location it
will use, then done, then marked `done`. A run killed in between finds the `started` row when
it (or `apply`) starts again and completes it: an object already gone from its place counts as
moved or deleted, never as a second action.

Delete goes through pict-rs's internal API when it is configured (sha256 -> aliases -> purge),
so that pict-rs's database stays consistent and every alias goes. A file pict-rs does not know
by that hash (a thumbnail, or no API configured) is deleted in place, and the run ends with a
reminder to run pict-rs's `prune_missing`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Protocol

from horde_scanner.integrations.pictrs import (
    HASHES_MISSING,
    HashIndex,
    PictrsClient,
    PictrsError,
    PictrsUnsupported,
)
from horde_scanner.sources.source import Denied, ItemError, Source, Vanished
from horde_scanner.store.interfaces import AuditStore, SweepStore
from horde_scanner.store.sweeps import ScanAction


class SweepActionStore(SweepStore, AuditStore, Protocol):
    """What sweep actions record."""


log = logging.getLogger(__name__)


class Action(StrEnum):
    REPORT = "report"
    QUARANTINE = "quarantine"
    DELETE = "delete"


class Outcome(StrEnum):
    DONE = "done"  # acted now
    ALREADY = "already"  # acted before (or completed an interrupted action)
    VANISHED = "vanished"
    DENIED = "denied"
    FAILED = "failed"


@dataclass
class ActResult:
    outcome: Outcome
    how: str = ""  # quarantined | purged | deleted
    location: str | None = None
    detail: dict[str, Any] = field(default_factory=dict)


PRUNE_REMINDER = (
    "{n} file(s) were deleted directly from storage: pict-rs still has their database rows. "
    "Run `curl -X POST -H 'X-Api-Token: <api key>' http://<pict-rs>/internal/prune_missing` "
    "(pict-rs >= 0.4.7) to remove them."
)


class Actor:
    def __init__(
        self,
        store: SweepActionStore,
        source: Source,
        action: Action,
        *,
        pictrs: PictrsClient | None = None,
    ) -> None:
        if action is Action.REPORT:
            raise ValueError("report does not act")
        self.store = store
        self.source = source
        self.action = action
        self._pictrs = pictrs
        self._index = HashIndex(pictrs) if pictrs is not None else None
        self.direct_deletes = 0

    async def act(
        self,
        *,
        identifier: str,
        sha256: str,
        size: int | None,
        mtime: float | None,
        label: str | None,
        reasons: list[str],
    ) -> ActResult:
        row, fresh = await self.store.begin_scan_action(
            source=self.source.url,
            identifier=identifier,
            sha256=sha256,
            size=size,
            mtime=mtime,
            action=self.action.value,
            label=label,
            reasons=reasons,
        )
        if row.state == "done":
            return ActResult(Outcome.ALREADY, row.action, row.location, row.detail)
        return await self._perform(row, resuming=not fresh)

    async def complete_interrupted(self) -> int:
        """Finish actions a killed run left `started`; returns how many."""
        rows = await self.store.started_scan_actions(self.source.url)
        for row in rows:
            log.info("completing interrupted %s of %s", row.action, row.identifier)
            await self._perform(row, resuming=True)
        return len(rows)

    async def _perform(self, row: ScanAction, *, resuming: bool) -> ActResult:
        try:
            if row.action == Action.QUARANTINE:
                result = await self._quarantine(row, resuming)
            else:
                result = await self._delete(row, resuming)
        except Vanished as exc:
            result = ActResult(Outcome.VANISHED, detail={"error": str(exc)})
        except Denied as exc:
            result = ActResult(Outcome.DENIED, detail={"error": str(exc)})
        except (ItemError, PictrsError) as exc:
            result = ActResult(Outcome.FAILED, detail={"error": str(exc)})
        await self._finish(row, result)
        return result

    async def _quarantine(self, row: ScanAction, resuming: bool) -> ActResult:
        name = f"{row.id:08d}-{row.sha256}"
        location = self.source.quarantine_location(name)
        if resuming and await self.source.stat(row.identifier) is None:
            # The move happened before the run died: the object is where we said it would go.
            return ActResult(Outcome.ALREADY, "quarantined", row.location or location)
        await self.store.set_scan_action_location(row.id, location)
        location = await self.source.quarantine(row.identifier, name)
        return ActResult(Outcome.DONE, "quarantined", location)

    async def _delete(self, row: ScanAction, resuming: bool) -> ActResult:
        index = self._index
        if index is not None and self._pictrs is not None:
            try:
                aliases = await index.aliases(row.sha256)
            except PictrsUnsupported:
                # pict-rs 0.4.x: delete in storage, like without an API (said once).
                if self._index is not None:
                    log.warning("%s; deleting directly from storage instead", HASHES_MISSING)
                self._index = None
                aliases = []
            if aliases:
                purged = await self._pictrs.purge(aliases[0])
                index.forget(row.sha256)
                return ActResult(
                    Outcome.DONE, "purged", detail={"via": "pict-rs purge", "aliases": purged}
                )
        try:
            await self.source.delete(row.identifier)
        except Vanished:
            if resuming:
                return ActResult(Outcome.ALREADY, "deleted", detail={"via": "storage"})
            raise
        self.direct_deletes += 1
        if self._pictrs is None:
            why = "pict-rs API not configured"
        elif self._index is None:
            why = "pict-rs has no /internal/hashes (< 0.5.0)"
        else:
            why = "not known to pict-rs by this hash"
        return ActResult(Outcome.DONE, "deleted", detail={"via": "storage", "why": why})

    async def _finish(self, row: ScanAction, result: ActResult) -> None:
        ok = result.outcome in (Outcome.DONE, Outcome.ALREADY)
        # Audit first, flushed at once: a run killed right after acting must not lose the
        # record. If it dies before the row is marked done, the next run completes the row
        # and finds the audit already written.
        if not (result.outcome is Outcome.ALREADY and await self._audited(row)):
            await self.store.audit(
                "scan_action" if ok else "scan_action_failed",
                sha256=row.sha256,
                label=row.label,
                action=result.how or row.action,
                source=self.source.url,
                detail={
                    "identifier": row.identifier,
                    "size": row.size,
                    "mtime": row.mtime,
                    "reasons": row.reasons,
                    "action_id": row.id,
                    "outcome": result.outcome.value,
                    "location": result.location,
                    **result.detail,
                },
            )
            await self.store.flush_audit()
        await self.store.end_scan_action(
            row.id, "done" if ok else "failed", location=result.location, detail=result.detail
        )
        if ok:
            await self.store.set_scan_file_action(self.source.url, row.identifier, result.how)

    async def _audited(self, row: ScanAction) -> bool:
        trail = await self.store.audit_trail(row.sha256)
        return any(a.event == "scan_action" and a.detail.get("action_id") == row.id for a in trail)


def releasable(row: ScanAction) -> bool:
    """A quarantine that is done (the object is in the sweep's quarantine now)."""
    return row.action == Action.QUARANTINE and row.state == "done" and bool(row.location)


def check_releasable(row: ScanAction) -> str:
    """The quarantine location of a releasable row; ItemError (saying why) for any other."""
    if not releasable(row) or row.location is None:
        raise ItemError(
            f"action {row.id} is a {row.action} in state {row.state}: nothing to release"
        )
    return row.location


async def release(
    store: SweepActionStore,
    row: ScanAction,
    source: Source,
    *,
    note: str = "",
    by: str = "cli",
) -> str:
    """Move a quarantined object back where it was found and record that. The allow-list entry
    is the caller's: the one allow decision (`review/decisions.py`) calls this through the
    sweep holder. `by` is who decided ("cli", or the admin: "api:alice", "page:bob")."""
    location = check_releasable(row)
    await source.restore(location, row.identifier)
    await store.end_scan_action(
        row.id, "released", location=None, detail={**row.detail, "note": note}
    )
    await store.set_scan_file_action(row.source, row.identifier, None)
    await store.audit(
        "released",
        sha256=row.sha256,
        label=row.label,
        action="release",
        source=row.source,
        detail={
            "identifier": row.identifier,
            "from": location,
            "action_id": row.id,
            "note": note,
            "by": by,
        },
    )
    return f"{row.source.rstrip('/')}/{row.identifier}"
