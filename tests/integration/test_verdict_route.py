"""What a verdict rests on is a column of its own (schema step 1300-verdict-route): a store
written before it keeps its hash-match verdicts apart from judged ones after the upgrade, and
the hash generation triggers read the column, not a backend name."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

from horde_scanner.store.schema import schema_steps
from horde_scanner.store.sqlite import Store
from horde_scanner.verdict import Label, Verdict, VerdictRoute

STEP = "1300-verdict-route"


def _old_store(path: Path) -> None:
    """A store as the release before the step wrote it, with one verdict of each kind."""
    steps = [(step.name, step.sql) for step in schema_steps()]
    before = steps[: [n for n, _ in steps].index(STEP)]
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE schema_migrations (name TEXT PRIMARY KEY, applied_at REAL)")
        for name, sql in before:
            db.executescript(sql)
            db.execute("INSERT INTO schema_migrations VALUES (?, ?)", (name, time.time()))
        for sha, backend in (("a" * 64, "hashlist"), ("b" * 64, "horde")):
            db.execute(
                "INSERT INTO verdicts (sha256, label, reasons, signals, backend, policy_version,"
                " first_seen, judged_at) VALUES (?, 'csam', '[]', NULL, ?, 'p1', 1.0, 1.0)",
                (sha, backend),
            )


def _generation(path: Path) -> int:
    with sqlite3.connect(path) as db:
        return int(db.execute("SELECT n FROM hash_generation").fetchone()[0])


async def test_upgrade_marks_old_hash_match_verdicts_and_triggers_read_the_route(tmp_path: Path):
    path = tmp_path / "old.db"
    _old_store(path)
    async with await Store.open(path) as store:
        matched = await store.get_verdict("a" * 64)
        judged = await store.get_verdict("b" * 64)
        assert matched is not None and matched.verdict.route is VerdictRoute.MATCH
        assert judged is not None and judged.verdict.route is VerdictRoute.JUDGED
        start = _generation(path)
        # A hash match never enters the index, whatever its backend is called...
        await store.put_verdict(
            "c" * 64,
            Verdict(label=Label.CSAM, backend="anything", route=VerdictRoute.MATCH),
        )
        assert _generation(path) == start
        # ...and a judged positive does, even one whose backend has the old sentinel name.
        await store.put_verdict("d" * 64, Verdict(label=Label.CSAM, backend="hashlist"))
        assert _generation(path) == start + 1
        stored = await store.get_verdict("d" * 64)
        assert stored is not None and stored.verdict.route is VerdictRoute.JUDGED
        # Turning a match into a judgement (a re-judge) changes the index's input.
        await store.put_verdict("c" * 64, Verdict(label=Label.CSAM, backend="horde"))
        assert _generation(path) == start + 2
    # Opening again applies nothing twice.
    async with await Store.open(path) as store:
        again = await store.get_verdict("a" * 64)
        assert again is not None and again.verdict.route is VerdictRoute.MATCH


async def test_both_stores_keep_the_route_and_their_triggers_read_it(store_url: str):
    """The same schema step on SQLite and PostgreSQL (its triggers in store/postgres.py)."""
    store = await Store.open(store_url)
    try:
        start = await store.hash_generation()
        match = Verdict(label=Label.CSAM, backend="anything", route=VerdictRoute.MATCH)
        await store.put_verdict("c" * 64, match)
        assert await store.hash_generation() == start
        stored = await store.get_verdict("c" * 64)
        assert stored is not None and stored.verdict.route is VerdictRoute.MATCH
        await store.put_verdict("d" * 64, Verdict(label=Label.CSAM, backend="hashlist"))
        assert await store.hash_generation() == start + 1
        await store.put_verdict("c" * 64, Verdict(label=Label.CSAM, backend="horde"))
        assert await store.hash_generation() == start + 2
        stored = await store.get_verdict("c" * 64)
        assert stored is not None and stored.verdict.route is VerdictRoute.JUDGED
    finally:
        await store.close()
