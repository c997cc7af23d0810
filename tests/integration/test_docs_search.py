"""Any option in one search: the built site, served on loopback, searched in the suite's
Chromium the way an admin does (type into the search box, read the first results)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from aiohttp import web

from tests.screenshots import CHROMIUM, chromium

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.skipif(
    shutil.which(CHROMIUM) is None, reason="chromium is not installed (.ci/system-deps)"
)


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("docs") / "site"
    subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "-q", "-d", str(out)],
        cwd=ROOT, check=True, capture_output=True, timeout=300,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )  # fmt: skip
    return out


@pytest.fixture
async def site(built: Path):
    out = built
    app = web.Application()

    async def index(request: web.Request) -> web.StreamResponse:
        path = out / request.match_info["path"]
        if path.is_dir():
            path = path / "index.html"
        if not path.is_file():
            raise web.HTTPNotFound()
        return web.FileResponse(path)

    app.router.add_get("/{path:.*}", index)
    runner = web.AppRunner(app)
    await runner.setup()
    tcp = web.TCPSite(runner, "127.0.0.1", 0)
    await tcp.start()
    port = runner.addresses[0][1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


async def _search(page, base: str, words: str) -> list[str]:
    """The links of the search results for `words`, best first."""
    await page.goto(f"{base}/")
    box = page.locator("input.md-search__input")
    await box.click()  # on a desktop-wide window the box is in the header
    # The index loads in a web worker; until then the results say "Initializing search".
    await page.wait_for_function(
        "() => !document.querySelector('.md-search-result__meta')"
        ".textContent.includes('Initializing')",
        timeout=60_000,
    )
    await box.press_sequentially(words, delay=20)  # keystrokes, as a person types
    first = page.locator(".md-search-result__list a").first
    await first.wait_for(timeout=60_000)
    return [await a.get_attribute("href") or "" for a in await page.locator(
        ".md-search-result__list a").all()]  # fmt: skip


@pytest.mark.parametrize(
    ("words", "anchor"),
    [
        ("on_timeout", "#validation.on_timeout"),
        ("HORDE_SCANNER_VALIDATION__ON_TIMEOUT", "#validation.on_timeout"),
        ("max_kudos_per_day", "#horde.max_kudos_per_day"),
        ("scan.s3.endpoint_url", "#scan.s3.endpoint_url"),
    ],
)
async def test_one_search_finds_the_option(site: str, words: str, anchor: str):
    async with chromium() as browser:
        page = await browser.new_page(viewport={"width": 1280, "height": 900})
        requested: list[str] = []
        page.on("request", lambda request: requested.append(request.url))
        links = await _search(page, site, words)
        # Offline: the page, its scripts, fonts and the search index all come from the site.
        assert requested and all(url.startswith(site + "/") for url in requested), requested
        # The option's own entry is among the first results, leading to its heading.
        found = [urlsplit(link) for link in links[:5]]
        assert any(
            u.path == "/reference/configuration/" and "#" + u.fragment == anchor for u in found
        ), links
