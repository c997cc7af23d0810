"""A job is judged once: bursts past the validation deadline keep their first hand-out (a
worker) or their first AI Horde request; the peers' own counts prove it."""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp

from horde_scanner.testing import images
from horde_scanner.testing.horde import FakeHorde
from horde_scanner.testing.pictrs import validate_upload
from horde_scanner.testing.service import make_settings, running_service, wait_for
from tests.integration.test_workers import PictrsSafetyWorker, worker_settings


def png(seed: int) -> bytes:
    return images.encode(images.image("green", seed=seed), "PNG")


async def upload_all(http: aiohttp.ClientSession, url: str, count: int, concurrency: int):
    gate = asyncio.Semaphore(concurrency)

    async def one(i: int):
        async with gate:
            return await validate_upload(http, url, png(10_000 + i), "image/png")

    return await asyncio.gather(*(one(i) for i in range(count)))


async def test_worker_pool_hands_each_image_out_once(tmp_path: Path):
    """200 distinct images, 64 at a time, one instant worker polling every 0.1 s."""
    settings = worker_settings(tmp_path, missing_after_s=10.0)
    async with running_service(settings) as svc, aiohttp.ClientSession() as http:
        worker, stop = PictrsSafetyWorker(svc.url), asyncio.Event()

        async def run() -> None:
            while not stop.is_set():
                if await worker.poll_once(http) is None:
                    await asyncio.sleep(0.1)

        task = asyncio.create_task(run())
        await wait_for(lambda: _live(svc))
        results = await upload_all(http, svc.scan_url(), 200, 64)
        assert all(r.status == 200 for r in results)
        await wait_for(lambda: _settled(svc), timeout=60)
        stop.set()
        await task
    assert len(worker.taken) == 200 == len(set(worker.taken))
    assert [status for _, status in worker.answered] == [201] * 200


async def _live(svc) -> bool:
    return bool(svc.parts.workers.live_workers())


async def _settled(svc) -> bool:
    return svc.parts.judge.runner.outstanding == 0


async def test_uploads_past_the_deadline_keep_their_horde_request(tmp_path: Path):
    """A Horde slower than the deadline: every upload is answered by on_timeout, and each
    image is still submitted exactly once, never cancelled, with no 429."""
    async with FakeHorde(latency=1.5) as horde, aiohttp.ClientSession() as http:
        settings = make_settings(
            tmp_path / "s.db",
            horde.url,
            backend={"kind": "horde"},
            validation={"deadline_s": 0.5},
        )
        async with running_service(settings) as svc:
            results = await upload_all(http, svc.scan_url(), 30, 30)
            assert {r.body["route"] for r in results} == {"timeout"}
            await wait_for(lambda: _settled(svc), timeout=60)
            for r in results:
                stored = await svc.parts.store.get_verdict(r.body["sha256"])
                assert stored is not None and stored.verdict.label.value == "clean"
    assert len(horde.submissions) == 30 == len({s.id for s in horde.submissions})
    assert horde.deletes == 0 and horde.rate_limited == 0


async def test_background_judgements_at_once(tmp_path: Path):
    """Enough job workers for a burst to be in flight on the Horde at once; local paths
    alone keep the smaller number they queue well with. Each backend says so in its contract
    (backends/base.py `concurrency`), also from inside a router or behind a pre-screen."""
    from horde_scanner.backends.base import concurrency
    from horde_scanner.backends.horde import HordeBackend
    from horde_scanner.backends.router import RoutedBackend
    from horde_scanner.backends.workers import WorkerPool

    settings = make_settings(tmp_path / "s.db", "http://127.0.0.1:9/api")
    pool_settings = worker_settings(tmp_path)
    async with aiohttp.ClientSession() as http:
        horde = HordeBackend(settings.horde, http)
        assert concurrency(horde) == 90
        pool = WorkerPool(pool_settings.workers)
        assert concurrency(RoutedBackend("hybrid", [pool, horde], 8.0)) == 90
    assert concurrency(WorkerPool(pool_settings.workers)) == 40
