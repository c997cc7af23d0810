"""The compose override's PostgreSQL variant: SCANNER_DATABASE_URL points the scanner at a
database in Lemmy's PostgreSQL (role and database made by the one-liner in docs/scaling.md)."""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
from pathlib import Path

from horde_scanner.media.hashing import sha256_hex
from horde_scanner.store.sqlite import Store
from horde_scanner.testing import images
from horde_scanner.testing.net import free_port
from horde_scanner.testing.pg import find_bin
from tests.deploy.test_compose_override import LEMMY, OVERRIDE, VARS, load, merge
from tests.proc import serving

ROOT = Path(__file__).resolve().parents[2]


def _one_liner_sql() -> list[str]:
    """The two statements of the documented one-liner (the scaling page and the override agree)."""
    page = (ROOT / "docs" / "scaling.md").read_text()
    line = next(ln for ln in page.splitlines() if "CREATE ROLE scanner" in ln)
    assert line.strip() in OVERRIDE.read_text()
    return re.findall(r'-c "([^"]+)"', line)


def test_the_database_url_variant_runs_on_lemmys_postgresql(pg_server, readme_role, tmp_path: Path):
    sql = _one_liner_sql()
    assert len(sql) == 2
    psql = [find_bin("psql"), "-h", "127.0.0.1", "-p", str(pg_server.port), "-U", "postgres"]
    subprocess.run([*psql, "-v", "ON_ERROR_STOP=1", *(a for s in sql for a in ("-c", s))],
                   check=True, capture_output=True)  # fmt: skip
    url = "postgresql://scanner:change-me@postgres:5432/scanner"
    merged = merge(load(LEMMY, VARS), load(OVERRIDE, {**VARS, "SCANNER_DATABASE_URL": url}))
    scanner_env = merged["services"]["horde-scanner"]["environment"]
    assert scanner_env["HORDE_SCANNER_STORE__URL"] == url
    # The container reaches `postgres:5432`; this machine reaches the test server.
    here = url.replace("@postgres:5432", f"@127.0.0.1:{pg_server.port}")
    port = free_port()
    env = {
        "PATH": str(Path(sys.executable).parent),
        **{k: v or "" for k, v in scanner_env.items()},
        "HORDE_SCANNER_STORE__URL": here,
        "HORDE_SCANNER_SERVER__HOST": "127.0.0.1",
        "HORDE_SCANNER_SERVER__PORT": str(port),
        "HORDE_SCANNER_HORDE__URL": f"http://127.0.0.1:{free_port()}/api",
        "HORDE_SCANNER_PICTRS__URL": f"http://127.0.0.1:{free_port()}",
        "HORDE_SCANNER_VALIDATION__DEADLINE_S": "1",
    }
    data = images.jpeg("green", seed=9100)
    with serving(env, port, cwd=tmp_path):
        import urllib.request

        scan = merged["services"]["pictrs"]["environment"]["PICTRS__MEDIA__EXTERNAL_VALIDATION"]
        scan = scan.replace("http://horde-scanner:14051", f"http://127.0.0.1:{port}")
        request = urllib.request.Request(scan, data=data, method="POST",
                                         headers={"Content-Type": "image/jpeg"})  # fmt: skip
        with urllib.request.urlopen(request, timeout=20) as resp:
            assert resp.status == 200  # no Horde here: on_timeout accept

    async def trail() -> list[str]:
        async with await Store.open(here) as store:
            return [a.event for a in await store.audit_trail(sha256_hex(data))]

    assert "answered" in asyncio.run(trail())  # the upload's record is in PostgreSQL
    assert not (tmp_path / "horde-scanner.db").exists()


def test_without_the_variable_the_store_stays_sqlite():
    merged = merge(load(LEMMY, VARS), load(OVERRIDE, VARS))
    env = merged["services"]["horde-scanner"]["environment"]
    assert env["HORDE_SCANNER_STORE__URL"] == ""
    from horde_scanner.config import StoreSettings

    assert StoreSettings(url=env["HORDE_SCANNER_STORE__URL"]).target.startswith("sqlite:///")
