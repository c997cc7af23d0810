"""`horde-scanner hashes import|export|remove` on a real store file, and imported entries used
by the running service."""

from __future__ import annotations

import asyncio
import json
from dataclasses import replace
from pathlib import Path

import aiohttp
import pytest
from click.testing import CliRunner

from horde_scanner.backends.mock import MockBackend
from horde_scanner.cli import main
from horde_scanner.config import ConfigError, load_settings
from horde_scanner.media.decode import DecodeLimits, decode
from horde_scanner.media.hashing import pdq_hash, sha256_hex
from horde_scanner.signals.hash_list import parse
from horde_scanner.store.sqlite import Store
from horde_scanner.testing import textures
from horde_scanner.testing.pictrs import validate_upload
from horde_scanner.testing.service import make_settings, running_service

PDQ = "f8f8f0cee0f4a84f06370a32038f67f0b36e2ed596623e1d33e6339c4e9c9b22"
SHA = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"


def cli(db: Path, *args: str, stdin: str | None = None):
    runner = CliRunner()
    return runner.invoke(main, ["--db", str(db), *args], input=stdin, catch_exceptions=False)


def test_import_reports_bad_rows_by_line_and_keeps_the_good(tmp_path: Path):
    db = tmp_path / "s.db"
    listing = tmp_path / "list.csv"
    listing.write_text(
        "signal,value,label,source,first_seen,note\n"
        f"pdq,{PDQ},csam,peer.example,2024-05-01T12:00:00+00:00,first\n"
        f"md5,{SHA[:32]},csam,,,\n"
        f"pdq,{PDQ[:40]},,,,\n"
        f'sha256,{SHA.upper()},,,1714564800,"two\nlines"\n'
        f"sha256,{SHA},maybe,,,\n"
        f"pdq,{PDQ},csam,,yesterday,\n"
        f"pdq,{PDQ},csam,a,,,extra\n"
    )
    result = cli(db, "hashes", "import", str(listing), "--source", "import-test")
    assert result.exit_code == 1
    assert "imported 2 entries" in result.output and "skipped 5 rows" in result.output
    for line, words in [
        (3, "unknown signal type 'md5'"),
        (4, "got 40 characters"),
        (7, "unknown label 'maybe'"),
        (8, "'yesterday' is not an ISO 8601"),
        (9, "7 fields"),
    ]:
        reported = [row for row in result.output.splitlines() if f": line {line}: " in row]
        assert len(reported) == 1 and words in reported[0], (line, result.output)

    exported = cli(db, "hashes", "export", "--format", "json")
    assert exported.exit_code == 0
    entries, errors = parse(exported.output.encode())
    assert not errors
    by_signal = {e.signal: e for e in entries}
    assert by_signal["pdq"].source == "peer.example" and by_signal["pdq"].note == "first"
    assert by_signal["sha256"].value == SHA and by_signal["sha256"].source == "import-test"
    assert by_signal["sha256"].first_seen == 1714564800.0

    # What one instance exports, another imports unchanged (CSV this time).
    out = tmp_path / "out.csv"
    assert cli(db, "hashes", "export", "-o", str(out)).exit_code == 0
    other = tmp_path / "other.db"
    again = cli(other, "hashes", "import", str(out))
    assert again.exit_code == 0 and "imported 2 entries" in again.output
    # (Each instance records its own import: by `cli:import`, at the time it imported.)
    reexported = parse(cli(other, "hashes", "export").output.encode())[0]
    assert all(e.confirmed_by == "cli:import" and e.confirmed_at for e in reexported)
    assert [replace(e, confirmed_at=None) for e in reexported] == sorted(
        (replace(e, confirmed_at=None) for e in entries), key=lambda e: (e.signal, e.value)
    )

    removed = cli(db, "hashes", "remove", "pdq", PDQ)
    assert removed.exit_code == 0
    assert [e.signal for e in parse(cli(db, "hashes", "export").output.encode())[0]] == ["sha256"]
    missing = cli(db, "hashes", "remove", "pdq", PDQ)
    assert missing.exit_code == 1 and "no imported pdq entry" in missing.output


def test_a_row_whose_text_holds_a_nul_character_is_skipped_with_its_line() -> None:
    """A list (a subscription's too) may carry a NUL in its text: the row is skipped and
    named, not handed to the store, which refuses it (PostgreSQL cannot keep one)."""
    rows = [
        {"signal": "sha256", "value": SHA, "note": "bad\u0000note"},
        {"signal": "pdq", "value": PDQ, "source": "peer\u0000"},
        {"signal": "pdq", "value": PDQ, "note": "fine"},
    ]
    entries, errors = parse(json.dumps({"entries": rows}), "json")
    assert [(e.value, e.note) for e in entries] == [(PDQ, "fine")]
    assert [("NUL" in e.message) for e in errors] == [True, True]


def test_unreadable_list_is_refused_with_a_reason(tmp_path: Path):
    db = tmp_path / "s.db"
    bad = tmp_path / "bad.json"
    bad.write_text('{"format": "horde-scanner-hashes", "entries": [')
    result = cli(db, "hashes", "import", str(bad))
    assert result.exit_code == 2 and "not valid JSON" in result.output
    result = cli(db, "hashes", "import", "-", stdin="hello,world\n1,2\n")
    assert result.exit_code == 2 and "lacks signal, value" in result.output
    rows = json.dumps(
        {
            "format": "horde-scanner-hashes",
            "version": 1,
            "entries": [
                {"signal": "pdq", "value": PDQ},
                "not an object",
                {"signal": "pdq", "value": PDQ + "00"},
            ],
        },
        indent=1,
    )
    result = cli(db, "hashes", "import", "-", stdin=rows)
    assert result.exit_code == 1
    assert "line 9: entry is not an object" in result.output
    assert "line 10: pdq value must be 64 hex characters, got 66" in result.output


def test_publishing_needs_a_token_or_public():
    with pytest.raises(ConfigError, match="publish_token"):
        load_settings(None, hashes={"publish": True})
    with pytest.raises(ConfigError, match="reserved"):
        load_settings(None, hashes={"subscriptions": [{"name": "local", "url": "http://x"}]})
    assert load_settings(None, hashes={"publish": True, "publish_public": True}).hashes.publish


async def test_imported_pdq_rejects_copies_and_own_positives_are_exported(tmp_path: Path):
    db = tmp_path / "s.db"
    known = textures.textured("blue", seed=61)
    value = pdq_hash(decode(textures.encode(known), DecodeLimits()).image).hex
    listing = tmp_path / "list.csv"
    listing.write_text(f"signal,value,label,source,first_seen,note\npdq,{value},csam,peer,,case 7")
    # The CLI runs its own event loop: give it a thread of its own inside this async test.
    assert (await asyncio.to_thread(cli, db, "hashes", "import", str(listing))).exit_code == 0

    backend = MockBackend(textures.red_is_csam)
    settings = make_settings(db, "http://127.0.0.1:9/api")
    positive = textures.textured("red", seed=62)
    async with aiohttp.ClientSession() as http, running_service(settings, backend=backend) as svc:
        copy = textures.variants(known)["webp-thumbnail"]
        result = await validate_upload(http, svc.scan_url(), copy, "image/webp")
        assert result.status == 406 and result.body["route"] == "match"
        assert "imported list" in result.body["reasons"][0]
        assert "note: case 7" in result.body["reasons"][0]
        assert backend.calls == 0
        judged = await validate_upload(
            http, svc.scan_url(), textures.encode(positive), "image/jpeg"
        )
        assert judged.status == 406 and backend.calls == 1

    # A machine positive travels only once an admin confirmed it (or when asked for).
    exported = parse((await asyncio.to_thread(cli, db, "hashes", "export")).output.encode())[0]
    assert not [e for e in exported if e.source == "horde-scanner"]
    unreviewed = await asyncio.to_thread(cli, db, "hashes", "export", "--unreviewed")
    assert sha256_hex(textures.encode(positive)) in unreviewed.output
    async with await Store.open(db) as store:
        await store.set_list(judged.body["sha256"], "deny", by="cli:test")
    exported = parse((await asyncio.to_thread(cli, db, "hashes", "export")).output.encode())[0]
    own = {(e.signal, e.value) for e in exported if e.source == "horde-scanner"}
    assert {e.confirmed_by for e in exported if e.source == "horde-scanner"} == {"cli:test"}
    assert ("sha256", sha256_hex(textures.encode(positive))) in own
    assert any(signal == "pdq" for signal, _ in own)
    # A verdict given by a hash match is not evidence of its own: not exported.
    assert ("sha256", result.body["sha256"]) not in own

    # The PDQ is kept with the verdict.
    shown = await asyncio.to_thread(cli, db, "verdicts", "show", judged.body["sha256"])
    record = json.loads(shown.output)
    assert record["label"] == "csam" and len(record["pdq"]) == 1
    assert record["pdq"][0]["quality"] >= 50 and ("pdq", record["pdq"][0]["hash"]) in own
