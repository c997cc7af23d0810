"""The admin API end to end over loopback: auth, list/filter/show, each decision and its audit
record, re-judging, stats and evidence export (API and CLI)."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from horde_scanner.backends.mock import MockBackend
from horde_scanner.cli import main
from horde_scanner.config import ConfigError
from horde_scanner.media.hashing import sha256_hex
from horde_scanner.service.auth import client_tag
from horde_scanner.testing import images
from horde_scanner.testing.pictrs import validate_upload
from horde_scanner.testing.service import CLIENT_ID, make_settings, running_service
from horde_scanner.verdict import Label, Signals, Verdict
from tests.admin_helpers import TOKEN, admin_settings, call

API = "/api/v1/admin"


async def test_admin_is_off_without_a_token_and_says_how_to_enable(tmp_path: Path, http):
    settings = make_settings(tmp_path / "s.db", "http://127.0.0.1:9/api")
    async with running_service(settings, backend=MockBackend()) as svc:
        for path in (f"{API}/verdicts", f"{API}/stats", "/admin", "/admin/login"):
            status, body = await call(http, "GET", svc.url + path, token="whatever-long-token")
            assert status == 404, path
            assert body["error"] == "admin_disabled"
            assert "HORDE_SCANNER_ADMIN__TOKEN" in body["detail"]
        status, body = await call(http, "POST", f"{svc.url}{API}/verdicts/{'a' * 64}/allow")
        assert status == 404 and body["error"] == "admin_disabled"


async def test_bearer_token_is_required_and_checked(tmp_path: Path, http):
    async with running_service(admin_settings(tmp_path), backend=MockBackend()) as svc:
        url = f"{svc.url}{API}/verdicts"
        status, body = await call(http, "GET", url, token=None)
        assert status == 401 and body["error"] == "unauthorized"
        status, body = await call(http, "GET", url, token=TOKEN[:-1] + "x")
        assert status == 401 and "wrong admin token" in body["detail"]
        status, _ = await call(
            http, "GET", url, token=None, headers={"Authorization": f"Basic {TOKEN}"}
        )
        assert status == 401
        status, _ = await call(http, "GET", f"{url}?token={TOKEN}", token=None)
        assert status == 401
        # Decisions are refused the same way, and nothing is written.
        sha = "b" * 64
        status, _ = await call(http, "POST", f"{url}/{sha}/allow", token="x" * 32)
        assert status == 401
        assert await svc.parts.store.list_kind(sha) is None
        status, body = await call(http, "GET", url)
        assert status == 200 and body["verdicts"] == []


async def test_list_filter_and_show(tmp_path: Path, http):
    red, magenta, green = (
        images.jpeg(c, seed=i) for i, c in enumerate(["red", "magenta", "green"])
    )
    async with running_service(admin_settings(tmp_path), backend=MockBackend()) as svc:
        for data in (red, magenta, green):
            await validate_upload(http, svc.scan_url(), data, "image/jpeg")
        store = svc.parts.store
        old = Verdict(
            label=Label.NSFW,
            reasons=["old"],
            backend="horde",
            policy_version="x",
            judged_at=time.time() - 7200,
            signals=Signals(backend="horde", nsfw=True, caption="a woman"),
        )
        await store.put_verdict("c" * 64, old, source="local:/srv/pictrs/files/ab/cd")

        async def listing(query: str) -> list[str]:
            status, body = await call(http, "GET", f"{svc.url}{API}/verdicts?{query}")
            assert status == 200, body
            return [v["sha256"] for v in body["verdicts"]]

        assert await listing("label=csam") == [sha256_hex(red)]
        assert set(await listing("label=csam,nsfw")) == {
            sha256_hex(red),
            sha256_hex(magenta),
            "c" * 64,
        }
        assert set(await listing("label=csam&label=clean")) == {sha256_hex(red), sha256_hex(green)}
        assert await listing("source=local:/srv") == ["c" * 64]
        assert len(await listing("source=upload:")) == 3
        assert await listing("backend=horde") == ["c" * 64]
        hour_ago = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(time.time() - 3600))
        assert await listing(f"until={hour_ago}") == ["c" * 64]
        assert len(await listing(f"since={hour_ago}")) == 3
        assert len(await listing("limit=2")) == 2
        for bad in ("label=evil", "since=yesterday", "limit=0", "limit=abc"):
            status, body = await call(http, "GET", f"{svc.url}{API}/verdicts?{bad}")
            assert status == 400 and body["error"].startswith("bad_"), bad

        status, body = await call(http, "GET", f"{svc.url}{API}/verdicts/{sha256_hex(red)}")
        assert status == 200
        assert body["label"] == "csam" and body["signals"]["nsfw"] is True
        assert "young girl" in body["signals"]["caption"]
        events = [a["event"] for a in body["audit"]]
        assert "judged" in events and "answered" in events
        assert body["list"] is None and body["in_quarantine"] is False
        status, body = await call(http, "GET", f"{svc.url}{API}/verdicts/{'d' * 64}")
        assert status == 404 and body["error"] == "not_found"
        status, body = await call(http, "GET", f"{svc.url}{API}/verdicts/not-a-hash")
        assert status == 400 and body["error"] == "bad_sha256"


async def test_allow_lists_releases_from_quarantine_and_next_upload_is_accepted(
    tmp_path: Path, http
):
    red = images.jpeg("red", seed=20)
    sha = sha256_hex(red)
    async with running_service(admin_settings(tmp_path), backend=MockBackend()) as svc:
        assert (await validate_upload(http, svc.scan_url(), red, "image/jpeg")).status == 406
        original = tmp_path / "pictrs" / "files" / "ab" / "meme.jpg"
        original.parent.mkdir(parents=True)
        original.write_bytes(red)
        quarantine = svc.parts.quarantine
        await quarantine.admit_file(sha, original, origin="local")
        assert not original.exists() and quarantine.held_path(sha).read_bytes() == red

        status, body = await call(
            http,
            "POST",
            f"{svc.url}{API}/verdicts/{sha}/allow",
            json={"note": "it is a meme", "by": "alice"},
        )
        assert status == 200, body
        record = body["audit"]
        assert record["event"] == "allow" and record["action"] == "allow"
        assert record["by"] == "api:alice"
        assert record["detail"]["note"] == "it is a meme"
        assert record["detail"]["previous_label"] == "csam"
        assert record["detail"]["quarantine"]["released"][0]["identifier"] == str(original)
        assert body["list"] == "allow"
        # Put back where it was found, and no longer held.
        assert original.read_bytes() == red
        assert not quarantine.held_path(sha).exists()
        assert await quarantine.held(sha) == []

        again = await validate_upload(http, svc.scan_url(), red, "image/jpeg")
        assert again.status == 200 and again.body["route"] == "allow"

        status, shown = await call(http, "GET", f"{svc.url}{API}/verdicts/{sha}")
        assert shown["list"] == "allow"
        assert [q["state"] for q in shown["quarantine"]] == ["released"]
        assert any(a["event"] == "allow" and a["by"] == "api:alice" for a in shown["audit"])


async def test_confirm_deny_lists_and_deletes_the_quarantined_copy(tmp_path: Path, http):
    magenta = images.jpeg("magenta", seed=21)
    sha = sha256_hex(magenta)
    async with running_service(admin_settings(tmp_path), backend=MockBackend()) as svc:
        first = await validate_upload(http, svc.scan_url(), magenta, "image/jpeg")
        assert first.status == 200 and first.body["label"] == "nsfw"
        quarantine = svc.parts.quarantine
        await quarantine.admit_bytes(
            sha,
            magenta,
            origin="s3",
            identifier="media/ab/cd.jpg",
            detail={"instance": "lemmy.example"},
        )
        status, body = await call(
            http,
            "POST",
            f"{svc.url}{API}/verdicts/{sha}/confirm",
            headers={"X-Admin-Actor": "bob"},
            json={"note": "known"},
        )
        assert status == 200, body
        record = body["audit"]
        assert (record["event"], record["action"], record["by"]) == ("confirm", "deny", "api:bob")
        assert record["label"] == "csam" and record["detail"]["quarantine_deleted"] == 1
        assert not quarantine.held_path(sha).exists()
        again = await validate_upload(http, svc.scan_url(), magenta, "image/jpeg")
        assert again.status == 406 and again.body["route"] == "deny"
        status, body = await call(
            http, "POST", f"{svc.url}{API}/verdicts/{sha}/confirm", json=["not", "an", "object"]
        )
        assert status == 400 and body["error"] == "bad_json"


async def test_rejudge_from_stored_signals_and_with_a_fresh_backend_call(tmp_path: Path, http):
    backend = MockBackend()
    async with running_service(admin_settings(tmp_path), backend=backend) as svc:
        store, policy = svc.parts.store, svc.parts.policy
        # Stored under the current policy version, but judged by rules since fixed.
        stale = Verdict(
            label=Label.CLEAN,
            policy_version=policy.version,
            backend="horde",
            signals=Signals(backend="horde", nsfw=True, caption="two kids, naked"),
        )
        sha = "e" * 64
        await store.put_verdict(sha, stale)
        status, body = await call(
            http,
            "POST",
            f"{svc.url}{API}/verdicts/{sha}/rejudge",
            json={"mode": "policy", "by": "carol"},
        )
        assert status == 200, body
        assert body["state"] == "done"
        assert body["audit"]["event"] == "rejudged" and body["audit"]["label"] == "csam"
        assert body["audit"]["detail"]["from"] == "clean" and body["audit"]["by"] == "api:carol"
        assert (await store.get_verdict(sha)).verdict.label is Label.CSAM

        # A fresh backend call needs bytes: only a quarantined copy has them.
        status, body = await call(
            http, "POST", f"{svc.url}{API}/verdicts/{sha}/rejudge", json={"mode": "backend"}
        )
        assert status == 409 and body["error"] == "no_copy"

        red = images.jpeg("red", seed=22)
        red_sha = sha256_hex(red)
        await store.put_verdict(
            red_sha, Verdict(label=Label.ERROR, reasons=["horde refused"], backend="horde")
        )
        await svc.parts.quarantine.admit_bytes(
            red_sha, red, origin="local", identifier=str(tmp_path / "x.jpg")
        )
        calls = backend.calls
        status, body = await call(
            http,
            "POST",
            f"{svc.url}{API}/verdicts/{red_sha}/rejudge",
            json={"mode": "backend", "wait_s": 10},
        )
        assert status == 200, body
        assert backend.calls == calls + 1
        assert body["audit"]["label"] == "csam" and body["audit"]["detail"]["from"] == "error"
        assert (await store.get_verdict(red_sha)).verdict.label is Label.CSAM

        status, body = await call(
            http, "POST", f"{svc.url}{API}/verdicts/{sha}/rejudge", json={"mode": "guess"}
        )
        assert status == 400 and body["error"] == "bad_mode"
        status, body = await call(
            http, "POST", f"{svc.url}{API}/verdicts/{'f' * 64}/rejudge", json={"mode": "policy"}
        )
        assert status == 409 and body["error"] == "no_signals"


async def test_queue_stats_and_evidence_export(tmp_path: Path, http):
    red, green, junk = images.jpeg("red", seed=30), images.jpeg("green", seed=31), b"not media"
    settings = admin_settings(tmp_path)
    async with running_service(settings, backend=MockBackend()) as svc:
        for data in (red, green):
            await validate_upload(http, svc.scan_url(), data, "image/jpeg")
        # Unreadable bytes are accepted by default and land in the "unscanned" queue.
        async with http.post(svc.scan_url(), data=junk) as resp:
            assert resp.status == 200
        status, queue = await call(http, "GET", f"{svc.url}{API}/queue")
        assert status == 200
        assert [p["sha256"] for p in queue["positives"]] == [sha256_hex(red)]
        assert [u["label"] for u in queue["unscanned"]] == ["unreadable"]
        await call(
            http,
            "POST",
            f"{svc.url}{API}/verdicts/{sha256_hex(red)}/confirm",
            json={"by": "dave", "note": "reported to NCMEC"},
        )
        status, queue = await call(http, "GET", f"{svc.url}{API}/queue")
        assert queue["positives"] == []  # decided items leave the queue

        status, stats = await call(http, "GET", f"{svc.url}{API}/stats")
        assert status == 200
        assert stats["verdicts"] == {"csam": 1, "clean": 1, "unreadable": 1}
        assert stats["lists"] == {"deny": 1}
        assert stats["backend"]["name"] == "mock" and stats["backend"]["live"] is True
        assert stats["policy"] == svc.parts.policy.version

        status, rows = await call(http, "GET", f"{svc.url}{API}/export?format=json")
        assert status == 200
        (row,) = rows
        assert row["sha256"] == sha256_hex(red) and row["label"] == "csam"
        assert "pdq" in row and row["where_found"] == [f"upload:{client_tag(CLIENT_ID)}"]
        assert row["first_seen"].endswith("+00:00")
        assert row["decisions"] == [
            {
                "ts": row["decisions"][0]["ts"],
                "decision": "confirm",
                "by": "api:dave",
                "note": "reported to NCMEC",
            }
        ]
        async with http.get(
            f"{svc.url}{API}/export?format=csv", headers={"Authorization": f"Bearer {TOKEN}"}
        ) as resp:
            assert resp.status == 200 and resp.content_type == "text/csv"
            assert "attachment" in resp.headers["Content-Disposition"]
            text = await resp.text()
        assert text.splitlines()[0].startswith("sha256,pdq,label")
        assert "confirm by api:dave (reported to NCMEC)" in text

    # The CLI gives the same records from the same file, without the service.
    result = await asyncio.to_thread(
        CliRunner().invoke,
        main,
        ["--db", str(settings.store.path), "verdicts", "export", "--format", "json"],
    )
    assert result.exit_code == 0, result.output
    cli_rows = json.loads(result.output)
    assert cli_rows == rows
    # Never image bytes: no value is anywhere near an image's size.
    assert max(len(json.dumps(v)) for v in cli_rows[0].values()) < 300


def test_a_short_admin_token_is_a_config_error(tmp_path: Path):
    with pytest.raises(ConfigError, match=r"admin\.token .*at least 16 characters"):
        make_settings(tmp_path / "s.db", "http://127.0.0.1:9/api", admin={"token": "secret"})


async def test_repeated_wrong_logins_are_throttled(tmp_path: Path, http):
    async with running_service(admin_settings(tmp_path), backend=MockBackend()) as svc:
        for _ in range(10):
            async with http.post(
                f"{svc.url}/admin/login", data={"token": "wrong"}, allow_redirects=False
            ) as resp:
                assert resp.status == 401
        async with http.post(
            f"{svc.url}/admin/login", data={"token": TOKEN}, allow_redirects=False
        ) as resp:
            assert resp.status == 429  # even the right token waits now
            assert "hs_admin" not in resp.cookies
        m = svc.parts.metrics.errors
        assert m["admin_login_failed"] == 10
