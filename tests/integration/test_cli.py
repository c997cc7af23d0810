"""The CLI as an admin runs it: real processes, a real store file, the fake Horde over loopback."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from horde_scanner.media.hashing import sha256_hex
from horde_scanner.testing import images
from horde_scanner.testing.net import free_port, wait_port

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def horde_url() -> Iterator[str]:
    port = free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "horde_scanner.testing.horde",
            "--port",
            str(port),
            "--latency",
            "0.1",
        ],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_port(port)
        yield f"http://127.0.0.1:{port}/api"
    finally:
        proc.terminate()
        proc.wait(10)


@pytest.fixture
def cli(tmp_path: Path, horde_url: str):
    env = {
        **os.environ,
        "HORDE_SCANNER_STORE__PATH": str(tmp_path / "cli.db"),
        "HORDE_SCANNER_HORDE__URL": horde_url,
        "HORDE_SCANNER_HORDE__POLL_INTERVAL_S": "0.12",
    }

    def run(*args: str, check: bool = False) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            [sys.executable, "-m", "horde_scanner.cli", *args],
            env=env,
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=120,
        )
        if check:
            assert proc.returncode == 0, proc.stderr
        return proc

    return run


def test_check_prints_verdicts_and_caches_them(cli, tmp_path: Path):
    red, green = tmp_path / "red.jpg", tmp_path / "green.png"
    red.write_bytes(images.jpeg("red", seed=1))
    green.write_bytes(images.encode(images.image("green", seed=2), "PNG"))
    proc = cli("check", "--json", str(red), str(green))
    assert proc.returncode == 1  # a positive was found
    rows = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [(r["label"], r["route"]) for r in rows] == [("csam", "backend"), ("clean", "backend")]

    again = cli("check", str(red))
    assert again.returncode == 1
    assert again.stdout.startswith("csam") and str(red) in again.stdout


def test_check_reports_missing_and_unreadable_files(cli, tmp_path: Path):
    junk = tmp_path / "notes.txt"
    junk.write_text("hello")
    proc = cli("check", str(junk), str(tmp_path / "missing.jpg"))
    assert proc.returncode == 2
    assert "unreadable" in proc.stdout and "magic bytes" in proc.stdout
    assert "missing.jpg: error" in proc.stderr


def test_verdicts_list_show_export(cli, tmp_path: Path):
    red = tmp_path / "red.jpg"
    data = images.jpeg("red", seed=3)
    red.write_bytes(data)
    cli("check", str(red))
    sha = sha256_hex(data)

    listing = cli("verdicts", "list", "--label", "csam", check=True)
    assert sha in listing.stdout

    shown = json.loads(cli("verdicts", "show", sha, check=True).stdout)
    assert shown["label"] == "csam" and shown["signals"]["nsfw"] is True
    assert "judged" in [a["event"] for a in shown["audit"]]

    exported = cli("verdicts", "export", "--label", "csam", "--format", "csv", check=True)
    rows = list(csv.DictReader(io.StringIO(exported.stdout)))
    assert [r["sha256"] for r in rows] == [sha]
    assert "nsfw form is true" in rows[0]["reasons"]

    out = tmp_path / "export.json"
    cli("verdicts", "export", "--format", "json", "-o", str(out), check=True)
    records = json.loads(out.read_text())
    assert records[0]["sha256"] == sha and "bytes" not in json.dumps(records)


def test_a_negative_limit_is_a_usage_error_not_every_row(cli):
    """SQLite reads LIMIT -1 as "no limit" and PostgreSQL refuses it: the CLI says so first."""
    for args in (("verdicts", "list"), ("hashes", "flagged")):
        proc = cli(*args, "--limit", "-1")
        assert proc.returncode == 2 and "--limit" in proc.stderr, proc.stderr
        assert "Traceback" not in proc.stderr
        assert cli(*args, "--limit", "0", check=True).returncode == 0


def test_verdicts_show_rejects_bad_hashes(cli):
    proc = cli("verdicts", "show", "xyz")
    assert proc.returncode == 2 and "64 hex" in proc.stderr
    proc = cli("verdicts", "show", "a" * 64)
    assert proc.returncode == 1 and "no verdict" in proc.stderr


def test_allow_and_deny_by_file_and_hash(cli, tmp_path: Path):
    red = tmp_path / "red.jpg"
    data = images.jpeg("red", seed=4)
    red.write_bytes(data)
    assert "allowed" in cli("allow", str(red), "--note", "meme", check=True).stdout
    proc = cli("check", "--json", str(red))
    assert proc.returncode == 0
    assert json.loads(proc.stdout)["route"] == "allow"

    sha = sha256_hex(images.jpeg("green", seed=5))
    assert "denied" in cli("deny", sha, check=True).stdout
    shown = json.loads(cli("verdicts", "show", sha, check=True).stdout)
    assert shown["list"] == "deny"
    assert "removed" in cli("deny", "--remove", sha, check=True).stdout

    bad = cli("allow", "not-a-hash-or-file")
    assert bad.returncode == 2 and "neither a sha256" in bad.stderr
