"""`horde-scanner store migrate --to postgresql://...` copies a SQLite store, counts checked."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

from horde_scanner.media.hashing import PdqHash
from horde_scanner.review.quarantine import Quarantine
from horde_scanner.signals.hash_list import HashEntry
from horde_scanner.store.hashes import LOCAL
from horde_scanner.store.sqlite import Store
from horde_scanner.store.sweeps import ScanFile
from horde_scanner.verdict import Label, Verdict

ROOT = Path(__file__).resolve().parents[2]
A, B = "a" * 64, "b" * 64


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HORDE_SCANNER_")}
    return subprocess.run(
        [sys.executable, "-m", "horde_scanner.cli", *args],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip


async def populate(path: Path, tmp_path: Path) -> None:
    async with await Store.open(path) as store:
        for i in range(30):
            label = Label.CSAM if i == 0 else Label.CLEAN
            v = Verdict(label=label, reasons=[f"r{i}"], backend="horde")
            await store.put_verdict(f"{i:064x}", v, media_type="image/png", size=i)
            await store.audit("judged", sha256=f"{i:064x}", label=label.value, detail={"i": i})
        await store.set_list(A, "allow", note="fp", by="alice")
        await store.set_list(B, "deny")
        await store.add_job(B, b"\x00\x01payload\xff", media_type="image/png", size=9, source="u")
        await store.record_late_positive(A, Label.CSAM, "recorded", {"why": "no key"})
        await store.save_pdq(A, [PdqHash("f" * 64, 100, 0)])
        await store.add_hash_entries(LOCAL, [HashEntry("sha256", B, first_seen=5.0)])
        await store.flag_hash(B, "sub", "pdq", "f" * 64, 3, "upload")
        await store.record_hash_fetch("sub", "http://127.0.0.1/x", status=200, error=None,
                                      etag="e", entries=1, skipped=0)  # fmt: skip
        await store.put_scan_files([ScanFile("local:/s", "f", 1, 2.0, "judged", A)])
        await store.start_scan_run("local:/s", "report", follow=False)
        await store.begin_scan_action(
            source="local:/s",
            identifier="f",
            sha256=A,
            size=1,
            mtime=2.0,
            action="quarantine",
            label="csam",
            reasons=["r"],
        )
        await Quarantine(store, tmp_path / "q").admit_bytes(A, b"x", origin="u", identifier="i")
        await store.take_turn("subscription:sub", 60)


async def table_counts(store: Store, tables: list[str]) -> dict[str, int]:
    out = {}
    for t in tables:
        rows = await store.db.execute_fetchall(f"SELECT COUNT(*) FROM {t}")
        out[t] = int(next(iter(rows))[0])
    return out


def test_migrate_copies_every_table(tmp_path: Path, pg_url: str) -> None:
    db = tmp_path / "store.db"
    asyncio.run(populate(db, tmp_path))
    done = cli("--db", str(db), "store", "migrate", "--to", pg_url, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    printed = {
        line.split()[0]: int(line.split()[1])
        for line in done.stdout.splitlines() if line.endswith(")") and "rows (source" in line
    }  # fmt: skip
    assert printed["verdicts"] == 30 and printed["audit"] == 31  # 30 judged + 1 quarantined
    assert "counts match" in done.stdout

    async def check() -> None:
        async with await Store.open(db) as src, await Store.open(pg_url) as dst:
            tables = list(printed)
            assert await table_counts(dst, tables) == await table_counts(src, tables) == printed
            for name in (
                "verdicts",
                "lists",
                "jobs",
                "late_positives",
                "hash_entries",
                "verdict_pdq",
                "hash_subscriptions",
                "hash_flags",
                "scan_files",
                "scan_runs",
                "scan_actions",
                "quarantine",
                "cluster_turns",
            ):
                assert printed[name] >= 1, name  # fmt: skip
            stored = await dst.get_verdict(f"{0:064x}")
            assert stored is not None and stored.verdict.label is Label.CSAM
            [job] = await dst.claim_jobs(5)
            assert job.payload == b"\x00\x01payload\xff"
            assert [r.detail for r in await dst.audit_trail(f"{3:064x}")] == [{"i": 3}]
            assert await dst.list_kind(A) == "allow"
            # New rows continue after the copied ids.
            item = await Quarantine(dst, tmp_path / "q").admit_bytes(
                B, b"y", origin="u", identifier="j"
            )
            assert item.id == 2

    asyncio.run(check())
    again = cli("--db", str(db), "store", "migrate", "--to", pg_url, cwd=tmp_path)
    assert again.returncode != 0
    assert "not empty" in again.stderr


def test_migrate_bad_input(tmp_path: Path, pg_server) -> None:
    missing = cli("--db", str(tmp_path / "none.db"), "store", "migrate", "--to",
                  pg_server.new_database(), cwd=tmp_path)  # fmt: skip
    assert missing.returncode != 0 and "no SQLite store" in missing.stderr
    bad = cli("--db", str(tmp_path / "x.db"), "store", "migrate", "--to", "mysql://x",
              cwd=tmp_path)  # fmt: skip
    assert bad.returncode != 0 and "postgresql://" in bad.stderr
    assert "Traceback" not in missing.stderr + bad.stderr


def test_cli_reaches_a_postgresql_store_and_names_a_bad_url(tmp_path: Path, pg_url: str) -> None:
    done = cli("--db", pg_url, "allow", A, "--note", "fp", cwd=tmp_path)
    assert done.returncode == 0, done.stderr

    async def kind() -> str | None:
        async with await Store.open(pg_url) as store:
            return await store.list_kind(A)

    assert asyncio.run(kind()) == "allow"
    bad = cli("--db", "mysql://127.0.0.1/x", "allow", A, cwd=tmp_path)
    assert bad.returncode != 0 and "--db" in bad.stderr and "postgresql://" in bad.stderr
    env_bad = subprocess.run(
        [sys.executable, "-m", "horde_scanner.cli", "allow", A],
        cwd=tmp_path, capture_output=True, text=True, timeout=60,
        env={**os.environ, "HORDE_SCANNER_STORE__URL": "mysql://x"},
    )  # fmt: skip
    assert env_bad.returncode != 0 and "store.url" in env_bad.stderr
    assert "Traceback" not in bad.stderr + env_bad.stderr
