"""The validation endpoint end to end: pict-rs-style chunked uploads over loopback, the fake
AI Horde as the backend, a real SQLite store."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from horde_scanner.media.hashing import sha256_hex
from horde_scanner.store.sqlite import Store
from horde_scanner.testing import images
from horde_scanner.testing.horde import FakeHorde
from horde_scanner.testing.pictrs import FakePictrs, validate_upload
from horde_scanner.testing.service import make_settings, running_service, wait_for
from horde_scanner.verdict import Label, Signals, Verdict
from tests.pictrs_helpers import service_with_pictrs


@pytest.fixture
async def horde():
    async with FakeHorde(latency=0.2) as fake:
        yield fake


async def test_miss_judged_in_time_then_answered_from_cache(tmp_path: Path, horde, http):
    settings = make_settings(tmp_path / "s.db", horde.url)
    red = images.jpeg("red", seed=1)
    async with running_service(settings) as svc:
        first = await validate_upload(http, svc.scan_url(), red, "image/jpeg")
        assert first.status == 406
        assert first.body["label"] == "csam" and first.body["route"] == "backend"
        assert any("nsfw form is true" in r for r in first.body["reasons"])
        posts = horde.posts

        again = await validate_upload(http, svc.scan_url(), red, "image/jpeg")
        assert again.status == 406 and again.body["route"] == "cache"
        assert horde.posts == posts  # no second Horde request

        clean = await validate_upload(
            http, svc.scan_url(), images.jpeg("green", seed=2), "image/jpeg"
        )
        assert clean.status == 200 and clean.body["label"] == "clean"

    # The verdict outlives the process: a new service answers from the same file.
    async with running_service(settings) as svc:
        third = await validate_upload(http, svc.scan_url(), red, "image/jpeg")
        assert third.status == 406 and third.body["route"] == "cache"
        assert horde.posts == posts + 1


async def test_nsfw_rejected_only_when_configured(tmp_path: Path, horde, http):
    nsfw = images.jpeg("magenta", seed=3)
    settings = make_settings(tmp_path / "a.db", horde.url)
    async with running_service(settings) as svc:
        result = await validate_upload(http, svc.scan_url(), nsfw, "image/jpeg")
        assert result.status == 200 and result.body["label"] == "nsfw"
    settings = make_settings(
        tmp_path / "a.db", horde.url, validation={"reject_labels": ["csam", "nsfw"]}
    )
    async with running_service(settings) as svc:
        result = await validate_upload(http, svc.scan_url(), nsfw, "image/jpeg")
        assert result.status == 406 and result.body["route"] == "cache"


async def test_identical_concurrent_uploads_share_one_judgement(tmp_path: Path, horde, http):
    settings = make_settings(tmp_path / "s.db", horde.url)
    data = images.jpeg("green", seed=4)
    async with running_service(settings) as svc:
        results = await asyncio.gather(
            *(validate_upload(http, svc.scan_url(), data, "image/jpeg") for _ in range(12))
        )
    assert {r.status for r in results} == {200}
    assert horde.posts == 1


@pytest.mark.parametrize("on_timeout, status", [("accept", 200), ("reject", 406)])
async def test_deadline_is_never_overrun(tmp_path: Path, http, on_timeout: str, status: int):
    async with FakeHorde(latency=30.0) as horde:
        settings = make_settings(
            tmp_path / "s.db", horde.url, validation={"deadline_s": 1.0, "on_timeout": on_timeout}
        )
        async with running_service(settings) as svc:
            result = await validate_upload(http, svc.scan_url(), images.jpeg(seed=5), "image/jpeg")
            assert result.status == status
            assert result.body["route"] == "timeout" and result.body["label"] is None
            assert result.elapsed_s < 1.5  # answered by the deadline, not by the Horde (30 s)
            # The judgement goes on in the background, from a persisted job.
            assert await svc.parts.store.count_jobs() == 1


async def test_late_positive_is_purged_through_pictrs(tmp_path: Path, http):
    red = images.jpeg("red", seed=6)
    async with FakeHorde(latency=1.5) as horde, FakePictrs(api_key="secret") as pictrs:
        alias = pictrs.add_image(red, "jpeg")
        extra = pictrs.add_alias(alias)
        async with service_with_pictrs(tmp_path, horde.url, pictrs, deadline_s=0.5) as svc:
            result = await validate_upload(http, svc.scan_url(), red, "image/jpeg")
            assert result.status == 200 and result.body["route"] == "timeout"
            store = svc.parts.store

            async def purged():
                return [p for p in await store.late_positives() if p.enforcement == "purged"]

            late = await wait_for(purged)
            assert late[0].sha256 == sha256_hex(red)
            assert set(late[0].detail["aliases"]) == {alias, extra}
            assert alias in pictrs.purged
            trail = await store.audit_trail(sha256_hex(red))
            assert [a.event for a in trail].count("late_positive") == 1
            # The next upload of the same bytes is rejected from the cache.
            again = await validate_upload(http, svc.scan_url(), red, "image/jpeg")
            assert again.status == 406 and again.body["route"] == "cache"


async def test_late_positive_without_pictrs_is_recorded_for_a_sweep(tmp_path: Path, http):
    red = images.jpeg("red", seed=7)
    async with FakeHorde(latency=1.0) as horde:
        settings = make_settings(tmp_path / "s.db", horde.url, validation={"deadline_s": 0.3})
        async with running_service(settings) as svc:
            await validate_upload(http, svc.scan_url(), red, "image/jpeg")
            store = svc.parts.store
            late = await wait_for(store.late_positives)
            assert late[0].enforcement == "recorded"
            stored = await store.get_verdict(sha256_hex(red))
            assert stored is not None and stored.verdict.label is Label.CSAM


async def test_background_judgement_survives_a_restart(tmp_path: Path, http):
    red = images.jpeg("red", seed=8)
    sha = sha256_hex(red)
    async with FakeHorde(latency=1.0) as horde:
        settings = make_settings(tmp_path / "s.db", horde.url, validation={"deadline_s": 0.3})
        async with running_service(settings) as svc:
            result = await validate_upload(http, svc.scan_url(), red, "image/jpeg")
            assert result.body["route"] == "timeout"
        # Stopped mid-judgement: the Horde request was cancelled, the job is still on disk.
        assert horde.deletes >= 1
        async with await Store.open(settings.store.path) as store:
            assert await store.count_jobs() == 1
            assert await store.get_verdict(sha) is None

        async with running_service(settings) as svc:
            store = svc.parts.store

            async def judged():
                return await store.get_verdict(sha)

            stored = await wait_for(judged)
            assert stored.verdict.label is Label.CSAM

            async def no_jobs_left():
                return await store.count_jobs() == 0

            assert await wait_for(no_jobs_left)
            # It was accepted before the restart, so it is a late positive now.
            late = await wait_for(store.late_positives)
            assert late[0].sha256 == sha


async def test_policy_change_rejudges_from_stored_signals(tmp_path: Path, horde, http):
    data = images.jpeg("green", seed=9)
    sha = sha256_hex(data)
    db = tmp_path / "s.db"
    async with await Store.open(db) as store:
        signals = Signals(backend="horde", nsfw=True, caption="two kids on a beach")
        old = Verdict(label=Label.CLEAN, policy_version="old-1", backend="horde", signals=signals)
        await store.put_verdict(sha, old, media_type="image/jpeg", size=len(data))
    async with running_service(make_settings(db, horde.url)) as svc:
        result = await validate_upload(http, svc.scan_url(), data, "image/jpeg")
        assert result.status == 406 and result.body["label"] == "csam"
        assert result.body["route"] == "cache"
        stored = await svc.parts.store.get_verdict(sha)
        assert stored.verdict.policy_version == svc.parts.policy.version
    assert horde.posts == 0


async def test_lists_answer_without_a_backend(tmp_path: Path, horde, http):
    red, green = images.jpeg("red", seed=10), images.jpeg("green", seed=11)
    db = tmp_path / "s.db"
    async with await Store.open(db) as store:
        await store.set_list(sha256_hex(red), "allow", note="false positive")
        await store.set_list(sha256_hex(green), "deny", note="known")
    async with running_service(make_settings(db, horde.url)) as svc:
        allowed = await validate_upload(http, svc.scan_url(), red, "image/jpeg")
        denied = await validate_upload(http, svc.scan_url(), green, "image/jpeg")
    assert (allowed.status, allowed.body["route"]) == (200, "allow")
    assert (denied.status, denied.body["route"], denied.body["label"]) == (406, "deny", "csam")
    assert horde.posts == 0


async def test_list_change_by_another_process_is_seen(tmp_path: Path, horde, http):
    red = images.jpeg("red", seed=12)
    db = tmp_path / "s.db"
    async with running_service(make_settings(db, horde.url)) as svc:
        assert (await validate_upload(http, svc.scan_url(), red, "image/jpeg")).status == 406
        async with await Store.open(db) as other:  # e.g. `horde-scanner allow` meanwhile
            await other.set_list(sha256_hex(red), "allow")

        async def accepted():
            r = await validate_upload(http, svc.scan_url(), red, "image/jpeg")
            return r.status == 200

        assert await wait_for(accepted, timeout=5, interval=0.3)


async def test_horde_receives_a_small_webp_with_our_client_agent(tmp_path: Path, horde, http):
    big = images.jpeg("green", size=(2000, 1200), seed=13)
    async with running_service(make_settings(tmp_path / "s.db", horde.url)) as svc:
        assert (await validate_upload(http, svc.scan_url(), big, "image/jpeg")).status == 200
    sub = horde.submissions[-1]
    assert max(sub.image_size) <= 512
    assert sub.image_format == "WEBP"
    assert {f for f in sub.forms} == {"nsfw", "caption"}
    agent = horde.client_agents[-1]
    name, version, contact = agent.split(":", 2)
    assert name == "horde-scanner" and version and contact.startswith("http")
