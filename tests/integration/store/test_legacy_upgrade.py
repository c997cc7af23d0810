"""A store written by the release before SQLAlchemy (commit 2fa284f: schema steps, no Alembic)
upgrades in place with nothing lost, on both databases.

The fixtures are that release's own work: tests/data/make_legacy_store.py, run with its code,
wrote a SQLite file and a plain-SQL pg_dump with rows in every table through its store
methods. Opening them with this code stamps them at the baseline revision, upgrades them to
head, and every row is still there and readable through the parts; the upgraded schema
compares equal to the metadata.
"""

from __future__ import annotations

import shutil
import sqlite3
import subprocess
from pathlib import Path

import pytest

from horde_scanner.store import schema
from horde_scanner.store.metadata import all_tables
from horde_scanner.store.sqlite import Store, StoreError
from horde_scanner.verdict import Label, VerdictRoute

LEGACY = Path(__file__).resolve().parents[2] / "data" / "legacy"
A, B, C = "a" * 64, "b" * 64, "c" * 64


def _sqlite_counts(path: Path) -> dict[str, int]:
    with sqlite3.connect(path) as db:
        names = [r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        return {n: int(db.execute(f'SELECT COUNT(*) FROM "{n}"').fetchone()[0]) for n in names}


@pytest.fixture
def legacy_store(request, tmp_path: Path) -> str:
    """The old release's store, copied: a SQLite file, or a PostgreSQL database loaded from
    its dump."""
    if request.param == "sqlite":
        path = tmp_path / "old.db"
        shutil.copy(LEGACY / "store-2fa284f.db", path)
        return f"sqlite:///{path}"
    server = request.getfixturevalue("pg_server")
    url = server.new_database()
    from horde_scanner.testing.pg import find_bin

    subprocess.run(
        [find_bin("psql"), "-h", "127.0.0.1", "-p", str(server.port), "-U", "postgres",
         "-d", url.rsplit("/", 1)[1], "-v", "ON_ERROR_STOP=1", "-q",
         "-f", str(LEGACY / "store-2fa284f.pg.sql")],
        check=True, capture_output=True,
    )  # fmt: skip
    return url


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "legacy_store" in metafunc.fixturenames:
        metafunc.parametrize("legacy_store", ["sqlite", "postgresql"], indirect=True)


async def _counts(store: Store) -> dict[str, int]:
    out = {}
    for table in all_tables().sorted_tables:
        rows = await store.db.execute(f"SELECT COUNT(*) FROM {table.name}")
        out[table.name] = int(rows.scalar())
    return out


async def test_an_old_store_upgrades_in_place_with_every_row_readable(legacy_store: str) -> None:
    before = _sqlite_counts(LEGACY / "store-2fa284f.db")
    async with await Store.open(legacy_store) as store:
        # Every table the old release filled still holds its rows.
        counts = await _counts(store)
        assert {t: n for t, n in counts.items()} == {t: before[t] for t in counts}, (
            "row counts changed"
        )
        assert all(n > 0 for n in counts.values()), counts
        # Stamped at the baseline, then at head; the old record stays.
        version = await store.db.execute("SELECT version_num FROM alembic_version")
        assert version.scalars() == [schema.head()]
        steps = await store.db.execute("SELECT COUNT(*) FROM schema_migrations")
        assert steps.scalar() == len(schema.LEGACY_STEPS)
        async with store.aside() as db:
            assert db.held is not None
            assert await schema.differences(db.held) == []

        # ...and readable through the parts.
        first = await store.get_verdict(f"{0:064x}")
        assert first is not None and first.verdict.label is Label.CSAM
        assert first.verdict.reasons == ["r0"] and first.source == "u" and first.size == 0
        match = await store.get_verdict(C)
        assert match is not None and match.verdict.route is VerdictRoute.MATCH
        assert await store.count_verdicts() == {"csam": 2, "clean": 1, "nsfw": 1}
        assert await store.list_kind(A) == "allow" and await store.list_kind(B) == "deny"
        [job] = await store.claim_jobs(5)
        assert (job.sha256, job.payload, job.size) == (B, b"\x00\x01payload\xff", 9)
        late = await store.late_positive(A)
        assert late is not None and late.detail == {"why": "no key"}
        trail = await store.audit_trail(A)
        assert [r.event for r in trail][:1] == ["judged"] and trail[0].detail == {"i": 1}
        assert [p.hex for p in await store.pdq_of(A)] == ["f" * 64]
        assert await store.kudos_spent("2026-12-01") == 12.5
        assert await store.live_horde_request("k" * 16) == ("req-1", 1.0e12)
        provenance = await store.provenance(A)
        assert provenance is not None and provenance.aliases == ["x.png"]
        [action] = await store.lemmy_actions(A)
        assert action.action == "remove_post" and action.requested_by == "alice"
        embedding = await store.embedding_of(A, "m1")
        assert embedding is not None and embedding[1] == b"\x01\x02\x03\x04"
        assert await store.embedding_entry_count("m1") == 1
        assert [e.value for e in await store.sha256_entries(B)] == [B]
        turn = (await store.db.execute("SELECT name, holder FROM cluster_turns")).first()
        assert turn is not None and turn[0] == "subscription:sub" and ":" in turn[1]
        assert await store.take_turn("subscription:sub", 60)  # the old turn lapsed long ago
        # New rows continue after the old ids.
        await store.audit("after", sha256=A)
        trail = await store.audit_trail(A)
        assert trail[-1].event == "after" and trail[-1].id > trail[0].id
    # Opening again changes nothing.
    async with await Store.open(legacy_store) as store:
        assert (await _counts(store))["verdicts"] == before["verdicts"]


async def test_an_old_store_with_a_step_we_do_not_know_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    shutil.copy(LEGACY / "store-2fa284f.db", path)
    with sqlite3.connect(path) as db:
        db.execute("INSERT INTO schema_migrations VALUES ('9999-future', 0)")
    with pytest.raises(StoreError, match="newer horde-scanner"):
        await Store.open(path)


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    import os
    import sys

    env = {k: v for k, v in os.environ.items() if not k.startswith("HORDE_SCANNER_")}
    return subprocess.run(
        [sys.executable, "-m", "horde_scanner.cli", *args],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def test_store_upgrade_takes_over_an_old_store_and_names_what_blocks_one(tmp_path: Path) -> None:
    """`horde-scanner store upgrade`, as an admin runs it before starting a new version."""
    path = tmp_path / "old.db"
    shutil.copy(LEGACY / "store-2fa284f.db", path)
    done = _cli("--db", str(path), "store", "upgrade", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert f"is at schema revision {schema.head()}" in done.stdout
    assert _sqlite_counts(path)["verdicts"] == 4
    again = _cli("--db", str(path), "store", "upgrade", cwd=tmp_path)
    assert again.returncode == 0 and schema.head() in again.stdout
    # A store left half-way by an old release: refused, with what to do, and untouched.
    half = tmp_path / "half.db"
    with sqlite3.connect(half) as db:
        db.execute("CREATE TABLE schema_migrations (name TEXT PRIMARY KEY, applied_at REAL)")
        db.execute("INSERT INTO schema_migrations VALUES ('0001-core', 0)")
    refused = _cli("--db", str(half), "store", "upgrade", cwd=tmp_path)
    assert refused.returncode != 0 and "Traceback" not in refused.stderr
    assert "2fa284f" in refused.stderr and "0300-scan" in refused.stderr
