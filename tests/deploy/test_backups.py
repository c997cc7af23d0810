"""The backup steps of docs/operations.md, as written: SQLite's online backup taken while the
service answers uploads, and pg_dump / pg_restore of a PostgreSQL store; each copy is read back
by horde-scanner itself."""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
from pathlib import Path

import aiohttp

from horde_scanner.backends.mock import MockBackend
from horde_scanner.media.hashing import sha256_hex
from horde_scanner.testing import images
from horde_scanner.testing.pg import find_bin
from horde_scanner.testing.pictrs import validate_upload
from horde_scanner.testing.service import make_settings, running_service

ROOT = Path(__file__).resolve().parents[2]
CLI = str(Path(sys.executable).parent / "horde-scanner")


def _documented(pattern: str) -> str:
    """The line of the operations page's backup section that matches `pattern`."""
    text = (ROOT / "docs" / "operations.md").read_text()
    section = text[text.index("## Backups of the store") :]
    return next(line for line in section.splitlines() if re.search(pattern, line))


def _listed(db: str, cwd: Path) -> set[str]:
    proc = subprocess.run(
        [CLI, "--db", db, "verdicts", "list", "--json"],
        cwd=cwd, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    return {row["sha256"] for row in json.loads(proc.stdout)}


async def test_sqlite_online_backup_while_the_service_answers(tmp_path: Path, http):
    line = _documented(r"python -c .*\.backup\(")
    one_liner = re.search(r'python -c "([^"]+)"', line)
    assert one_liner is not None
    db, backup = tmp_path / "horde-scanner.db", tmp_path / "backup.db"
    code = one_liner[1].replace("/data/horde-scanner.db", str(db))
    code = code.replace("/data/backup.db", str(backup))
    settings = make_settings(db, "http://127.0.0.1:9/api")
    uploads = [images.jpeg(c, seed=900 + i) for i, c in enumerate(["red", "green", "blue"])]
    async with running_service(settings, backend=MockBackend()) as svc:
        for data in uploads:
            assert (await validate_upload(http, svc.scan_url(), data, "image/jpeg")).status
        # Uploads keep arriving while the backup is taken.
        more = [images.jpeg("green", seed=950 + i) for i in range(10)]

        async def keep_uploading() -> None:
            for data in more:
                await validate_upload(http, svc.scan_url(), data, "image/jpeg")

        uploading = asyncio.create_task(keep_uploading())
        proc = await asyncio.create_subprocess_exec(sys.executable, "-c", code)
        assert await proc.wait() == 0
        await uploading
    # The backup holds every verdict written before it began, read by horde-scanner itself.
    assert {sha256_hex(d) for d in uploads} <= _listed(str(backup), tmp_path)
    check = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-c", f"import sqlite3; print(sqlite3.connect('{backup}')"
         ".execute('PRAGMA integrity_check').fetchone()[0])"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert check.stdout.strip() == "ok"


async def test_pg_dump_and_restore_of_a_postgresql_store(
    pg_server, pg_url: str, tmp_path: Path, http: aiohttp.ClientSession
):
    dump_line = _documented(r"pg_dump ")
    restore_line = _documented(r"pg_restore ")
    assert "exec -T" in dump_line and "-Fc" in dump_line  # a binary dump through a pipe
    assert "exec -T" in restore_line and "--no-owner" in restore_line
    settings = make_settings(
        tmp_path / "unused.db", "http://127.0.0.1:9/api", store={"url": pg_url}
    )
    uploads = [images.jpeg(c, seed=980 + i) for i, c in enumerate(["red", "green"])]
    database = pg_url.rsplit("/", 1)[1]
    dump = tmp_path / "scanner.dump"
    conn = ["-h", "127.0.0.1", "-p", str(pg_server.port), "-U", "postgres"]
    async with running_service(settings, backend=MockBackend()) as svc:
        for data in uploads:
            assert (await validate_upload(http, svc.scan_url(), data, "image/jpeg")).status
        # Taken while the service runs, as the page says.
        dump_cmd = [find_bin("pg_dump"), *conn, "-Fc", database, "-f", str(dump)]
        await asyncio.to_thread(subprocess.run, dump_cmd, check=True, capture_output=True)
    restored = pg_server.new_database()
    restore_cmd = [find_bin("pg_restore"), *conn, "-d", restored.rsplit("/", 1)[1], "--no-owner",
                   str(dump)]  # fmt: skip
    await asyncio.to_thread(subprocess.run, restore_cmd, check=True, capture_output=True)
    assert {sha256_hex(d) for d in uploads} <= _listed(restored, tmp_path)
