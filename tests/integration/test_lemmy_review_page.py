"""End to end, in a real headless Chromium: a sweep positive and a late positive show who
uploaded them, where Lemmy uses them and which instance they came from, on each Lemmy schema;
"ban and purge" from the review page makes the fake Lemmy receive exactly the expected calls; a
refused call is shown and retried. The export carries the same record, never the image."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from horde_scanner.backends.mock import MockBackend
from horde_scanner.media.hashing import sha256_hex
from horde_scanner.runtime.sweeps import run_scan
from horde_scanner.testing import images
from horde_scanner.testing import lemmy_db as L
from horde_scanner.testing.pictrs import DEFAULT_API_KEY, FakePictrs, validate_upload
from horde_scanner.testing.service import running_service, wait_for
from tests.admin_helpers import admin_settings, call, webhook_sink
from tests.integration.test_admin_page import CHROMIUM, _log_in, browser  # noqa: F401 - the fixture
from tests.integration.test_lemmy_actions import REASON, expected_ban_and_purge, fake_lemmy

pytestmark = pytest.mark.skipif(
    shutil.which(CHROMIUM) is None, reason="chromium is not installed (.ci/system-deps)"
)

API_OF = {"0.19.3": "0.19", "0.19.4": "0.19", "1.0": "1.0"}


@pytest.mark.parametrize("version", ["0.19.3", "0.19.4", "1.0"])
async def test_positives_show_who_and_where_and_ban_and_purge_from_the_page(
    tmp_path: Path,
    pg_url,
    browser,  # noqa: F811 - pytest fixture
    http,
    version,
):
    await L.create_lemmy(pg_url, version)
    swept = images.jpeg("red", seed=71)  # bob's upload, found by a storage sweep
    late = images.jpeg("red", seed=72)  # the federated post's thumbnail, judged late
    sweep_sha, late_sha = sha256_hex(swept), sha256_hex(late)
    pictrs = FakePictrs()
    await pictrs.start()
    pictrs.add_image(swept, "jpeg", alias=L.UPLOAD_ALIAS)
    pictrs.add_image(late, "jpeg", alias=L.THUMB_ALIAS)
    root = tmp_path / "files"
    root.mkdir()
    (root / "upload.jpg").write_bytes(swept)
    try:
        async with fake_lemmy(API_OF[version]) as lemmy, webhook_sink() as hook:
            lemmy.comments.discard(1)  # Lemmy will refuse the comment's purge (unknown id)
            settings = admin_settings(
                tmp_path,
                validation={"deadline_s": 0.5},
                pictrs={"url": pictrs.url, "api_key": DEFAULT_API_KEY},
                notify={"webhook_url": hook.url},
                lemmy={
                    "database_url": pg_url,
                    "url": lemmy.url,
                    "username": "admin",
                    "password": "admin-password",
                },
            )
            async with running_service(settings, backend=MockBackend(delay_s=1.5)) as svc:
                store = svc.parts.store
                # A late positive: accepted at the deadline, judged csam after, purged.
                answer = await validate_upload(http, svc.scan_url(), late, "image/jpeg")
                assert answer.status == 200
                # A sweep positive, found by a real sweep of the storage directory.
                report = await run_scan(settings, str(root), backend=MockBackend())
                assert report.counts.csam == 1

                async def both_resolved() -> bool:
                    rows = [await store.provenance(s) for s in (sweep_sha, late_sha)]
                    return all(r is not None and r.state == "resolved" for r in rows)

                await wait_for(both_resolved, timeout=20)
                assert L.THUMB_ALIAS in pictrs.purged_aliases

                ctx = await browser.new_context()
                page = await ctx.new_page()
                await _log_in(page, svc.url)
                # The queue says who and where on each card.
                card = await page.locator(f"#item-{sweep_sha}").first.inner_text()
                assert "bob; used in 5 places; origin lemmy.local, remote.example" in card
                card = await page.locator(f"#late #item-{late_sha}").inner_text()
                assert "thumbnail of post 3; used in 1 places; origin remote.example" in card
                # The sweep positive: bob's upload and everywhere it is used.
                await page.goto(f"{svc.url}/admin/item/{sweep_sha}")
                uploader = await page.inner_text("#uploader")
                assert "bob" in uploader and "https://lemmy.local/u/bob" in uploader
                usages = await page.inner_text("#usages")
                for shown in (
                    "post_url",
                    "comment",
                    "private_message",
                    "person_avatar",
                    "community_banner",
                    "https://remote.example/comment/9",
                    "mallory",
                ):
                    assert shown in usages, shown
                assert await page.inner_text("#origins") == "lemmy.local, remote.example"
                # The late positive: a thumbnail Lemmy generated for a federated post.
                await page.goto(f"{svc.url}/admin/item/{late_sha}")
                uploader = await page.inner_text("#uploader")
                assert "generated thumbnail of post 3" in uploader
                assert ("not recorded" in uploader) is (version == "0.19.3")
                assert "https://remote.example/post/77" in await page.inner_text("#usages")
                assert await page.inner_text("#origins") == "remote.example"

                # Ban and purge, from the page: a dry run first (nothing is called) ...
                await page.goto(f"{svc.url}/admin/item/{sweep_sha}")
                await page.check("input[name=action][value=ban]")
                await page.check("input[name=action][value=purge]")
                await page.click("#lemmy-dry-run")
                listed = await page.inner_text("#dry-run-calls")
                for _, path, _ in expected_ban_and_purge(API_OF[version]):
                    assert path in listed
                assert lemmy.calls == []
                # ... then the calls, confirmed.
                page.once("dialog", lambda d: d.accept())
                await page.click("#lemmy-act-confirmed")
                assert f"/admin/item/{sweep_sha}" in page.url
                assert lemmy.sent() == expected_ban_and_purge(API_OF[version])
                calls = await page.inner_text("#lemmy-calls")
                assert "failed" in calls and "404" in calls  # the refused purge is shown
                assert await page.locator("tr.lemmy-done").count() == 2
                lemmy.comments.add(1)
                await page.click("#lemmy-calls button.retry")
                assert await page.locator("tr.lemmy-done").count() == 3
                assert await page.locator("button.retry").count() == 0
                purge = (
                    "/api/v4/admin/purge/comment"
                    if version == "1.0"
                    else ("/api/v3/admin/purge/comment")
                )
                assert lemmy.sent()[-1] == ("POST", purge, {"comment_id": 1, "reason": REASON})

                # The export carries who and where (and what was done), never the image.
                status, rows = await call(http, "GET", f"{svc.url}/api/v1/admin/export")
                assert status == 200
                row = next(r for r in rows if r["sha256"] == sweep_sha)
                assert row["uploaders"][0]["actor_url"] == "https://lemmy.local/u/bob"
                assert row["origin_instances"] == ["lemmy.local", "remote.example"]
                assert [a["state"] for a in row["lemmy_actions"]] == ["done"] * 3
                thumb = next(r for r in rows if r["sha256"] == late_sha)
                assert thumb["thumbnail_of_posts"] == [3]
                text = json.dumps(rows)
                assert "JFIF" not in text and "hi ![x]" not in text

                # The webhook got names and links only.
                events = await wait_for(lambda: _events(hook, "provenance", 2))
                bob = next(e for e in events if e["sha256"] == sweep_sha)
                assert bob["uploaders"] == ["bob (https://lemmy.local/u/bob)"]
                assert "comment https://remote.example/comment/9" in bob["used_in"]
                await ctx.close()
    finally:
        await pictrs.stop()


async def _events(hook, kind: str, n: int):
    found = hook.events(kind)
    return found if len(found) >= n else None
