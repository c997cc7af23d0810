"""Routing decisions under each failure: no GPU, worker gone, workers saturated, Horde down."""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp
import pytest

from horde_scanner.backends.base import BackendUnavailable
from horde_scanner.backends.horde import HordeBackend
from horde_scanner.backends.kinds import build_backend
from horde_scanner.backends.mock import MockBackend
from horde_scanner.backends.router import RoutedBackend
from horde_scanner.backends.workers import WorkerPool
from horde_scanner.config import ConfigError
from horde_scanner.media.decode import DecodeLimits, prepare
from horde_scanner.testing import images
from horde_scanner.testing.horde import FakeHorde
from horde_scanner.testing.pictrs import validate_upload
from horde_scanner.testing.service import make_settings, running_service
from horde_scanner.verdict import Signals

KEY = "k"


def settings_for(tmp_path: Path, horde_url: str, kind: str, **sections):
    return make_settings(
        tmp_path / "s.db",
        horde_url,
        backend={"kind": kind},
        local={"in_process": False},
        **sections,
    )


def named_mock(name: str, latency_s: float, **kwargs) -> MockBackend:
    backend = MockBackend(**kwargs)
    backend.name = name
    backend.expected_latency_s = latency_s  # type: ignore[attr-defined]
    return backend


async def test_kinds_resolve_at_start_up(tmp_path: Path):
    async with aiohttp.ClientSession() as session:
        url = "http://127.0.0.1:9/api"
        # No GPU in process, no workers: auto is the Horde.
        assert isinstance(build_backend(settings_for(tmp_path, url, "auto"), session), HordeBackend)
        assert isinstance(
            build_backend(settings_for(tmp_path, url, "horde"), session), HordeBackend
        )
        pool_settings = settings_for(tmp_path, url, "auto", workers={"keys": [KEY]})
        pool = WorkerPool(pool_settings.workers)
        # A configured worker pool makes auto local.
        assert build_backend(pool_settings, session, pool=pool) is pool
        hybrid = build_backend(
            settings_for(tmp_path, url, "hybrid", workers={"keys": [KEY]}), session, pool=pool
        )
        assert isinstance(hybrid, RoutedBackend)
        assert [p.name for p in hybrid.members] == ["workers", "horde"]
        with pytest.raises(ConfigError, match="backend.kind=local: no local path"):
            build_backend(settings_for(tmp_path, url, "local"), session)
    with pytest.raises(ConfigError, match="backend.kind"):
        settings_for(tmp_path, url, "gpu")


async def test_hybrid_prefers_live_workers_and_falls_back_to_the_horde(tmp_path: Path):
    limits = DecodeLimits()
    # The Horde slower than a worker's typical second, so a live worker comes first.
    async with FakeHorde(latency=1.5) as horde:
        settings = settings_for(
            tmp_path,
            horde.url,
            "hybrid",
            workers={"keys": [KEY], "missing_after_s": 0.3, "max_queue": 1},
        )
        async with aiohttp.ClientSession() as session:
            pool = WorkerPool(settings.workers)
            router = build_backend(settings, session, pool=pool)
            assert isinstance(router, RoutedBackend)
            image = prepare(images.jpeg("red", seed=1), limits)

            # No worker ever polled: straight to the Horde.
            signals = await router.judge(image)
            assert signals.backend == "horde" and horde.posts == 1

            # A worker is polling: the pool is faster, so it gets the image.
            async def worker(signals: Signals | None) -> None:
                while (job := pool.pop("w1")) is None:
                    await asyncio.sleep(0.01)
                pool.answer(job.filename, "w1", signals, "" if signals else "GPU fell over")

            pool.seen("w1")
            answered = asyncio.create_task(worker(Signals(backend="w1", nsfw=False)))
            assert (await router.judge(image)).backend == "w1"
            await answered
            assert horde.posts == 1

            # The worker cannot judge this image: the router asks the Horde instead.
            answered = asyncio.create_task(worker(None))
            assert (await router.judge(image)).backend == "horde"
            await answered
            assert horde.posts == 2 and router.routed == {"workers": 1, "horde": 2}

            # Worker gone (stopped polling): the Horde, without waiting for it.
            await asyncio.sleep(0.35)
            assert not pool.readiness().live
            assert (await router.judge(image)).backend == "horde"
            assert [r.name for r in router.paths() if r.live] == ["horde"]


async def test_saturated_pool_sends_new_images_to_the_horde(tmp_path: Path):
    limits = DecodeLimits()
    async with FakeHorde(latency=0.1) as horde:
        settings = settings_for(
            tmp_path, horde.url, "hybrid", workers={"keys": [KEY], "max_queue": 1}
        )
        async with aiohttp.ClientSession() as session:
            pool = WorkerPool(settings.workers)
            router = build_backend(settings, session, pool=pool)
            pool.seen("slow")
            first = asyncio.create_task(router.judge(prepare(images.jpeg(seed=2), limits)))
            while pool.queued < 1:
                await asyncio.sleep(0.01)
            assert pool.saturated and not pool.readiness().live
            second = await router.judge(prepare(images.jpeg(seed=3), limits))
            assert second.backend == "horde"
            first.cancel()
            with pytest.raises(asyncio.CancelledError):
                await first
            assert pool.queued == 0  # a cancelled caller leaves nothing behind


async def test_horde_down_falls_back_to_a_local_path():
    image = prepare(images.jpeg("magenta", seed=4), DecodeLimits())
    # Local here is slower than the budget (say CPU CLIP), so the Horde comes first ...
    local = named_mock("clip", latency_s=10.0)
    async with FakeHorde(latency=0.1) as horde:
        from horde_scanner.config import HordeSettings

        async with aiohttp.ClientSession() as session:
            horde_backend = HordeBackend(
                HordeSettings(url=horde.url, poll_interval_s=0.1, retries=0), session
            )
            router = RoutedBackend("hybrid", [local, horde_backend], budget_s=5.0)
            horde_backend.latency.observe(2.0)  # as measured: the Horde has been quick today
            assert [p.name for p in router.order()] == ["horde", "clip"]
            assert (await router.judge(image)).backend == "horde"
            # ... until the Horde goes into maintenance: then local answers.
            horde.maintenance = True
            signals = await router.judge(image)
            assert signals.backend == "mock" and local.calls == 1
            assert router.fallbacks == 1
            # The Horde is now paused, so it is not even tried.
            assert [p.name for p in router.order()] == ["clip"]
            await router.judge(image)
            assert local.calls == 2 and router.fallbacks == 1


async def test_every_path_down_is_unavailable_with_reasons():
    a, b = named_mock("clip", 0.1), named_mock("workers", 1.0)
    a.available = b.available = False
    router = RoutedBackend("local", [a, b], budget_s=5.0)
    assert not router.readiness().live
    with pytest.raises(BackendUnavailable, match="no judging path is live"):
        await router.judge(prepare(images.jpeg(), DecodeLimits()))


async def test_measured_latency_reorders_paths():
    fast_then_slow = named_mock("workers", 0.01, delay_s=0.3)
    steady = named_mock("clip", 0.1, delay_s=0.05)
    router = RoutedBackend("local", [fast_then_slow, steady], budget_s=5.0)
    image = prepare(images.jpeg(), DecodeLimits())
    for _ in range(4):
        await router.judge(image)
    assert router.latency_s["workers"] > router.latency_s["clip"]
    assert router.order()[0].name == "clip"


async def test_readyz_lists_every_path(tmp_path: Path):
    async with FakeHorde(latency=0.1) as horde, aiohttp.ClientSession() as http:
        settings = settings_for(tmp_path, horde.url, "hybrid", workers={"keys": [KEY]})
        async with running_service(settings) as svc:
            async with http.get(f"{svc.url}/readyz") as resp:
                body = await resp.json()
            result = await validate_upload(
                http, svc.scan_url(), images.jpeg("red", seed=5), "image/jpeg"
            )
    assert body["backend"]["name"] == "hybrid" and body["status"] == "ready"
    assert body["paths"]["workers"]["live"] is False
    assert "no worker polled" in body["paths"]["workers"]["detail"]
    assert body["paths"]["horde"]["live"] is True
    # With no worker around the Horde judged it.
    assert result.status == 406 and horde.posts == 1
