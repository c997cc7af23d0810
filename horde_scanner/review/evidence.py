"""Evidence records: what an admin hands on to follow a positive up. Never image bytes.

One record per verdict: hashes (sha256, PDQ when one was computed), the verdict and why, where
the image was found (upload client, storage identifiers), when it was first seen, the source
instance when a sweep recorded one, and every decision with who made it and when.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable
from typing import Any, Protocol

from horde_scanner.review import view
from horde_scanner.store.audit import AuditRecord
from horde_scanner.store.interfaces import (
    AuditStore,
    HashBankStore,
    LatePositiveStore,
    LemmyActionStore,
    ListStore,
    ProvenanceStore,
    ReviewStore,
    SweepStore,
    VerdictStore,
)
from horde_scanner.store.verdicts import StoredVerdict
from horde_scanner.timefmt import iso
from horde_scanner.verdict import Label


class EvidenceStore(
    VerdictStore,
    ListStore,
    LatePositiveStore,
    AuditStore,
    HashBankStore,
    ReviewStore,
    SweepStore,
    ProvenanceStore,
    LemmyActionStore,
    Protocol,
):
    """What an evidence export reads."""


# Audit events that are a person's (or an admin tool's) decision about an image.
DECISION_EVENTS = frozenset(
    {"allow", "deny", "confirm", "unallow", "undeny", "rejudged", "rejudge"}
)
# Audit events whose `source` says where the image was met.
_FOUND_EVENTS = frozenset({"answered", "judged", "quarantined", "late_positive", "found"})

# The verdict view's fields an evidence record carries (where it was met is `where_found`).
_VERDICT_FIELDS = (
    "label",
    "reasons",
    "backend",
    "policy_version",
    "media_type",
    "size",
    "first_seen",
    "judged_at",
)

CSV_FIELDS = [
    "sha256",
    "pdq",
    *_VERDICT_FIELDS,
    "where_found",
    "source_instance",
    "list",
    "quarantine",
    "late_positive",
    "decisions",
    "found",
    "actions",
    "provenance",
    "uploaders",
    "thumbnail_of_posts",
    "uploaded_at",
    "usages",
    "communities",
    "origin_instances",
    "lemmy_actions",
]


def provenance_fields(prov: dict[str, Any] | None) -> dict[str, Any]:
    """Who and where, as the export carries it: names, actor and object URLs, ids, times;
    never message or comment text."""
    if prov is None:
        return {
            "provenance": None,
            "uploaders": [],
            "thumbnail_of_posts": [],
            "uploaded_at": [],
            "usages": [],
            "communities": [],
            "origin_instances": [],
            "provenance_note": None,
        }
    uploads = prov.get("uploads") or []
    usages = [
        {
            k: u.get(k)
            for k in ("kind", "url", "post_id", "comment_id", "private_message_id", "published")
            if u.get(k) is not None
        }
        | {
            "community": (u.get("community") or {}).get("actor_url"),
            "creator": (u.get("creator") or u.get("person") or {}).get("actor_url"),
            "origin_instance": u.get("origin_instance"),
        }
        for u in prov.get("usages") or []
    ]
    return {
        "provenance": prov["state"],
        "uploaders": [
            {
                "name": up["uploader"]["name"],
                "actor_url": up["uploader"]["actor_url"],
                "local": up["uploader"]["local"],
            }
            for up in uploads
            if up.get("uploader")
        ],
        "thumbnail_of_posts": [
            up["thumbnail_for_post"] for up in uploads if up.get("thumbnail_for_post")
        ],
        "uploaded_at": [up["uploaded_at"] for up in uploads if up.get("uploaded_at")],
        "usages": usages,
        "communities": sorted({u["community"] for u in usages if u["community"]}),
        "origin_instances": prov.get("origin_instances") or [],
        "provenance_note": prov.get("error") or "; ".join(prov.get("notes") or []) or None,
    }


async def _pdq(store: HashBankStore, sha256: str) -> str | None:
    """PDQ of the image (frames joined with spaces), as stored with its verdict."""
    hashes = await store.pdq_of(sha256)
    return " ".join(h.hex for h in hashes) or None


def _location(loc: dict[str, Any]) -> dict[str, Any]:
    """Where a sweep found a file and what it did there (times as ISO)."""
    out = dict(loc)
    for key in ("mtime", "judged_at", "acted_at"):
        if out.get(key) is not None:
            out[key] = iso(out[key])
    return out


async def _quarantine_rows(store: ReviewStore, sha256: str) -> list[dict[str, Any]]:
    return [
        {
            "origin": q.origin,
            "identifier": q.identifier,
            "state": q.state,
            "quarantined_at": iso(q.quarantined_at),
            "by": q.updated_by,
            "instance": q.detail.get("instance"),
        }
        for q in await store.quarantine_items(sha256)
    ]


def decisions(trail: Iterable[AuditRecord]) -> list[dict[str, Any]]:
    return [
        {
            "ts": iso(a.ts),
            "decision": a.event,
            "by": a.source or "unknown",
            "note": a.detail.get("note", ""),
            **({"to": a.label} if a.event in ("rejudged", "rejudge") and a.label else {}),
        }
        for a in trail
        if a.event in DECISION_EVENTS
    ]


async def record(
    store: EvidenceStore, stored: StoredVerdict, *, swept: list[dict[str, Any]] | None = None
) -> dict[str, Any]:
    """The evidence record of one verdict; `swept` is where storage sweeps found it."""
    if swept is None:
        swept = (await store.sweep_locations([stored.sha256])).get(stored.sha256, [])
    trail = await store.audit_trail(stored.sha256)
    quarantine = await _quarantine_rows(store, stored.sha256)
    found: list[str] = [stored.source] if stored.source else []
    for a in trail:
        if a.event in _FOUND_EVENTS and a.source and a.source not in found:
            found.append(a.source)
    for q in quarantine:
        place = f"{q['origin']}:{q['identifier']}"
        if place not in found:
            found.append(place)
    for loc in swept:
        place = _swept_at(loc)
        if place not in found:
            found.append(place)
    instances = [q["instance"] for q in quarantine if q["instance"]]
    instances += [a.detail["instance"] for a in trail if a.detail.get("instance")]
    fields = view.verdict_fields(stored, signals=False)
    late = await store.late_positive(stored.sha256)
    return {
        "sha256": stored.sha256,
        "pdq": await _pdq(store, stored.sha256),
        **{k: fields[k] for k in _VERDICT_FIELDS},
        "where_found": found,
        "source_instance": instances[0] if instances else None,
        "list": await store.list_kind(stored.sha256),
        "quarantine": [{k: q[k] for k in ("origin", "identifier", "state")} for q in quarantine],
        "late_positive": late.enforcement if late else None,
        "decisions": decisions(trail),
        "found": [_location(loc) for loc in swept],
        **provenance_fields(view.provenance_entry(await store.provenance(stored.sha256))),
        "lemmy_actions": [
            {k: a[k] for k in ("action", "target", "state", "status", "by", "requested_at")}
            for a in map(view.action_entry, await store.lemmy_actions(stored.sha256))
        ],
    }


async def records(
    store: EvidenceStore, labels: Iterable[Label] | None = None, *, since: float | None = None
) -> list[dict[str, Any]]:
    verdicts = [v async for v in store.iter_verdicts(labels=labels, since=since)]
    where = await store.sweep_locations([v.sha256 for v in verdicts])
    return [await record(store, v, swept=where.get(v.sha256, [])) for v in verdicts]


def _swept_at(loc: dict[str, Any]) -> str:
    """Where a sweep found a file: its source and identifier as one path."""
    return f"{loc['source'].rstrip('/')}/{loc['identifier']}"


def _cell(items: Iterable[str]) -> str:
    """A list in one CSV cell."""
    return "; ".join(items)


def _and(text: str, extra: str | None, form: str = " {}") -> str:
    """`text`, with `extra` in `form` after it when there is one."""
    return text + form.format(extra) if extra else text


def to_csv(rows: Iterable[dict[str, Any]]) -> str:
    """Flat CSV: lists joined with "; ", decisions as "when decision by (note)"."""
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=CSV_FIELDS, extrasaction="ignore")
    writer.writeheader()
    for r in rows:
        decided = (
            _and(f"{d['ts']} {d['decision']} by {d['by']}", d["note"], " ({})")
            for d in r["decisions"]
        )
        acted = (
            _and(f"#{f['action_id']} {f['action']} {f['action_state']}", f["location"])
            for f in r["found"]
            if f["action_id"] is not None
        )
        writer.writerow(
            {
                **r,
                "reasons": _cell(r["reasons"]),
                "where_found": _cell(r["where_found"]),
                "quarantine": _cell(
                    f"{q['origin']}:{q['identifier']} ({q['state']})" for q in r["quarantine"]
                ),
                "decisions": _cell(decided),
                "found": _cell(_swept_at(f) for f in r["found"]),
                "actions": _cell(acted),
                "uploaders": _cell(f"{u['name']} {u['actor_url']}" for u in r["uploaders"]),
                "thumbnail_of_posts": _cell(f"post {p}" for p in r["thumbnail_of_posts"]),
                "uploaded_at": _cell(r["uploaded_at"]),
                "usages": _cell(_and(f"{u['kind']}", u.get("url")) for u in r["usages"]),
                "communities": _cell(r.get("communities") or []),
                "origin_instances": _cell(r.get("origin_instances") or []),
                "lemmy_actions": _cell(
                    f"{a['requested_at']} {a['action']} {a['target']} {a['state']} by {a['by']}"
                    for a in r["lemmy_actions"]
                ),
            }
        )
    return out.getvalue()
