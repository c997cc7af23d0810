"""The verdict view: how one image's record is written out, the same for every reader.

`horde-scanner verdicts show`, the admin API (`GET verdicts/{sha256}`, the lists, the queue),
the review page and the evidence export all start from these pieces, so a key means one thing
everywhere and every time is ISO 8601 in UTC to the second (`horde_scanner.timefmt.iso`).

- `verdict_fields(stored)`: the verdict itself (label, reasons, backend, policy, media, where
  first met, when), with or without the raw signals.
- `audit_entry(record)`: one audit row; `by` is its source (who decided, or where it was met).
- `detail(store, sha256, holders)`: the whole record of one image: the verdict, list entry,
  PDQ hashes, quarantine copies in every holder, late-positive state and the audit trail.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

from horde_scanner.review.quarantine import HELD, HeldCopy, QuarantineHolder
from horde_scanner.store.audit import AuditRecord
from horde_scanner.store.interfaces import (
    AuditStore,
    HashBankStore,
    LatePositiveStore,
    LemmyActionStore,
    ListStore,
    ProvenanceStore,
    VerdictStore,
)
from horde_scanner.store.provenance import LemmyActionRow, Provenance
from horde_scanner.store.verdicts import LatePositive, StoredVerdict
from horde_scanner.timefmt import iso


class ImageViewStore(
    VerdictStore,
    ListStore,
    LatePositiveStore,
    AuditStore,
    HashBankStore,
    ProvenanceStore,
    LemmyActionStore,
    Protocol,
):
    """What one image's page reads."""


def verdict_fields(stored: StoredVerdict, *, signals: bool = True) -> dict[str, Any]:
    v = stored.verdict
    record: dict[str, Any] = {
        "sha256": stored.sha256,
        "label": v.label.value,
        "reasons": v.reasons,
        "backend": v.backend,
        "policy_version": v.policy_version,
        "media_type": stored.media_type,
        "size": stored.size,
        "source": stored.source,
        "first_seen": iso(stored.first_seen),
        "judged_at": iso(v.judged_at),
    }
    if signals:
        record["signals"] = v.signals.model_dump() if v.signals else None
    return record


def audit_entry(a: AuditRecord) -> dict[str, Any]:
    return {
        "id": a.id,
        "ts": iso(a.ts),
        "event": a.event,
        "label": a.label,
        "action": a.action,
        "by": a.source,
        "detail": a.detail,
    }


def copy_entry(c: HeldCopy) -> dict[str, Any]:
    """A quarantined copy as an admin may see it (no bytes), times as ISO."""
    return {
        **c.public(),
        "quarantined_at": iso(c.quarantined_at),
        "updated_at": iso(c.updated_at),
    }


def late_entry(p: LatePositive) -> dict[str, Any]:
    """A late positive (accepted before its verdict) as the lists and records show it."""
    return {
        "sha256": p.sha256,
        "label": p.label,
        "found_at": iso(p.found_at),
        "enforcement": p.enforcement,
    }


def provenance_entry(row: Provenance | None) -> dict[str, Any] | None:
    """Who uploaded the image and where Lemmy uses it (moderation/provenance.py), or why that
    is not known yet (`pending` with the error, `no_alias`)."""
    if row is None:
        return None
    out: dict[str, Any] = {
        "state": row.state,
        "why": row.why,
        "aliases": row.aliases,
        "error": row.error,
        "tries": row.tries,
        "updated_at": iso(row.updated_at),
    }
    if row.record is not None:
        rec = dict(row.record)
        if isinstance(rec.get("resolved_at"), int | float):
            rec["resolved_at"] = iso(rec["resolved_at"])
        out.update(rec)
    return out


def action_entry(a: LemmyActionRow) -> dict[str, Any]:
    """One call made through Lemmy's API for an admin, and what Lemmy answered."""
    return {
        "id": a.id,
        "action": a.action,
        "target": a.target,
        "request": a.request,
        "state": a.state,
        "status": a.status,
        "answer": a.answer,
        "by": a.requested_by,
        "requested_at": iso(a.requested_at),
        "attempts": a.attempts,
        "updated_at": iso(a.updated_at),
    }


async def copies(holders: Sequence[QuarantineHolder], sha256: str) -> list[HeldCopy]:
    return [c for holder in holders for c in await holder.copies(sha256)]


async def detail(
    store: ImageViewStore, sha256: str, holders: Sequence[QuarantineHolder]
) -> dict[str, Any] | None:
    """Everything known about one image; None when nothing is."""
    stored = await store.get_verdict(sha256)
    trail = await store.audit_trail(sha256)
    listed = await store.list_kind(sha256)
    held = await copies(holders, sha256)
    if stored is None and not trail and listed is None and not held:
        return None
    record: dict[str, Any] = verdict_fields(stored) if stored else {"sha256": sha256}
    pdq = await store.pdq_of(sha256)
    late = await store.late_positive(sha256)
    record.update(
        {
            "list": listed,
            "pdq": [{"frame": h.frame, "hash": h.hex, "quality": h.quality} for h in pdq],
            "quarantine": [copy_entry(c) for c in held],
            "in_quarantine": any(c.state == HELD for c in held),
            "late_positive": (
                {"enforcement": late.enforcement, "found_at": iso(late.found_at)} if late else None
            ),
            "audit": [audit_entry(a) for a in trail],
            "provenance": provenance_entry(await store.provenance(sha256)),
            "lemmy_actions": [action_entry(a) for a in await store.lemmy_actions(sha256)],
        }
    )
    return record
