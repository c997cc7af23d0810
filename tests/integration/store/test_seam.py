"""The database seam (store/database.py) as the parts rely on it, on both databases."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import gc
from typing import Any

import pytest
import sqlalchemy as sa

from horde_scanner.store.database import Database
from horde_scanner.store.metadata import Blob, Int, Real, Text
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


# -- the bulk paths: Database.write_many and Database.stream --------------------------------

_BULK = sa.MetaData()
# Plain columns (text, integer, float, bytes): the driver takes and gives them as they are.
_numbers = sa.Table(
    "bulk_numbers",
    _BULK,
    sa.Column("n", Int, primary_key=True, autoincrement=False),
    sa.Column("name", Text),
    sa.Column("x", Real),
    sa.Column("b", Blob),
)
# A column SQLAlchemy converts (a datetime: text on SQLite): the bulk paths go through it.
_stamps = sa.Table(
    "bulk_stamps",
    _BULK,
    sa.Column("n", Int, primary_key=True, autoincrement=False),
    sa.Column("at", sa.DateTime),
)


async def _bulk_tables(db: Database) -> None:
    assert db.held is not None
    await db.held.run_sync(_BULK.create_all)


def _row(n: int) -> tuple[Any, ...]:
    return (n, f"name {n}", n / 4 if n % 3 else None, bytes([n % 256]) * 3)


async def test_write_many_commits_each_batch_on_its_own(store_url: str) -> None:
    """`write_many(stmt, rows, keys, per_batch)`: rows in the order of `keys` (not the
    table's), a transaction per batch; a failing batch is rolled back whole, the batches
    before it stay, the rest are not tried; the connection is left outside any transaction."""
    async with await Store.open(store_url) as store, store.aside() as db:
        await _bulk_tables(db)
        keys = ("b", "x", "name", "n")  # not the table's order: the seam maps them
        rows = [tuple(reversed(_row(n))) for n in range(2500)]
        await db.write_many(sa.insert(_numbers), rows, keys, 1000)
        ordered = sa.select(_numbers).order_by(_numbers.c.n)
        got = [r async for batch in db.stream(ordered) for r in batch]
        assert got == [_row(n) for n in range(2500)]
        # The 3rd batch (rows 4000..4999) holds a key already there: it goes, 2 batches stay.
        more = [_row(n) for n in range(3000, 6000)]
        more[1500] = _row(7)
        with pytest.raises(Exception, match="UNIQUE constraint failed|duplicate key"):
            await db.write_many(sa.insert(_numbers), more, ("n", "name", "x", "b"), 1000)
        count = sa.select(sa.func.count()).select_from(_numbers)
        assert (await db.execute(count)).scalar() == 2500 + 1000
        high = sa.select(sa.func.max(_numbers.c.n))
        assert (await db.execute(high)).scalar() == 3999
        # Deletes by bound names, a transaction per batch of 700.
        gone = sa.delete(_numbers).where(_numbers.c.n == sa.bindparam("k"))
        await db.write_many(gone, [(n,) for n in range(0, 3999, 2)], ("k",), 700)
        assert (await db.execute(count)).scalar() == 3500 - (1250 + 500)  # the even ones
        await db.write_many(gone, [], ("k",), 700)  # nothing to write
        # The connection is outside any transaction: a transaction of the caller's works.
        async with db.transaction() as tx:
            await tx.execute(sa.delete(_numbers))
        assert (await db.execute(count)).scalar() == 0


async def test_write_many_refuses_what_it_cannot_do(store_url: str) -> None:
    async with await Store.open(store_url) as store:
        rows = [_row(1)]
        keys = ("n", "name", "x", "b")
        with pytest.raises(RuntimeError, match="connection of its own"):
            await store.db.write_many(sa.insert(_numbers), rows, keys, 10)
        async with store.aside() as db:
            await _bulk_tables(db)
            async with db.transaction() as tx:
                with pytest.raises(RuntimeError, match="transaction"):
                    await tx.write_many(sa.insert(_numbers), rows, keys, 10)
            # A literal in the statement: only the rows' values are bound.
            literal = sa.delete(_numbers).where(
                _numbers.c.n == sa.bindparam("k"), _numbers.c.name == "x"
            )
            with pytest.raises(ValueError, match="beyond its rows"):
                await db.write_many(literal, [(1,)], ("k",), 10)


async def test_bulk_paths_convert_what_sqlalchemy_converts(store_url: str) -> None:
    """A column that is not plain (a datetime) goes through SQLAlchemy's conversions both
    ways: the same values come back."""
    async with await Store.open(store_url) as store, store.aside() as db:
        await _bulk_tables(db)
        stamps = [(n, datetime.datetime(2026, 1, 1 + n % 28, n % 24, 30)) for n in range(1200)]
        await db.write_many(sa.insert(_stamps), stamps, ("n", "at"), 500)
        read = [r async for batch in db.stream(sa.select(_stamps).order_by(_stamps.c.n), 500)
                for r in batch]  # fmt: skip
        assert read == stamps
        assert all(type(r) is tuple for r in read)


async def test_stream_reads_plain_tuples_in_batches_on_a_connection_of_its_own(
    store_url: str,
) -> None:
    """`stream(stmt, n)`: plain tuples, `n` at a time, in order; on PostgreSQL in a read-only
    transaction of its own that ends with the stream (also when left early), or inside the
    caller's; the collector is left as it was; only on a connection of its own."""
    async with await Store.open(store_url) as store, store.aside() as db:
        await _bulk_tables(db)
        await db.write_many(sa.insert(_numbers), [_row(n) for n in range(2500)],
                            ("n", "name", "x", "b"), 5000)  # fmt: skip
        assert db.held is not None
        driver: Any = (await db.held.get_raw_connection()).driver_connection
        ordered = sa.select(_numbers).where(_numbers.c.n >= 0).order_by(_numbers.c.n)
        sizes, rows = [], []
        async for batch in db.stream(ordered, 1000):
            sizes.append(len(batch))
            rows += batch
            if store.dialect == "postgresql":
                assert driver.is_in_transaction()  # the read's own, read-only
        assert sizes == [1000, 1000, 500]
        assert rows == [_row(n) for n in range(2500)]
        assert all(type(r) is tuple for r in rows)
        assert gc.isenabled()
        if store.dialect == "postgresql":
            assert not driver.is_in_transaction()
        # Left after the first batch: the read ends there, the connection is usable.
        async with contextlib.aclosing(db.stream(ordered, 100)) as batches:
            async for batch in batches:
                assert batch[0] == _row(0)
                break
        if store.dialect == "postgresql":
            assert not driver.is_in_transaction()
        await db.execute(sa.insert(_numbers).values(n=9999, name="after"))
        # Inside the caller's transaction: it sees the transaction's own writes.
        async with db.transaction() as tx:
            await tx.execute(sa.delete(_numbers).where(_numbers.c.n >= 2000))
            counted = [r async for batch in tx.stream(sa.select(_numbers.c.n)) for r in batch]
            assert len(counted) == 2000
        assert (await db.execute(sa.select(sa.func.count()).select_from(_numbers))).scalar() == 2000
        # The collector stays off where something else turned it off.
        gc.disable()
        try:
            assert len([b async for b in db.stream(ordered, 300)]) == 7
            assert not gc.isenabled()
        finally:
            gc.enable()
        with pytest.raises(Exception, match="no_such_table"):
            async for _ in db.stream(sa.select(sa.table("no_such_table", sa.column("n")))):
                pass
        assert (await db.execute(sa.select(sa.func.count()).select_from(_numbers))).scalar() == 2000
    with pytest.raises(RuntimeError, match="connection of its own"):
        async with await Store.open(store_url) as store:
            async for _ in store.db.stream(ordered):
                pass
