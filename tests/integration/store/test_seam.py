"""The database seam (store/database.py) as the parts rely on it, on both databases."""

from __future__ import annotations

import asyncio

import sqlalchemy as sa

from horde_scanner.store.sqlite import Store
from horde_scanner.verdict import Label, Verdict


async def test_callers_cancelled_mid_statement_leave_the_store_usable(store_url: str) -> None:
    """A job runner stopping, a request timing out: the caller goes, its statement ends in
    the background, and the shared connection (SQLite) or pool (PostgreSQL) keeps working."""
    async with await Store.open(store_url) as store:
        verdict = Verdict(label=Label.CLEAN, backend="horde")
        for round_ in range(20):
            tasks = [
                asyncio.ensure_future(store.put_verdict(f"{round_:02x}{i:062x}", verdict))
                for i in range(5)
            ] + [asyncio.ensure_future(store.count_verdicts()) for _ in range(3)]
            await asyncio.sleep(0)
            for task in tasks[::2]:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        await store.put_verdict("f" * 64, verdict)
        assert (await store.get_verdict("f" * 64)) is not None
        assert store.health.available


async def test_a_transaction_is_all_or_nothing_and_others_wait_for_it(store_url: str) -> None:
    async with await Store.open(store_url) as store, store.aside() as db:
        kudos = sa.table(
            "horde_kudos", sa.column("day"), sa.column("spent"), sa.column("updated_at")
        )
        try:
            async with db.transaction() as tx:
                await tx.execute(sa.insert(kudos).values(day="d1", spent=1.0, updated_at=0.0))
                raise RuntimeError("undo")
        except RuntimeError:
            pass
        assert await store.kudos_spent("d1") is None
        async with db.transaction() as tx:
            await tx.execute(sa.insert(kudos).values(day="d2", spent=2.0, updated_at=0.0))
        assert await store.kudos_spent("d2") == 2.0


async def test_a_single_row_insert_reports_the_row_it_wrote(store_url: str) -> None:
    """PostgreSQL gives a single-row INSERT on an identity key an implicit RETURNING that
    SQLAlchemy keeps for itself: the row count is still the statement's."""
    async with await Store.open(store_url) as store:
        submits = sa.table("horde_submits", sa.column("holder"), sa.column("taken_at"))
        done = await store.db.execute(sa.insert(submits).values(holder="h", taken_at=1.0))
        assert done.rowcount == 1


async def test_a_prepared_single_row_insert_reports_its_count_and_no_rows(store_url: str) -> None:
    """The hot path's `Prepared` statements go to the driver as compiled (asyncpg on
    PostgreSQL, where the dialect adds an implicit RETURNING of an identity key to a
    single-row INSERT): the caller gets the statement's row count, 1 or 0 on a conflict, and
    no rows it did not ask for, on both databases, as on the Core path."""
    from sqlalchemy.dialects import postgresql, sqlite

    from horde_scanner.store.database import Prepared
    from horde_scanner.store.sweeps import scan_actions

    async with await Store.open(store_url) as store:
        insert = postgresql.insert if store.dialect == "postgresql" else sqlite.insert
        row = {
            "source": sa.bindparam("source"), "identifier": "f", "sha256": "a" * 64,
            "action": "quarantine", "state": "started", "created_at": 1.0, "updated_at": 1.0,
        }  # fmt: skip
        once = Prepared(insert(scan_actions).values(row).on_conflict_do_nothing())
        first = await store.db.execute(once, {"source": "s1"})
        assert (first.rowcount, list(first.all()), bool(first)) == (1, [], False)
        again = await store.db.execute(once, {"source": "s1"})  # a conflict: nothing written
        assert (again.rowcount, list(again.all())) == (0, [])
        returning = Prepared(insert(scan_actions).values(row).returning(scan_actions.c.source))
        asked = await store.db.execute(returning, {"source": "s2"})
        assert (asked.rowcount, [tuple(r) for r in asked.all()]) == (1, [("s2",)])
