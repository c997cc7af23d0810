"""The store contract, clause by clause: one coroutine per promise the interfaces'
docstrings make (store/interfaces.py), each taking an open, empty store.

tests/integration/store/test_contract.py runs every clause on a SQLite file and on
PostgreSQL; tests/unit/store/test_memory_contract.py runs those of the concerns the in-memory
double implements (`MemoryStore.CONCERNS`) on it. Promises that need a second connection or
a restart (what another process sees, what survives) are tests of their own in the
integration suite: a clause sees one store.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
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
    await store.flush_audit()  # buffered rows are not renamed (the contract says so)
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
