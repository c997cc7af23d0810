"""Writes the stores of the release before SQLAlchemy (commit 2fa284f, schema steps) that
tests/integration/store/test_legacy_upgrade.py upgrades: a SQLite file and a plain-SQL
pg_dump, with rows in every table, written through that release's own store methods.

Run it with the old release's code first on the path (its worktree), from this repository:

    PYTHONPATH=/path/to/worktree-of-2fa284f python tests/data/make_legacy_store.py

It starts a throw-away PostgreSQL server (horde_scanner.testing.pg) for the dump. The rows
are those `EXPECTED` (in the test) reads back.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import horde_scanner
from horde_scanner.store.sqlite import Store

OUT = Path(__file__).resolve().parent / "legacy"
A, B, C = "a" * 64, "b" * 64, "c" * 64


@dataclass(frozen=True)
class Entry:
    """An entry of a shared list, as the old store reads one (hashes and embeddings)."""

    signal: str = "sha256"
    value: str = B
    label: str = "csam"
    source: str = "upload"
    first_seen: float | None = 5.0
    note: str = "n"
    digest: str = "d" * 64
    blob: bytes = b"\x00\x01\x02\x03"


async def populate(store: Store, quarantine_dir: Path) -> None:
    from horde_scanner.media.hashing import PdqHash
    from horde_scanner.review.quarantine import Quarantine
    from horde_scanner.store.hashes import LOCAL
    from horde_scanner.store.sweeps import ScanFile
    from horde_scanner.verdict import Label, Verdict, VerdictRoute

    for i, label in enumerate((Label.CSAM, Label.CLEAN, Label.NSFW)):
        verdict = Verdict(label=label, reasons=[f"r{i}"], backend="horde", policy_version="p1")
        await store.put_verdict(f"{i:064x}", verdict, media_type="image/png", size=i, source="u")
    await store.put_verdict(
        C, Verdict(label=Label.CSAM, backend="hashlist", route=VerdictRoute.MATCH), source="s"
    )
    await store.set_list(A, "allow", note="fp", by="alice")
    await store.set_list(B, "deny", note="known", by="bob")
    await store.add_job(B, b"\x00\x01payload\xff", media_type="image/png", size=9, source="u")
    await store.record_late_positive(A, Label.CSAM, "recorded", {"why": "no key"})
    await store.audit("judged", sha256=A, label="csam", source="u", detail={"i": 1})
    await store.flush_audit()
    await store.save_pdq(A, [PdqHash("f" * 64, 100, 0)])
    await store.add_hash_entries(LOCAL, [Entry()])  # type: ignore[list-item]
    await store.flag_hash(B, "sub", "pdq", "f" * 64, 3, "upload")
    await store.record_hash_fetch(
        "sub", "http://127.0.0.1/x", status=200, error=None, etag="e", entries=1, skipped=0
    )
    await store.put_scan_files([ScanFile("local:/s", "f", 1, 2.0, "judged", A)])
    await store.start_scan_run("local:/s", "report", follow=False)
    await store.begin_scan_action(
        source="local:/s", identifier="f", sha256=A, size=1, mtime=2.0,
        action="quarantine", label="csam", reasons=["r"],
    )  # fmt: skip
    await Quarantine(store, quarantine_dir).admit_bytes(A, b"x", origin="u", identifier="i")
    await store.take_turn("subscription:sub", 60)
    await store.add_kudos_spent("2026-12-01", 12.5)
    await store.hold_horde_request("k" * 16, "req-1", 1.0e12)  # far future: never forgotten
    slot, _ = await store.take_submit(5, 60.0, 600.0)
    await store.finish_submit(slot)
    await store.want_provenance(A, "csam", aliases=["x.png"], seen_at=3.0)
    await store.add_lemmy_action(
        A, "remove_post", "post:1", {"id": 1}, state="done", status=200, answer={"ok": True},
        by="alice",
    )  # fmt: skip
    await store.save_embedding(A, "m1", b"\x01\x02\x03\x04")
    await store.add_embedding_entries(LOCAL, "m1", [Entry()], by="alice")  # type: ignore[list-item]


async def write_sqlite(path: Path) -> None:
    async with await Store.open(path) as store:
        await populate(store, path.parent / "quarantine-sqlite")
    for extra in (path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
        extra.unlink(missing_ok=True)


async def write_postgres(url: str) -> None:
    async with await Store.open(url) as store:
        await populate(store, OUT / "quarantine-pg")


def main() -> None:
    print(f"writing with {horde_scanner.__file__}", file=sys.stderr)
    OUT.mkdir(exist_ok=True)
    sqlite_file = OUT / "store-2fa284f.db"
    sqlite_file.unlink(missing_ok=True)
    asyncio.run(write_sqlite(sqlite_file))
    # A clean file (WAL checkpointed into it).
    import sqlite3

    with sqlite3.connect(sqlite_file) as db:
        db.execute("PRAGMA journal_mode=DELETE")
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    from horde_scanner.testing.pg import PgServer, find_bin

    server = PgServer().start()
    try:
        url = server.new_database()
        asyncio.run(write_postgres(url))
        database = url.rsplit("/", 1)[1]
        dump = subprocess.run(
            [find_bin("pg_dump"), "-h", "127.0.0.1", "-p", str(server.port), "-U", "postgres",
             "--no-owner", "--no-privileges", database],
            check=True, capture_output=True, text=True,
        ).stdout  # fmt: skip
        (OUT / "store-2fa284f.pg.sql").write_text(dump)
    finally:
        server.stop()
    for leftover in OUT.glob("quarantine-*"):
        subprocess.run(["rm", "-rf", str(leftover)], check=True)


if __name__ == "__main__":
    main()
