"""The record another instance's admins need about positives that came from (or through) their
instance: hashes, times, the URLs of their posts, comments and actors that used the image, and
what was done here. Nothing else: no image, no message text, no names of people on other
instances, no local admin names or notes.
"""

from __future__ import annotations

import time
from typing import Any, Protocol

from horde_scanner.review.evidence import DECISION_EVENTS
from horde_scanner.store.interfaces import (
    AuditStore,
    HashBankStore,
    LatePositiveStore,
    LemmyActionStore,
    ProvenanceStore,
    VerdictStore,
)
from horde_scanner.store.provenance import DONE
from horde_scanner.timefmt import iso


class InstanceRecordStore(
    VerdictStore,
    LatePositiveStore,
    AuditStore,
    HashBankStore,
    ProvenanceStore,
    LemmyActionStore,
    Protocol,
):
    """What the record for an origin instance reads."""


NOTE = (
    "Positive images whose copies on our instance were posted from, or by people of, your "
    "instance. No image is included: match by sha256 (of the stored file) or PDQ. Times are "
    "UTC. 'done_here' is what we did on our instance."
)


def _there(entity: dict[str, Any] | None, host: str) -> bool:
    return bool(entity) and str(entity.get("instance") or "").lower() == host  # type: ignore[union-attr]


def _usage(u: dict[str, Any], host: str) -> dict[str, Any] | None:
    creator = u.get("creator") or u.get("person")
    community = u.get("community")
    on_host = str(u.get("origin_instance") or "").lower() == host
    if not (on_host or _there(creator, host) or _there(community, host)):
        return None
    out: dict[str, Any] = {"kind": u["kind"], "published": u.get("published")}
    if on_host:
        out["url"] = u.get("url")
    if u.get("post_url") and str(u.get("post_url")).split("/")[2:3] == [host]:
        out["post_url"] = u["post_url"]
    if _there(creator, host):
        out["actor_url"] = creator["actor_url"]  # type: ignore[index]
    if _there(community, host):
        out["community_url"] = community["actor_url"]  # type: ignore[index]
    return {k: v for k, v in out.items() if v is not None}


async def record(
    store: InstanceRecordStore, host: str, *, own_host: str | None = None
) -> dict[str, Any]:
    host = host.strip().lower()
    images = []
    for row in await store.resolved_provenance():
        rec = row.record or {}
        used = [x for x in (_usage(u, host) for u in rec.get("usages") or []) if x]
        uploaders = [
            {"actor_url": up["uploader"]["actor_url"], "uploaded_at": up.get("uploaded_at")}
            for up in rec.get("uploads") or []
            if _there(up.get("uploader"), host)
        ]
        if not used and not uploaders:
            continue
        stored = await store.get_verdict(row.sha256)
        pdq = await store.pdq_of(row.sha256)
        done = [
            {"action": a.action, "target": a.target, "at": iso(a.updated_at)}
            for a in await store.lemmy_actions(row.sha256)
            if a.state == DONE
        ]
        late = await store.late_positive(row.sha256)
        if late is not None and late.enforcement == "purged":
            done.append({"action": "purged_from_storage", "at": iso(late.updated_at)})
        decided = [
            {"decision": a.event, "at": iso(a.ts)}
            for a in await store.audit_trail(row.sha256)
            if a.event in DECISION_EVENTS
        ]
        images.append(
            {
                "sha256": row.sha256,
                "pdq": [h.hex for h in pdq],
                "label": stored.verdict.label.value if stored else None,
                "first_seen": iso(stored.first_seen) if stored else None,
                "judged_at": iso(stored.verdict.judged_at) if stored else None,
                "uploaded_by": uploaders,
                "used_in": used,
                "decisions": decided,
                "done_here": done,
            }
        )
    return {
        "for_instance": host,
        "from_instance": own_host,
        "generated_at": iso(time.time()),
        "note": NOTE,
        "images": images,
    }
