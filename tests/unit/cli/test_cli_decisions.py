"""The CLI's decisions are the admin's decisions: `allow`, `deny` and `release` go through the one
implementation (review/decisions.py), so what a sweep or the admin quarantined follows them,
with the same audit trail. Real CLI (click's runner), real SQLite file, real files on disk."""

from __future__ import annotations

import json
import sqlite3
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp

from horde_scanner.backends.mock import MockBackend
from horde_scanner.config import Settings
from horde_scanner.media.hashing import sha256_hex
from horde_scanner.review.quarantine import Quarantine
from horde_scanner.runtime.sweeps import run_scan
from horde_scanner.store.sqlite import Store
from horde_scanner.sweep.actions import Action
from horde_scanner.testing import images
from horde_scanner.testing.pictrs import validate_upload
from horde_scanner.testing.service import running_service
from tests.admin_helpers import admin_settings, call
from tests.scan_helpers import audit_rows, cli, cli_env


def _paths(tmp_path: Path) -> dict[str, Path]:
    return {
        "tmp": tmp_path,
        "db": tmp_path / "s.db",  # where admin_settings puts the store
        "files": tmp_path / "pictrs" / "files",
        "sweep_q": tmp_path / "sweep-q",
        "admin_q": tmp_path / "admin-q",
    }


def _settings(p: dict[str, Path]) -> Settings:
    return admin_settings(
        p["tmp"], scan={"quarantine_path": p["sweep_q"]}, quarantine={"dir": p["admin_q"]}
    )


def _env(p: dict[str, Path]) -> dict[str, str]:
    return cli_env(
        p["db"],
        "http://127.0.0.1:9",
        HORDE_SCANNER_SCAN__QUARANTINE_PATH=str(p["sweep_q"]),
        HORDE_SCANNER_QUARANTINE__DIR=str(p["admin_q"]),
    )


async def _swept(p: dict[str, Path]) -> tuple[Path, bytes, str, Path]:
    """One red positive and one clean file, swept with --action quarantine."""
    red = images.jpeg("red", size=(200, 160), seed=140)
    original = p["files"] / "ab" / "cd" / "red.jpg"
    original.parent.mkdir(parents=True)
    original.write_bytes(red)
    (p["files"] / "blue.jpg").write_bytes(images.jpeg("blue", seed=141))
    report = await run_scan(
        _settings(p), str(p["files"]), action=Action.QUARANTINE, backend=MockBackend()
    )
    assert report.counts.acted == 1 and not original.exists()
    (held,) = p["sweep_q"].iterdir()
    return original, red, sha256_hex(red), held


def _action_states(db: Path, sha: str) -> list[tuple[Any, ...]]:
    with sqlite3.connect(db) as conn:
        return conn.execute(
            "SELECT action, state FROM scan_actions WHERE sha256=? ORDER BY id", (sha,)
        ).fetchall()


async def test_cli_allow_restores_what_a_sweep_quarantined(tmp_path: Path):
    p = _paths(tmp_path)
    original, red, sha, held = await _swept(p)
    env = _env(p)

    out = await cli(["allow", sha, "--note", "a red square"], env)
    assert out.exit_code == 0, out.output
    assert f"allowed {sha}" in out.output and str(original) in out.output
    # Back where it was found, byte for byte; the sweep's quarantine no longer holds it.
    assert original.read_bytes() == red and not held.exists()
    assert _action_states(p["db"], sha) == [("quarantine", "released")]
    async with await Store.open(p["db"]) as store:
        assert await store.list_kind(sha) == "allow"

    (allow,) = audit_rows(p["db"], "allow")
    assert allow["sha256"] == sha and allow["source"] == "cli" and allow["action"] == "allow"
    assert allow["detail"]["note"] == "a red square"
    assert allow["detail"]["previous_label"] == "csam"
    (copy,) = allow["detail"]["quarantine"]["released"]
    assert copy["holder"] == "sweep" and copy["identifier"].endswith("ab/cd/red.jpg")
    (released,) = audit_rows(p["db"], "released")
    assert released["detail"]["by"] == "cli" and released["detail"]["identifier"] == "ab/cd/red.jpg"

    # The one view says the same: released, not held, the decision by the CLI.
    shown = json.loads((await cli(["verdicts", "show", sha], env)).output)
    assert [(q["holder"], q["state"]) for q in shown["quarantine"]] == [("sweep", "released")]
    assert shown["in_quarantine"] is False and shown["list"] == "allow"
    assert any(a["event"] == "allow" and a["by"] == "cli" for a in shown["audit"])

    # The next sweep leaves it alone: allow-listed, not quarantined again.
    again = await run_scan(
        _settings(p), str(p["files"]), action=Action.QUARANTINE, backend=MockBackend()
    )
    assert again.counts.acted == 0 and original.exists()


async def test_cli_deny_discards_the_admin_copy_and_keeps_sweep_evidence(tmp_path: Path):
    p = _paths(tmp_path)
    original, red, sha, held = await _swept(p)
    async with await Store.open(p["db"]) as store:
        admin_q = Quarantine(store, p["admin_q"])
        await admin_q.admit_bytes(sha, red, origin="s3", identifier="bucket/red.jpg")
        admin_copy = admin_q.held_path(sha)
    assert admin_copy.exists()
    env = _env(p)

    out = await cli(["deny", sha, "--note", "reported"], env)
    assert out.exit_code == 0, out.output
    assert f"denied {sha}" in out.output and "kept as evidence" in out.output
    assert not admin_copy.exists()  # the admin quarantine deletes a confirmed positive
    assert held.read_bytes() == red and not original.exists()  # the sweep copy is evidence
    (deny,) = audit_rows(p["db"], "deny")
    assert deny["source"] == "cli" and deny["action"] == "deny" and deny["label"] == "csam"
    assert deny["detail"]["quarantine_deleted"] == 1
    assert [c["holder"] for c in deny["detail"]["quarantine_kept"]] == ["sweep"]
    (kept,) = audit_rows(p["db"], "quarantine_kept")
    assert kept["detail"]["by"] == "cli" and kept["detail"]["note"] == "reported"

    out = await cli(["deny", "--remove", sha], env)
    assert out.exit_code == 0 and f"removed from deny list: {sha}" in out.output
    assert [r["source"] for r in audit_rows(p["db"], "undeny")] == ["cli"]
    again = await cli(["deny", "--remove", sha], env)
    assert f"not on the deny list: {sha}" in again.output
    assert len(audit_rows(p["db"], "undeny")) == 1


async def test_cli_release_is_the_allow_decision(tmp_path: Path):
    p = _paths(tmp_path)
    original, red, sha, held = await _swept(p)
    # A second copy of the same bytes, in the admin's quarantine: the allow brings it back too.
    elsewhere = tmp_path / "elsewhere" / "red-again.jpg"
    async with await Store.open(p["db"]) as store:
        await Quarantine(store, p["admin_q"]).admit_bytes(
            sha, red, origin="local", identifier=str(elsewhere)
        )
    env = _env(p)
    with sqlite3.connect(p["db"]) as conn:
        (action_id,) = conn.execute("SELECT id FROM scan_actions WHERE sha256=?", (sha,)).fetchone()

    out = await cli(["release", str(action_id)], env)
    assert out.exit_code == 0, out.output
    assert "its sha256 is on the allow list" in out.output
    assert original.read_bytes() == red and not held.exists()
    assert elsewhere.read_bytes() == red
    (allow,) = audit_rows(p["db"], "allow")
    assert allow["source"] == "cli"
    released = allow["detail"]["quarantine"]["released"]
    assert sorted(r["identifier"] for r in released) == sorted(
        [str(elsewhere), f"file://{p['files']}/ab/cd/red.jpg"]
    )
    assert allow["detail"]["note"] == f"released from quarantine #{action_id}"
    assert len(audit_rows(p["db"], "released")) == 1
    twice = await cli(["release", str(action_id)], env)
    assert twice.exit_code == 4 and "nothing to release" in twice.output


async def test_verdicts_show_and_the_admin_api_give_the_same_record(tmp_path: Path):
    p = _paths(tmp_path)
    original, red, sha, held = await _swept(p)
    async with (
        running_service(_settings(p), backend=MockBackend()) as svc,
        aiohttp.ClientSession() as http,
    ):
        assert (await validate_upload(http, svc.scan_url(), red, "image/jpeg")).status == 406
        status, api = await call(http, "GET", f"{svc.url}/api/v1/admin/verdicts/{sha}")
        shown = await cli(["verdicts", "show", sha], _env(p))
    assert status == 200 and shown.exit_code == 0, shown.output
    assert json.loads(shown.output) == api
    assert api["label"] == "csam" and api["in_quarantine"] is True and api["pdq"]
    assert [(q["holder"], q["state"]) for q in api["quarantine"]] == [("sweep", "held")]
    assert {"judged", "answered", "scan_action"} <= {a["event"] for a in api["audit"]}
    # One time format: ISO 8601 in UTC, everywhere in the record.
    stamps = [api["judged_at"], api["first_seen"], *(a["ts"] for a in api["audit"])]
    stamps += [q[k] for q in api["quarantine"] for k in ("quarantined_at", "updated_at")]
    for stamp in stamps:
        assert datetime.fromisoformat(stamp).utcoffset() == timedelta(0), stamp
