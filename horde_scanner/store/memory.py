"""An in-memory store for unit tests: dictionaries behind the interfaces of
store/interfaces.py, honouring the same contracts as the SQLite and PostgreSQL stores
(tests/unit/store/test_memory_contract.py runs the contract suite's clauses on it).

It implements every concern of store/interfaces.py: the lifecycle, verdicts, lists, late
positives, jobs, audit, kudos, cluster turns and submit slots, live Horde requests,
quarantine rows and Lemmy action rows here; the hash bank, embeddings, sweeps and provenance
in store/memory_banks.py. Only `aside()` (a connection of its own) has no meaning here.

What it does not do: keep anything past the process, share anything with another process
(`shared` is False, `subscribe` never calls back, `data_version` never changes), or go away
(`health` is always available). Records handed out are copies: changing one changes nothing.
"""

from __future__ import annotations

import itertools
import json
import os
import socket
import time
from collections.abc import AsyncGenerator, AsyncIterator, Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from horde_scanner.store.audit import AuditRecord
from horde_scanner.store.jobs import Job
from horde_scanner.store.memory_banks import BankTables, MemoryBanks
from horde_scanner.store.outage import StoreHealth
from horde_scanner.store.provenance import LemmyActionRow
from horde_scanner.store.review import HELD, QuarantineItem
from horde_scanner.store.tables import ChangeListener, refuse_nul, row_limit
from horde_scanner.store.verdicts import LatePositive, SignalsRow, StoredVerdict, VerdictFilter
from horde_scanner.verdict import Label, Verdict, VerdictRoute

# As the real store: audit rows are written a batch at a time (AuditTables.audit).
_AUDIT_FLUSH_ROWS = 500
# As store/horde_requests.py: the Horde forgets a request 20 minutes after its last event.
_FORGET_HORDE_REQUEST_S = 30 * 60.0


@dataclass
class _JobRow:
    job: Job
    state: str
    not_before: float
    created: int  # insertion order: oldest first, ties broken as a database's clock never is
    last_error: str | None = None


@dataclass
class _ListRow:
    kind: str
    note: str
    by: str
    added_at: float


@dataclass
class _Submit:
    taken_at: float
    done_at: float | None = None


@dataclass
class _Tables:
    verdicts: dict[str, StoredVerdict] = field(default_factory=dict)
    lists: dict[str, _ListRow] = field(default_factory=dict)
    late: dict[str, LatePositive] = field(default_factory=dict)
    jobs: dict[str, _JobRow] = field(default_factory=dict)
    audit: list[AuditRecord] = field(default_factory=list)
    kudos: dict[str, float] = field(default_factory=dict)
    turns: dict[str, tuple[str, float]] = field(default_factory=dict)  # name: (holder, until)
    submits: dict[int, _Submit] = field(default_factory=dict)
    horde_requests: dict[str, tuple[str, float]] = field(default_factory=dict)
    quarantine: dict[int, QuarantineItem] = field(default_factory=dict)
    lemmy_actions: dict[int, LemmyActionRow] = field(default_factory=dict)


class MemoryStore(MemoryBanks):
    """The double. `MemoryStore()` is open at once; `close()` flushes the audit buffer."""

    dialect = "memory"
    shared = False
    job_lease_s = 0.0
    # The interfaces of store/interfaces.py it implements (store/conformance.py proves it).
    CONCERNS = (
        "StoreLifecycle",
        "VerdictStore",
        "ListStore",
        "LatePositiveStore",
        "JobStore",
        "AuditStore",
        "KudosStore",
        "ClusterStore",
        "HordeRequestStore",
        "ReviewStore",
        "LemmyActionStore",
        "HashBankStore",
        "EmbeddingStore",
        "SweepStore",
        "ProvenanceStore",
    )

    def __init__(self, *, holder: str | None = None) -> None:
        self.where = ":memory:"
        self.holder = holder or f"{socket.gethostname()}:{os.getpid()}"
        self.health = StoreHealth(self.where)
        self.audit_dropped = 0
        self._t = _Tables()
        self._banks = BankTables()
        self._audit_buffer: list[tuple[Any, ...]] = []
        self._listeners: list[ChangeListener] = []
        self._ids = itertools.count(1)  # every table's ids: increasing, never reused
        self._order = itertools.count()
        self._closed = False

    # -- lifecycle -----------------------------------------------------------------------

    async def close(self) -> None:
        await self.flush_audit()
        await self.health.close()
        self._closed = True

    async def __aenter__(self) -> MemoryStore:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def ping(self) -> None:
        self._open()

    async def probe(self) -> None:
        self._open()

    def subscribe(self, listener: ChangeListener) -> None:
        # No other process can change this store: the listener is kept, never called.
        self._listeners.append(listener)

    async def data_version(self) -> int:
        return 0

    def _open(self) -> None:
        if self._closed:
            raise RuntimeError("the in-memory store is closed")

    def _next_id(self) -> int:
        return next(self._ids)

    # What store/memory_banks.py reads of the tables kept here.
    def _verdict_rows(self) -> dict[str, StoredVerdict]:
        return self._t.verdicts

    def _list_rows(self) -> dict[str, tuple[str, str, float]]:
        return {s: (e.kind, e.by, e.added_at) for s, e in self._t.lists.items()}

    def _audit_rows(self) -> list[AuditRecord]:
        return self._t.audit

    def _turns(self) -> dict[str, tuple[str, float]]:
        return self._t.turns

    # -- verdicts ------------------------------------------------------------------------

    async def get_verdict(self, sha256: str) -> StoredVerdict | None:
        self._open()
        stored = self._t.verdicts.get(sha256)
        return _copied(stored) if stored is not None else None

    async def get_verdicts(self, sha256s: Iterable[str]) -> dict[str, StoredVerdict]:
        self._open()
        return {s: _copied(self._t.verdicts[s]) for s in sha256s if s in self._t.verdicts}

    async def put_verdict(
        self,
        sha256: str,
        verdict: Verdict,
        *,
        media_type: str | None = None,
        size: int | None = None,
        source: str | None = None,
    ) -> None:
        self._open()
        # What the database keeps of a verdict (frames are not stored).
        kept = verdict.model_copy(update={"frames": None}, deep=True)
        old = self._t.verdicts.get(sha256)
        # As the databases' triggers: a write that makes or unmakes a machine positive moves
        # the hash generation (the index holds machine positives).
        if _feeds_index(kept) or (old is not None and _feeds_index(old.verdict)):
            self._bump()
        if old is None:
            self._t.verdicts[sha256] = StoredVerdict(
                sha256, kept, media_type, size, source, time.time()
            )
            return
        if kept.signals is None:
            kept = kept.model_copy(update={"signals": old.verdict.signals})
        self._t.verdicts[sha256] = StoredVerdict(
            sha256,
            kept,
            media_type if media_type is not None else old.media_type,
            size if size is not None else old.size,
            old.source if old.source is not None else source,
            old.first_seen,
        )

    async def iter_verdicts(
        self,
        *,
        labels: Iterable[Label] | None = None,
        since: float | None = None,
        limit: int | None = None,
    ) -> AsyncIterator[StoredVerdict]:
        self._open()
        wanted = {label.value for label in labels} if labels else None
        rows = [
            v
            for v in self._t.verdicts.values()
            if (wanted is None or v.verdict.label.value in wanted)
            and (since is None or v.verdict.judged_at >= since)
        ]
        rows.sort(key=lambda v: v.verdict.judged_at, reverse=True)
        for v in rows[: row_limit(limit)] if limit is not None else rows:
            yield _copied(v)

    async def count_verdicts(self, *, since: float | None = None) -> dict[str, int]:
        self._open()
        counts: dict[str, int] = {}
        for v in self._t.verdicts.values():
            if since is None or v.verdict.judged_at >= since:
                counts[v.verdict.label.value] = counts.get(v.verdict.label.value, 0) + 1
        return counts

    async def search_verdicts(self, f: VerdictFilter) -> list[StoredVerdict]:
        self._open()
        row_limit(f.limit)
        row_limit(f.offset, "offset")
        rows = [
            v
            for v in self._t.verdicts.values()
            if (not f.labels or v.verdict.label.value in f.labels)
            and (not f.source or (v.source or "").lower().startswith(f.source.lower()))
            and (not f.backend or v.verdict.backend == f.backend)
            and (f.since is None or v.verdict.judged_at >= f.since)
            and (f.until is None or v.verdict.judged_at < f.until)
            and (not f.undecided or v.sha256 not in self._t.lists)
        ]
        rows.sort(key=lambda v: v.verdict.judged_at, reverse=True)
        return [_copied(v) for v in rows[f.offset : f.offset + f.limit]]

    async def signal_batches(
        self, *, since: float | None = None, batch_rows: int
    ) -> AsyncGenerator[list[SignalsRow]]:
        self._open()
        rows: list[SignalsRow] = []
        async for stored in self.iter_verdicts(since=since):
            v, entry = stored.verdict, self._t.lists.get(stored.sha256)
            rows.append(
                (
                    stored.sha256,
                    v.label.value,
                    json.dumps(v.reasons),
                    v.signals.model_dump_json() if v.signals else None,
                    v.route.value,
                    v.policy_version,
                    entry.kind if entry else None,
                    entry.by if entry else None,
                )
            )
        for start in range(0, len(rows), batch_rows):
            yield rows[start : start + batch_rows]

    async def sha256_by_prefix(self, prefix: str, limit: int = 2) -> list[str]:
        self._open()
        known = set(self._t.verdicts) | set(self._t.lists)
        known |= {r.sha256 for r in self._t.audit if r.sha256 is not None}
        return sorted(s for s in known if s.startswith(prefix))[: row_limit(limit)]

    # -- allow / deny lists --------------------------------------------------------------

    async def list_kind(self, sha256: str) -> str | None:
        self._open()
        entry = self._t.lists.get(sha256)
        return entry.kind if entry else None

    async def set_list(self, sha256: str, kind: str, *, note: str = "", by: str = "") -> None:
        self._open()
        if kind not in ("allow", "deny"):
            raise ValueError(f"a list is 'allow' or 'deny', not {kind!r}")
        refuse_nul(note, by)
        self._t.lists[sha256] = _ListRow(kind, note, by, time.time())
        self._bump()  # as the databases' triggers: every list change

    async def remove_list(self, sha256: str) -> bool:
        self._open()
        if self._t.lists.pop(sha256, None) is None:
            return False
        self._bump()
        return True

    async def iter_list(self, kind: str) -> AsyncIterator[tuple[str, str, str, float]]:
        self._open()
        rows = sorted(
            ((s, e) for s, e in self._t.lists.items() if e.kind == kind),
            key=lambda row: row[1].added_at,
        )
        for sha256, e in rows:
            yield sha256, e.note, e.by, e.added_at

    async def count_lists(self) -> dict[str, int]:
        self._open()
        counts: dict[str, int] = {}
        for e in self._t.lists.values():
            counts[e.kind] = counts.get(e.kind, 0) + 1
        return counts

    # -- late positives ------------------------------------------------------------------

    async def record_late_positive(
        self, sha256: str, label: Label, enforcement: str, detail: dict[str, Any]
    ) -> None:
        self._open()
        now = time.time()
        old = self._t.late.get(sha256)
        if old is None:
            self._t.late[sha256] = LatePositive(sha256, label.value, now, enforcement, detail, now)
        else:
            self._t.late[sha256] = replace(
                old, enforcement=enforcement, detail=_copy(detail), updated_at=now
            )

    async def late_positives(
        self, *, undecided: bool = False, limit: int | None = None
    ) -> list[LatePositive]:
        self._open()
        rows = [p for p in self._t.late.values() if not undecided or p.sha256 not in self._t.lists]
        rows.sort(key=lambda p: p.found_at, reverse=True)
        return rows[: row_limit(limit)] if limit is not None else rows

    async def late_positive(self, sha256: str) -> LatePositive | None:
        self._open()
        return self._t.late.get(sha256)

    async def count_late_positives(self) -> dict[str, int]:
        self._open()
        counts: dict[str, int] = {}
        for p in self._t.late.values():
            counts[p.enforcement] = counts.get(p.enforcement, 0) + 1
        return counts

    # -- jobs ----------------------------------------------------------------------------

    async def add_job(
        self,
        sha256: str,
        payload: bytes,
        *,
        media_type: str | None,
        size: int | None,
        source: str | None,
    ) -> bool:
        self._open()
        if sha256 in self._t.jobs:
            return False
        job = Job(sha256, bytes(payload), media_type, size, source, None, 0)
        self._t.jobs[sha256] = _JobRow(job, "pending", 0.0, next(self._order))
        return True

    async def set_job_answers(self, answers: dict[str, str]) -> None:
        self._open()
        for sha256, answer in answers.items():
            row = self._t.jobs.get(sha256)
            if row is not None and row.job.answered != "accept":
                row.job = replace(row.job, answered=answer)

    async def claim_jobs(self, limit: int) -> list[Job]:
        self._open()
        now = time.time()
        ready = sorted(
            (r for r in self._t.jobs.values() if r.state == "pending" and r.not_before <= now),
            key=lambda r: r.created,
        )[: max(0, limit)]
        for row in ready:
            row.state = "running"
        return [row.job for row in ready]

    async def finish_job(self, sha256: str) -> str | None:
        self._open()
        row = self._t.jobs.pop(sha256, None)
        return row.job.answered if row else None

    async def retry_job(self, sha256: str, *, delay_s: float, error: str) -> None:
        self._open()
        row = self._t.jobs.get(sha256)
        if row is not None:
            row.state, row.not_before, row.last_error = "pending", time.time() + delay_s, error
            row.job = replace(row.job, attempts=row.job.attempts + 1)

    async def wake_jobs(self) -> int:
        self._open()
        now, woken = time.time(), 0
        for row in self._t.jobs.values():
            if row.state == "pending" and row.not_before > now:
                row.not_before, woken = 0.0, woken + 1
        return woken

    async def count_jobs(self) -> int:
        self._open()
        return len(self._t.jobs)

    async def next_job_time(self) -> float | None:
        self._open()
        times = [r.not_before for r in self._t.jobs.values() if r.state == "pending"]
        return min(times) if times else None

    async def renew_jobs(self, sha256s: Iterable[str]) -> None:
        """No leases: nothing else could take a job this process holds."""
        self._open()

    async def release_jobs(self, sha256s: Iterable[str]) -> None:
        self._open()
        for sha256 in sha256s:
            row = self._t.jobs.get(sha256)
            if row is not None and row.state == "running":
                row.state = "pending"

    # -- audit ---------------------------------------------------------------------------

    async def audit(
        self,
        event: str,
        *,
        sha256: str | None = None,
        label: str | None = None,
        action: str | None = None,
        source: str | None = None,
        detail: dict[str, Any] | None = None,
    ) -> None:
        self._open()
        self._audit_buffer.append(
            (time.time(), sha256, event, label, action, source, _copy(detail or {}))
        )
        if len(self._audit_buffer) >= _AUDIT_FLUSH_ROWS:
            await self.flush_audit()

    async def flush_audit(self) -> None:
        rows, self._audit_buffer = self._audit_buffer, []
        for ts, sha256, event, label, action, source, detail in rows:
            self._t.audit.append(
                AuditRecord(next(self._ids), ts, sha256, event, label, action, source, detail)
            )

    async def audit_trail(self, sha256: str) -> list[AuditRecord]:
        self._open()
        await self.flush_audit()
        return [r for r in self._t.audit if r.sha256 == sha256]

    async def last_events(
        self, sha256s: list[str], events: tuple[str, ...]
    ) -> dict[str, tuple[str, str | None]]:
        self._open()
        await self.flush_audit()
        wanted = set(sha256s)
        latest: dict[str, tuple[str, str | None]] = {}
        for r in self._t.audit:
            if r.sha256 in wanted and r.event in events:
                latest[r.sha256] = (r.event, r.source)
        return latest

    async def rename_sources(self, renames: dict[str, str]) -> int:
        self._open()
        if not renames:
            return 0
        await self.flush_audit()  # rows still buffered are renamed too
        changed = 0
        for i, r in enumerate(self._t.audit):
            if r.source in renames:
                self._t.audit[i] = replace(r, source=renames[r.source])
                changed += 1
        for sha256, v in self._t.verdicts.items():
            if v.source in renames:
                self._t.verdicts[sha256] = replace(v, source=renames[v.source])
                changed += 1
        for row in self._t.jobs.values():
            if row.job.source in renames:
                row.job = replace(row.job, source=renames[row.job.source])
                changed += 1
        return changed

    # -- kudos ---------------------------------------------------------------------------

    async def kudos_spent(self, day: str) -> float | None:
        self._open()
        return self._t.kudos.get(day)

    async def add_kudos_spent(self, day: str, charged: float) -> float:
        self._open()
        self._t.kudos[day] = self._t.kudos.get(day, 0.0) + charged
        return self._t.kudos[day]

    # -- cluster -------------------------------------------------------------------------

    async def take_turn(self, name: str, period_s: float) -> bool:
        self._open()
        now = time.time()
        held = self._t.turns.get(name)
        if held is not None and held[1] > now:
            return False
        self._t.turns[name] = (self.holder, now + period_s)
        return True

    async def take_submit(
        self, limit: int, period_s: float, stale_s: float
    ) -> tuple[int | None, float]:
        self._open()
        now = time.time()
        for slot, s in list(self._t.submits.items()):
            if (s.done_at is not None and s.done_at <= now - period_s) or (
                s.done_at is None and s.taken_at <= now - stale_s
            ):
                del self._t.submits[slot]
        if len(self._t.submits) < limit:
            slot = next(self._ids)
            self._t.submits[slot] = _Submit(now)
            return slot, 0.0
        done = sorted(s.done_at for s in self._t.submits.values() if s.done_at is not None)
        used = len(self._t.submits)
        if used - len(done) >= limit or not done:
            return None, 1.0  # all in flight: wait for an answer
        excess = max(0, used - limit)
        return None, max(0.0, done[min(excess, len(done) - 1)] + period_s - now)

    async def finish_submit(self, slot: int | None) -> None:
        self._open()
        if slot is not None and slot in self._t.submits:
            self._t.submits[slot].done_at = time.time()

    # -- live AI Horde requests ----------------------------------------------------------

    async def live_horde_request(self, image_key: str) -> tuple[str, float] | None:
        self._open()
        horizon = time.time() - _FORGET_HORDE_REQUEST_S
        for key, (_, submitted_at) in list(self._t.horde_requests.items()):
            if submitted_at < horizon:
                del self._t.horde_requests[key]
        return self._t.horde_requests.get(image_key)

    async def hold_horde_request(
        self, image_key: str, request_id: str, submitted_at: float
    ) -> None:
        self._open()
        self._t.horde_requests[image_key] = (request_id, submitted_at)

    async def drop_horde_request(self, image_key: str, request_id: str) -> None:
        self._open()
        held = self._t.horde_requests.get(image_key)
        if held is not None and held[0] == request_id:
            del self._t.horde_requests[image_key]

    # -- quarantine ----------------------------------------------------------------------

    async def add_quarantined(
        self,
        sha256: str,
        path: Path,
        size: int,
        *,
        origin: str,
        identifier: str,
        by: str,
        detail: dict[str, Any] | None,
    ) -> QuarantineItem:
        self._open()
        now = time.time()
        item = QuarantineItem(
            next(self._ids),
            sha256,
            origin,
            identifier,
            Path(path),
            size,
            HELD,
            now,
            now,
            by,
            _copy(detail or {}),
        )
        self._t.quarantine[item.id] = item
        return item

    async def quarantine_items(self, sha256: str) -> list[QuarantineItem]:
        self._open()
        return [q for q in self._t.quarantine.values() if q.sha256 == sha256]

    async def quarantine_held_among(self, hashes: list[str]) -> set[str]:
        self._open()
        wanted = set(hashes)
        return {q.sha256 for q in self._t.quarantine.values() if q.state == HELD} & wanted

    async def count_quarantine(self) -> dict[str, int]:
        self._open()
        counts: dict[str, int] = {}
        for q in self._t.quarantine.values():
            counts[q.state] = counts.get(q.state, 0) + 1
        return counts

    async def set_quarantine_state(self, item_id: int, state: str, by: str) -> None:
        self._open()
        if state not in ("held", "released", "deleted"):
            raise ValueError(f"a quarantine state is held, released or deleted, not {state!r}")
        item = self._t.quarantine.get(item_id)
        if item is not None:
            self._t.quarantine[item_id] = replace(
                item, state=state, updated_at=time.time(), updated_by=by
            )

    # -- Lemmy actions -------------------------------------------------------------------

    async def add_lemmy_action(
        self,
        sha256: str,
        action: str,
        target: str,
        request: dict[str, Any],
        *,
        state: str,
        status: int | None,
        answer: Any,
        by: str,
    ) -> LemmyActionRow:
        self._open()
        now = time.time()
        row = LemmyActionRow(
            next(self._ids),
            sha256,
            action,
            target,
            _copy(request),
            state,
            status,
            _copy(answer),
            by,
            now,
            1,
            now,
        )
        self._t.lemmy_actions[row.id] = row
        return row

    async def update_lemmy_action(
        self, action_id: int, *, state: str, status: int | None, answer: Any
    ) -> None:
        self._open()
        row = self._t.lemmy_actions.get(action_id)
        if row is not None:
            self._t.lemmy_actions[action_id] = replace(
                row,
                state=state,
                status=status,
                answer=_copy(answer),
                attempts=row.attempts + 1,
                updated_at=time.time(),
            )

    async def lemmy_action(self, action_id: int) -> LemmyActionRow | None:
        self._open()
        return self._t.lemmy_actions.get(action_id)

    async def lemmy_actions(self, sha256: str) -> list[LemmyActionRow]:
        self._open()
        return [r for r in self._t.lemmy_actions.values() if r.sha256 == sha256]


def _feeds_index(v: Verdict) -> bool:
    """A machine positive: a `csam` verdict not given by a hash-list match."""
    return v.label is Label.CSAM and v.route is not VerdictRoute.MATCH


def _copied(stored: StoredVerdict) -> StoredVerdict:
    """A verdict as a database hands it out: a new object each time."""
    return replace(stored, verdict=stored.verdict.model_copy(deep=True))


def _copy(value: Any) -> Any:
    """A JSON round trip, as the database gives back what it stored (and nothing shared)."""
    return json.loads(json.dumps(value))
