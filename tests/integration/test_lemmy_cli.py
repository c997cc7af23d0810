"""The command line's Lemmy parts: `lemmy check|provenance|act|retry|actions`,
`evidence --for-instance`, `access-log`, as an admin runs them."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
import pytest

from horde_scanner.backends.mock import MockBackend
from horde_scanner.media.hashing import sha256_hex
from horde_scanner.store.sqlite import Store
from horde_scanner.testing import images
from horde_scanner.testing import lemmy_db as L
from horde_scanner.testing.pictrs import validate_upload
from horde_scanner.testing.service import running_service
from horde_scanner.verdict import Label, Verdict
from tests.admin_helpers import admin_settings
from tests.integration.test_lemmy_actions import IMAGE, SHA, fake_lemmy
from tests.scan_helpers import cli

UNUSED_HORDE = "http://127.0.0.1:9/api"


def _env(db: Path, **lemmy: str) -> dict[str, str]:
    env = {"HORDE_SCANNER_STORE__PATH": str(db), "HORDE_SCANNER_HORDE__URL": UNUSED_HORDE}
    env.update({f"HORDE_SCANNER_LEMMY__{k.upper()}": v for k, v in lemmy.items()})
    return env


async def test_check_provenance_act_retry_and_the_record_for_an_instance(
    tmp_path: Path, pg_url, pg_server
):
    await L.create_lemmy(pg_url, "0.19.4")
    ro_url = await L.readonly_role_url(pg_url, pg_server.port)
    db = tmp_path / "s.db"
    store = await Store.open(db)
    await store.put_verdict(SHA, Verdict(label=Label.CSAM), source="sweep:local:/x")
    await store.record_late_positive(SHA, Label.CSAM, "purged", {"aliases": [L.UPLOAD_ALIAS]})
    await store.close()
    password = tmp_path / "pw"
    password.write_text("admin-password\n")
    async with fake_lemmy("0.19") as lemmy:
        lemmy.comments.discard(1)
        env = _env(
            db,
            database_url=ro_url,
            url=lemmy.url,
            username="admin",
            password_file=str(password),
        )
        out = await cli(["lemmy", "check"], env)
        assert out.exit_code == 0, out.output
        assert "Lemmy 0.19.4+ database" in out.output and "own host lemmy.local" in out.output
        assert "logged in as admin" in out.output
        assert "pw-ro_" not in out.output and "admin-password" not in out.output
        assert [c.path for c in lemmy.calls] == ["/api/v3/user/login"]
        lemmy.calls.clear()

        out = await cli(["lemmy", "provenance", SHA[:10], "--now"], env)
        assert out.exit_code == 0, out.output
        assert "uploaded by bob (https://lemmy.local/u/bob, local)" in out.output
        assert "used as comment 1 https://remote.example/comment/9" in out.output
        assert "origin instances: lemmy.local, remote.example" in out.output

        out = await cli(["lemmy", "act", SHA, "--action", "ban", "--action", "purge"], env)
        assert out.exit_code == 0, out.output
        assert "would call:" in out.output and "POST /api/v3/user/ban" in out.output
        assert lemmy.calls == []
        out = await cli(
            ["lemmy", "act", SHA, "--action", "ban", "--action", "purge", "--yes", "--by", "al"],
            env,
        )
        assert out.exit_code == 1, out.output  # one call refused
        assert "-> failed 404" in out.output and "-> done 200" in out.output
        assert [p for _, p, _ in lemmy.sent()] == [
            "/api/v3/user/ban",
            "/api/v3/admin/purge/post",
            "/api/v3/admin/purge/comment",
        ]
        with sqlite3.connect(db) as conn:
            (failed,) = conn.execute("SELECT id FROM lemmy_actions WHERE state='failed'").fetchone()
        lemmy.comments.add(1)
        out = await cli(["lemmy", "retry", str(failed)], env)
        assert out.exit_code == 0 and "done 200" in out.output, out.output
        out = await cli(["lemmy", "actions", SHA], env)
        assert out.output.count("-> done") == 3 and "cli:al" in out.output

        out = await cli(["evidence", "--for-instance", "remote.example"], env)
        assert out.exit_code == 0, out.output
        record = json.loads(out.output)
        (image,) = record["images"]
        assert image["sha256"] == SHA
        urls = {u.get("url") for u in image["used_in"]} | {
            u.get("actor_url") for u in image["used_in"]
        }
        assert "https://remote.example/comment/9" in urls
        assert "https://remote.example/u/mallory" in urls
        assert {d["action"] for d in image["done_here"]} >= {
            "ban_person",
            "purge_post",
            "purge_comment",
            "purged_from_storage",
        }
        # Nothing of anyone on other instances, nor any text or image.
        text = out.output
        assert "bob" not in text and "carol" not in text and "hi ![x]" not in text
        assert "RIFF" not in text and IMAGE.hex()[:40] not in text
        out = await cli(["evidence", "--for-instance", "nowhere.example"], env)
        assert json.loads(out.output)["images"] == []


async def test_check_names_a_missing_grant(tmp_path: Path, pg_url, pg_server):
    await L.create_lemmy(pg_url, "1.0")
    ro_url = await L.readonly_role_url(
        pg_url, pg_server.port, revoke="REVOKE SELECT ON private_message FROM ROLE"
    )
    out = await cli(["lemmy", "check"], _env(tmp_path / "s.db", database_url=ro_url))
    assert out.exit_code == 4  # failed for good: a grant is missing
    assert "no SELECT on table private_message" in out.output
    out = await cli(["lemmy", "check"], _env(tmp_path / "s.db"))
    assert out.exit_code == 1 and "lemmy.database_url is not set" in out.output


async def test_access_log_lists_candidates_for_a_rejected_upload(tmp_path: Path, http):
    red = images.jpeg("red", seed=91)
    sha = sha256_hex(red)
    settings = admin_settings(tmp_path)
    async with running_service(settings, backend=MockBackend()) as svc:
        sent = time.time()
        answer = await validate_upload(http, svc.scan_url(), red, "image/jpeg")
        assert answer.status == 406
    stamp = datetime.fromtimestamp(int(sent) + 1, UTC).strftime("%d/%b/%Y:%H:%M:%S +0000")
    old = datetime.fromtimestamp(int(sent) - 3600, UTC).strftime("%d/%b/%Y:%H:%M:%S +0000")
    log = tmp_path / "access.log"
    log.write_text(
        f'203.0.113.7 - - [{stamp}] "POST /pictrs/image HTTP/1.1" 400 71 "-" '
        f'"Mozilla/5.0 (uploader)"\n'
        f'198.51.100.2 - - [{stamp}] "GET /pictrs/image/x.webp HTTP/1.1" 200 5 "-" "reader"\n'
        f'192.0.2.9 - - [{old}] "POST /api/v4/image HTTP/1.1" 200 80 "-" "an hour ago"\n'
        "this is not a log line\n"
    )
    env = {
        "HORDE_SCANNER_STORE__PATH": str(tmp_path / "s.db"),
        "HORDE_SCANNER_HORDE__URL": UNUSED_HORDE,
    }
    out = await cli(["access-log", str(log)], env)
    assert out.exit_code == 0, out.output
    assert f"rejected {sha}" in out.output
    assert "candidate 203.0.113.7" in out.output and "Mozilla/5.0 (uploader)" in out.output
    assert "198.51.100.2" not in out.output and "192.0.2.9" not in out.output
    out = await cli(["access-log", str(log), "--json"], env)
    (found,) = json.loads(out.output)
    assert found["sha256"] == sha and found["client"] is not None
    assert len(found["pdq"]) == 1 and len(found["pdq"][0]) == 64  # the hashes known of it
    assert [c["address"] for c in found["candidates"]] == ["203.0.113.7"]
    assert found["candidates"][0]["status"] == 400
    out = await cli(["access-log", str(tmp_path / "missing.log")], env)
    assert out.exit_code == 2 and "does not exist" in out.output


async def test_the_documented_role_steps_make_a_role_that_reads_no_secrets(
    tmp_path: Path, pg_server
):
    """docs/moderation.md: `horde-scanner lemmy role-sql > lemmy-readonly-role.sql`, then
    `psql -U lemmy -d lemmy -v pw='...' -f lemmy-readonly-role.sql` as Lemmy's owner."""
    import subprocess

    from horde_scanner.testing.pg import find_bin

    # The postgres image makes POSTGRES_USER (lemmy-ansible: lemmy) its superuser.
    pg_server.psql("CREATE ROLE lemmy LOGIN SUPERUSER")
    pg_server.psql("CREATE DATABASE lemmy OWNER lemmy")
    try:
        owner_url = f"postgresql://lemmy@127.0.0.1:{pg_server.port}/lemmy"
        await L.create_lemmy(owner_url, "1.0")
        env = _env(tmp_path / "s.db")
        out = await cli(["lemmy", "role-sql"], env)
        script = tmp_path / "lemmy-readonly-role.sql"
        script.write_text(out.output)
        done = await asyncio.to_thread(
            subprocess.run,
            [find_bin("psql"), "-h", "127.0.0.1", "-p", str(pg_server.port), "-U", "lemmy",
             "-d", "lemmy", "-v", "ON_ERROR_STOP=1", "-v", "pw=a long random password",
             "-f", str(script)],
            capture_output=True, text=True,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        ro_url = (
            "postgresql://horde_scanner_ro:a%20long%20random%20password"
            f"@127.0.0.1:{pg_server.port}/lemmy"
        )
        out = await cli(["lemmy", "check"], _env(tmp_path / "s.db", database_url=ro_url))
        assert out.exit_code == 0, out.output
        assert "Lemmy 1.0 database" in out.output and "random" not in out.output
        conn = await asyncpg.connect(ro_url)
        try:
            for secret in ("password_encrypted", "email", "totp_2fa_secret"):
                with pytest.raises(asyncpg.InsufficientPrivilegeError):
                    await conn.fetch(f"SELECT {secret} FROM local_user")
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await conn.fetch("SELECT private_key FROM person")
        finally:
            await conn.close()
    finally:
        pg_server.psql("DROP DATABASE IF EXISTS lemmy WITH (FORCE)")
        pg_server.psql("DROP ROLE IF EXISTS horde_scanner_ro")
        pg_server.psql("DROP ROLE IF EXISTS lemmy")


def test_the_docs_show_the_role_sql_that_runs():
    from importlib import resources

    text = resources.files("horde_scanner.data").joinpath("lemmy_readonly_role.sql").read_text()
    page = (Path(__file__).resolve().parents[2] / "docs" / "moderation.md").read_text()
    assert f"```sql\n{text}```" in page
