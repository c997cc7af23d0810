"""The AI Horde's limits as the Horde enforces them, and our client inside them: the submit
window, the per-path status limit, the poll schedule, kudos charged on cancel. The fake Horde
answers 429 above its limits, so every test here also counts zero 429s."""

from __future__ import annotations

import asyncio
import time

import aiohttp
import pytest

from horde_scanner.backends.horde import HordeBackend, HordeClient
from horde_scanner.backends.ratelimit import PathLimiter, SubmitWindow
from horde_scanner.config import HordeSettings
from horde_scanner.media.decode import DecodeLimits, prepare
from horde_scanner.testing import images
from horde_scanner.testing.horde import ANON_APIKEY, FakeHorde


def settings(url: str, **overrides: object) -> HordeSettings:
    values: dict[str, object] = {"url": url, "retries": 1, "http_timeout_s": 5.0}
    values.update(overrides)
    return HordeSettings(**values)  # type: ignore[arg-type]


def prepared(seed: int, colour: str = "green"):
    return prepare(images.encode(images.image(colour, seed=seed), "PNG"), DecodeLimits())


async def test_submit_window_sends_a_burst_then_waits_for_answers_plus_period():
    window = SubmitWindow(3, period_s=0.4)
    started: list[float] = []
    answered: list[float] = []

    async def submit(i: int) -> None:
        async with window.slot(priority=i):
            started.append(time.monotonic())
            await asyncio.sleep(0.05)
            answered.append(time.monotonic())

    await asyncio.gather(*(submit(i) for i in range(7)))
    assert len(started) == 7
    # Any request is at least a period after the answer of the one `limit` places before it,
    # so no server window of that period can hold more than `limit` of them.
    for i in range(3, 7):
        assert started[i] >= sorted(answered)[i - 3] + 0.4 - 1e-3


async def test_submit_window_serves_the_oldest_arrival_first():
    window = SubmitWindow(1, period_s=0.05)
    order: list[int] = []
    async with window.slot(priority=0.0):
        waiters = [
            asyncio.create_task(_take(window, priority, order)) for priority in (5.0, 1.0, 3.0)
        ]
        await asyncio.sleep(0.02)
        assert window.waiting == 3
    await asyncio.gather(*waiters)
    assert order == [1, 3, 5] and window.waiting == 0


async def _take(window: SubmitWindow, priority: float, order: list[int]) -> None:
    async with window.slot(priority):
        order.append(int(priority))


async def test_a_cancelled_waiter_gives_its_place_up():
    window = SubmitWindow(1, period_s=0.05)
    order: list[int] = []
    async with window.slot(priority=0.0):
        gone = asyncio.create_task(_take(window, 1.0, order))
        stays = asyncio.create_task(_take(window, 2.0, order))
        await asyncio.sleep(0.01)
        gone.cancel()
        with pytest.raises(asyncio.CancelledError):
            await gone
    await stays
    assert order == [2]


async def test_path_limiter_keeps_keys_apart():
    limiter = PathLimiter(2, period_s=0.3)
    calls: dict[str, list[float]] = {"a": [], "b": []}

    async def call(key: str) -> None:
        async with limiter.slot(key):
            calls[key].append(time.monotonic())

    begun = time.monotonic()
    await asyncio.gather(*(call("a") for _ in range(4)), *(call("b") for _ in range(2)))
    # Two on "a" at once, the next two a period later; "b" never waited for "a".
    assert calls["a"][2] - begun >= 0.3 - 1e-3
    assert len(calls["b"]) == 2 and len(limiter) <= 2


async def test_a_burst_beyond_the_submit_limit_gets_no_429(http: aiohttp.ClientSession):
    """Twelve images at once against a Horde allowing five per window: five go at once, the
    rest wait for the window, none is refused, each is submitted exactly once."""
    async with FakeHorde(latency=0.05, post_rate_per_min=5, post_window_s=0.5) as horde:
        config = settings(horde.url, submits_per_min=5)
        client = HordeClient(config, http, submits=SubmitWindow(5, period_s=0.5))
        backend = HordeBackend(config, http, client=client)
        results = await asyncio.gather(*(backend.judge(prepared(i)) for i in range(12)))
    assert all(r.nsfw is False for r in results)
    assert horde.rate_limited == 0 and client.rate_limited == 0
    assert len(horde.submissions) == 12 and horde.posts == 12


async def test_status_polls_stay_inside_the_per_path_limit(http: aiohttp.ClientSession):
    async with FakeHorde(latency=1.2, status_rate_per_s=2) as horde:
        # Polls every 0.11 s while processing would be 9/s; our share is 2/s per request.
        config = settings(
            horde.url, first_poll_s=0.05, processing_poll_s=0.11, status_polls_per_s=2
        )
        backend = HordeBackend(config, http)
        results = await asyncio.gather(*(backend.judge(prepared(i)) for i in range(4)))
    assert len(results) == 4 and horde.rate_limited == 0 and horde.status_calls >= 8


async def test_first_poll_comes_early(http: aiohttp.ClientSession):
    # An instant Horde: one status poll (the early first one) finds the answer.
    async with FakeHorde(latency=0.0) as horde:
        backend = HordeBackend(settings(horde.url, poll_interval_s=30.0), http)
        async with asyncio.timeout(10):
            signals = await backend.judge(prepared(1, "magenta"))
    assert signals.nsfw is True and horde.status_calls == 1


async def test_polls_faster_while_a_worker_processes(http: aiohttp.ClientSession):
    # Waiting polls every 30 s would miss any timeout; processing polls catch the answer.
    async with FakeHorde(latency=1.0) as horde:
        config = settings(horde.url, first_poll_s=0.6, poll_interval_s=30.0, processing_poll_s=0.2)
        backend = HordeBackend(config, http)
        async with asyncio.timeout(10):
            await backend.judge(prepared(2))
    assert horde.status_calls >= 2 and horde.rate_limited == 0


async def _cancel_after(backend: HordeBackend, delay_s: float, seed: int) -> None:
    task = asyncio.create_task(backend.judge(prepared(seed)))
    await asyncio.sleep(delay_s)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_cancel_charges_like_the_horde(http: aiohttp.ClientSession):
    """Cancelled while waiting: free on both sides. Cancelled while a worker processed it:
    charged by the Horde, and counted by us."""
    async with FakeHorde(latency=2.0) as horde:
        config = settings(horde.url, first_poll_s=0.1, poll_interval_s=0.2, max_kudos_per_day=100)
        backend = HordeBackend(config, http)
        await _cancel_after(backend, 0.4, 1)  # forms waiting until 1.0 s
        assert horde.deletes == 1 and horde.kudos_spent.get(ANON_APIKEY, 0.0) == 0.0
        assert backend.kudos_estimate == 0.0 and backend.budget.spent == 0.0
        await _cancel_after(backend, 1.5, 2)  # processing from 1.0 s
        assert horde.deletes == 2
        charged = horde.kudos_spent[ANON_APIKEY]
        assert charged == 6.0 == backend.kudos_estimate == backend.budget.spent
        assert backend.budget.reserved == 0.0
        # The cancelled request is still there for a GET, as on the real Horde.
        async with http.get(f"{horde.url}/v2/interrogate/status/{horde.submissions[1].id}") as r:
            assert r.status == 200 and (await r.json())["state"] == "partial"


async def test_a_burst_is_submitted_oldest_first(http: aiohttp.ClientSession):
    async with FakeHorde(latency=0.05, post_rate_per_min=2, post_window_s=0.3) as horde:
        config = settings(horde.url, submits_per_min=2)
        client = HordeClient(config, http, submits=SubmitWindow(2, period_s=0.3))
        backend = HordeBackend(config, http, client=client)
        # Sizes tell the images apart at the fake; each judge() starts a little later.
        sides = [64 + 8 * i for i in range(6)]
        tasks = []
        for side in sides:
            image = images.encode(images.image(seed=side, size=(side, side)), "PNG")
            tasks.append(asyncio.create_task(backend.judge(prepare(image, DecodeLimits()))))
            await asyncio.sleep(0.01)
        await asyncio.gather(*tasks)
    assert [s.image_size[0] for s in horde.submissions] == sides
    assert horde.rate_limited == 0


async def test_waiting_submits_do_not_hold_back_polls_of_sent_requests(
    http: aiohttp.ClientSession,
):
    async with FakeHorde(latency=0.5) as horde:
        config = settings(horde.url, submits_per_min=1)
        client = HordeClient(config, http, submits=SubmitWindow(1, period_s=60.0))
        backend = HordeBackend(config, http, client=client)
        sent = asyncio.create_task(backend.judge(prepared(1)))
        while not horde.submissions:
            await asyncio.sleep(0.01)
        queued = asyncio.create_task(backend.judge(prepared(2)))
        async with asyncio.timeout(10):
            await sent  # answered while the second image waits for the window
        assert client.submits.waiting == 1 and len(horde.submissions) == 1
        assert "1 waiting for the submit limit" in backend.readiness().detail
        queued.cancel()
        with pytest.raises(asyncio.CancelledError):
            await queued
    assert client.submits.waiting == 0 and horde.rate_limited == 0


async def test_hybrid_routing_reads_the_horde_queue(http: aiohttp.ClientSession):
    from horde_scanner.backends.router import RoutedBackend
    from tests.integration.test_router import named_mock

    local = named_mock("clip", latency_s=10.0)  # slower than the budget: CPU CLIP, say
    async with FakeHorde(latency=0.05, interrogator_count=4) as horde:
        backend = HordeBackend(settings(horde.url), http)
        router = RoutedBackend("hybrid", [local, backend], budget_s=8.0)
        await backend.read_performance()  # an idle Horde: (0 + 2 forms) x 3 s
        assert [p.name for p in router.order()] == ["horde", "clip"]
        horde.extra_queued_forms = 400  # a queue of minutes
        await backend.read_performance()
        assert [p.name for p in router.order()] == ["clip", "horde"]
        assert (await router.judge(prepared(1))).backend == "mock"
