"""What each pict-rs version gets (docs/pictrs.md), against the fake pict-rs in the mode
of that version: 0.5.0+ purges late positives and deletes through its API; 0.4.x (no
/internal/hashes) gets late positives recorded, said once at start-up, never retried, and
enforced by the next sweep; 0.5.7+ answers an unknown alias with 404 alias-not-found."""

from __future__ import annotations

import logging
from pathlib import Path

import aiohttp
import pytest

from horde_scanner.backends.mock import MockBackend
from horde_scanner.integrations.pictrs import PictrsClient, PictrsError
from horde_scanner.media.hashing import sha256_hex
from horde_scanner.runtime.sweeps import run_scan
from horde_scanner.sweep.actions import Action
from horde_scanner.testing import images
from horde_scanner.testing.horde import FakeHorde
from horde_scanner.testing.pictrs import FakePictrs, validate_upload
from horde_scanner.testing.service import make_settings, running_service, wait_for
from tests.pictrs_helpers import pictrs_section, service_with_pictrs
from tests.scan_helpers import audit_rows, scan_settings

OLD_PICTRS = "pict-rs has no /internal/hashes"


def _said(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if OLD_PICTRS in r.getMessage()]


async def test_on_pictrs_04_late_positives_are_recorded_said_once_and_swept(
    tmp_path: Path, http, caplog
):
    reds = [images.jpeg("red", size=(96, 96), seed=s) for s in (11, 12)]
    files = tmp_path / "files"
    caplog.set_level(logging.INFO, logger="horde_scanner")
    async with FakeHorde(latency=1.0) as horde, FakePictrs("secret", version="0.4.8") as pictrs:
        async with service_with_pictrs(tmp_path, horde.url, pictrs, deadline_s=0.3) as svc:
            # Said at start-up, before any upload.
            async def said() -> bool:
                return bool(_said(caplog))

            await wait_for(said)
            for red in reds:
                result = await validate_upload(http, svc.scan_url(), red, "image/jpeg")
                assert result.body["route"] == "timeout" and result.status == 200
            store = svc.parts.store

            async def both_recorded():
                late = await store.late_positives()
                return late if len(late) == 2 else None

            late = await wait_for(both_recorded)
        # pict-rs 0.4 has the files, under identifiers without extension.
        for i, red in enumerate(reds):
            path = files / "ab" / "cd" / f"0000000{i}-aaaa-4bbb-8ccc-dddddddddddd"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(red)
        sweep = scan_settings(tmp_path / "s.db", pictrs=pictrs_section(pictrs))
        report = await run_scan(sweep, str(files), action=Action.DELETE, backend=MockBackend())
    assert {p.enforcement for p in late} == {"recorded"}
    assert all("0.5.0" in p.detail["why"] for p in late)
    assert {p.sha256 for p in late} == {sha256_hex(r) for r in reds}
    # Asked once (the start-up probe), never a purge, never retried.
    assert pictrs.requests["/internal/hashes"] == 1 + 1  # + the sweep's own look, below
    assert pictrs.requests["/internal/purge"] == 0
    assert len(_said(caplog)) == 2  # the service once; the sweep once
    # The next sweep acts on them from the recorded verdicts, deleting in storage.
    assert report.counts.cached == 2 and report.counts.acted == 2
    assert not any(files.rglob("0000000*"))
    deleted = audit_rows(tmp_path / "s.db", "scan_action")
    assert {a["action"] for a in deleted} == {"deleted"}
    assert all("< 0.5.0" in a["detail"]["why"] for a in deleted)
    assert any("prune_missing" in note for note in report.notes)


async def test_on_pictrs_05_nothing_is_said_and_late_positives_are_purged(
    tmp_path: Path, http, caplog
):
    red = images.jpeg("red", seed=13)
    caplog.set_level(logging.INFO, logger="horde_scanner")
    async with FakeHorde(latency=1.0) as horde, FakePictrs("secret", version="0.5.0") as pictrs:
        alias = pictrs.add_image(red, "jpeg")
        async with service_with_pictrs(tmp_path, horde.url, pictrs, deadline_s=0.3) as svc:

            async def probed() -> bool:
                return svc.parts.enforcer.can_purge is True

            await wait_for(probed)
            await validate_upload(http, svc.scan_url(), red, "image/jpeg")
            late = await wait_for(svc.parts.store.late_positives)
    assert late[0].enforcement == "purged" and pictrs.purged == [alias]
    assert _said(caplog) == []


async def test_pictrs_043_without_a_timeout_still_gets_an_answer_by_the_deadline(tmp_path: Path):
    settings = make_settings(
        tmp_path / "s.db", "http://127.0.0.1:9", validation={"deadline_s": 0.5}
    )
    slow = MockBackend(delay_s=30.0)
    async with running_service(settings, backend=slow) as svc:
        async with FakePictrs(version="0.4.3", external_validation=svc.scan_url()) as pictrs:
            assert pictrs.validation_timeout is None
            status, _ = await _pictrs_upload(pictrs, images.jpeg("green", seed=15))
        # Answered by on_timeout at the deadline; the judgement goes on from a persisted job.
        assert await svc.parts.store.count_jobs() == 1
    assert status == 201
    [call] = pictrs.validations
    assert (call.status, call.outcome) == (200, "accepted")


async def _pictrs_upload(pictrs: FakePictrs, data: bytes):
    form = aiohttp.FormData()
    form.add_field("images", data, filename="a.jpg", content_type="image/jpeg")
    async with aiohttp.ClientSession() as http, http.post(f"{pictrs.url}/image", data=form) as r:
        return r.status, await r.json()


@pytest.mark.parametrize(
    ("version", "purge", "identifier"),
    [
        (
            "0.5.6",
            (400, {"msg": "No images associated with provided alias"}),
            (404, {"msg": "No identifiers associated with provided alias"}),
        ),
        (
            "0.5.7",
            (404, {"msg": "Requested a file that doesn't exist", "code": "alias-not-found"}),
            (404, {"msg": "Requested a file that doesn't exist", "code": "alias-not-found"}),
        ),
    ],
)
async def test_unknown_alias_answers_by_version(version, purge, identifier, http):
    async with FakePictrs("secret", version=version) as pictrs:
        headers = {"X-Api-Token": "secret"}
        params = {"alias": "missing.webp"}
        async with http.post(f"{pictrs.url}/internal/purge", params=params, headers=headers) as r:
            got_purge = r.status, await r.json()
        async with http.get(
            f"{pictrs.url}/internal/identifier", params=params, headers=headers
        ) as r:
            got_identifier = r.status, await r.json()
        client = PictrsClient(pictrs.url, "secret", http)
        with pytest.raises(PictrsError, match=f"HTTP {purge[0]}"):
            await client.purge("missing.webp")
    assert got_purge == purge and got_identifier == identifier


async def test_hashes_are_78_hex_characters_and_found_by_sha256(http):
    data = images.jpeg("red", seed=14)
    async with FakePictrs("secret") as pictrs:
        alias = pictrs.add_image(data, "jpeg")
        client = PictrsClient(pictrs.url, "secret", http)
        aliases = await client.aliases_for_sha256(sha256_hex(data))
        async with http.get(
            f"{pictrs.url}/internal/hashes", headers={"X-Api-Token": "secret"}
        ) as r:
            listed = (await r.json())["page"]["hashes"][0]["hex"]
    assert aliases == [alias]
    assert len(listed) == 78 and listed[:64] == sha256_hex(data)
    assert int(listed[64:76], 16) == len(data) and listed[76:] == "05"  # jpeg


async def test_04_without_hashes_is_detected_by_the_client(http):
    async with FakePictrs("secret", version="0.4.8") as pictrs:
        client = PictrsClient(pictrs.url, "secret", http)
        assert await client.supports_hashes() is False
    async with FakePictrs("secret") as pictrs:
        client = PictrsClient(pictrs.url, "secret", http)
        assert await client.supports_hashes() is True
    unreachable = PictrsClient("http://127.0.0.1:9", "secret", http)
    with pytest.raises(PictrsError, match="unreachable"):
        await unreachable.supports_hashes()
