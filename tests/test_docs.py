"""The docs site builds, strictly: a broken link or anchor, a page missing from the nav or a nav
entry without its page fails the build (mkdocs.yml's `validation` turns each into a warning,
and `--strict` makes a warning fatal). Built offline, into a temporary directory."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"


def _nav_pages(nav: list) -> list[str]:
    pages: list[str] = []
    for entry in nav:
        value = next(iter(entry.values())) if isinstance(entry, dict) else entry
        pages += _nav_pages(value) if isinstance(value, list) else [value]
    return pages


def test_mkdocs_build_strict(tmp_path: Path):
    proc = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-q", "-d", str(tmp_path / "site")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},  # Material's notice about its successor
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert (tmp_path / "site" / "index.html").is_file()
    # Material's own search index: built at build time, searched in the browser, offline.
    assert (tmp_path / "site" / "search" / "search_index.json").is_file()


def test_every_page_is_in_the_nav_and_every_nav_entry_exists():
    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text())
    nav = _nav_pages(config["nav"])
    on_disk = sorted(str(p.relative_to(DOCS)) for p in DOCS.rglob("*.md"))
    assert sorted(nav) == on_disk


def test_the_front_page_links_resolve_and_reach_every_task_page():
    """The README is read on a forge, not built by mkdocs: its links are checked here."""
    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) <= 200
    targets = re.findall(r"\]\((docs/[^)#]+)(?:#[^)]*)?\)", text)
    assert targets
    for target in targets:
        assert (ROOT / target).is_file(), target
    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text())
    assert {f"docs/{p}" for p in _nav_pages(config["nav"])} - {"docs/index.md"} <= set(targets)
    # The two commands a fresh machine needs (.ci/run and the house checks look for them).
    assert "make serve" in text and "make test" in text
