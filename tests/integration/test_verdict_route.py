"""What a verdict rests on is a column of its own (`verdicts.route`, the first releases' step
1300-verdict-route): the hash generation triggers read the column, not a backend name."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import pytest

from horde_scanner.store.schema import LEGACY_STEPS
from horde_scanner.store.sqlite import Store, StoreError
from horde_scanner.verdict import Label, Verdict, VerdictRoute

STEP = "1300-verdict-route"


def _old_store(path: Path) -> None:
    """A store as a release before the step left it: its steps recorded up to 1300."""
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE schema_migrations (name TEXT PRIMARY KEY, applied_at REAL)")
        for name in LEGACY_STEPS[: LEGACY_STEPS.index(STEP)]:
            db.execute("INSERT INTO schema_migrations VALUES (?, ?)", (name, time.time()))


async def test_a_store_left_before_the_last_legacy_step_is_refused_with_what_to_do(
    tmp_path: Path,
) -> None:
    """Alembic's baseline stands for every step of the first releases: a store that lacks
    some (left by a release before 1300) is sent back to 0.1 to finish them, untouched."""
    path = tmp_path / "old.db"
    _old_store(path)
    with pytest.raises(StoreError, match=r"without its schema steps 1300-verdict-route.*2fa284f"):
        await Store.open(path)
    with sqlite3.connect(path) as db:
        tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert "alembic_version" not in tables and "verdicts" not in tables


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
