"""Our AI Horde client against the fake Horde: every documented failure mode."""

from __future__ import annotations

import asyncio
import io

import pytest
from PIL import Image

from horde_scanner.backends.base import BackendFailed, BackendUnavailable
from horde_scanner.backends.horde import HordeBackend
from horde_scanner.config import HordeSettings
from horde_scanner.media.decode import DecodeLimits, prepare
from horde_scanner.testing import images
from horde_scanner.testing.horde import FakeHorde


def settings(url: str, **overrides: object) -> HordeSettings:
    values: dict[str, object] = {
        "url": url,
        "poll_interval_s": 0.12,
        "retries": 2,
        "http_timeout_s": 2.0,
        "maintenance_pause_s": 30.0,
    }
    values.update(overrides)
    return HordeSettings(**values)  # type: ignore[arg-type]


def prepared(colour: str = "green", seed: int = 0):
    return prepare(images.jpeg(colour, seed=seed), DecodeLimits())


async def test_signals_from_nsfw_caption_and_interrogation(http):
    async with FakeHorde(latency=0.1) as horde:
        backend = HordeBackend(settings(horde.url, interrogation=True), http)
        signals = await backend.judge(prepared("red"))
    assert signals.nsfw is True
    assert "girl" in (signals.caption or "")
    assert "lolicon" in signals.tags
    assert horde.submissions[-1].forms == ["nsfw", "caption", "interrogation"]
    # Kudos: nsfw 1 + caption 1 + interrogation 3, burn 2 each with slow workers.
    assert backend.kudos_estimate == 11


async def test_429_waits_and_keeps_the_image(http):
    async with FakeHorde(latency=0.1) as horde:
        horde.too_many_prompts = True
        backend = HordeBackend(settings(horde.url), http)
        task = asyncio.create_task(backend.judge(prepared()))
        await asyncio.sleep(1.0)
        assert not task.done() and horde.rate_limited + horde.errors["TooManyPrompts"] >= 1
        horde.too_many_prompts = False
        signals = await asyncio.wait_for(task, 10)
    assert signals.nsfw is False


async def test_limiter_429_without_rc_is_retried(http):
    async with FakeHorde(latency=0.1, post_rate_per_min=1) as horde:
        backend = HordeBackend(settings(horde.url), http)
        await backend.judge(prepared(seed=1))
        task = asyncio.create_task(backend.judge(prepared(seed=2)))
        await asyncio.sleep(0.5)
        assert horde.rate_limited >= 1 and not task.done()
        horde.post_rate_per_min = None
        await asyncio.wait_for(task, 10)


async def test_maintenance_pauses_sending(http):
    async with FakeHorde(latency=0.1) as horde:
        horde.maintenance = True
        backend = HordeBackend(settings(horde.url), http)
        with pytest.raises(BackendUnavailable, match="maintenance"):
            await backend.judge(prepared())
        posts = horde.posts
        assert not backend.readiness().live
        horde.maintenance = False
        # Still paused: nothing is sent until the pause is over.
        with pytest.raises(BackendUnavailable):
            await backend.judge(prepared())
        assert horde.posts == posts


async def test_invalid_api_key_is_fatal_and_stops_sending(http):
    async with FakeHorde(latency=0.1) as horde:
        backend = HordeBackend(settings(horde.url, api_key="wrong-key-1"), http)
        with pytest.raises(BackendUnavailable, match="InvalidAPIKey"):
            await backend.judge(prepared())
        posts = horde.posts
        with pytest.raises(BackendUnavailable):
            await backend.judge(prepared())
        assert horde.posts == posts
        readiness = backend.readiness()
        assert not readiness.live and "api_key" in readiness.detail


async def test_untrusted_ip_pauses(http):
    async with FakeHorde(latency=0.1) as horde:
        horde.untrusted_ip = True
        backend = HordeBackend(settings(horde.url), http)
        with pytest.raises(BackendUnavailable):
            await backend.judge(prepared())
        assert not backend.readiness().live


async def test_image_refused_is_a_failure_not_a_retry(http):
    async with FakeHorde(latency=0.1) as horde:
        backend = HordeBackend(settings(horde.url), http)
        broken = prepared()
        object.__setattr__(broken, "webp", b"not an image at all")
        with pytest.raises(BackendFailed, match="ImageValidationFailed"):
            await backend.judge(broken)


async def test_expired_request_is_resubmitted_once(http):
    async with FakeHorde(latency=0.6, expire_after=0.3) as horde:
        backend = HordeBackend(settings(horde.url), http)
        with pytest.raises(BackendUnavailable, match="expired"):
            await backend.judge(prepared())
        assert horde.posts == 2


async def test_expiry_then_success_on_resubmission(http):
    async with FakeHorde(latency=0.5) as horde:
        backend = HordeBackend(settings(horde.url), http)
        task = asyncio.create_task(backend.judge(prepared("magenta")))
        while horde.posts < 1:
            await asyncio.sleep(0.01)
        horde.interrogations.clear()  # the request is gone, as after its expiry
        signals = await asyncio.wait_for(task, 10)
        assert signals.nsfw is True and horde.posts == 2


async def test_faulted_forms_are_resubmitted_once(http):
    async with FakeHorde(latency=0.1) as horde:
        horde.fault_next = 1
        backend = HordeBackend(settings(horde.url), http)
        signals = await backend.judge(prepared())
        assert signals.caption and horde.posts == 2

        horde.fault_forms = {"nsfw"}
        with pytest.raises(BackendUnavailable, match="faulted"):
            await backend.judge(prepared(seed=3))


async def test_connection_drops_are_retried(http):
    async with FakeHorde(latency=0.1) as horde:
        horde.drop_connections = 2
        backend = HordeBackend(settings(horde.url), http)
        signals = await backend.judge(prepared())
        assert signals.nsfw is False and horde.dropped == 2


async def test_a_submit_whose_answer_is_lost_is_sent_again_and_paid_twice(http):
    """The Horde took the request, but its answer never arrived (a proxy reset it): the
    submit is retried, so the Horde holds two requests for one image, the first orphaned.
    The API has no idempotency key and no list of a user's requests, so there is no way to
    find the first one (docs/ai-horde.md says so)."""
    async with FakeHorde(latency=0.1) as horde:
        horde.drop_connections = 1
        horde.drop_after_handling = True
        backend = HordeBackend(settings(horde.url), http)
        signals = await backend.judge(prepared())
        assert signals.nsfw is False
        assert horde.posts == 2 and len(horde.submissions) == 2


async def test_slow_http_gives_up_after_bounded_retries(http):
    async with FakeHorde(latency=0.1) as horde:
        horde.delay_responses = 1.0
        backend = HordeBackend(settings(horde.url, http_timeout_s=0.3, retries=1), http)
        with pytest.raises(BackendUnavailable, match="unreachable"):
            await backend.judge(prepared())


async def test_unreachable_horde(http):
    backend = HordeBackend(settings("http://127.0.0.1:9", retries=1), http)
    with pytest.raises(BackendUnavailable, match="unreachable"):
        await backend.judge(prepared())


async def test_own_timeout_cancels_the_request(http):
    async with FakeHorde(latency=30) as horde:
        backend = HordeBackend(settings(horde.url, request_timeout_s=0.5), http)
        with pytest.raises(BackendUnavailable, match="did not answer"):
            await backend.judge(prepared())
        assert horde.deletes == 1


async def test_caller_cancellation_cancels_the_request(http):
    async with FakeHorde(latency=30) as horde:
        backend = HordeBackend(settings(horde.url), http)
        task = asyncio.create_task(backend.judge(prepared()))
        await asyncio.sleep(0.4)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await asyncio.sleep(0.1)
        assert horde.deletes == 1


async def test_in_flight_cap(http):
    async with FakeHorde(latency=0.5) as horde:
        backend = HordeBackend(settings(horde.url, max_in_flight=2), http)
        peak = 0

        async def watch():
            nonlocal peak
            while True:
                peak = max(peak, backend.in_flight)
                await asyncio.sleep(0.01)

        watcher = asyncio.create_task(watch())
        await asyncio.gather(*(backend.judge(prepared(seed=i)) for i in range(5)))
        watcher.cancel()
    assert peak == 2 and horde.posts == 5


def test_webp_payload_is_small():
    img = prepared(seed=4)
    decoded = Image.open(io.BytesIO(img.webp))
    assert decoded.format == "WEBP" and max(decoded.size) <= 512
