"""The CI check that the tables the parts declare (store/metadata.py and each part's
`sa.Table`s) and what the Alembic revisions make agree: an empty database upgraded to head
compares equal to the metadata (Alembic's autogenerate comparison), on both databases. A
table, column, index or type changed in one place and not the other fails here."""

from __future__ import annotations

from horde_scanner.store import schema
from horde_scanner.store.sqlite import Store


async def test_an_empty_store_upgraded_to_head_matches_the_metadata(store_url: str) -> None:
    async with await Store.open(store_url) as store, store.aside() as db:
        assert db.held is not None
        assert await schema.differences(db.held) == []
        version = await db.execute("SELECT version_num FROM alembic_version")
        assert version.scalars() == [schema.head()]


async def test_the_comparison_sees_a_column_the_revisions_lack(store_url: str) -> None:
    """The check can fail: a column dropped from the database is reported."""
    async with await Store.open(store_url) as store, store.aside() as db:
        assert db.held is not None
        await db.execute("DROP TABLE horde_kudos")
        found = await schema.differences(db.held)
    assert [d[0] for d in found] == ["add_table"]
    assert found[0][1].name == "horde_kudos"
