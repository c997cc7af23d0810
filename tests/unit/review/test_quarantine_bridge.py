"""The admin's decisions reach what a storage sweep quarantined: a local sweep quarantines a
red positive, then the admin API (allow / confirm) and the /admin page (preview) act on it,
over loopback against the real service and the real SQLite store."""

from __future__ import annotations

import io
import re
import sqlite3
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from PIL import Image

from horde_scanner.backends.mock import MockBackend
from horde_scanner.config import Settings
from horde_scanner.media.hashing import sha256_hex
from horde_scanner.runtime.sweeps import run_scan
from horde_scanner.sweep.actions import Action
from horde_scanner.testing import images
from horde_scanner.testing.pictrs import validate_upload
from horde_scanner.testing.service import running_service
from tests.admin_helpers import TOKEN, admin_settings, call

API = "/api/v1/admin"


@pytest.fixture
async def http():
    async with aiohttp.ClientSession() as session:
        yield session


async def _swept(
    tmp_path: Path, red: bytes | None = None, **admin: Any
) -> tuple[Settings, Path, bytes, str, Path]:
    """A pict-rs-like tree with one red positive and one clean file, swept with quarantine."""
    settings = admin_settings(
        tmp_path, admin=admin, scan={"quarantine_path": tmp_path / "sweep-q", "concurrency": 2}
    )
    files = tmp_path / "pictrs" / "files"
    red = red or images.jpeg("red", size=(300, 200), seed=70)
    original = files / "ab" / "cd" / "red.jpg"
    original.parent.mkdir(parents=True)
    original.write_bytes(red)
    (files / "blue.jpg").write_bytes(images.jpeg("blue", seed=71))
    report = await run_scan(settings, str(files), action=Action.QUARANTINE, backend=MockBackend())
    assert report.counts.acted == 1 and not original.exists()
    (held,) = (tmp_path / "sweep-q").iterdir()
    assert held.read_bytes() == red
    return settings, original, red, sha256_hex(red), held


def _actions(db: Path, sha: str) -> list[tuple[Any, ...]]:
    with sqlite3.connect(db) as conn:
        return conn.execute(
            "SELECT action, state, location, detail FROM scan_actions WHERE sha256=?", (sha,)
        ).fetchall()


async def test_admin_allow_restores_a_sweep_quarantined_file_and_allow_lists_it(
    tmp_path: Path, http
):
    settings, original, red, sha, held = await _swept(tmp_path)
    async with running_service(settings, backend=MockBackend()) as svc:
        assert (await validate_upload(http, svc.scan_url(), red, "image/jpeg")).status == 406

        # The item view lists the sweep's copy, and the queue shows it as held.
        status, shown = await call(http, "GET", f"{svc.url}{API}/verdicts/{sha}")
        assert status == 200 and shown["in_quarantine"] is True
        (copy,) = shown["quarantine"]
        assert copy["holder"] == "sweep" and copy["origin"] == "local"
        assert copy["state"] == "held" and copy["location"] == str(held)
        assert copy["identifier"].endswith("/ab/cd/red.jpg")
        status, queue = await call(http, "GET", f"{svc.url}{API}/queue")
        assert status == 200, queue
        assert any(p["sha256"] == sha and p["in_quarantine"] for p in queue["positives"])

        status, body = await call(http, "POST", f"{svc.url}{API}/verdicts/{sha}/allow",
                                  json={"note": "a red square", "by": "alice"})  # fmt: skip
        assert status == 200, body
        quarantine = body["audit"]["detail"]["quarantine"]
        assert quarantine["failed"] == []
        assert [r["holder"] for r in quarantine["released"]] == ["sweep"]
        assert body["list"] == "allow"

        # Back at its original path, out of the sweep quarantine, recorded like the CLI does.
        assert original.read_bytes() == red and not held.exists()
        ((action, state, location, _),) = _actions(settings.store.path, sha)
        assert (action, state, location) == ("quarantine", "released", str(held))
        trail = await svc.parts.store.audit_trail(sha)
        released = [a for a in trail if a.event == "released"]
        assert len(released) == 1 and released[0].detail["by"] == "api:alice"
        assert released[0].detail["from"] == str(held)

        again = await validate_upload(http, svc.scan_url(), red, "image/jpeg")
        assert again.status == 200 and again.body["route"] == "allow"
        status, shown = await call(http, "GET", f"{svc.url}{API}/verdicts/{sha}")
        assert [q["state"] for q in shown["quarantine"]] == ["released"]
        assert shown["in_quarantine"] is False


async def test_admin_confirm_keeps_the_sweep_copy_as_evidence_and_records_it(tmp_path: Path, http):
    settings, original, red, sha, held = await _swept(tmp_path)
    async with running_service(settings, backend=MockBackend()) as svc:
        status, body = await call(http, "POST", f"{svc.url}{API}/verdicts/{sha}/confirm",
                                  json={"note": "reported", "by": "bob"})  # fmt: skip
        assert status == 200, body
        detail = body["audit"]["detail"]
        assert detail["quarantine_deleted"] == 0
        assert [k["holder"] for k in detail["quarantine_kept"]] == ["sweep"]
        assert body["list"] == "deny"
        assert held.read_bytes() == red and not original.exists()
        ((_, state, _, row_detail),) = _actions(settings.store.path, sha)
        assert state == "done" and '"decided_by": "api:bob"' in row_detail
        trail = await svc.parts.store.audit_trail(sha)
        assert any(a.event == "quarantine_kept" and a.detail["by"] == "api:bob" for a in trail)


async def test_page_preview_of_a_local_sweep_quarantined_file(tmp_path: Path):
    settings, _, red, sha, held = await _swept(tmp_path, previews=True)
    jar = aiohttp.CookieJar(unsafe=True)  # the session cookie is for 127.0.0.1
    async with (
        running_service(settings, backend=MockBackend()) as svc,
        aiohttp.ClientSession(cookie_jar=jar) as page,
    ):
        async with page.post(f"{svc.url}/admin/login",
                             data={"token": TOKEN, "name": "carol"}) as resp:  # fmt: skip
            assert resp.status == 200 and resp.url.path == "/admin"
            html = await resp.text()
        # Off until the admin turns previews on for this session.
        async with page.get(f"{svc.url}/admin/preview/{sha}") as resp:
            assert resp.status == 403 and (await resp.json())["error"] == "previews_off"
        match = re.search(r'name="csrf" value="([^"]+)"', html)
        assert match
        async with page.post(f"{svc.url}/admin/previews",
                             data={"csrf": match.group(1), "on": "1"}) as resp:  # fmt: skip
            assert resp.status == 200
            queue = await resp.text()
        assert f'href="/admin/preview/{sha}"' in queue  # the per-item reveal link

        async with page.get(f"{svc.url}/admin/preview/{sha}") as resp:
            assert resp.status == 200 and resp.content_type == "image/jpeg"
            body = await resp.read()
        preview = Image.open(io.BytesIO(body))
        assert preview.mode == "L" and max(preview.size) <= settings.admin.preview_max_side
        assert body != red

        # The bytes must still be that image: a swapped file is not shown.
        held.write_bytes(images.jpeg("blue", seed=72))
        async with page.get(f"{svc.url}/admin/preview/{sha}") as resp:
            assert resp.status == 404
            assert (await resp.json())["error"] == "not_in_quarantine"


async def test_page_preview_decodes_with_every_media_limit(tmp_path: Path):
    """The preview decodes a held file under all of [media]'s limits, not just two: an
    animation with more frames than media.max_frame_count is refused, as a sweep would."""
    from tests import media_files as mf

    gif = mf.animation(mf.frames("red", count=6))
    settings, _, _, sha, _ = await _swept(tmp_path, gif, previews=True)
    strict = settings.model_copy(
        update={"media": settings.media.model_copy(update={"max_frame_count": 3})}
    )
    for config, status in ((settings, 200), (strict, 422)):
        jar = aiohttp.CookieJar(unsafe=True)
        async with (
            running_service(config, backend=MockBackend()) as svc,
            aiohttp.ClientSession(cookie_jar=jar) as page,
        ):
            async with page.post(f"{svc.url}/admin/login",
                                 data={"token": TOKEN, "name": "carol"}) as resp:  # fmt: skip
                html = await resp.text()
            match = re.search(r'name="csrf" value="([^"]+)"', html)
            assert match
            async with page.post(f"{svc.url}/admin/previews",
                                 data={"csrf": match.group(1), "on": "1"}) as resp:  # fmt: skip
                assert resp.status == 200
            async with page.get(f"{svc.url}/admin/preview/{sha}") as resp:
                assert resp.status == status
                if status == 422:
                    body = await resp.json()
                    assert body["error"] == "unreadable"
                    assert "6 frames exceed the limit of 3" in body["detail"]
