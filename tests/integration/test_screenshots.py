"""The docs' pictures can always be made again: `make screenshots` (tests/screenshots.py) run
into a temporary directory gives the three pictures the docs show, each a real PNG with
something on it."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from PIL import Image

from horde_scanner.testing.prometheus import binary
from tests.screenshots import CHROMIUM, NAMES, take_all

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.skipif(
    shutil.which(CHROMIUM) is None, reason="chromium is not installed (.ci/system-deps)"
)


def test_the_docs_show_every_picture_make_screenshots_takes():
    shown = "".join(p.read_text() for p in (ROOT / "docs").rglob("*.md"))
    for name in NAMES:
        assert f"images/{name}" in shown, name
        assert (ROOT / "docs" / "images" / name).is_file(), name


@pytest.mark.timeout(300)
async def test_make_screenshots_takes_them_again(tmp_path: Path):
    assert binary() is not None, "prometheus is missing: make system-deps installs it"
    paths = await take_all(tmp_path, load_s=8)
    assert [p.name for p in paths] == list(NAMES)
    for path in paths:
        with Image.open(path) as img:
            assert img.format == "PNG" and img.width >= 1200 and img.height >= 600
            # Not a blank page: many colours (text, panels, lines).
            colours = img.convert("RGB").getcolors(maxcolors=1 << 20)
            assert colours is not None and len(colours) > 200, path.name
