"""The store's provenance part (store/provenance.py) on both stores: SQLite and PostgreSQL."""

from __future__ import annotations

import time

import pytest

from horde_scanner.store.sqlite import Store
from horde_scanner.verdict import Label, Verdict

A, B, C, D = ("a" * 64, "b" * 64, "c" * 64, "d" * 64)


async def test_positives_are_asked_about_once_and_settle(store: Store) -> None:
    await store.put_verdict(A, Verdict(label=Label.CSAM), source="sweep:x")
    await store.put_verdict(B, Verdict(label=Label.CLEAN), source="sweep:x")
    await store.put_verdict(C, Verdict(label=Label.NSFW), source="sweep:x")
    await store.set_list(C, "allow", note="", by="alice")  # allowed since: not asked about
    await store.set_list(D, "deny", note="", by="alice")
    wanted = await store.positives_without_provenance(10)
    assert sorted((sha, why) for sha, _, why, _ in wanted) == [(A, "verdict"), (D, "deny")]
    # Only what was judged (listed) at or after the marks is read.
    later = max(mark for *_, mark in wanted) + 1
    assert (
        await store.positives_without_provenance(10, verdicts_since=later, lists_since=later) == []
    )
    for sha, seen, why, _ in wanted:
        await store.want_provenance(sha, why, seen_at=seen)
    assert await store.positives_without_provenance(10) == []
    due = await store.due_provenance(time.time() + 1, 10)
    assert {p.sha256 for p in due} == {A, D} and {p.state for p in due} == {"pending"}
    await store.settle_provenance(
        A, "pending", aliases=[], record=None, error="down", next_try=time.time() + 60
    )
    await store.settle_provenance(
        D, "resolved", aliases=["x.webp"], record={"usages": [1]}, error=None, next_try=0
    )
    assert await store.due_provenance(time.time() + 1, 10) == []
    row = await store.provenance(A)
    assert row is not None and row.error == "down" and row.tries == 1
    assert await store.count_provenance() == {"pending": 1, "resolved": 1}
    assert [p.sha256 for p in await store.resolved_provenance()] == [D]
    assert set(await store.provenance_of([A, D, B])) == {A, D}
    # Aliases learnt later (a purge's answer) are kept, and the row is asked again.
    await store.want_provenance(D, "late_positive", aliases=["y.webp"], seen_at=None)
    row = await store.provenance(D)
    assert row is not None and row.aliases == ["x.webp", "y.webp"] and row.state == "pending"
    assert await store.refresh_provenance(A) and not await store.refresh_provenance(B)


async def test_lemmy_actions_are_kept_with_their_answers(store: Store) -> None:
    row = await store.add_lemmy_action(
        A,
        "purge_post",
        "post:1",
        {"method": "POST", "path": "/api/v3/admin/purge/post", "body": {"post_id": 1}},
        state="failed",
        status=404,
        answer={"error": "unknown", "message": "Record not found"},
        by="alice",
    )
    assert row.id > 0 and row.attempts == 1 and row.answer["error"] == "unknown"
    await store.update_lemmy_action(row.id, state="done", status=200, answer={"success": True})
    again = await store.lemmy_action(row.id)
    assert again is not None and again.state == "done" and again.attempts == 2
    assert [a.id for a in await store.lemmy_actions(A)] == [row.id]
    assert await store.lemmy_action(row.id + 100) is None


async def test_rejected_uploads_come_from_the_audit_trail(store: Store) -> None:
    await store.put_verdict(A, Verdict(label=Label.CSAM), size=1234, media_type="image/png")
    await store.audit(
        "answered", sha256=A, label="csam", action="reject", source="upload:pictrs",
        detail={"elapsed_ms": 1500.0},
    )  # fmt: skip
    await store.audit("answered", sha256=B, label="clean", action="accept", source="upload:p")
    await store.flush_audit()
    (r,) = await store.rejected_uploads(None, None, 10)
    assert (r.sha256, r.client, r.size, r.media_type, r.label) == (
        A,
        "upload:pictrs",
        1234,
        "image/png",
        "csam",
    )
    assert r.answered_at - r.received_at == pytest.approx(1.5)
    assert await store.rejected_uploads(time.time() + 60, None, 10) == []


async def test_one_process_holds_the_provenance_turn(store_url: str) -> None:
    one, two = await Store.open(store_url), await Store.open(store_url)
    try:
        two.holder = one.holder + "-other"
        assert await one.hold_provenance_turn(30)
        assert await one.hold_provenance_turn(30)  # renewed by its holder
        assert not await two.hold_provenance_turn(30)
        assert await one.hold_provenance_turn(0)  # lapses at once
        assert await two.hold_provenance_turn(30)
        assert not await one.hold_provenance_turn(30)
    finally:
        await one.close()
        await two.close()
