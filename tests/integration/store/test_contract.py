"""The store contract: every store implementation (SQLite file, PostgreSQL server) behaves the
same through the store interfaces (store/interfaces.py) and through the modules that keep
tables in it.

Each promise an interface's docstring makes is a clause of horde_scanner/testing/
store_contract.py, run here on both databases (`test_clause`); the promises about what another
process sees and what survives a restart need two stores, and are the tests below it. The
in-memory double runs the clauses of its concerns in tests/unit/store/."""

from __future__ import annotations

import asyncio
import contextlib
import time
from types import SimpleNamespace

import pytest
import sqlalchemy as sa

from horde_scanner.media.hashing import PdqHash
from horde_scanner.review.decisions import Review, VerdictFilter
from horde_scanner.review.quarantine import Quarantine
from horde_scanner.signals.hash_list import HashEntry
from horde_scanner.signals.hash_publish import published
from horde_scanner.store.hashes import LOCAL, VERDICT
from horde_scanner.store.schema import head
from horde_scanner.store.sqlite import Store, StoreError
from horde_scanner.store.sweeps import ScanFile
from horde_scanner.testing.store_contract import CLAUSES, Promise
from horde_scanner.verdict import Label, Verdict

A, B, C = "a" * 64, "b" * 64, "c" * 64
PDQ1 = "f" * 64
PDQ2 = "0" * 63 + "1"


def verdict(label: Label = Label.CLEAN, backend: str = "mock", **kw) -> Verdict:
    return Verdict(label=label, reasons=[f"{label.value} because"], backend=backend, **kw)


@pytest.mark.parametrize("promise", CLAUSES, ids=lambda p: f"{p.concern}.{p.name}")
async def test_clause(store: Store, promise: Promise) -> None:
    await promise.check(store)


# -- what another process sees, what survives a restart -------------------------------------


async def test_a_write_is_seen_by_another_connection_once_the_call_returns(store_url) -> None:
    async with await Store.open(store_url) as one, await Store.open(store_url) as two:
        await one.put_verdict(A, verdict(Label.NSFW))
        await one.set_list(B, "deny")
        await one.add_job(C, b"x", media_type=None, size=None, source=None)
        await one.record_late_positive(A, Label.NSFW, "recorded", {})
        stored = await two.get_verdict(A)
        assert stored is not None and stored.verdict.label is Label.NSFW
        assert await two.list_kind(B) == "deny"
        assert [j.sha256 for j in await two.claim_jobs(5)] == [C]
        assert await one.claim_jobs(5) == []  # claimed by the other: never twice
        assert await two.late_positive(A) is not None


async def test_audit_rows_reach_other_connections_once_flushed(store_url) -> None:
    async with await Store.open(store_url) as one, await Store.open(store_url) as two:
        await one.audit("judged", sha256=A)
        assert await two.audit_trail(A) == []  # buffered in the writer's process
        await one.flush_audit()
        assert [r.event for r in await two.audit_trail(A)] == ["judged"]


async def test_close_writes_the_audit_buffer_and_everything_survives(store_url) -> None:
    async with await Store.open(store_url) as s:
        await s.audit("judged", sha256=A, detail={"n": 1})
        await s.put_verdict(A, verdict(Label.CSAM))
        await s.set_list(B, "allow")
        await s.add_job(C, b"payload", media_type="image/png", size=7, source="s")
        await s.add_kudos_spent("2026-01-01", 3.0)
        await s.hold_horde_request("img", "req-1", time.time())
        assert await s.take_turn("refresh", 600) is True
    async with await Store.open(store_url) as s:
        assert [r.detail for r in await s.audit_trail(A)] == [{"n": 1}]
        stored = await s.get_verdict(A)
        assert stored is not None and stored.verdict.label is Label.CSAM
        assert await s.list_kind(B) == "allow"
        assert [(j.sha256, j.payload) for j in await s.claim_jobs(5)] == [(C, b"payload")]
        assert await s.kudos_spent("2026-01-01") == 3.0
        assert (await s.live_horde_request("img") or ("",))[0] == "req-1"
        assert await s.take_turn("refresh", 600) is False  # the turn outlives the process


async def test_sqlite_jobs_left_running_are_pending_again_after_a_restart(tmp_path) -> None:
    url = f"sqlite:///{tmp_path / 'store.db'}"
    async with await Store.open(url) as s:
        await s.add_job(A, b"x", media_type=None, size=None, source=None)
        assert [j.sha256 for j in await s.claim_jobs(1)] == [A]
        # The process dies here: the job is never finished, retried or released.
    async with await Store.open(url) as s:
        assert [j.sha256 for j in await s.claim_jobs(1)] == [A]


async def test_sqlite_data_version_moves_only_for_other_connections(tmp_path) -> None:
    url = f"sqlite:///{tmp_path / 'store.db'}"
    async with await Store.open(url) as one, await Store.open(url) as two:
        before = await one.data_version()
        await one.put_verdict(A, verdict())  # its own write
        assert await one.data_version() == before
        await two.put_verdict(B, verdict())
        assert await one.data_version() != before
        assert one.shared is False and one.dialect == "sqlite"


async def test_a_store_says_what_it_is(store: Store) -> None:
    await store.ping()
    await store.probe()
    assert store.health.available
    assert store.dialect in ("sqlite", "postgresql")
    assert store.shared is (store.dialect == "postgresql")
    assert (store.job_lease_s > 0) is store.shared
    assert store.holder and ":" in store.holder
    assert "password" not in store.where


async def test_reopen_keeps_data_and_schema(store_url: str) -> None:
    async with await Store.open(store_url) as s:
        await s.put_verdict(A, verdict())
    async with await Store.open(store_url) as s:
        assert (await s.get_verdict(A)) is not None
        rows = await s.db.execute_fetchall("SELECT version_num FROM alembic_version")
        assert [r[0] for r in rows] == [head()]


async def test_newer_schema_is_refused(store_url: str) -> None:
    async with await Store.open(store_url) as s:
        await s.db.execute("UPDATE alembic_version SET version_num = '9999_future'")
    with pytest.raises(StoreError, match="newer horde-scanner"):
        await Store.open(store_url)


# -- modules that keep tables in the store ------------------------------------------------------


async def test_hash_store(store: Store) -> None:
    g0 = await store.hash_generation()
    added = await store.add_hash_entries(
        LOCAL,
        [HashEntry("pdq", PDQ1, first_seen=50.0), HashEntry("sha256", C, first_seen=None)],
    )
    assert added == 2
    await store.add_hash_entries(LOCAL, [HashEntry("pdq", PDQ1, first_seen=20.0, note="older")])
    [entry] = [e for e in await store.hash_entries() if e.signal == "pdq"]
    assert (entry.first_seen, entry.note) == (20.0, "older")
    g1 = await store.hash_generation()
    assert g1 > g0
    # A positive a backend gave bumps the generation (trigger) and joins the index.
    await store.save_pdq(A, [PdqHash(PDQ2, 100, 0)])
    await store.save_pdq(A, [PdqHash(PDQ2, 90, 0)])  # same frame: replaced
    await store.put_verdict(A, verdict(Label.CSAM, backend="horde"))
    g2 = await store.hash_generation()
    assert g2 > g1
    rows = [(v, o) async for values, origins in store.hash_index_rows(50) for v, o in
            zip(values, origins, strict=True)]  # fmt: skip
    assert sorted(rows) == sorted([(PDQ1, LOCAL), (PDQ2, VERDICT)])
    assert [p.quality for p in await store.pdq_of(A)] == [90]
    # A machine verdict travels only when asked for; an admin's confirm makes it travel, with
    # who confirmed it.
    mine = {("sha256", A), ("pdq", PDQ2)}
    assert not {(e.signal, e.value) for e in await published(store, "me", 50, 31)} & mine
    unreviewed = await published(store, "me", 50, 31, unreviewed=True)
    assert {(e.signal, e.value) for e in unreviewed} >= mine
    await store.set_list(A, "deny", by="api:alice")
    confirmed = {(e.signal, e.value): e for e in await published(store, "me", 50, 31)}
    assert {confirmed[key].confirmed_by for key in mine} == {"api:alice"}
    g3 = await store.hash_generation()
    # An admin allow overrides the positive and bumps the generation.
    await store.set_list(A, "allow")
    assert await store.hash_generation() > g3
    assert PDQ2 in await store.allowed_pdq(50)
    assert ("sha256", A) not in {(e.signal, e.value) for e in await published(store, "me", 50, 31)}
    # Replacing an origin writes only the difference.
    assert await store.replace_hash_origin(LOCAL, [HashEntry("sha256", C)]) == 1
    assert await store.remove_hash_entry(LOCAL, "sha256", C) is True
    assert await store.flag_hash(B, "sub", "pdq", PDQ1, 3, "upload") is True
    assert await store.flag_hash(B, "sub", "pdq", PDQ1, 3, "upload") is False
    assert [f.sha256 for f in await store.hash_flags(limit=5)] == [B]
    await store.record_hash_fetch("sub", "http://127.0.0.1/x", status=200, error=None,
                                  etag="e1", entries=5, skipped=1, nbytes=10)  # fmt: skip
    await store.record_hash_fetch("sub", "http://127.0.0.1/x", status=500, error="boom", nbytes=3)
    sub = await store.hash_subscription("sub")
    assert sub is not None
    assert (sub.etag, sub.entries, sub.last_status, sub.bytes_fetched) == ("e1", 5, 500, 13)


async def test_scan_records(store: Store) -> None:
    await store.put_scan_files(
        [ScanFile("local:/srv", f"f{i}", 10 + i, 1.5, "judged", A if i == 0 else B,
                  "image/png", "csam" if i == 0 else "clean", ["r"], 2.0) for i in range(3)]
    )  # fmt: skip
    got = await store.get_scan_files("local:/srv", ["f0", "f1", "missing"])
    assert sorted(got) == ["f0", "f1"] and got["f0"].reasons == ["r"]
    assert [
        r.identifier for r in await store.unacted_scan_positives(["csam"], since=None, source=None)
    ] == ["f0"]
    run = await store.start_scan_run("local:/srv", "report", follow=False)
    run.cursor = "f1"
    await store.save_scan_run(run, {"judged": 2})
    again = await store.unfinished_scan_run("local:/srv")
    assert again is not None and again.cursor == "f1"
    row, fresh = await store.begin_scan_action(
        source="local:/srv", identifier="f0", sha256=A, size=10, mtime=1.5,
        action="quarantine", label="csam", reasons=["r"],
    )  # fmt: skip
    assert fresh
    _, fresh_again = await store.begin_scan_action(
        source="local:/srv", identifier="f0", sha256=A, size=10, mtime=1.5,
        action="quarantine", label="csam", reasons=["r"],
    )  # fmt: skip
    assert not fresh_again  # started: a run that died mid-action completes it
    await store.end_scan_action(row.id, "done", location="q/f0", detail={})
    assert await store.scan_quarantined_among([A, B]) == {A}
    assert await store.scan_quarantine_counts() == {"done": 1}
    where = await store.sweep_locations([A])
    assert where[A][0]["location"] == "q/f0"


async def test_quarantine_and_review(store: Store, tmp_path) -> None:
    quarantine = Quarantine(store, tmp_path / "q")
    item = await quarantine.admit_bytes(A, b"held bytes", origin="upload", identifier="x")
    assert item.id > 0
    assert await quarantine.held_among([A, B]) == {A}
    assert await quarantine.counts() == {"held": 1}
    for sha, label in ((A, Label.CSAM), (B, Label.NSFW), (C, Label.CLEAN)):
        await store.put_verdict(sha, verdict(label), source="upload:Case")
    judge = SimpleNamespace(policy=SimpleNamespace(version="test"))
    review = Review(store, judge=judge, quarantine=quarantine)  # type: ignore[arg-type]
    found = await review.search(VerdictFilter(labels=("csam", "nsfw"), limit=10))
    assert sorted(v.sha256 for v in found) == [A, B]
    # Prefix match ignores ASCII case on both stores (SQLite's LIKE does).
    by_source = await review.search(VerdictFilter(source="upload:case"))
    assert len(by_source) == 3
    stats = await review.stats()
    assert stats["verdicts"] == {"csam": 1, "nsfw": 1, "clean": 1}


async def test_review_parts_read_and_count(store: Store, tmp_path) -> None:
    """The part methods review/, the dry run and the stats page read, on both stores."""
    await store.put_verdict(A, verdict(Label.CSAM))
    await store.put_verdict(B, verdict(Label.NSFW, judged_at=time.time() - 3 * 86400))
    assert await store.count_verdicts(since=time.time() - 86400) == {"csam": 1}
    await store.record_late_positive(A, Label.CSAM, "recorded", {"why": "x"})
    await store.record_late_positive(B, Label.NSFW, "purged", {})
    await store.set_list(B, "deny", by="t")
    assert await store.count_lists() == {"deny": 1}
    assert await store.count_late_positives() == {"recorded": 1, "purged": 1}
    [undecided] = await store.late_positives(undecided=True, limit=10)
    assert (undecided.sha256, undecided.enforcement, undecided.detail) == (
        A,
        "recorded",
        {"why": "x"},
    )
    one = await store.late_positive(B)
    assert one is not None and (one.label, one.enforcement) == ("nsfw", "purged")
    assert await store.late_positive(C) is None
    # The dry run's batches: every verdict with its list entry, newest first.
    batches = [rows async for rows in store.signal_batches(batch_rows=1)]
    assert [[r[0], r[6]] for rows in batches for r in rows] == [[A, None], [B, "deny"]]
    # The latest of the asked-for events per hash (the buffer is flushed first).
    await store.audit("deny", sha256=B, source="cli:x")
    await store.audit("confirm", sha256=B, source="api:y")
    await store.audit("judged", sha256=B, source="upload:z")
    assert await store.last_events([A, B], ("deny", "confirm")) == {B: ("confirm", "api:y")}
    # Quarantine rows: held -> released, with who moved them.
    item = await store.add_quarantined(
        A, tmp_path / "f", 3, origin="local", identifier="/x", by="sweep", detail={"k": 1}
    )
    assert (item.state, item.path, item.detail) == ("held", tmp_path / "f", {"k": 1})
    assert await store.quarantine_held_among([A, B]) == {A}
    await store.set_quarantine_state(item.id, "released", "api:alice")
    [after] = await store.quarantine_items(A)
    assert (after.state, after.updated_by) == ("released", "api:alice")
    assert await store.quarantine_held_among([A]) == set()
    assert await store.count_quarantine() == {"released": 1}


async def test_bad_store_urls(tmp_path) -> None:
    with pytest.raises(StoreError, match="unknown store URL scheme"):
        await Store.open("mysql://127.0.0.1/x")
    with pytest.raises(StoreError, match="without a path"):
        await Store.open("sqlite:///")


async def test_unreachable_postgresql_is_a_clear_error() -> None:
    from horde_scanner.testing.net import free_port

    url = f"postgresql://u:secret@127.0.0.1:{free_port()}/db"
    with pytest.raises(StoreError) as err:
        await Store.open(url)
    assert "cannot open store" in str(err.value)
    assert "secret" not in str(err.value)


# -- PostgreSQL: what replicas on one database rely on -------------------------------------------


async def test_replicas_claim_disjoint_jobs(pg_url: str) -> None:
    one, two = await Store.open(pg_url), await Store.open(pg_url)
    try:
        for i in range(200):
            await one.add_job(f"{i:064x}", b"x", media_type=None, size=None, source=None)

        async def drain(s: Store) -> list[str]:
            taken: list[str] = []
            while batch := await s.claim_jobs(7):
                taken += [j.sha256 for j in batch]
            return taken

        a, b = await asyncio.gather(drain(one), drain(two))
        assert len(a) + len(b) == 200
        assert set(a).isdisjoint(b)
    finally:
        await one.close()
        await two.close()


async def test_a_lapsed_lease_is_taken_over(pg_server) -> None:
    from horde_scanner.config import StoreSettings

    settings = StoreSettings(url=pg_server.new_database(), job_lease_s=1.0)
    dead, alive = await Store.open(settings), await Store.open(settings)
    try:
        await dead.add_job(A, b"x", media_type=None, size=None, source=None)
        assert [j.sha256 for j in await dead.claim_jobs(5)] == [A]
        assert await alive.claim_jobs(5) == []
        await dead.renew_jobs([A])
        await asyncio.sleep(0.6)
        assert await alive.claim_jobs(5) == []  # renewed: still held
        await asyncio.sleep(1.0)
        assert [j.sha256 for j in await alive.claim_jobs(5)] == [A]
    finally:
        await dead.close()
        await alive.close()


async def test_changes_reach_other_replicas(pg_url: str) -> None:
    writer, reader = await Store.open(pg_url), await Store.open(pg_url)
    heard: list[tuple[str, str]] = []
    mine: list[tuple[str, str]] = []
    got = asyncio.Event()

    def listen(kind: str, key: str) -> None:
        heard.append((kind, key))
        got.set()

    reader.subscribe(listen)
    writer.subscribe(lambda kind, key: mine.append((kind, key)))
    try:
        await writer.set_list(A, "allow")
        await writer.put_verdict(B, verdict(Label.CSAM, backend="horde"))
        await writer.add_job(C, b"x", media_type=None, size=None, source=None)
        expected = {("list", A), ("verdict", B), ("job", C), ("hashes", "")}
        # Wait for these, not for a count: the hash index is bumped twice (the allow, the
        # csam verdict), so four notifications can arrive before the job's.
        deadline = time.monotonic() + 10
        while not expected <= set(heard) and time.monotonic() < deadline:
            got.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(got.wait(), 1.0)
        assert expected <= set(heard)
        assert mine == []  # a process does not hear its own changes
    finally:
        await writer.close()
        await reader.close()


async def test_processes_starting_together_apply_the_schema_once(store_url: str) -> None:
    stores = await asyncio.gather(*(Store.open(store_url) for _ in range(4)))
    try:
        rows = await stores[0].db.execute_fetchall("SELECT version_num FROM alembic_version")
        assert [r[0] for r in rows] == [head()]
    finally:
        for s in stores:
            await s.close()


async def test_many_processes_opening_a_new_sqlite_file_together_all_open(tmp_path) -> None:
    """The WAL switch answers "database is locked" at once, not after the busy timeout,
    while another connection opens the same new file; every opener must still get in."""
    for round_ in range(30):
        path = tmp_path / f"new{round_}.db"
        stores = await asyncio.gather(*(Store.open(path) for _ in range(6)))
        try:
            modes = [await s.db.execute_fetchall("PRAGMA journal_mode") for s in stores]
            assert {m[0][0] for m in modes} == {"wal"}
        finally:
            for s in stores:
                await s.close()


async def test_a_turn_goes_to_one_process_per_period(store_url: str) -> None:
    one, two = await Store.open(store_url), await Store.open(store_url)
    try:
        two.holder = "other:1"
        taken = await asyncio.gather(*(s.take_turn("refresh:x", 0.5) for s in (one, two, one)))
        assert sorted(taken) == [False, False, True]
        assert await two.take_turn("refresh:y", 0.5)  # another name, another turn
        await asyncio.sleep(0.6)
        assert await two.take_turn("refresh:x", 0.5)  # the period is over
    finally:
        await one.close()
        await two.close()


async def test_replicas_refresh_a_subscription_once(pg_url: str) -> None:
    from concurrent.futures import ThreadPoolExecutor

    import aiohttp
    from aiohttp import web

    from horde_scanner.config import HashesSettings
    from horde_scanner.signals.hash_matcher import HashMatcher
    from horde_scanner.signals.hash_subscribe import Subscriber
    from horde_scanner.testing.server import AppServer

    fetches = 0

    async def serve_list(request: web.Request) -> web.Response:
        nonlocal fetches
        fetches += 1
        return web.json_response({"entries": [{"signal": "sha256", "value": A, "label": "csam"}]})

    app = web.Application()
    app.router.add_get("/list", serve_list)
    server = AppServer(app)
    url = f"{await server.start()}/list"
    settings = HashesSettings(subscriptions=[{"name": "src", "url": url, "refresh_s": 30}])
    stores = [await Store.open(pg_url) for _ in range(3)]
    executor = ThreadPoolExecutor(2)
    subscribers = []
    try:
        async with aiohttp.ClientSession() as session:
            for s in stores:
                matcher = HashMatcher(s, settings, executor)
                subscriber = Subscriber(matcher, settings, session)
                await subscriber.start()
                subscribers.append(subscriber)
            deadline = time.monotonic() + 10
            while not await stores[0].sha256_entries(A) and time.monotonic() < deadline:
                await asyncio.sleep(0.1)
            await asyncio.sleep(0.5)
            for subscriber in subscribers:
                await subscriber.stop()
        assert [e.origin for e in await stores[0].sha256_entries(A)] == ["src"]
        assert fetches == 1
    finally:
        for s in stores:
            await s.close()
        executor.shutdown()
        await server.stop()


async def test_own_role_and_database_as_the_readme_creates_them(pg_server, readme_role) -> None:
    import subprocess

    from horde_scanner.testing.pg import find_bin

    # The one-liner of docs/scaling.md, run against this server instead of Lemmy's container.
    await asyncio.to_thread(
        subprocess.run,
        [find_bin("psql"), "-h", "127.0.0.1", "-p", str(pg_server.port), "-U", "postgres",
         "-v", "ON_ERROR_STOP=1",
         "-c", "CREATE ROLE scanner LOGIN PASSWORD 'change-me'",
         "-c", "CREATE DATABASE scanner OWNER scanner"],
        check=True, capture_output=True,
    )  # fmt: skip
    url = f"postgresql://scanner:change-me@127.0.0.1:{pg_server.port}/scanner"
    async with await Store.open(url) as store:
        rows = await store.db.execute_fetchall(
            "SELECT rolsuper FROM pg_roles WHERE rolname = current_user"
        )
        assert rows[0][0] is False  # the schema steps need no superuser
        await store.put_verdict(A, verdict(Label.CSAM, backend="horde"))
        assert await store.hash_generation() > 0  # triggers and functions work


async def test_kudos_spend_is_kept(store_url: str) -> None:
    from horde_scanner.backends.kudos import KudosBudget

    async with await Store.open(store_url) as s:
        budget = KudosBudget(100.0)
        await budget.attach(s)
        budget.settle(0.0, 12.5)
        await budget.flush()
        budget.settle(0.0, 2.5)
        await budget.flush()
    async with await Store.open(store_url) as s:
        again = KudosBudget(100.0)
        await again.attach(s)
        assert again.spent == 15.0


async def test_replicas_book_into_one_days_kudos_total(store_url: str) -> None:
    """Two processes on one store (replicas): each booking adds to the day's one total, and
    each budget learns the other's spend with its own bookings."""
    from horde_scanner.backends.kudos import KudosBudget

    async with await Store.open(store_url) as a, await Store.open(store_url) as b:
        one, two = KudosBudget(100.0), KudosBudget(100.0)
        await one.attach(a)
        await two.attach(b)
        one.settle(0.0, 40.0)
        await one.flush()
        two.settle(0.0, 30.0)
        await two.flush()
        assert two.spent == 70.0
        one.settle(0.0, 1.0)
        await one.flush()
        assert one.spent == 71.0
        assert one.can_afford(29.0) and not one.can_afford(30.0)
        # Bookings at the same moment from both are all counted, none overwritten.
        for _ in range(20):
            one.settle(0.0, 0.5)
            two.settle(0.0, 0.25)
        await asyncio.gather(one.flush(), two.flush())
        assert await a.kudos_spent(one.day) == 71.0 + 20 * 0.75


async def test_a_long_read_on_a_connection_of_its_own_streams(store_url: str) -> None:
    """`db.stream(stmt, n)` on `aside()`: rows come in batches as asked for (on PostgreSQL
    through a server-side cursor, not the whole result at once), in order, inside the
    caller's transaction when there is one, and the connection is usable after. The same for
    a driver's string read as a cursor (`async with db.execute(sql) as cur`: plain tuples)."""
    numbers = sa.table("numbers", sa.column("n", sa.Integer))
    async with await Store.open(store_url) as store, store.aside() as db:
        await db.execute("CREATE TEMP TABLE numbers (n INTEGER PRIMARY KEY)")
        await db.executemany(sa.insert(numbers), [{"n": i} for i in range(2500)])
        ordered = sa.select(numbers.c.n).where(numbers.c.n >= 0).order_by(numbers.c.n)
        batches = [len(batch) async for batch in db.stream(ordered, 1000)]
        assert batches == [1000, 1000, 500]
        if store.dialect == "postgresql":
            from horde_scanner.store.postgres import PgStream

            async with db.execute("SELECT n FROM numbers") as cur:
                assert isinstance(cur, PgStream)
        async with db.execute("SELECT n FROM numbers ORDER BY n") as cur:
            assert [r[0] async for r in cur] == list(range(2500))
        # The read's own transaction is over: a write on the same connection commits.
        await db.execute(sa.insert(numbers).values(n=9999))
        async with db.transaction() as tx:
            rows = [
                r
                async for batch in tx.stream(sa.select(sa.func.count()).select_from(numbers))
                for r in batch
            ]
            assert rows[0][0] == 2501
            await tx.execute(sa.delete(numbers).where(numbers.c.n >= 2000))
        assert (await db.execute(sa.select(sa.func.count()).select_from(numbers))).scalar() == 2000
        with pytest.raises(Exception, match="no_such_column"):
            async with db.execute("SELECT no_such_column FROM numbers") as cur:
                await cur.fetchall()
        await db.execute(sa.insert(numbers).values(n=5000))  # still usable


async def test_a_write_while_a_read_is_consumed_on_the_shared_connection(tmp_path) -> None:
    """Two processes on one SQLite file. A read on the shared connection is done when its
    `execute` returns, so a write another coroutine sends while the rows are still being
    consumed does not run on an old snapshot (SQLite would refuse it at once with "database
    is locked" when the other process committed in between)."""
    path = tmp_path / "s.db"
    async with await Store.open(path) as here, await Store.open(path) as other:
        for i in range(50):
            await here.put_verdict(f"{i:064x}", verdict(Label.CLEAN))
        async with here.db.execute("SELECT sha256 FROM verdicts ORDER BY sha256") as cur:
            first = await cur.fetchone()
            await other.put_verdict("f" * 64, verdict(Label.NSFW))  # commits meanwhile
            assert await here.add_job("e" * 64, b"x", media_type=None, size=None, source=None)
            rest = await cur.fetchall()
        assert first is not None and len(rest) == 49
        assert await here.count_jobs() == 1


async def test_sources_are_renamed_in_every_table_that_records_one(store) -> None:
    await store.put_verdict(A, verdict(Label.CLEAN), source="upload:SECRET")
    await store.add_job(B, b"x", media_type=None, size=None, source="upload:SECRET")
    await store.audit("answered", sha256=A, source="upload:SECRET")
    await store.audit("answered", sha256=C, source="upload:other")
    await store.flush_audit()
    renamed = await store.rename_sources({"upload:SECRET": "upload:lemmy", "upload:X": "upload:y"})
    assert renamed == 3
    sources = {
        str(row[0])
        for table in ("audit", "verdicts", "jobs")
        for row in await store.db.execute_fetchall(f"SELECT source FROM {table}")
    }
    assert sources == {"upload:lemmy", "upload:other"}
    assert await store.rename_sources({}) == 0


async def test_live_horde_requests_are_held_until_dropped(store: Store) -> None:
    """backends/horde.py keeps a submitted request's id here, so a restarted process polls it
    again instead of submitting the image twice; store/horde_requests.py."""
    assert await store.live_horde_request("k1") is None
    await store.hold_horde_request("k1", "req-1", time.time())
    await store.hold_horde_request("k2", "req-2", time.time() - 3600)  # surely expired there
    held = await store.live_horde_request("k1")
    assert held is not None and held[0] == "req-1" and abs(held[1] - time.time()) < 60
    assert await store.live_horde_request("k2") is None  # dropped, not handed out
    await store.drop_horde_request("k1", "other-request")  # only the request named
    assert await store.live_horde_request("k1") is not None
    await store.drop_horde_request("k1", "req-1")
    assert await store.live_horde_request("k1") is None


async def test_the_submit_window_counts_across_connections(store_url: str) -> None:
    """The AI Horde submit budget in the store: a second process (or the next one after a
    restart) sees the slots the first took, on both stores."""
    first = await Store.open(store_url)
    try:
        slots = [await first.take_submit(2, 60.0, 80.0) for _ in range(2)]
        assert all(slot is not None for slot, _ in slots)
        for slot, _ in slots:
            await first.finish_submit(slot)
        second = await Store.open(store_url)
        try:
            slot, retry_in = await second.take_submit(2, 60.0, 80.0)
            assert slot is None and 50.0 < retry_in <= 60.0
        finally:
            await second.close()
    finally:
        await first.close()


async def test_a_listener_that_raises_is_kept_and_the_others_still_hear(pg_url: str) -> None:
    writer, reader = await Store.open(pg_url), await Store.open(pg_url)
    good: list[tuple[str, str]] = []
    failures = 0

    def bad(kind: str, key: str) -> None:
        nonlocal failures
        failures += 1
        raise RuntimeError("a listener's bug")

    reader.subscribe(bad)
    reader.subscribe(lambda kind, key: good.append((kind, key)))
    try:
        await writer.set_list(A, "deny")
        await writer.set_list(B, "deny")
        deadline = time.monotonic() + 10
        while {("list", A), ("list", B)} - set(good) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert {("list", A), ("list", B)} <= set(good)
        assert failures >= 2  # called again after it raised: kept
    finally:
        await writer.close()
        await reader.close()
