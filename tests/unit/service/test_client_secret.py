"""The client id in pict-rs's URL is the whole credential: uploads are recorded under the
client's name (server.clients) or a short non-reversible tag (server.client_ids), and the
secret is in none of the store file, the audit log, the admin API and page, or the exports."""

from __future__ import annotations

import asyncio
import hashlib
import json
from pathlib import Path

import aiohttp
from click.testing import CliRunner

from horde_scanner.backends.mock import MockBackend
from horde_scanner.cli import main
from horde_scanner.media.hashing import sha256_hex
from horde_scanner.store.sqlite import Store
from horde_scanner.testing import images
from horde_scanner.testing.pictrs import validate_upload
from horde_scanner.testing.service import running_service
from horde_scanner.verdict import Label, Verdict
from tests.admin_helpers import TOKEN, admin_settings, call

NAMED = "named-secret-Zq81xPq0vLw3"
UNNAMED = "unnamed-secret-Hh27sWq9Kd1"
API = "/api/v1/admin"


async def test_client_secrets_are_never_recorded(tmp_path: Path, http):
    settings = admin_settings(
        tmp_path, server={"clients": {"lemmy": NAMED}, "client_ids": [UNNAMED]}
    )
    tag = "id-" + hashlib.sha256(UNNAMED.encode()).hexdigest()[:8]
    red, magenta = images.jpeg("red", seed=90), images.jpeg("red", seed=91)
    async with running_service(settings, backend=MockBackend()) as svc:
        named = await validate_upload(http, f"{svc.url}/api/v1/scan/{NAMED}", red, "image/jpeg")
        unnamed = await validate_upload(
            http, f"{svc.url}/api/v1/scan/{UNNAMED}", magenta, "image/jpeg"
        )
        assert named.status == 406 and unnamed.status == 406
        wrong = await validate_upload(http, f"{svc.url}/api/v1/scan/guess", red, "image/jpeg")
        assert wrong.status == 401

        seen: list[str] = []
        for path in ("/verdicts", "/queue", "/stats", "/export?format=json", "/export?format=csv"):
            status, body = await call(http, "GET", f"{svc.url}{API}{path}")
            assert status == 200, path
            seen.append(body if isinstance(body, str) else json.dumps(body))
        for sha in (sha256_hex(red), sha256_hex(magenta)):
            status, body = await call(http, "GET", f"{svc.url}{API}/verdicts/{sha}")
            assert status == 200
            seen.append(json.dumps(body))
        jar = aiohttp.CookieJar(unsafe=True)
        async with aiohttp.ClientSession(cookie_jar=jar) as browser:
            async with browser.post(
                f"{svc.url}/admin/login", data={"token": TOKEN, "next": "/admin"}
            ) as resp:
                assert resp.status == 200
                queue_page = await resp.text()
                seen.append(queue_page)
            # No pict-rs API configured: the page says what that means for late positives.
            assert "late positives stay served until a storage sweep" in queue_page
            async with browser.get(f"{svc.url}/admin/item/{sha256_hex(red)}") as resp:
                assert resp.status == 200
                seen.append(await resp.text())
        await svc.parts.store.flush_audit()

    everything = "\n".join(seen)
    assert "upload:lemmy" in everything and f"upload:{tag}" in everything
    export = await asyncio.to_thread(
        CliRunner().invoke,
        main,
        ["--db", str(settings.store.path), "verdicts", "export", "--format", "csv"],
    )
    assert export.exit_code == 0 and "upload:lemmy" in export.output
    store_bytes = _store_bytes(tmp_path)
    assert b"upload:lemmy" in store_bytes
    for secret in (NAMED, UNNAMED):
        assert secret not in everything
        assert secret not in export.output
        assert secret.encode() not in store_bytes


def _store_bytes(folder: Path) -> bytes:
    """The SQLite file and its WAL, as bytes."""
    return b"".join(p.read_bytes() for p in sorted(folder.glob("s.db*")))


async def test_rows_an_older_release_wrote_with_the_secret_name_the_client_after_a_start(
    tmp_path: Path, http
):
    """Releases before clients were recorded by name wrote `upload:<secret>`: the service
    rewrites those rows at start-up, so the admin export and page show the name instead."""
    settings = admin_settings(
        tmp_path, server={"clients": {"lemmy": NAMED}, "client_ids": [UNNAMED]}
    )
    tag = "id-" + hashlib.sha256(UNNAMED.encode()).hexdigest()[:8]
    old, other = "a" * 64, "b" * 64
    async with await Store.open(settings.store.path) as store:  # as an older release left it
        await store.put_verdict(
            old, Verdict(label=Label.NSFW, backend="horde"), source=f"upload:{NAMED}"
        )
        await store.audit("answered", sha256=old, source=f"upload:{NAMED}")
        await store.audit("answered", sha256=other, source=f"upload:{UNNAMED}")
        await store.add_job(other, b"x", media_type=None, size=None, source=f"upload:{UNNAMED}")
        await store.audit("answered", sha256=other, source="upload:IPADDR")  # not a secret
    async with running_service(settings, backend=MockBackend()) as svc:
        store = svc.parts.store
        await store.flush_audit()
        sources = {
            str(row[0])
            for table in ("audit", "verdicts", "jobs")
            for row in await store.db.execute_fetchall(f"SELECT source FROM {table}")
        }
        assert {"upload:lemmy", f"upload:{tag}", "upload:IPADDR"} <= sources
        status, export = await call(http, "GET", f"{svc.url}{API}/export?format=json")
        assert status == 200
    text = json.dumps(export) + "\n".join(sources)
    assert "upload:lemmy" in text
    for secret in (NAMED, UNNAMED):
        assert secret not in text
