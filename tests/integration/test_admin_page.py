"""The review page in a real headless Chromium (Debian's package), driven by Playwright.

Never `playwright install`: the browser is /usr/bin/chromium (see .ci/apt-packages.txt).
"""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import pytest
from PIL import Image

from horde_scanner.backends.mock import MockBackend
from horde_scanner.media.hashing import sha256_hex
from horde_scanner.service.auth import client_tag
from horde_scanner.testing import images
from horde_scanner.testing.pictrs import validate_upload
from horde_scanner.testing.service import CLIENT_ID, running_service
from tests.admin_helpers import TOKEN, admin_settings

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]

pytestmark = pytest.mark.skipif(
    shutil.which(CHROMIUM) is None, reason="chromium is not installed (.ci/system-deps)"
)


@pytest.fixture
async def browser():
    from playwright.async_api import async_playwright

    async with async_playwright() as pw:
        chromium = await pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            await chromium.close()


async def _log_in(page, base: str, name: str = "alice", token: str = TOKEN) -> None:
    await page.goto(f"{base}/admin")
    assert "/admin/login" in page.url  # not signed in: sent to the login form
    await page.fill("input[name=token]", token)
    await page.fill("input[name=name]", name)
    await page.click("form.login button[type=submit]")


async def test_review_flow_log_in_reveal_preview_allow_then_upload_accepted(
    tmp_path: Path, browser, http
):
    red = images.jpeg("red", size=(400, 300), seed=40)
    sha = sha256_hex(red)
    settings = admin_settings(tmp_path, admin={"previews": True})
    async with running_service(settings, backend=MockBackend()) as svc:
        assert (await validate_upload(http, svc.scan_url(), red, "image/jpeg")).status == 406
        stored_at = tmp_path / "pictrs" / "files" / "meme.jpg"
        stored_at.parent.mkdir(parents=True)
        stored_at.write_bytes(red)
        await svc.parts.quarantine.admit_file(sha, stored_at, origin="local")

        context = await browser.new_context()
        page = await context.new_page()
        await _log_in(page, svc.url, token="wrong-" + TOKEN)
        assert "Wrong admin token" in await page.inner_text("main")
        await page.fill("input[name=token]", TOKEN)
        await page.fill("input[name=name]", "alice")
        await page.click("form.login button[type=submit]")
        assert page.url.rstrip("/").endswith("/admin")
        cookie = next(c for c in await context.cookies() if c["name"] == "hs_admin")
        assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"

        item = page.locator(f"#positives #item-{sha}")
        assert await item.count() == 1
        text = await item.inner_text()
        assert "csam" in text and f"upload:{client_tag(CLIENT_ID)}" in text and "young girl" in text
        assert "held" in text
        # Previews are off until the admin turns them on; no image on the page at all.
        assert await page.locator("img").count() == 0
        assert await item.locator("a.reveal").count() == 0
        await page.click("#previews-toggle")
        reveal = page.locator(f"#positives #item-{sha} a.reveal")
        assert await reveal.count() == 1
        assert await page.locator("img").count() == 0  # nothing loads before the click
        await reveal.click()
        img = page.locator(f"#positives #item-{sha} img.preview-img")
        await img.wait_for()
        assert await img.evaluate("i => i.complete && i.naturalWidth") > 0
        # What the browser got: small, greyscale, blurred; never the original bytes.
        resp = await context.request.get(f"{svc.url}/admin/preview/{sha}")
        assert resp.status == 200 and resp.headers["content-type"] == "image/jpeg"
        preview = Image.open(io.BytesIO(await resp.body()))
        assert preview.mode == "L" and max(preview.size) <= 160
        assert await resp.body() != red

        await item.locator("input[name=note]").first.fill("just a red square")
        await item.locator("button.allow").click()
        decision = page.locator("#decision")
        await decision.wait_for()
        decided = await decision.inner_text()
        assert "allow" in decided and "page:alice" in decided and "just a red square" in decided
        assert "On the allow list" in await page.inner_text("main")
        assert stored_at.read_bytes() == red  # released from quarantine, back in place

        await page.goto(f"{svc.url}/admin")
        assert await page.locator(f"#item-{sha}").count() == 0  # decided: off the queue
        again = await validate_upload(http, svc.scan_url(), red, "image/jpeg")
        assert again.status == 200 and again.body["route"] == "allow"
        trail = await svc.parts.store.audit_trail(sha)
        allow = [a for a in trail if a.event == "allow"]
        assert allow and allow[0].source == "page:alice"
        await context.close()


async def test_csrf_and_unauthenticated_access_are_refused(tmp_path: Path, browser, http):
    red = images.jpeg("red", seed=41)
    sha = sha256_hex(red)
    settings = admin_settings(tmp_path, admin={"previews": True})
    async with running_service(settings, backend=MockBackend()) as svc:
        await validate_upload(http, svc.scan_url(), red, "image/jpeg")
        await svc.parts.quarantine.admit_bytes(
            sha, red, origin="local", identifier=str(tmp_path / "r.jpg")
        )
        store = svc.parts.store

        # Not signed in: pages send you to the login form; actions and previews are refused.
        anon = await browser.new_context()
        page = await anon.new_page()
        await page.goto(f"{svc.url}/admin/item/{sha}")
        assert "/admin/login" in page.url
        assert await page.locator("input[name=token]").count() == 1
        for path in (f"/admin/item/{sha}/allow", f"/admin/item/{sha}/confirm", "/admin/previews"):
            resp = await anon.request.post(f"{svc.url}{path}", form={"csrf": "guess"})
            assert resp.status == 403, path
            assert (await resp.json())["error"] == "not_signed_in"
        resp = await anon.request.get(f"{svc.url}/admin/preview/{sha}")
        assert resp.status == 403
        resp = await anon.request.get(f"{svc.url}/admin/export?format=json", max_redirects=0)
        assert resp.status == 303 and "/admin/login" in resp.headers["location"]

        # Signed in, but a POST without this session's CSRF token is refused.
        ctx = await browser.new_context()
        page = await ctx.new_page()
        await _log_in(page, svc.url, name="eve")
        assert page.url.rstrip("/").endswith("/admin")
        for form in ({}, {"csrf": "not-the-token"}):
            resp = await ctx.request.post(
                f"{svc.url}/admin/item/{sha}/allow", form={**form, "note": "sneaky"}
            )
            assert resp.status == 403 and (await resp.json())["error"] == "bad_csrf"
        assert await store.list_kind(sha) is None
        # Previews stay off until turned on, even for a signed-in admin.
        resp = await ctx.request.get(f"{svc.url}/admin/preview/{sha}")
        assert resp.status == 403 and (await resp.json())["error"] == "previews_off"
        # A cross-origin post carrying the right token is refused too.
        csrf = await page.locator("input[name=csrf]").first.get_attribute("value")
        resp = await ctx.request.post(
            f"{svc.url}/admin/item/{sha}/confirm",
            form={"csrf": csrf},
            headers={"Origin": "https://evil.example"},
        )
        assert resp.status == 403 and (await resp.json())["error"] == "bad_origin"
        assert await store.list_kind(sha) is None
        # A note no store can keep (a NUL character) is a clear 400, nothing decided.
        resp = await ctx.request.post(
            f"{svc.url}/admin/item/{sha}/allow", form={"csrf": csrf, "note": "a\x00b"}
        )
        assert resp.status == 400 and (await resp.json())["error"] == "bad_note"
        assert await store.list_kind(sha) is None

        # Logging out ends the session server-side: the old cookie is worthless.
        old = [c for c in await ctx.cookies() if c["name"] == "hs_admin"]
        await page.click("header form[action='/admin/logout'] button")
        assert "/admin/login" in page.url
        replay = await browser.new_context()
        await replay.add_cookies(old)
        resp = await replay.request.post(f"{svc.url}/admin/item/{sha}/allow", form={"csrf": csrf})
        assert resp.status == 403 and (await resp.json())["error"] == "not_signed_in"
        assert await store.list_kind(sha) is None
        for c in (anon, ctx, replay):
            await c.close()


async def test_policy_dry_run_page_shows_the_diff_and_changes_nothing(tmp_path: Path, browser):
    from horde_scanner.store.sqlite import Store
    from tests.policy_history import CASES, expected_flips, fill

    settings = admin_settings(tmp_path)
    async with await Store.open(settings.store.path) as store:
        await fill(store)
    candidate = Path(__file__).parents[2] / "horde_scanner" / "data" / "policy.toml"
    bad = tmp_path / "bad.toml"
    bad.write_text(candidate.read_text().replace("tag_min_confidence = 10.0", "tag_min = 1"))
    async with running_service(settings, backend=MockBackend()) as svc:
        store, running = svc.parts.store, svc.parts.policy.version
        before = [(await store.get_verdict(c.sha256)).verdict for c in CASES]
        context = await browser.new_context()
        page = await context.new_page()
        await _log_in(page, svc.url)
        await page.click("header a[href='/admin/policy']")
        assert "Nothing changes here" in await page.inner_text("main")

        # A malformed file: the form comes back with the key named.
        await page.set_input_files("input[name=policy]", str(bad))
        await page.click("#policy-diff")
        error = await page.inner_text("#policy-error")
        assert "unknown key `tag_min`" in error and "[horde]" in error

        await page.set_input_files("input[name=policy]", str(candidate))
        await page.click("#policy-diff")
        summary = await page.inner_text("#policy-summary")
        flips = expected_flips()[("csam", "nsfw")]
        assert f"{len(flips)} would change" in summary
        change = page.locator("#change-csam-nsfw")
        assert f"csam → nsfw: {len(flips)}" in await change.locator("h3").inner_text()
        samples = change.locator("article.sample")
        assert await samples.count() == 5
        text = await samples.first.inner_text()
        assert "caption" in text and "not enough for csam" in text
        shown = {await a.inner_text() for a in await change.locator("a code").all()}
        assert shown <= flips
        decisions = await page.inner_text("#policy-decisions")
        assert "agrees with 3 and disagrees with 2" in decisions
        assert await page.locator("table.decisions tr.disagree").count() == 2
        assert f"still judges with policy {running}" in await page.inner_text("#policy-report")

        # Nothing changed: the same verdicts, the same policy.
        assert [(await store.get_verdict(c.sha256)).verdict for c in CASES] == before
        assert svc.parts.policy.version == running
        # The form needs this session's CSRF token like every other.
        resp = await context.request.post(
            f"{svc.url}/admin/policy",
            multipart={"policy": {"name": "p.toml", "mimeType": "text/plain",
                                  "buffer": candidate.read_bytes()}},
        )  # fmt: skip
        assert resp.status == 403 and (await resp.json())["error"] == "bad_csrf"
        await context.close()
