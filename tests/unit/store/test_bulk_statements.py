"""Which statements the seam's bulk paths (`Database.write_many`, `Database.stream`) send to
the driver as they are, on both dialects, without a database."""

from __future__ import annotations

import pytest
import sqlalchemy as sa
from sqlalchemy.dialects.postgresql.asyncpg import PGDialect_asyncpg

from horde_scanner.store import embeddings, hashes, sqlite_driver
from horde_scanner.store.database import _bulk_statement, is_plain
from horde_scanner.store.metadata import Blob, Int, Real, Text

DIALECTS = {"sqlite": sqlite_driver.OneTripDialect(), "postgresql": PGDialect_asyncpg()}


@pytest.mark.parametrize("name", DIALECTS)
def test_plain_types_are_text_numbers_and_bytes(name: str) -> None:
    dialect = DIALECTS[name]
    for plain in (Int, Real, Text, Blob, sa.String(10), sa.Integer(), sa.Float()):
        assert is_plain(plain, dialect), plain
    converted = (
        sa.Numeric(), sa.Float(asdecimal=True), sa.DateTime(), sa.Date(), sa.Boolean(),
        sa.JSON(), sa.Enum("a", "b"), sa.Uuid(), sa.Interval(),
    )  # fmt: skip
    for other in converted:
        assert not is_plain(other, dialect), other


@pytest.mark.parametrize("name", DIALECTS)
def test_the_stores_bulk_writes_go_to_the_driver_as_they_are(name: str) -> None:
    """Every bulk write of the hash and embedding lists takes the fast path: a column type
    changed to one SQLAlchemy converts would make a million-entry import several times
    slower without failing anything else."""
    dialect = DIALECTS[name]
    cases = [
        (hashes._upsert_entries(name), hashes._ENTRY_KEYS),
        (hashes._DELETE_ENTRY, hashes._DELETE_KEYS),
        (embeddings._upsert_entries(name), embeddings._ENTRY_KEYS),
        (embeddings._DELETE_ENTRY, embeddings._DELETE_KEYS),
    ]
    for stmt, keys in cases:
        sql, order = _bulk_statement(dialect, stmt, keys)
        assert sql is not None, stmt
        placeholders = sql.count("?") if name == "sqlite" else len(set(sql.split("$")[1:]))
        assert placeholders >= len(keys)
        assert order is None or sorted(set(order)) == list(range(len(keys)))


def test_a_bulk_write_maps_its_rows_to_the_placeholders() -> None:
    table = sa.table("t", sa.column("a", Text), sa.column("b", Int))
    update = sa.update(table).where(table.c.a == sa.bindparam("ka")).values(b=sa.bindparam("kb"))
    for dialect in DIALECTS.values():
        sql, order = _bulk_statement(dialect, update, ("ka", "kb"))
        # SET comes before WHERE: the row's second value is the first placeholder's.
        assert sql is not None and order == (1, 0)
    stamped = sa.table("s", sa.column("at", sa.DateTime))
    assert _bulk_statement(DIALECTS["sqlite"], sa.insert(stamped), ("at",)) == (None, None)
    with pytest.raises(ValueError, match="beyond its rows"):
        _bulk_statement(DIALECTS["sqlite"], sa.delete(table).where(table.c.a == "x"), ())
