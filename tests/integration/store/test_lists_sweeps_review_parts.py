"""The parts hashes, sweeps, review, provenance and embeddings (store/) on both databases:
what their SQLAlchemy Core statements must keep doing that test_store_contract.py does not
reach (IN lists longer than a chunk, batched bulk writes, conditional upserts, the UNION of
sweep locations, dialect-specific upserts with RETURNING)."""

from __future__ import annotations

import contextlib
import time

import numpy as np

from horde_scanner.media.hashing import PdqHash
from horde_scanner.signals.embedding_list import EmbeddingEntry
from horde_scanner.signals.hash_list import HashEntry
from horde_scanner.store.hashes import LOCAL, VERDICT
from horde_scanner.store.sqlite import Store
from horde_scanner.store.sweeps import ScanFile
from horde_scanner.store.tables import IN_CHUNK
from horde_scanner.verdict import Label, Signals, Verdict

A, B, C, D = ("a" * 64, "b" * 64, "c" * 64, "d" * 64)
SRC = "local:/srv"


def sha(i: int) -> str:
    return f"{i:064x}"


def pdq(i: int) -> str:
    return f"{i * 7919 + 13:064x}"


async def test_in_lists_longer_than_a_chunk_find_every_row(store: Store, tmp_path) -> None:
    count = IN_CHUNK * 2 + 201
    await store.put_scan_files(
        ScanFile(SRC, f"f{i:05}", i, 1.0, "judged", sha(i), "image/png", "clean", None, 2.0)
        for i in range(count)
    )
    wanted = [f"f{i:05}" for i in range(count)] + ["missing"]
    got = await store.get_scan_files(SRC, wanted)
    assert len(got) == count and got["f01100"].sha256 == sha(1100)
    for i in range(count):
        await store.want_provenance(sha(i), "sweep", seen_at=None) if i % 3 == 0 else None
    found = await store.provenance_of([sha(i) for i in range(count)])
    assert set(found) == {sha(i) for i in range(0, count, 3)}
    held = [sha(i) for i in range(0, count, 2)]
    for s in held[-3:]:
        await store.add_quarantined(s, tmp_path / s, 1, origin="local", identifier=s, by="t",
                                    detail=None)  # fmt: skip
    assert await store.quarantine_held_among(held) == set(held[-3:])
    assert await store.quarantine_held_among([]) == set()
    assert await store.sweep_locations([]) == {}
    where = await store.sweep_locations([sha(i) for i in range(count)])
    assert len(where) == count and where[sha(7)][0]["identifier"] == "f00007"


async def test_sweep_actions_restart_and_outlive_their_file_rows(store: Store) -> None:
    # A file whose row was replaced by another sighting (new bytes): its action is still
    # listed for the old bytes, without a judged_at.
    await store.put_scan_files([ScanFile(SRC, "x", 1, 1.0, "judged", B, None, "clean", None, 3.0)])
    row, fresh = await store.begin_scan_action(
        source=SRC, identifier="x", sha256=A, size=1, mtime=1.0, action="quarantine",
        label="csam", reasons=["r1"],
    )  # fmt: skip
    assert fresh and row.state == "started" and row.reasons == ["r1"]
    await store.set_scan_action_location(row.id, "q/x")
    await store.end_scan_action(row.id, "failed", location=None, detail={"error": "gone"})
    failed = await store.get_scan_action(row.id)
    assert failed is not None and (failed.state, failed.location) == ("failed", "q/x")
    # A failed action starts again: fresh, its location and detail forgotten.
    again, fresh = await store.begin_scan_action(
        source=SRC, identifier="x", sha256=A, size=2, mtime=2.0, action="delete",
        label="csam", reasons=["r2"],
    )  # fmt: skip
    assert fresh and again.id == row.id
    assert (again.action, again.size, again.location, again.detail) == ("delete", 2, None, {})
    await store.end_scan_action(row.id, "done", location="gone", detail={"ok": True})
    _, fresh = await store.begin_scan_action(
        source=SRC, identifier="x", sha256=A, size=2, mtime=2.0, action="delete",
        label="csam", reasons=["r2"],
    )  # fmt: skip
    assert not fresh  # done: acted before
    await store.put_scan_files([ScanFile(SRC, "w", 1, 1.0, "judged", A, None, "csam", ["r"], 3.0)])
    where = await store.sweep_locations([A])
    assert [(w["identifier"], w["judged_at"], w["action_state"]) for w in where[A]] == [
        ("w", 3.0, None),
        ("x", None, "done"),
    ]
    assert [a.id for a in await store.scan_actions_for(A, state="done")] == [row.id]
    assert await store.started_scan_actions(SRC) == []
    await store.set_scan_action_detail(row.id, {"decided": "alice"})
    kept = await store.get_scan_action(row.id)
    assert kept is not None and kept.detail == {"decided": "alice"} and kept.state == "done"


async def test_scan_runs_keep_counts_unless_given_and_supersede(store: Store) -> None:
    first = await store.start_scan_run(SRC, "report", follow=True)
    await store.save_scan_run(first, {"judged": 5})
    first.watermark, first.time_ordered = 9.5, True
    await store.save_scan_run(first)  # counts kept
    second = await store.start_scan_run(SRC, "report", follow=False)
    assert second.id > first.id and (second.follow, second.phase) == (False, "sweep")
    latest = await store.unfinished_scan_run(SRC)
    assert latest is not None and latest.id == second.id
    await store.set_scan_file_action(SRC, "nope", "quarantined")  # no such row: nothing
    await store.put_scan_files([ScanFile(SRC, "p", 1, 1.0, "judged", A, None, "csam", ["r"], 5.0)])
    assert [f.identifier for f in await store.unacted_scan_positives(
        ["csam"], since=5.0, source=SRC)] == ["p"]  # fmt: skip
    await store.set_scan_file_action(SRC, "p", "quarantined")
    assert await store.unacted_scan_positives(["csam"], since=None, source=None) == []
    assert await store.unacted_scan_positives([], since=None, source=None) == []


async def test_bulk_lists_write_in_batches_and_replace_only_the_difference(store: Store) -> None:
    count = 12_345  # more than two batches of the bulk writer
    entries = [HashEntry("pdq", pdq(i), "csam", "feed", first_seen=float(i)) for i in range(count)]
    g0 = await store.hash_generation()
    assert await store.add_hash_entries("sub", entries, by="api:alice") == count
    assert await store.hash_generation() == g0 + 1  # once for the whole import
    # The earliest first-seen is kept; a later import changes label, source and note.
    assert await store.add_hash_entries("sub", [HashEntry("pdq", pdq(5), "nsfw", "other",
                                        first_seen=99.0, note="n")]) == 1  # fmt: skip
    [five] = await store.describe_pdq(pdq(5))
    assert (five.label, five.source, five.first_seen, five.note) == ("nsfw", "other", 5.0, "n")
    changed = [HashEntry("pdq", pdq(i), "csam", "feed", first_seen=float(i)) for i in range(200)]
    changed[5] = HashEntry("pdq", pdq(5), "nsfw", "other", first_seen=5.0, note="n")
    refreshed = changed + [HashEntry("sha256", sha(i)) for i in range(30)]
    # 200 kept as they are, 30 added, the other 12,145 removed.
    assert await store.replace_hash_origin("sub", refreshed) == 30 + count - 200
    rows = [(v, o) async for vs, os_ in store.hash_index_rows(0) for v, o in zip(vs, os_,
            strict=True)]  # fmt: skip
    assert sorted(rows) == sorted((pdq(i), "sub") for i in range(200))
    assert len(await store.sha256_entries(sha(3))) == 1
    assert await store.replace_hash_origin("sub", refreshed) == 0  # nothing changed
    assert await store.drop_hash_origins_except([]) == ["sub"]
    assert await store.hash_entries() == []


async def test_the_index_read_gives_each_origins_pdq_entries(store: Store) -> None:
    """`hash_index_rows`: every listed PDQ entry with its own origin, whatever the number of
    origins (SQLite reads them an origin at a time), sha256 entries left out, then this
    instance's own positives as `verdict`."""
    expected = []
    for k, origin in enumerate(("feed-a", LOCAL, "feed-b")):
        values = [pdq(1000 * k + i) for i in range(300 * (k + 1))]
        entries = [HashEntry("pdq", v) for v in values] + [HashEntry("sha256", sha(k))]
        await store.add_hash_entries(origin, entries)
        expected += [(v, origin) for v in values]
    # The same value on two lists is one row for each.
    await store.add_hash_entries("feed-b", [HashEntry("pdq", pdq(0))])
    expected.append((pdq(0), "feed-b"))
    await store.put_verdict(A, Verdict(label=Label.CSAM, backend="horde"))
    await store.save_pdq(A, [PdqHash(pdq(999_999), 100, 0)])
    expected.append((pdq(999_999), VERDICT))
    got = [(v, o) async for vs, os_ in store.hash_index_rows(50) for v, o in zip(vs, os_,
           strict=True)]  # fmt: skip
    assert sorted(got) == sorted(expected)


async def test_own_pdq_frames_and_what_is_published(store: Store) -> None:
    await store.save_pdq(
        A, [PdqHash(pdq(1), 90, 0), PdqHash(pdq(2), 90, 3), PdqHash(pdq(3), 20, 6)]
    )
    await store.keep_frames(A, [0, 6])
    assert [p.frame for p in await store.pdq_of(A)] == [0, 6]
    await store.put_verdict(A, Verdict(label=Label.CSAM, backend="horde"))
    await store.save_pdq(B, [PdqHash(pdq(1), 80, 0)])
    remote = Signals(backend="worker:gpu-1", nsfw=True, extra={"evidence": False})
    await store.put_verdict(B, Verdict(label=Label.CSAM, backend="remote", signals=remote))
    own = [(v, o) async for vs, os_ in store.hash_index_rows(50) for v, o in zip(vs, os_,
           strict=True)]  # fmt: skip
    assert sorted(own) == [(pdq(1), VERDICT), (pdq(1), VERDICT)]  # quality 20 left out
    [described] = await store.describe_pdq(pdq(3))
    assert (described.sha256, described.note) == (A, "confirmed positive")
    unreviewed = await store.own_hash_entries("me", 50, unreviewed=True)
    # B's remote yes/no is no evidence for others: only A travels.
    assert {(e.signal, e.value) for e in unreviewed} == {("sha256", A), ("pdq", pdq(1))}
    await store.set_list(A, "deny", by="api:bob")
    await store.set_list(B, "deny", by="api:carol")
    await store.add_hash_entries(LOCAL, [HashEntry("sha256", C), HashEntry("sha256", D)], by="x")
    await store.set_list(D, "allow", by="api:dave")
    published = await store.own_hash_entries("me", 50)
    by_value = {(e.signal, e.value): e for e in published}
    assert set(by_value) == {("sha256", A), ("sha256", B), ("pdq", pdq(1)), ("sha256", C)}
    # One row per PDQ, naming the first to confirm it.
    assert [e.added_by for e in published if e.value == pdq(1)] == ["api:bob"]
    assert by_value[("sha256", C)].origin == LOCAL


async def test_subscription_state_and_flags(store: Store) -> None:
    url = "http://127.0.0.1:1/list"
    await store.record_hash_fetch("s", url, status=200, error=None, etag="e1", entries=7,
                                  skipped=2, nbytes=100)  # fmt: skip
    [good] = await store.hash_subscriptions()
    await store.record_hash_fetch("s", url + "?2", status=503, error="down", nbytes=5)
    bad = await store.hash_subscription("s")
    assert bad is not None and good.last_ok is not None
    assert (bad.url, bad.etag, bad.entries, bad.skipped) == (url + "?2", "e1", 7, 2)
    assert (bad.last_ok, bad.last_status, bad.last_error, bad.bytes_fetched) == (
        good.last_ok, 503, "down", 105,
    )  # fmt: skip
    await store.record_hash_fetch("s", url, status=200, error=None, etag=None, entries=0, nbytes=1)
    ok = await store.hash_subscription("s")
    assert ok is not None and (ok.etag, ok.entries, ok.last_error) == (None, 0, None)
    assert await store.hash_subscription("nope") is None
    for i in range(3):
        assert await store.flag_hash(sha(i), "s", "pdq", pdq(i), i, None)
    assert not await store.flag_hash(sha(0), "s", "pdq", pdq(0), 9, "again")
    flags = await store.hash_flags()
    assert [f.sha256 for f in flags][:1] == [sha(2)] and len(flags) == 3
    assert len(await store.hash_flags(limit=2)) == 2


async def test_embeddings_on_both_databases(store: Store) -> None:
    rng = np.random.default_rng(1)

    def vec() -> np.ndarray:
        v = rng.standard_normal(8).astype(np.float32)
        return v / np.linalg.norm(v)

    first = await store.save_embedding(A, "m", b"one")
    assert await store.save_embedding(A, "m", b"two") == first  # the same row, new vector
    assert await store.embedding_of(A, "m") == (first, b"two")
    assert await store.embedding_of(A, "other") is None
    await store.put_verdict(A, Verdict(label=Label.CSAM, backend="horde"))
    b_id = await store.save_embedding(B, "m", b"bee")
    await store.set_list(B, "allow", by="t")
    entries = [EmbeddingEntry(vec(), "csam", "feed", first_seen=float(i)) for i in range(1201)]
    g0 = await store.hash_generation()
    assert await store.add_embedding_entries("sub", "m", entries, by="alice") == 1201
    assert await store.hash_generation() > g0
    assert await store.embedding_entry_count("m") == 1201
    keys = [k async for k in store.embedding_index_keys("m")]
    ids = [i for kind, part, _ in keys if kind == "entry" for i in part]
    assert len(ids) == 1201
    assert [part for kind, part, _ in keys if kind == "own"] == [[first]]  # B is allowed
    vectors = await store.embedding_vectors("entry", ids)
    assert len(vectors) == 1201 and {len(v) for _, v in vectors} == {32}
    assert await store.embedding_vectors("own", [first, b_id]) == [(first, b"two"), (b_id, b"bee")]
    assert await store.allowed_embeddings("m") == [b"bee"]
    one = await store.embedding_entry(ids[0])
    assert one is not None and (one.origin, one.added_by) == ("sub", "alice")
    own = await store.own_embedding(first)
    assert own is not None and (own.sha256, own.note) == (A, "confirmed positive")
    assert await store.own_embedding(b_id) is None
    # A refresh writes only the difference: 1 changed, 200 gone.
    kept = entries[:1000]
    kept[0] = EmbeddingEntry(kept[0].vector, "nsfw", "feed", first_seen=0.0)
    assert await store.replace_embedding_origin("sub", "m", kept) == 1 + 201
    await store.set_list(A, "deny", by="api:bob")
    await store.add_embedding_entries(LOCAL, "m", entries[:2], by="carol")
    published = await store.own_embedding_entries("m", "me")
    assert [(e.origin, e.added_by) for e in published] == [
        (VERDICT, "api:bob"), (LOCAL, "carol"), (LOCAL, "carol"),
    ]  # fmt: skip
    assert await store.drop_embedding_origins_except([]) == ["sub"]
    assert await store.embedding_entry_count("m") == 2


async def test_one_process_holds_the_provenance_turn(store_url: str) -> None:
    one, two = await Store.open(store_url), await Store.open(store_url)
    try:
        two.holder = "other:1"
        assert await one.hold_provenance_turn(60)
        assert await one.hold_provenance_turn(60)  # renewed by its holder
        assert not await two.hold_provenance_turn(60)
        assert await two.hold_provenance_turn(-1) is False
    finally:
        await one.close()
        await two.close()


async def test_rejected_uploads_read_the_audit_trail(store: Store) -> None:
    await store.put_verdict(A, Verdict(label=Label.CSAM), size=10, media_type="image/png")
    await store.audit("answered", sha256=A, label="csam", action="reject", source="pictrs",
                      detail={"elapsed_ms": 500})  # fmt: skip
    await store.audit("answered", sha256=B, label="clean", action="accept", source="pictrs")
    await store.flush_audit()
    [one] = await store.rejected_uploads(None, None, 10)
    assert (one.sha256, one.client, one.label, one.size, one.media_type) == (
        A, "pictrs", "csam", 10, "image/png",
    )  # fmt: skip
    assert abs((one.answered_at - one.received_at) - 0.5) < 1e-6
    assert await store.rejected_uploads(time.time() + 60, None, 10) == []


async def test_a_bulk_import_gives_its_page_cache_back(tmp_path) -> None:
    """SQLite: the import's 128 MiB page cache is for the import only; the pooled connection
    it ran on goes back to the default (memory held for the life of the process otherwise)."""
    async with await Store.open(tmp_path / "s.db") as store:
        async with store.aside() as db:
            default = (await db.execute("PRAGMA cache_size")).scalar()
        entries = [HashEntry("pdq", pdq(i)) for i in range(100)]
        await store.add_hash_entries("sub", entries)
        await store.replace_hash_origin("sub", entries[:50])
        async with contextlib.AsyncExitStack() as stack:
            # Every connection the pool holds now, at once.
            held = [await stack.enter_async_context(store.aside()) for _ in range(6)]
            sizes = {(await db.execute("PRAGMA cache_size")).scalar() for db in held}
        assert sizes == {default}
