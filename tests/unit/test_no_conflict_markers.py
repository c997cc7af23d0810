"""No file in the repository still holds a merge's conflict markers: a page with them renders
as if it were fine (mkdocs does not fail on them), so only this catches one."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
MARKER = re.compile(r"^(<{7} |={7}$|>{7} )", re.MULTILINE)


def test_no_tracked_text_file_holds_conflict_markers():
    tracked = subprocess.run(
        ["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True
    ).stdout.split(b"\0")
    found = []
    for name in filter(None, tracked):
        path = ROOT / name.decode()
        if not path.is_file() or path.stat().st_size > 2_000_000:
            continue
        try:
            text = path.read_text()
        except UnicodeDecodeError:
            continue  # binary
        found += [
            f"{name.decode()}:{text[: m.start()].count(chr(10)) + 1}" for m in MARKER.finditer(text)
        ]
    assert found == []


def test_the_check_sees_a_marker():
    assert MARKER.search("text\n<<<<<<< HEAD\nmore\n=======\nother\n>>>>>>> main\n")
