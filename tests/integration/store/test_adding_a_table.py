"""The newcomer's path of docs/development.md ("The store: a table, a query and its
migration"), walked as a newcomer walks it: a table and its query added to one part module,
and one Alembic revision, nothing else. A copy of the package gets exactly those two edits.
A store written by the unedited code opens with the edited copy and is upgraded in place
(its rows kept), the CI check (`schema.differences`) finds nothing to complain of, and the
new query answers, on both databases. Without the revision, the same check names the table.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import horde_scanner
from horde_scanner.store.sqlite import Store

# The table, declared above the part's class; the query, two methods of the part's class.
TABLE = """kudos_notes = sa.Table(
    "kudos_notes",
    metadata,
    sa.Column("day", Text, primary_key=True),
    sa.Column("note", Text, nullable=False),
)


"""
QUERY = """
    async def note_kudos(self, day: str, note: str) -> None:
        insert, new = upsert(self._db.dialect, kudos_notes)
        await self._db.execute(
            insert.values(day=day, note=note).on_conflict_do_update(
                index_elements=[kudos_notes.c.day], set_={"note": new.note}
            )
        )

    async def kudos_notes(self) -> list[tuple[str, str]]:
        rows = await self._db.execute(sa.select(kudos_notes).order_by(kudos_notes.c.day))
        return [(r.day, r.note) for r in rows.all()]

"""

REVISION = '''"""A note per day beside the kudos spent.

Revision ID: 0100_kudos_notes
Revises: {head}
"""

import sqlalchemy as sa
from alembic import op

revision = "0100_kudos_notes"
down_revision = "{head}"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "kudos_notes",
        sa.Column("day", sa.Text(), nullable=False),
        sa.Column("note", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("day", name="kudos_notes_pkey"),
    )
'''

# Run with the edited copy first on the module path.
CHECK = """
import asyncio, json, sys
from horde_scanner.store import schema
from horde_scanner.store.sqlite import Store

async def main() -> None:
    async with await Store.open(sys.argv[1]) as store, store.aside() as db:
        if sys.argv[2] == "write":
            await store.note_kudos("2026-12-07", "a quiet day")
            await store.note_kudos("2026-12-07", "a busy day")
        version = await db.execute("SELECT version_num FROM alembic_version")
        print(json.dumps({
            "differences": [str(d[0]) + " " + str(getattr(d[1], "name", d[1]))
                            for d in await schema.differences(db.held)],
            "version": version.scalars(),
            "head": schema.head(),
            "spent": await store.kudos_spent("2026-12-06"),
            "notes": await store.kudos_notes() if sys.argv[2] == "write" else [],
        }))

asyncio.run(main())
"""


def _edited_copy(root: Path, *, with_revision: bool, head: str) -> Path:
    """The package with the two edits a newcomer makes (and, without `with_revision`, only
    the first: the table declared, the revision forgotten)."""
    package = Path(horde_scanner.__file__).parent
    copy = root / "horde_scanner"
    shutil.copytree(package, copy, ignore=shutil.ignore_patterns("__pycache__"))
    part = copy / "store" / "kudos.py"
    cls = "class KudosTables(Tables):\n"
    source = part.read_text()
    assert source.count(cls) == 1
    part.write_text(source.replace(cls, TABLE + cls + QUERY))
    if with_revision:
        versions = copy / "store" / "migrations" / "versions"
        (versions / "0100_kudos_notes.py").write_text(REVISION.format(head=head))
    return root


def _run(tree: Path, url: str, mode: str) -> dict:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(CHECK), url, mode],
        cwd=tree, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.splitlines()[-1])


async def test_a_table_a_query_and_a_revision_are_all_it_takes(store_url: str, tmp_path: Path):
    from horde_scanner.store import schema

    old_head = schema.head()
    async with await Store.open(store_url) as store:  # the store before the change
        await store.add_kudos_spent("2026-12-06", 12.5)
    tree = _edited_copy(tmp_path / "edited", with_revision=True, head=old_head)

    found = _run(tree, store_url, "write")

    assert found["differences"] == []
    assert found["version"] == ["0100_kudos_notes"] == [found["head"]]
    assert found["spent"] == 12.5  # the upgrade in place kept what was there
    assert found["notes"] == [["2026-12-07", "a busy day"]]


async def test_the_check_names_a_table_whose_revision_was_forgotten(
    store_url: str, tmp_path: Path
) -> None:
    from horde_scanner.store import schema

    tree = _edited_copy(tmp_path / "forgot", with_revision=False, head=schema.head())

    found = _run(tree, store_url, "check")

    assert found["differences"] == ["add_table kudos_notes"]
    assert found["version"] == [schema.head()]
