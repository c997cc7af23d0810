"""The store contract, clause by clause: one coroutine per promise the interfaces'
docstrings make (store/interfaces.py), each taking an open, empty store.

tests/integration/store/test_contract.py runs every clause on a SQLite file and on
PostgreSQL; tests/unit/store/test_memory_contract.py runs every clause on the in-memory
double (store/memory.py), which implements every concern (`MemoryStore.CONCERNS`).
Promises that need a second connection or a restart (what another process sees, what
survives) are tests of their own in the integration suite: a clause sees one store.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from horde_scanner.media.hashing import PdqHash
from horde_scanner.signals.embedding_list import EmbeddingEntry
from horde_scanner.signals.hash_list import HashEntry
from horde_scanner.store.hashes import LOCAL
from horde_scanner.store.interfaces import (
    AuditStore,
    ClusterStore,
    EmbeddingStore,
    HashBankStore,
    HordeRequestStore,
    JobStore,
    KudosStore,
    LatePositiveStore,
    LemmyActionStore,
    ListStore,
    ProvenanceStore,
    ReviewStore,
    SweepStore,
    VerdictStore,
)
from horde_scanner.store.sweeps import ScanFile
from horde_scanner.store.verdicts import VerdictFilter
from horde_scanner.verdict import Label, Signals, Verdict

A, B, C, D = "a" * 64, "b" * 64, "c" * 64, "d" * 64
PDQ1 = "f" * 64
PDQ2 = "0" * 63 + "1"

Clause = Callable[[Any], Awaitable[None]]


@dataclass(frozen=True)
class Promise:
    concern: str  # the interface's name in store/interfaces.py
    name: str
    check: Clause


CLAUSES: list[Promise] = []


def clause(concern: str) -> Callable[[Clause], Clause]:
    def register(fn: Clause) -> Clause:
        CLAUSES.append(Promise(concern, fn.__name__, fn))
        return fn

    return register


# Clauses that need a second concern to set up or observe the first.
class _VerdictsAndLists(VerdictStore, ListStore, Protocol): ...


class _VerdictsListsAudit(VerdictStore, ListStore, AuditStore, Protocol): ...


class _LatePositivesAndLists(LatePositiveStore, ListStore, Protocol): ...


class _AuditAndVerdicts(AuditStore, VerdictStore, Protocol): ...


class _AuditVerdictsJobs(AuditStore, VerdictStore, JobStore, Protocol): ...


class _HashBankVerdictsLists(HashBankStore, VerdictStore, ListStore, Protocol): ...


class _EmbeddingsAndHashBank(EmbeddingStore, HashBankStore, Protocol): ...


def verdict(label: Label = Label.CLEAN, backend: str = "mock", **kw: Any) -> Verdict:
    return Verdict(label=label, reasons=[f"{label.value} because"], backend=backend, **kw)


# -- VerdictStore --------------------------------------------------------------------------


@clause("VerdictStore")
async def put_verdict_is_an_upsert_keeping_first_source_and_known_facts(
    store: VerdictStore,
) -> None:
    assert await store.get_verdict(A) is None
    signals = Signals(backend="mock", nsfw=True, scores={"nsfw": 0.25})
    first = verdict(signals=signals, judged_at=100.0)
    await store.put_verdict(A, first, media_type="image/png", size=10, source="upload:x")
    await store.put_verdict(A, verdict(Label.NSFW, judged_at=200.0), source="sweep:y")
    got = await store.get_verdict(A)
    assert got is not None
    assert (got.verdict.label, got.verdict.reasons) == (Label.NSFW, ["nsfw because"])
    assert got.verdict.judged_at == 200.0
    assert got.verdict.signals == signals  # None given: what was stored stays
    assert (got.media_type, got.size, got.source) == ("image/png", 10, "upload:x")
    first_seen = got.first_seen
    await store.put_verdict(A, verdict(Label.NSFW, judged_at=200.0), media_type="image/webp")
    again = await store.get_verdict(A)
    assert again is not None and again.first_seen == first_seen
    assert again.media_type == "image/webp"
    assert await store.count_verdicts() == {"nsfw": 1}  # written three times, one verdict


@clause("VerdictStore")
async def get_verdicts_leaves_out_hashes_without_one(store: VerdictStore) -> None:
    await store.put_verdict(A, verdict())
    await store.put_verdict(B, verdict(Label.CSAM))
    got = await store.get_verdicts([A, B, C])
    assert sorted(got) == [A, B] and got[B].verdict.label is Label.CSAM
    assert await store.get_verdicts([]) == {}


@clause("VerdictStore")
async def iter_verdicts_is_newest_first_with_labels_since_and_limit(store: VerdictStore) -> None:
    now = time.time()
    await store.put_verdict(A, verdict(judged_at=now - 30))
    await store.put_verdict(B, verdict(Label.CSAM, judged_at=now - 10))
    await store.put_verdict(C, verdict(Label.NSFW, judged_at=now - 20))
    assert [v.sha256 async for v in store.iter_verdicts()] == [B, C, A]
    assert [v.sha256 async for v in store.iter_verdicts(limit=2)] == [B, C]
    only = [v.sha256 async for v in store.iter_verdicts(labels=[Label.CSAM, Label.CLEAN])]
    assert only == [B, A]
    assert [v.sha256 async for v in store.iter_verdicts(since=now - 20)] == [B, C]  # inclusive
    assert await store.count_verdicts(since=now - 20) == {"csam": 1, "nsfw": 1}
    assert await store.count_verdicts() == {"clean": 1, "csam": 1, "nsfw": 1}


@clause("VerdictStore")
async def search_verdicts_pages_newest_first_with_every_filter(store: _VerdictsAndLists) -> None:
    now = time.time()
    for i, (sha, label) in enumerate(((A, Label.CSAM), (B, Label.NSFW), (C, Label.CSAM))):
        await store.put_verdict(
            sha, verdict(label, backend=f"b{i % 2}", judged_at=now - 10 * i), source=f"s{i}:x"
        )
    await store.put_verdict(D, verdict(judged_at=now - 40), source="up_%:y")
    assert [v.sha256 for v in await store.search_verdicts(VerdictFilter())] == [A, B, C, D]
    labels = VerdictFilter(labels=("csam", "nsfw"), limit=2)
    assert [v.sha256 for v in await store.search_verdicts(labels)] == [A, B]
    page2 = VerdictFilter(labels=("csam", "nsfw"), limit=2, offset=2)
    assert [v.sha256 for v in await store.search_verdicts(page2)] == [C]
    assert [v.sha256 for v in await store.search_verdicts(VerdictFilter(backend="b0"))] == [A, C]
    window = VerdictFilter(since=now - 20, until=now - 5)
    assert [v.sha256 for v in await store.search_verdicts(window)] == [B, C]  # until: exclusive
    # A prefix: `%` and `_` are the characters themselves, ASCII case is ignored.
    assert [v.sha256 for v in await store.search_verdicts(VerdictFilter(source="UP_%"))] == [D]
    assert await store.search_verdicts(VerdictFilter(source="up__")) == []
    assert [v.sha256 for v in await store.search_verdicts(VerdictFilter(source="s1"))] == [B]
    await store.set_list(A, "allow")
    undecided = VerdictFilter(labels=("csam",), undecided=True)
    assert [v.sha256 for v in await store.search_verdicts(undecided)] == [C]


@clause("VerdictStore")
async def signal_batches_give_every_verdict_with_its_list_entry_newest_first(
    store: _VerdictsAndLists,
) -> None:
    now = time.time()
    for i, sha in enumerate((A, B, C)):
        await store.put_verdict(sha, verdict(Label.NSFW, judged_at=now - i))
    await store.set_list(B, "deny", by="admin")
    batches = [rows async for rows in store.signal_batches(batch_rows=2)]
    assert [len(rows) for rows in batches] == [2, 1]
    rows = [row for rows in batches for row in rows]
    assert [(r[0], r[1], r[6], r[7]) for r in rows] == [
        (A, "nsfw", None, None),
        (B, "nsfw", "deny", "admin"),
        (C, "nsfw", None, None),
    ]
    recent = [r[0] async for rows in store.signal_batches(since=now - 1, batch_rows=10)
              for r in rows]  # fmt: skip
    assert recent == [A, B]


@clause("VerdictStore")
async def sha256_by_prefix_finds_verdicts_lists_and_audit_sorted(
    store: _VerdictsListsAudit,
) -> None:
    v, listed, audited = "abc1" + "0" * 60, "abc2" + "0" * 60, "abc3" + "0" * 60
    await store.put_verdict(v, verdict())
    await store.set_list(listed, "deny")
    await store.audit("judged", sha256=audited)
    await store.flush_audit()
    assert await store.sha256_by_prefix("abc", limit=5) == [v, listed, audited]
    assert await store.sha256_by_prefix("abc", limit=2) == [v, listed]
    assert await store.sha256_by_prefix("abc2") == [listed]
    assert await store.sha256_by_prefix("abd") == []


# -- ListStore -----------------------------------------------------------------------------


@clause("ListStore")
async def set_list_is_an_upsert_and_remove_says_whether_one_was_there(store: ListStore) -> None:
    await store.set_list(A, "allow", note="fp", by="admin")
    await store.set_list(A, "allow", note="fp", by="admin")
    assert await store.count_lists() == {"allow": 1}
    await store.set_list(A, "deny", note="changed my mind", by="admin2")
    assert await store.list_kind(A) == "deny"
    assert await store.count_lists() == {"deny": 1}
    assert await store.remove_list(A) is True
    assert await store.remove_list(A) is False
    assert await store.list_kind(A) is None
    assert await store.count_lists() == {}


@clause("ListStore")
async def iter_list_is_oldest_first_with_empty_strings_for_what_was_not_given(
    store: ListStore,
) -> None:
    await store.set_list(B, "deny")
    await store.set_list(C, "allow")
    await store.set_list(A, "deny", note="n", by="who")
    rows = [row async for row in store.iter_list("deny")]
    assert [(r[0], r[1], r[2]) for r in rows] == [(B, "", ""), (A, "n", "who")]
    assert rows[0][3] <= rows[1][3]
    assert [r[0] async for r in store.iter_list("allow")] == [C]


# -- LatePositiveStore ---------------------------------------------------------------------


@clause("LatePositiveStore")
async def record_late_positive_keeps_when_and_what_and_updates_enforcement(
    store: LatePositiveStore,
) -> None:
    await store.record_late_positive(A, Label.CSAM, "recorded", {"why": "x"})
    first = await store.late_positive(A)
    assert first is not None
    await store.record_late_positive(A, Label.NSFW, "purged", {"purged": 1})
    later = await store.late_positive(A)
    assert later is not None
    assert (later.label, later.found_at) == ("csam", first.found_at)
    assert (later.enforcement, later.detail) == ("purged", {"purged": 1})
    assert later.updated_at >= first.updated_at
    assert await store.count_late_positives() == {"purged": 1}
    assert await store.late_positive(B) is None


@clause("LatePositiveStore")
async def late_positives_are_newest_first_and_undecided_leaves_listed_out(
    store: _LatePositivesAndLists,
) -> None:
    for sha in (A, B, C):
        await store.record_late_positive(sha, Label.CSAM, "recorded", {})
    newest = [p.sha256 for p in await store.late_positives()]
    assert sorted(newest) == [A, B, C]
    found = [p.found_at for p in await store.late_positives()]
    assert found == sorted(found, reverse=True)
    assert len(await store.late_positives(limit=2)) == 2
    await store.set_list(B, "allow")
    assert sorted(p.sha256 for p in await store.late_positives(undecided=True)) == [A, C]
    assert await store.count_late_positives() == {"recorded": 3}


# -- JobStore ------------------------------------------------------------------------------


async def _add(store: JobStore, sha256: str, payload: bytes = b"bytes") -> bool:
    added: bool = await store.add_job(sha256, payload, media_type="image/png", size=5, source="s")
    return added


@clause("JobStore")
async def add_job_is_idempotent_per_hash_in_every_state(store: JobStore) -> None:
    assert await _add(store, A, b"\x00first")
    assert not await _add(store, A, b"other")
    [job] = await store.claim_jobs(5)
    assert (job.sha256, job.payload, job.media_type, job.size, job.source, job.attempts) == (
        A,
        b"\x00first",
        "image/png",
        5,
        "s",
        0,
    )
    assert not await _add(store, A)  # running: still one
    assert await store.count_jobs() == 1


@clause("JobStore")
async def claim_jobs_takes_oldest_first_up_to_limit_and_never_twice(store: JobStore) -> None:
    for sha in (A, B, C):
        assert await _add(store, sha)
    # The oldest two, handed back in no particular order (PostgreSQL's RETURNING has none).
    assert sorted(j.sha256 for j in await store.claim_jobs(2)) == [A, B]
    assert [j.sha256 for j in await store.claim_jobs(5)] == [C]
    assert await store.claim_jobs(5) == []
    assert await store.claim_jobs(0) == []
    assert await store.count_jobs() == 3  # running jobs count


@clause("JobStore")
async def an_accept_answer_is_never_overwritten_and_finish_returns_it(store: JobStore) -> None:
    await _add(store, A)
    await _add(store, B)
    await store.claim_jobs(5)
    await store.set_job_answers({A: "accept", B: "reject"})
    await store.set_job_answers({A: "reject", C: "accept"})  # C: no such job, nothing made
    assert await store.finish_job(A) == "accept"
    assert await store.finish_job(B) == "reject"
    assert await store.finish_job(A) is None  # finishing twice is harmless
    assert await store.finish_job(C) is None
    assert await store.count_jobs() == 0


@clause("JobStore")
async def retry_job_waits_counts_attempts_and_wake_makes_it_due(store: JobStore) -> None:
    await _add(store, A)
    await store.claim_jobs(1)
    before = time.time()
    await store.retry_job(A, delay_s=60, error="busy")
    assert await store.claim_jobs(5) == []  # not before its time
    next_time = await store.next_job_time()
    assert next_time is not None and before + 59 <= next_time <= time.time() + 61
    assert await store.wake_jobs() == 1
    assert await store.wake_jobs() == 0  # nothing waits any more
    [job] = await store.claim_jobs(5)
    assert job.attempts == 1
    await store.retry_job(A, delay_s=0, error="again")
    [job] = await store.claim_jobs(5)
    assert job.attempts == 2


@clause("JobStore")
async def next_job_time_is_that_of_pending_jobs_only(store: JobStore) -> None:
    assert await store.next_job_time() is None
    await _add(store, A)
    pending = await store.next_job_time()
    assert pending is not None and pending <= time.time()
    await store.claim_jobs(1)
    if store.job_lease_s == 0:  # with leases, a running job's lapse is a time too
        assert await store.next_job_time() is None


@clause("JobStore")
async def released_jobs_can_be_claimed_again_and_renew_is_harmless(store: JobStore) -> None:
    await _add(store, A)
    await _add(store, B)
    claimed = [j.sha256 for j in await store.claim_jobs(5)]
    await store.renew_jobs(claimed)
    await store.renew_jobs([])
    assert await store.claim_jobs(5) == []
    await store.release_jobs([A, C])
    await store.release_jobs([])
    assert [j.sha256 for j in await store.claim_jobs(5)] == [A]


# -- AuditStore ----------------------------------------------------------------------------


@clause("AuditStore")
async def audit_rows_are_read_back_in_the_order_recorded(store: AuditStore) -> None:
    for i in range(3):
        await store.audit("judged", sha256=A, label="clean", source="upload:x", detail={"i": i})
    await store.audit("allow", sha256=B, action="allow")
    trail = await store.audit_trail(A)  # a read writes what is buffered first
    assert [r.detail["i"] for r in trail] == [0, 1, 2]
    assert [r.id for r in trail] == sorted(r.id for r in trail)
    assert len({r.id for r in trail}) == 3
    assert (trail[0].event, trail[0].label, trail[0].source) == ("judged", "clean", "upload:x")
    assert [(r.event, r.action, r.detail) for r in await store.audit_trail(B)] == [
        ("allow", "allow", {})
    ]
    assert await store.audit_trail(C) == []
    assert store.audit_dropped == 0


@clause("AuditStore")
async def a_buffer_over_500_rows_is_written_without_asking(store: _AuditAndVerdicts) -> None:
    for i in range(501):
        await store.audit("judged", sha256=A, detail={"i": i})
    # Written by the 500th row's flush: another reader than audit_trail (which would flush
    # first) sees them.
    assert len(await store.sha256_by_prefix(A[:8], limit=5)) == 1
    assert len(await store.audit_trail(A)) == 501


@clause("AuditStore")
async def last_events_gives_the_latest_of_the_asked_for_events(store: AuditStore) -> None:
    await store.audit("deny", sha256=B, source="cli:x")
    await store.audit("confirm", sha256=B, source="api:y")
    await store.audit("judged", sha256=B, source="upload:z")
    await store.audit("allow", sha256=A, source=None)
    got = await store.last_events([A, B, C], ("deny", "confirm", "allow"))
    assert got == {B: ("confirm", "api:y"), A: ("allow", None)}
    assert await store.last_events([], ("deny",)) == {}


@clause("AuditStore")
async def rename_sources_rewrites_audit_verdicts_and_jobs_once(store: _AuditVerdictsJobs) -> None:
    await store.audit("judged", sha256=A, source="client:secret")
    await store.put_verdict(A, verdict(), source="client:secret")
    await store.add_job(B, b"x", media_type=None, size=None, source="client:secret")
    await store.put_verdict(C, verdict(), source="other")
    await store.flush_audit()
    assert await store.rename_sources({}) == 0
    assert await store.rename_sources({"client:secret": "client:named"}) == 3
    assert await store.rename_sources({"client:secret": "client:named"}) == 0
    [row] = await store.audit_trail(A)
    assert row.source == "client:named"
    stored = await store.get_verdict(A)
    assert stored is not None and stored.source == "client:named"
    [job] = await store.claim_jobs(1)
    assert job.source == "client:named"
    other = await store.get_verdict(C)
    assert other is not None and other.source == "other"


# -- KudosStore ----------------------------------------------------------------------------


@clause("KudosStore")
async def kudos_add_up_per_day_and_are_not_idempotent(store: KudosStore) -> None:
    assert await store.kudos_spent("2026-01-01") is None
    assert await store.add_kudos_spent("2026-01-01", 10.5) == 10.5
    assert await store.add_kudos_spent("2026-01-01", 10.5) == 21.0  # booked twice: counted twice
    assert await store.add_kudos_spent("2026-01-02", 1.0) == 1.0
    assert await store.kudos_spent("2026-01-01") == 21.0
    assert await store.kudos_spent("2026-01-02") == 1.0


# -- ClusterStore --------------------------------------------------------------------------


@clause("ClusterStore")
async def a_turn_is_taken_once_per_period_by_its_holder_too(store: ClusterStore) -> None:
    assert await store.take_turn("refresh", 60) is True
    assert await store.take_turn("refresh", 60) is False  # the holder's own second ask
    assert await store.take_turn("other", 60) is True  # names are independent
    assert await store.take_turn("lapsing", 0) is True
    assert await store.take_turn("lapsing", 0) is True  # a period of 0 has lapsed already


@clause("ClusterStore")
async def submit_slots_are_limited_and_free_up_after_their_period(store: ClusterStore) -> None:
    first, wait = await store.take_submit(2, 60, 180)
    second, _ = await store.take_submit(2, 60, 180)
    assert first is not None and second is not None and first != second and wait == 0.0
    none, wait = await store.take_submit(2, 60, 180)
    assert none is None and wait > 0  # all in flight: wait for an answer
    await store.finish_submit(first)
    await store.finish_submit(None)  # nothing taken: nothing to do
    none, wait = await store.take_submit(2, 60, 180)
    assert none is None and 0 < wait <= 60  # a finished one counts for its period
    freed, wait = await store.take_submit(2, 0, 180)  # period 0: the finished one is gone
    assert freed is not None and wait == 0.0
    stale, _ = await store.take_submit(2, 0, 0)  # stale 0: unfinished ones are forgotten
    assert stale is not None


# -- HordeRequestStore ---------------------------------------------------------------------


@clause("HordeRequestStore")
async def a_held_request_is_live_until_dropped_by_its_own_id(store: HordeRequestStore) -> None:
    now = time.time()
    assert await store.live_horde_request("img") is None
    await store.hold_horde_request("img", "req-1", now - 5)
    assert await store.live_horde_request("img") == ("req-1", now - 5)
    await store.hold_horde_request("img", "req-2", now)  # the latest request wins
    assert await store.live_horde_request("img") == ("req-2", now)
    await store.drop_horde_request("img", "req-1")  # an older request's end keeps the newer
    assert await store.live_horde_request("img") == ("req-2", now)
    await store.drop_horde_request("img", "req-2")
    await store.drop_horde_request("img", "req-2")  # dropping twice is harmless
    assert await store.live_horde_request("img") is None


@clause("HordeRequestStore")
async def a_request_older_than_the_horde_keeps_one_is_forgotten(store: HordeRequestStore) -> None:
    await store.hold_horde_request("old", "req-old", time.time() - 31 * 60)
    await store.hold_horde_request("new", "req-new", time.time() - 29 * 60)
    assert await store.live_horde_request("old") is None
    assert (await store.live_horde_request("new") or ("",))[0] == "req-new"


# -- ReviewStore ---------------------------------------------------------------------------


@clause("ReviewStore")
async def quarantine_rows_are_added_held_and_moved_with_who_and_when(store: ReviewStore) -> None:
    path = Path("/var/lib/horde-scanner/quarantine/f")
    one = await store.add_quarantined(
        A, path, 3, origin="local", identifier="/x", by="sweep", detail={"k": 1}
    )
    two = await store.add_quarantined(
        A, path, 3, origin="s3", identifier="b/k", by="x", detail=None
    )
    assert two.id > one.id  # each admitted copy is a row of its own
    assert (one.sha256, one.state, one.path, one.size, one.detail) == (A, "held", path, 3, {"k": 1})
    assert (one.origin, one.identifier, one.updated_by) == ("local", "/x", "sweep")
    assert two.detail == {}
    assert await store.quarantine_held_among([A, B]) == {A}
    assert await store.quarantine_held_among([]) == set()
    await store.set_quarantine_state(one.id, "released", "api:alice")
    await store.set_quarantine_state(10**9, "deleted", "api:alice")  # unknown: no change
    items = await store.quarantine_items(A)
    assert [(q.id, q.state, q.updated_by) for q in items] == [
        (one.id, "released", "api:alice"),
        (two.id, "held", "x"),
    ]
    assert items[0].updated_at >= items[0].quarantined_at
    assert await store.count_quarantine() == {"released": 1, "held": 1}
    await store.set_quarantine_state(two.id, "deleted", "api:bob")
    assert await store.quarantine_held_among([A]) == set()
    assert await store.quarantine_items(B) == []


# -- LemmyActionStore ----------------------------------------------------------------------


@clause("LemmyActionStore")
async def lemmy_actions_are_rows_of_their_own_and_retries_update_them(
    store: LemmyActionStore,
) -> None:
    request = {"method": "POST", "path": "/api/v3/admin/purge/post", "body": {"post_id": 1}}
    first = await store.add_lemmy_action(
        A, "purge_post", "post:1", request, state="failed", status=502, answer="down", by="me"
    )
    second = await store.add_lemmy_action(
        A, "ban", "person:2", {}, state="done", status=200, answer={"ok": True}, by="me"
    )
    assert second.id > first.id
    assert (first.state, first.status, first.answer, first.attempts) == ("failed", 502, "down", 1)
    assert (first.request, first.requested_by) == (request, "me")
    await store.update_lemmy_action(first.id, state="done", status=200, answer={"ok": 1})
    again = await store.lemmy_action(first.id)
    assert again is not None
    assert (again.state, again.status, again.answer, again.attempts) == ("done", 200, {"ok": 1}, 2)
    assert [a.id for a in await store.lemmy_actions(A)] == [first.id, second.id]
    assert await store.lemmy_actions(B) == []
    assert await store.lemmy_action(10**9) is None


# -- HashBankStore -------------------------------------------------------------------------


@clause("HashBankStore")
async def every_hash_bank_write_moves_the_generation_forward(store: _HashBankVerdictsLists) -> None:
    seen = [await store.hash_generation()]

    async def moved() -> None:
        now = await store.hash_generation()
        assert now > seen[-1]
        seen.append(now)

    await store.add_hash_entries(LOCAL, [HashEntry("pdq", PDQ1)])
    await moved()
    await store.replace_hash_origin("sub", [HashEntry("sha256", C)])
    await moved()
    await store.remove_hash_entry("sub", "sha256", C)
    await moved()
    await store.put_verdict(A, verdict(Label.CSAM, backend="horde"))  # a positive feeds it
    await moved()
    await store.set_list(B, "allow")
    await moved()
    await store.bump_hash_generation()
    await moved()
    # A write that changes nothing the index holds leaves it be.
    await store.put_verdict(D, verdict(Label.CLEAN))
    assert await store.hash_generation() == seen[-1]


@clause("HashBankStore")
async def hash_entries_upsert_keeping_the_earliest_first_seen(store: HashBankStore) -> None:
    rows = [HashEntry("pdq", PDQ1, first_seen=50.0), HashEntry("sha256", C)]
    assert await store.add_hash_entries(LOCAL, rows, by="cli:alice") == 2
    await store.add_hash_entries(LOCAL, [HashEntry("pdq", PDQ1, first_seen=80.0, note="n")])
    await store.add_hash_entries(LOCAL, [HashEntry("pdq", PDQ1, first_seen=20.0)])
    [pdq] = [e for e in await store.hash_entries() if e.signal == "pdq"]
    assert (pdq.origin, pdq.value, pdq.first_seen) == (LOCAL, PDQ1, 20.0)
    [sha] = await store.sha256_entries(C)
    assert (sha.origin, sha.signal, sha.value) == (LOCAL, "sha256", C)
    assert [e.origin for e in await store.describe_pdq(PDQ1)] == [LOCAL]
    assert await store.remove_hash_entry(LOCAL, "sha256", C) is True
    assert await store.remove_hash_entry(LOCAL, "sha256", C) is False


@clause("HashBankStore")
async def replacing_an_origin_makes_it_exactly_these_and_counts_the_change(
    store: HashBankStore,
) -> None:
    ab = [HashEntry("sha256", A), HashEntry("sha256", B)]
    assert await store.replace_hash_origin("sub", ab) == 2
    assert await store.replace_hash_origin("sub", ab) == 0  # unchanged: nothing rewritten
    bc = [HashEntry("sha256", B), HashEntry("sha256", C)]
    assert await store.replace_hash_origin("sub", bc) == 2  # A removed, C added
    assert sorted(e.value for e in await store.hash_entries() if e.origin == "sub") == [B, C]
    await store.add_hash_entries(LOCAL, [HashEntry("sha256", D)])
    await store.record_hash_fetch("sub", "http://127.0.0.1/l", status=200, error=None, entries=2)
    assert await store.drop_hash_origins_except([]) == ["sub"]  # `local` always kept
    assert [e.value for e in await store.hash_entries()] == [D]
    assert await store.hash_subscription("sub") is None
    assert await store.drop_hash_origins_except([]) == []


@clause("HashBankStore")
async def pdq_is_replaced_per_image_and_keep_frames_keeps_only_those(store: HashBankStore) -> None:
    await store.save_pdq(A, [PdqHash(PDQ1, 100, 0), PdqHash(PDQ2, 90, 1)])
    await store.save_pdq(A, [PdqHash(PDQ1, 95, 0)])  # frame 1 not given: it stays
    assert sorted((p.frame, p.quality) for p in await store.pdq_of(A)) == [(0, 95), (1, 90)]
    await store.keep_frames(A, [1])
    assert [(p.hex, p.frame) for p in await store.pdq_of(A)] == [(PDQ2, 1)]
    assert await store.pdq_of(B) == []


@clause("HashBankStore")
async def subscription_state_and_flags(store: HashBankStore) -> None:
    url = "http://127.0.0.1/list"
    await store.record_hash_fetch("sub", url, status=200, error=None, etag="e1", entries=5,
                                  skipped=1, nbytes=10)  # fmt: skip
    await store.record_hash_fetch("sub", url, status=500, error="boom", nbytes=3)
    state = await store.hash_subscription("sub")
    assert state is not None
    # Counts and ETag change only on a good copy; bytes add up.
    assert (state.etag, state.entries, state.skipped) == ("e1", 5, 1)
    assert (state.last_status, state.last_error, state.bytes_fetched) == (500, "boom", 13)
    assert [s.name for s in await store.hash_subscriptions()] == ["sub"]
    assert await store.flag_hash(B, "sub", "pdq", PDQ1, 3, "upload") is True
    assert await store.flag_hash(B, "sub", "pdq", PDQ1, 3, "upload") is False
    assert await store.flag_hash(C, "sub", "pdq", PDQ1, 5, None) is True
    flags = await store.hash_flags()
    assert sorted(f.sha256 for f in flags) == [B, C]
    assert [f.flagged_at for f in flags] == sorted((f.flagged_at for f in flags), reverse=True)
    assert len(await store.hash_flags(limit=1)) == 1


# -- EmbeddingStore ------------------------------------------------------------------------


def _vector(seed: int, dim: int = 8) -> np.ndarray:
    v = np.random.default_rng(seed).standard_normal(dim).astype(np.float32)
    return v / np.linalg.norm(v)


@clause("EmbeddingStore")
async def an_images_embedding_keeps_its_row_id(store: EmbeddingStore) -> None:
    blob = _vector(1).tobytes()
    row = await store.save_embedding(A, "m", blob)
    assert await store.embedding_of(A, "m") == (row, blob)
    other = _vector(2).tobytes()
    assert await store.save_embedding(A, "m", other) == row  # saved again: the same key
    assert await store.embedding_of(A, "m") == (row, other)
    assert await store.embedding_of(A, "other-model") is None
    assert await store.save_embedding(B, "m", blob) != row


@clause("EmbeddingStore")
async def embedding_entries_by_origin_and_model_move_the_generation(
    store: _EmbeddingsAndHashBank,
) -> None:
    g0 = await store.hash_generation()
    entries = [EmbeddingEntry(_vector(i)) for i in range(3)]
    assert await store.add_embedding_entries(LOCAL, "m", entries, by="cli:a") == 3
    assert await store.embedding_entry_count("m") == 3
    assert await store.embedding_entry_count("other") == 0
    g1 = await store.hash_generation()
    assert g1 > g0
    await store.replace_embedding_origin("sub", "m", entries[:1])
    assert await store.embedding_entry_count("m") == 4
    assert await store.hash_generation() > g1
    assert await store.drop_embedding_origins_except([]) == ["sub"]
    assert await store.embedding_entry_count("m") == 3


# -- SweepStore ----------------------------------------------------------------------------


def _file(i: int, sha256: str, label: str) -> ScanFile:
    return ScanFile("local:/srv", f"f{i}", 10 + i, 1.5, "judged", sha256, "image/png", label,
                    ["r"], 2.0)  # fmt: skip


@clause("SweepStore")
async def scan_files_are_upserted_by_source_and_identifier(store: SweepStore) -> None:
    await store.put_scan_files([_file(0, A, "csam"), _file(1, B, "clean")])
    await store.put_scan_files([_file(1, C, "nsfw")])
    got = await store.get_scan_files("local:/srv", ["f0", "f1", "missing"])
    assert sorted(got) == ["f0", "f1"]
    assert (got["f1"].sha256, got["f1"].label, got["f0"].reasons) == (C, "nsfw", ["r"])
    assert await store.get_scan_files("local:/other", ["f0"]) == {}
    positives = await store.unacted_scan_positives(["csam", "nsfw"], since=None, source=None)
    assert sorted(f.identifier for f in positives) == ["f0", "f1"]
    await store.set_scan_file_action("local:/srv", "f0", "quarantined")
    positives = await store.unacted_scan_positives(["csam", "nsfw"], since=None, source=None)
    assert [f.identifier for f in positives] == ["f1"]


@clause("SweepStore")
async def a_run_resumes_from_its_checkpoint_until_another_starts(store: SweepStore) -> None:
    assert await store.unfinished_scan_run("local:/srv") is None
    run = await store.start_scan_run("local:/srv", "report", follow=False)
    run.cursor = "f1"
    await store.save_scan_run(run, {"judged": 2})
    again = await store.unfinished_scan_run("local:/srv")
    assert again is not None and (again.id, again.cursor) == (run.id, "f1")
    newer = await store.start_scan_run("local:/srv", "report", follow=False)
    latest = await store.unfinished_scan_run("local:/srv")
    assert latest is not None and latest.id == newer.id != run.id  # the other one abandoned


@clause("SweepStore")
async def an_action_is_done_at_most_once(store: SweepStore) -> None:
    what: dict[str, Any] = dict(source="local:/srv", identifier="f0", sha256=A, size=10, mtime=1.5,
                action="quarantine", label="csam", reasons=["r"])  # fmt: skip
    row, fresh = await store.begin_scan_action(**what)
    assert fresh and row.state == "started"
    same, fresh = await store.begin_scan_action(**what)
    assert not fresh and same.id == row.id  # started: a run that died completes it
    await store.set_scan_action_location(row.id, "q/f0")
    assert [a.id for a in await store.started_scan_actions("local:/srv")] == [row.id]
    await store.end_scan_action(row.id, "done", location="q/f0", detail={"by": "sweep"})
    done, fresh = await store.begin_scan_action(**what)
    assert not fresh and done.state == "done"  # acted before: nothing to do
    assert await store.scan_quarantined_among([A, B]) == {A}
    assert await store.scan_quarantine_counts() == {"done": 1}
    assert (await store.sweep_locations([A]))[A][0]["location"] == "q/f0"
    await store.set_scan_action_detail(row.id, {"decision": "keep"})
    got = await store.get_scan_action(row.id)
    assert got is not None and (got.state, got.detail) == ("done", {"decision": "keep"})
    assert [a.id for a in await store.scan_actions_for(A, state="done")] == [row.id]
    await store.end_scan_action(row.id, "failed", location=None, detail={})
    _, fresh = await store.begin_scan_action(**what)
    assert fresh  # a failed action starts again


# -- ProvenanceStore -----------------------------------------------------------------------


@clause("ProvenanceStore")
async def wanting_provenance_twice_keeps_one_row_and_every_alias(store: ProvenanceStore) -> None:
    await store.want_provenance(A, "late_positive", aliases=["one.png"], seen_at=5.0)
    await store.want_provenance(A, "sweep", aliases=["two.png"], seen_at=None)
    await store.want_provenance(A, "sweep", seen_at=None)
    row = await store.provenance(A)
    assert row is not None
    assert (row.state, row.why, row.aliases) == ("pending", "late_positive", ["one.png", "two.png"])
    assert await store.count_provenance() == {"pending": 1}
    assert [p.sha256 for p in await store.due_provenance(time.time() + 1, 10)] == [A]
    assert sorted(await store.provenance_of([A, B])) == [A]


@clause("ProvenanceStore")
async def a_settled_row_leaves_the_due_list_until_refreshed(store: ProvenanceStore) -> None:
    await store.want_provenance(A, "deny", seen_at=None)
    await store.settle_provenance(A, "resolved", aliases=["x.png"], record={"post": 1},
                                  error=None, next_try=0.0)  # fmt: skip
    assert await store.due_provenance(time.time() + 1, 10) == []
    assert [p.sha256 for p in await store.resolved_provenance()] == [A]
    assert await store.refresh_provenance(A) is True
    assert await store.refresh_provenance(B) is False  # never asked for
    row = await store.provenance(A)
    assert row is not None and row.state == "pending"
    await store.settle_provenance(A, "pending", aliases=["x.png"], record=None,
                                  error="db down", next_try=time.time() + 600)  # fmt: skip
    assert await store.due_provenance(time.time() + 1, 10) == []
    assert [p.sha256 for p in await store.due_provenance(time.time() + 601, 10)] == [A]


@clause("ProvenanceStore")
async def the_provenance_turn_is_held_by_one_holder_and_renewed(store: ProvenanceStore) -> None:
    assert await store.hold_provenance_turn(60) is True
    assert await store.hold_provenance_turn(60) is True  # its holder renews it


# -- the second pass: what callers rely on beyond the first clauses ----------------------------

E, F = "e" * 64, "9" * 64
PDQ3, PDQ4, PDQ5, PDQ6, PDQ7 = ("1" * 64, "2" * 64, "3" * 64, "4" * 64, "5" * 64)


class _ProvenanceVerdictsLists(ProvenanceStore, VerdictStore, ListStore, Protocol): ...


class _ProvenanceAuditVerdicts(ProvenanceStore, AuditStore, VerdictStore, Protocol): ...


class _EmbeddingsVerdictsLists(EmbeddingStore, VerdictStore, ListStore, Protocol): ...


async def _added_at(store: ListStore, kind: str, sha256: str) -> float:
    [added] = [r[3] async for r in store.iter_list(kind) if r[0] == sha256]
    return added


@clause("AuditStore")
async def rename_sources_renames_audit_rows_still_buffered(store: AuditStore) -> None:
    await store.audit("answered", sha256=A, source="upload:secret")  # not flushed
    assert await store.rename_sources({"upload:secret": "upload:named"}) == 1
    [row] = await store.audit_trail(A)
    assert row.source == "upload:named"  # the secret never reached the table under its name


@clause("HashBankStore")
async def keep_frames_with_no_frames_drops_every_frame_of_that_image(store: HashBankStore) -> None:
    await store.save_pdq(A, [PdqHash(PDQ1, 100, 0), PdqHash(PDQ2, 90, 1)])
    await store.save_pdq(B, [PdqHash(PDQ1, 100, 0)])
    await store.keep_frames(A, [])
    assert await store.pdq_of(A) == []
    assert [(p.hex, p.frame) for p in await store.pdq_of(B)] == [(PDQ1, 0)]  # another image
    await store.keep_frames(C, [0])  # an image without PDQ: nothing to do
    await store.save_pdq(A, [])  # nothing given: nothing written
    assert await store.pdq_of(A) == []


@clause("HashBankStore")
async def the_index_holds_pdq_entries_and_own_positives_less_allowed_images(
    store: _HashBankVerdictsLists,
) -> None:
    await store.add_hash_entries(LOCAL, [HashEntry("pdq", PDQ1), HashEntry("sha256", C)])
    await store.replace_hash_origin("sub", [HashEntry("pdq", PDQ2)])
    await store.put_verdict(A, verdict(Label.CSAM))  # a machine positive
    await store.put_verdict(B, verdict(Label.CSAM, route="match"))  # a match: no evidence
    await store.set_list(D, "deny")  # an admin's deny, whatever its verdict
    await store.put_verdict(E, verdict(Label.CSAM))
    await store.set_list(E, "allow")  # allowed: out of the index
    await store.put_verdict(F, verdict(Label.CSAM))
    for sha, pdq, quality in ((A, PDQ3, 100), (B, PDQ4, 100), (D, PDQ5, 80), (E, PDQ6, 100),
                              (F, PDQ7, 10)):  # fmt: skip
        await store.save_pdq(sha, [PdqHash(pdq, quality, 0)])
    rows = [
        pair
        async for values, origins in store.hash_index_rows(50)
        for pair in zip(values, origins, strict=True)
    ]
    assert sorted(rows) == sorted(
        [(PDQ1, LOCAL), (PDQ2, "sub"), (PDQ3, "verdict"), (PDQ5, "verdict")]
    )
    assert await store.allowed_pdq(50) == [PDQ6]
    assert await store.allowed_pdq(101) == []
    low = [v async for values, _ in store.hash_index_rows(0) for v in values]
    assert PDQ7 in low and PDQ6 not in low and PDQ4 not in low


@clause("HashBankStore")
async def describe_pdq_names_list_entries_then_own_positives(
    store: _HashBankVerdictsLists,
) -> None:
    assert await store.describe_pdq(PDQ1) == []
    await store.add_hash_entries(LOCAL, [HashEntry("pdq", PDQ1, note="imported")])
    await store.put_verdict(A, verdict(Label.CSAM))
    await store.set_list(D, "deny")  # no verdict: seen when listed
    await store.put_verdict(E, verdict(Label.CSAM))
    await store.set_list(E, "allow")
    for sha in (A, D, E):
        await store.save_pdq(sha, [PdqHash(PDQ1, 100, 0)])
    rows = await store.describe_pdq(PDQ1)
    assert [(r.origin, r.note) for r in rows[:1]] == [(LOCAL, "imported")]
    own = sorted((r.sha256 or "", r.origin, r.signal, r.note, r.first_seen) for r in rows[1:])
    stored = await store.get_verdict(A)
    assert stored is not None
    assert own == [
        (A, "verdict", "pdq", "confirmed positive", stored.first_seen),
        (D, "verdict", "pdq", "deny list", await _added_at(store, "deny", D)),
    ]
    assert await store.sha256_entries(A) == []  # own images are no list entries


@clause("HashBankStore")
async def own_hash_entries_publish_what_a_person_confirmed(
    store: _HashBankVerdictsLists,
) -> None:
    await store.put_verdict(A, verdict(Label.CSAM))
    await store.set_list(A, "deny", by="api:alice")
    await store.set_list(D, "deny", by="api:bob")  # no verdict
    await store.save_pdq(A, [PdqHash(PDQ1, 100, 0)])
    await store.save_pdq(D, [PdqHash(PDQ1, 100, 0), PdqHash(PDQ2, 10, 1)])  # low quality
    await store.add_hash_entries(LOCAL, [HashEntry("sha256", C), HashEntry("pdq", PDQ3)],
                                 by="cli:x")  # fmt: skip
    await store.set_list(C, "allow")  # an allow overrides an imported sha256
    await store.replace_hash_origin("sub", [HashEntry("sha256", F)])  # not ours to publish
    await store.put_verdict(B, verdict(Label.CSAM, backend="horde"))  # unreviewed
    await store.save_pdq(B, [PdqHash(PDQ4, 100, 0)])
    bare = Signals(backend="remote", extra={"evidence": False})
    await store.put_verdict(E, verdict(Label.CSAM, signals=bare))  # no evidence for others
    await store.save_pdq(E, [PdqHash(PDQ5, 100, 0)])

    def seen(rows: list[Any]) -> set[tuple[str, str, str, str]]:
        return {(r.origin, r.signal, r.value, r.added_by) for r in rows}

    confirmed = await store.own_hash_entries("me", 50)
    assert seen(confirmed) == {
        ("verdict", "sha256", A, "api:alice"),
        ("verdict", "sha256", D, "api:bob"),
        ("verdict", "pdq", PDQ1, "api:alice"),  # the first to confirm it
        (LOCAL, "pdq", PDQ3, "cli:x"),
    }
    assert len(confirmed) == 4
    assert {r.source for r in confirmed if r.origin == "verdict"} == {"me"}
    stored = await store.get_verdict(A)
    assert stored is not None
    [pdq] = [r for r in confirmed if r.signal == "pdq" and r.origin == "verdict"]
    assert pdq.first_seen == stored.first_seen  # the earliest of the images that carry it
    everything = await store.own_hash_entries("me", 50, unreviewed=True)
    assert seen(everything) - seen(confirmed) == {
        ("verdict", "sha256", B, ""),
        ("verdict", "pdq", PDQ4, ""),
    }
    [machine] = [r for r in everything if r.value == B]
    assert machine.note == "unreviewed machine verdict (horde)"


@clause("HashBankStore")
async def a_replacement_with_nothing_new_writes_nothing_and_keeps_the_generation(
    store: HashBankStore,
) -> None:
    rows = [HashEntry("sha256", A, first_seen=1.0), HashEntry("pdq", PDQ1, note="n")]
    assert await store.replace_hash_origin("sub", rows) == 2
    before = await store.hash_generation()
    assert await store.replace_hash_origin("sub", list(rows)) == 0
    assert await store.hash_generation() == before
    assert await store.replace_hash_origin("sub", [rows[0], HashEntry("pdq", PDQ1)]) == 1
    assert await store.hash_generation() > before  # its note changed
    assert await store.remove_hash_entry("sub", "sha256", B) is False
    assert await store.replace_hash_origin("sub", []) == 2  # emptied
    assert await store.hash_entries() == []


@clause("HashBankStore")
async def a_first_failed_fetch_records_the_subscription_with_nothing_good_yet(
    store: HashBankStore,
) -> None:
    url = "http://127.0.0.1/list"
    assert await store.hash_subscription("sub") is None
    assert await store.hash_subscriptions() == []
    assert await store.hash_flags() == []
    await store.record_hash_fetch("sub", url, status=None, error="refused")
    first = await store.hash_subscription("sub")
    assert first is not None
    assert (first.etag, first.entries, first.skipped, first.last_ok) == (None, 0, 0, None)
    assert (first.last_status, first.last_error, first.bytes_fetched) == (None, "refused", 0)
    await store.record_hash_fetch("sub", url, status=200, error=None, etag="e", entries=3)
    good = await store.hash_subscription("sub")
    assert good is not None and good.last_ok is not None and good.last_error is None
    await store.record_hash_fetch("sub", url + "?v=2", status=503, error="busy")
    later = await store.hash_subscription("sub")
    assert later is not None
    assert (later.url, later.etag, later.entries) == (url + "?v=2", "e", 3)
    assert later.last_ok == good.last_ok  # the last good copy's time stays
    assert later.last_checked is not None and good.last_checked is not None
    assert later.last_checked >= good.last_checked


@clause("EmbeddingStore")
async def the_embedding_index_holds_entries_and_own_positives_less_allowed(
    store: _EmbeddingsVerdictsLists,
) -> None:
    local = [EmbeddingEntry(_vector(i)) for i in range(2)]
    await store.add_embedding_entries(LOCAL, "m", local, by="cli:a")
    await store.replace_embedding_origin("sub", "m", [EmbeddingEntry(_vector(2))])
    await store.add_embedding_entries(LOCAL, "other", [EmbeddingEntry(_vector(3))])
    await store.put_verdict(A, verdict(Label.CSAM))
    await store.set_list(B, "deny")
    await store.put_verdict(C, verdict(Label.CSAM))
    await store.set_list(C, "allow")
    await store.put_verdict(D, verdict(Label.CLEAN))
    ids = {sha: await store.save_embedding(sha, "m", _vector(10 + i).tobytes())
           for i, sha in enumerate((A, B, C, D))}  # fmt: skip
    await store.save_embedding(A, "other", _vector(20).tobytes())
    keys = [
        (kind, row, origin)
        async for kind, rows, origins in store.embedding_index_keys("m")
        for row, origin in zip(rows, origins, strict=True)
    ]
    entries = [(row, origin) for kind, row, origin in keys if kind == "entry"]
    assert sorted(origin for _, origin in entries) == [LOCAL, LOCAL, "sub"]
    assert sorted(row for kind, row, _ in keys if kind == "own") == sorted([ids[A], ids[B]])
    assert {origin for kind, _, origin in keys if kind == "own"} == {"verdict"}
    vectors = dict(await store.embedding_vectors("entry", [r for r, _ in entries] + [10**9]))
    assert sorted(vectors.values()) == sorted(e.blob for e in [*local, EmbeddingEntry(_vector(2))])
    assert await store.embedding_vectors("own", [ids[A]]) == [(ids[A], _vector(10).tobytes())]
    assert await store.embedding_vectors("own", []) == []
    assert await store.allowed_embeddings("m") == [_vector(12).tobytes()]
    assert await store.allowed_embeddings("unknown") == []


@clause("EmbeddingStore")
async def embedding_rows_say_what_they_are_and_what_is_published(
    store: _EmbeddingsVerdictsLists,
) -> None:
    local = [EmbeddingEntry(_vector(i), note=f"n{i}") for i in range(2)]
    await store.add_embedding_entries(LOCAL, "m", local, by="cli:a")
    await store.replace_embedding_origin("sub", "m", [EmbeddingEntry(_vector(5))])
    await store.put_verdict(A, verdict(Label.CSAM))
    await store.set_list(B, "deny", by="api:bob")
    await store.put_verdict(D, verdict(Label.CLEAN))
    own = {sha: await store.save_embedding(sha, "m", _vector(10 + i).tobytes())
           for i, sha in enumerate((A, B, D))}  # fmt: skip
    entry_ids = [r async for kind, rows, _ in store.embedding_index_keys("m")
                 if kind == "entry" for r in rows]  # fmt: skip
    rows = [await store.embedding_entry(i) for i in entry_ids]
    by_digest = {r.digest: r for r in rows if r is not None}
    first = by_digest[local[0].digest]
    assert (first.origin, first.vector, first.note, first.added_by) == (
        LOCAL, local[0].blob, "n0", "cli:a",
    )  # fmt: skip
    assert await store.embedding_entry(10**9) is None
    mine = await store.own_embedding(own[A])
    assert mine is not None and (mine.origin, mine.sha256, mine.note) == (
        "verdict", A, "confirmed positive",
    )  # fmt: skip
    denied = await store.own_embedding(own[B])
    assert denied is not None and denied.note == "deny list"
    assert denied.first_seen == await _added_at(store, "deny", B)
    assert await store.own_embedding(own[D]) is None  # a clean image is no entry
    assert await store.own_embedding(10**9) is None
    published = await store.own_embedding_entries("m", "me")
    assert [(r.origin, r.sha256, r.added_by) for r in published[:1]] == [("verdict", B, "api:bob")]
    assert published[0].source == "me"
    assert sorted(r.digest for r in published[1:]) == sorted(e.digest for e in local)
    assert await store.own_embedding_entries("unknown", "me") == []


@clause("EmbeddingStore")
async def an_embedding_replacement_with_nothing_new_keeps_the_generation(
    store: _EmbeddingsAndHashBank,
) -> None:
    entries = [EmbeddingEntry(_vector(i)) for i in range(2)]
    assert await store.replace_embedding_origin("sub", "m", entries) == 2
    before = await store.hash_generation()
    assert await store.replace_embedding_origin("sub", "m", list(entries)) == 0
    assert await store.hash_generation() == before
    assert await store.replace_embedding_origin("sub", "m", entries[:1]) == 1  # one removed
    assert await store.embedding_entry_count("m") == 1
    assert await store.drop_embedding_origins_except(["sub"]) == []
    assert await store.embedding_of(A, "m") is None


@clause("SweepStore")
async def sweep_locations_keep_actions_on_files_replaced_since(store: SweepStore) -> None:
    assert await store.sweep_locations([]) == {}
    await store.put_scan_files([_file(0, A, "csam")])
    what: dict[str, Any] = dict(source="local:/srv", identifier="f0", sha256=A, size=10, mtime=1.5,
                action="quarantine", label="csam", reasons=["r"])  # fmt: skip
    row, _ = await store.begin_scan_action(**what)
    await store.end_scan_action(row.id, "done", location="q/f0", detail={})
    await store.put_scan_files([_file(0, B, "clean")])  # new bytes under the same name
    found = await store.sweep_locations([A, B, C])
    assert sorted(found) == [A, B]
    [gone] = found[A]
    assert (gone["identifier"], gone["size"], gone["judged_at"]) == ("f0", 10, None)
    assert (gone["action_id"], gone["action_state"], gone["location"]) == (row.id, "done", "q/f0")
    [now] = found[B]
    assert (now["identifier"], now["judged_at"], now["action_id"], now["action"]) == (
        "f0", 2.0, None, None,
    )  # fmt: skip


@clause("SweepStore")
async def a_released_action_starts_again_on_its_row_and_a_location_is_kept(
    store: SweepStore,
) -> None:
    what: dict[str, Any] = dict(source="local:/srv", identifier="f0", sha256=A, size=10, mtime=1.5,
                action="quarantine", label="csam", reasons=["r"])  # fmt: skip
    row, _ = await store.begin_scan_action(**what)
    await store.set_scan_action_location(row.id, "q/f0")
    await store.end_scan_action(row.id, "done", location=None, detail={"n": 1})
    done = await store.get_scan_action(row.id)
    assert done is not None and (done.location, done.detail) == ("q/f0", {"n": 1})
    await store.end_scan_action(row.id, "released", location=None, detail={"by": "admin"})
    assert await store.scan_quarantined_among([A]) == set()
    assert await store.scan_quarantine_counts() == {"released": 1}
    again, fresh = await store.begin_scan_action(**{**what, "reasons": ["r2"]})
    assert fresh and again.id == row.id and again.created_at == row.created_at
    assert (again.state, again.location, again.detail, again.reasons) == (
        "started", None, {}, ["r2"],
    )  # fmt: skip
    assert await store.get_scan_action(10**9) is None
    assert await store.scan_actions_for(B) == []
    assert await store.started_scan_actions("local:/other") == []


@clause("SweepStore")
async def a_run_saved_done_is_no_longer_unfinished_and_keeps_what_the_sweep_saved(
    store: SweepStore,
) -> None:
    run = await store.start_scan_run("local:/srv", "quarantine", follow=True)
    assert (run.state, run.phase, run.cursor, run.follow) == ("running", "sweep", None, True)
    other = await store.start_scan_run("s3:bucket", "report", follow=False)  # its own source
    run.phase, run.watermark, run.time_ordered = "follow", 5.0, True
    await store.save_scan_run(run)
    got = await store.unfinished_scan_run("local:/srv")
    assert got is not None
    assert (got.phase, got.watermark, got.time_ordered, got.action) == (
        "follow", 5.0, True, "quarantine",
    )  # fmt: skip
    run.state = "done"
    await store.save_scan_run(run, {"judged": 1})
    assert await store.unfinished_scan_run("local:/srv") is None
    still = await store.unfinished_scan_run("s3:bucket")
    assert still is not None and still.id == other.id


@clause("SweepStore")
async def unacted_positives_filter_by_label_time_and_source(store: SweepStore) -> None:
    later = ScanFile("s3:b", "k", 5, 1.0, "judged", C, "image/png", "csam", ["x"], 5.0)
    await store.put_scan_files([_file(0, A, "csam"), _file(1, B, "clean"), later])
    assert await store.unacted_scan_positives([], since=None, source=None) == []
    got = await store.unacted_scan_positives(["csam"], since=None, source=None)
    assert [(f.source, f.identifier) for f in got] == [("local:/srv", "f0"), ("s3:b", "k")]
    since = await store.unacted_scan_positives(["csam"], since=3.0, source=None)
    assert [f.identifier for f in since] == ["k"]
    mine = await store.unacted_scan_positives(["csam"], since=None, source="local:/srv")
    assert [f.identifier for f in mine] == ["f0"]
    clean = (await store.get_scan_files("local:/srv", ["f1"]))["f1"]
    assert clean.reasons is None  # reasons are kept for positives only
    assert await store.get_scan_files("local:/srv", []) == {}


@clause("ProvenanceStore")
async def positives_without_provenance_are_the_new_ones_not_asked_for_nor_allowed(
    store: _ProvenanceVerdictsLists,
) -> None:
    now = time.time()
    await store.put_verdict(A, verdict(Label.CSAM, judged_at=now - 30))
    await store.put_verdict(B, verdict(Label.NSFW, judged_at=now - 20))
    await store.put_verdict(C, verdict(Label.CLEAN, judged_at=now - 15))
    await store.put_verdict(D, verdict(Label.CSAM, judged_at=now - 10))
    await store.set_list(D, "allow")
    await store.put_verdict(E, verdict(Label.CSAM, judged_at=now - 5))
    await store.want_provenance(E, "late_positive", seen_at=None)  # asked for already
    await store.set_list(F, "deny")  # a deny without a verdict
    await store.set_list(B, "deny")  # listed and judged: named once, as a verdict
    stored = await store.get_verdicts([A, B])
    listed = await _added_at(store, "deny", F)
    assert await store.positives_without_provenance(10) == [
        (A, stored[A].first_seen, "verdict", now - 30),
        (B, stored[B].first_seen, "verdict", now - 20),
        (F, listed, "deny", listed),
    ]
    assert [r[0] for r in await store.positives_without_provenance(1)] == [A, F]
    newer = await store.positives_without_provenance(10, verdicts_since=now - 25,
                                                     lists_since=listed + 3600)  # fmt: skip
    assert [r[0] for r in newer] == [B]


@clause("ProvenanceStore")
async def the_provenance_turn_is_refused_to_another_holder_until_it_lapses(
    store: ProvenanceStore,
) -> None:
    me = getattr(store, "holder")  # noqa: B009 (not part of this concern's interface)
    try:
        assert await store.hold_provenance_turn(60) is True
        setattr(store, "holder", "other:1")  # noqa: B010 (another process)
        assert await store.hold_provenance_turn(60) is False
        setattr(store, "holder", me)  # noqa: B010
        assert await store.hold_provenance_turn(0) is True  # renewed, to lapse at once
        setattr(store, "holder", "other:1")  # noqa: B010
        assert await store.hold_provenance_turn(60) is True  # lapsed: taken over
        setattr(store, "holder", me)  # noqa: B010
        assert await store.hold_provenance_turn(60) is False
    finally:
        setattr(store, "holder", me)  # noqa: B010


@clause("ProvenanceStore")
async def settling_records_each_try_and_only_new_aliases_ask_again(
    store: ProvenanceStore,
) -> None:
    assert await store.provenance(A) is None
    assert await store.provenance_of([]) == {}
    assert await store.count_provenance() == {}
    await store.settle_provenance(
        B, "resolved", aliases=[], record=None, error=None, next_try=0.0
    )  # fmt: skip  (never asked for: nothing made)
    assert await store.provenance(B) is None
    await store.want_provenance(A, "sweep", aliases=["a.png"], seen_at=3.0)
    await store.settle_provenance(A, "pending", aliases=["a.png"], record=None,
                                  error="lemmy away", next_try=time.time() + 600)  # fmt: skip
    record = {"post": {"id": 1, "tags": ["x"]}}
    await store.settle_provenance(A, "resolved", aliases=["a.png"], record=record, error=None,
                                  next_try=0.0)  # fmt: skip
    row = await store.provenance(A)
    assert row is not None
    assert (row.state, row.record, row.error, row.tries, row.seen_at) == (
        "resolved", record, None, 2, 3.0,
    )  # fmt: skip
    await store.want_provenance(A, "deny", aliases=["a.png"], seen_at=None)  # nothing new
    same = await store.provenance(A)
    assert same is not None and (same.state, same.why) == ("resolved", "sweep")
    await store.want_provenance(A, "deny", aliases=["b.png"], seen_at=None)
    asked = await store.provenance(A)
    assert asked is not None and (asked.state, asked.aliases) == ("pending", ["a.png", "b.png"])
    assert asked.record == record  # what was found stays until the next try
    assert await store.count_provenance() == {"pending": 1}
    assert await store.resolved_provenance() == []


@clause("ProvenanceStore")
async def rejected_uploads_come_from_the_audit_log_with_what_was_stored(
    store: _ProvenanceAuditVerdicts,
) -> None:
    start = time.time() - 1
    await store.put_verdict(A, verdict(Label.CSAM), media_type="image/png", size=7)
    await store.audit("answered", sha256=A, label="csam", action="reject", source="pictrs",
                      detail={"elapsed_ms": 250})  # fmt: skip
    await store.audit("answered", sha256=B, label="clean", action="accept", source="pictrs")
    await store.audit("judged", sha256=C, label="csam", action="reject", source="pictrs")
    await store.audit("answered", sha256=D, action="reject", source="other")
    await store.flush_audit()
    got = sorted(await store.rejected_uploads(None, None, 10), key=lambda r: r.sha256)
    assert [(r.sha256, r.client, r.label, r.size, r.media_type) for r in got] == [
        (A, "pictrs", "csam", 7, "image/png"),
        (D, "other", None, None, None),
    ]
    assert abs(got[0].answered_at - 0.25 - got[0].received_at) < 1e-6
    assert got[1].received_at == got[1].answered_at
    assert len(await store.rejected_uploads(None, None, 1)) == 1
    assert await store.rejected_uploads(time.time() + 60, None, 10) == []
    assert await store.rejected_uploads(None, start - 60, 10) == []
    assert len(await store.rejected_uploads(start, time.time() + 60, 10)) == 2


# -- limits: 0 gives nothing, below 0 is refused on every store -------------------------------
# (SQLite reads a negative LIMIT as "no limit", PostgreSQL refuses it: the store decides.)


async def _refused(call: Awaitable[Any]) -> None:
    try:
        await call
    except ValueError as exc:
        assert "0 or more" in str(exc), exc
        return
    raise AssertionError("a negative limit or offset was taken")


async def _drain(rows: AsyncIterator[Any]) -> list[Any]:
    return [row async for row in rows]


@clause("VerdictStore")
async def a_limit_of_zero_gives_nothing_and_a_negative_one_is_refused(
    store: _VerdictsListsAudit,
) -> None:
    await store.put_verdict(A, verdict(Label.CSAM))
    await store.put_verdict(B, verdict(Label.CSAM))
    assert await _drain(store.iter_verdicts(limit=0)) == []
    assert await store.search_verdicts(VerdictFilter(limit=0)) == []
    assert await store.search_verdicts(VerdictFilter(labels=("csam",), limit=0)) == []
    assert await store.sha256_by_prefix("", limit=0) == []
    await _refused(_drain(store.iter_verdicts(limit=-1)))
    await _refused(store.search_verdicts(VerdictFilter(limit=-1)))
    await _refused(store.search_verdicts(VerdictFilter(labels=("csam",), offset=-1)))
    await _refused(store.sha256_by_prefix("", limit=-1))


@clause("LatePositiveStore")
async def late_positives_limit_zero_gives_nothing_and_below_zero_is_refused(
    store: LatePositiveStore,
) -> None:
    await store.record_late_positive(A, Label.CSAM, "recorded", {})
    assert await store.late_positives(limit=0) == []
    await _refused(store.late_positives(limit=-1))


@clause("JobStore")
async def claiming_no_jobs_or_fewer_than_none_claims_nothing(store: JobStore) -> None:
    await _add(store, A)
    assert await store.claim_jobs(0) == []
    assert await store.claim_jobs(-1) == []  # never "every job" (SQLite's LIMIT -1)
    assert [j.sha256 for j in await store.claim_jobs(1)] == [A]


@clause("HashBankStore")
async def hash_flags_limit_zero_gives_nothing_and_below_zero_is_refused(
    store: HashBankStore,
) -> None:
    await store.flag_hash(A, "sub", "pdq", PDQ1, 1, None)
    assert await store.hash_flags(limit=0) == []
    await _refused(store.hash_flags(limit=-1))


@clause("ProvenanceStore")
async def provenance_limits_zero_give_nothing_and_below_zero_are_refused(
    store: _ProvenanceAuditVerdicts,
) -> None:
    await store.put_verdict(A, verdict(Label.CSAM))
    await store.put_verdict(B, verdict(Label.CSAM))
    await store.want_provenance(B, "sweep", seen_at=None)
    await store.audit("answered", sha256=A, action="reject")
    await store.flush_audit()
    later = time.time() + 60
    assert await store.positives_without_provenance(0) == []
    assert await store.due_provenance(later, 0) == []
    assert await store.rejected_uploads(None, None, 0) == []
    await _refused(store.positives_without_provenance(-1))
    await _refused(store.due_provenance(later, -1))
    await _refused(store.rejected_uploads(None, None, -1))


# -- text: a NUL character is refused on every store -------------------------------------------
# (PostgreSQL's text cannot hold one and fails the whole statement; SQLite kept it.)


async def _refused_nul(call: Awaitable[Any]) -> None:
    try:
        await call
    except ValueError as exc:
        assert "NUL" in str(exc), exc
        return
    raise AssertionError("text with a NUL character was taken")


@clause("ListStore")
async def a_list_note_with_a_nul_character_is_refused_and_nothing_written(
    store: ListStore,
) -> None:
    await _refused_nul(store.set_list(A, "deny", note="bad\x00note"))
    await _refused_nul(store.set_list(A, "deny", by="\x00"))
    assert await store.list_kind(A) is None
    await store.set_list(A, "deny", note="fine")  # the store is none the worse
    assert await store.list_kind(A) == "deny"


@clause("HashBankStore")
async def hash_entries_with_a_nul_character_are_refused_and_nothing_written(
    store: HashBankStore,
) -> None:
    rows = [HashEntry("pdq", PDQ1), HashEntry("sha256", C, note="from\x00list")]
    before = await store.hash_generation()
    await _refused_nul(store.add_hash_entries(LOCAL, rows))
    await _refused_nul(store.replace_hash_origin("sub", [HashEntry("sha256", C, source="\x00")]))
    await _refused_nul(store.add_hash_entries(LOCAL, rows[:1], by="cli:\x00"))
    assert await store.hash_entries() == []
    assert await store.hash_generation() == before
    assert await store.add_hash_entries(LOCAL, rows[:1]) == 1


@clause("EmbeddingStore")
async def embedding_entries_with_a_nul_character_are_refused_and_nothing_written(
    store: EmbeddingStore,
) -> None:
    good, bad = EmbeddingEntry(_vector(1)), EmbeddingEntry(_vector(2), note="x\x00")
    await _refused_nul(store.add_embedding_entries(LOCAL, "m", [good, bad]))
    await _refused_nul(store.replace_embedding_origin("sub", "m", [bad]))
    assert await store.embedding_entry_count("m") == 0
    assert await store.add_embedding_entries(LOCAL, "m", [good]) == 1


@clause("EmbeddingStore")
async def an_embedding_entry_given_again_keeps_its_id_and_vector(store: EmbeddingStore) -> None:
    entry = EmbeddingEntry(_vector(1), first_seen=50.0, note="first")
    assert await store.add_embedding_entries(LOCAL, "m", [entry], by="cli:a") == 1
    assert await store.add_embedding_entries(LOCAL, "m", [entry], by="cli:b") == 0  # unchanged
    [row_id] = [r async for kind, rows, _ in store.embedding_index_keys("m") for r in rows]
    again = EmbeddingEntry(_vector(1), first_seen=80.0, note="second")
    assert await store.add_embedding_entries(LOCAL, "m", [again], by="cli:b") == 1
    row = await store.embedding_entry(row_id)
    assert row is not None
    assert (row.note, row.first_seen, row.vector, row.added_by) == (
        "second", 80.0, entry.blob, "cli:a",
    )  # fmt: skip
    assert await store.embedding_entry_count("m") == 1
