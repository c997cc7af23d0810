"""Remote workers: a pictrs-safety-style worker client against our service over loopback,
several workers at once, worker death and job reassignment, bad requests."""

from __future__ import annotations

import asyncio
import io
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from PIL import Image

from horde_scanner.backends.mock import colour_marker_signals
from horde_scanner.media.hashing import sha256_hex
from horde_scanner.testing import images
from horde_scanner.testing.pictrs import validate_upload
from horde_scanner.testing.service import make_settings, running_service
from horde_scanner.verdict import Label

KEY = "worker-secret"
NO_HORDE = "http://127.0.0.1:9/api"  # never contacted with backend.kind=local


def worker_settings(tmp_path: Path, *, deadline_s: float = 3.0, **workers: Any):
    return make_settings(
        tmp_path / "s.db",
        NO_HORDE,
        backend={"kind": "local"},
        local={"in_process": False},
        workers={"keys": [KEY], "missing_after_s": 2.0, **workers},
        validation={"deadline_s": deadline_s},
    )


class PictrsSafetyWorker:
    """What fedi-safety's lemmy_safety_pictrs.py does: poll GET /api/v1/pop with an `apikey`
    header, read the file name from Content-Disposition, judge, POST the two booleans.
    (tests/integration/test_peer_conformance.py runs its exact loop, blocking requests in
    threads.)"""

    def __init__(
        self, base: str, *, key: str = KEY, think_s: float = 0.0, answer: bool = True
    ) -> None:
        self.base = base
        self.key = key
        self.think_s = think_s
        self.answer = answer
        self.taken: list[str] = []
        self.answered: list[tuple[str, int]] = []

    async def poll_once(self, http: aiohttp.ClientSession) -> str | None:
        async with http.get(f"{self.base}/api/v1/pop", headers={"apikey": self.key}) as resp:
            if resp.status == 204:
                return None
            assert resp.status == 200, await resp.text()
            # As fedi-safety parses it: everything after the first `=`, quotes and all.
            filename = resp.headers["Content-Disposition"].split("=", 1)[1]
            data = await resp.read()
        self.taken.append(filename)
        if not self.answer:
            return filename  # dies with the job in hand
        await asyncio.sleep(self.think_s)
        signals = colour_marker_signals(Image.open(io.BytesIO(data)))
        is_csam = bool(signals.nsfw and signals.caption and "young" in signals.caption)
        body = {"image": filename, "is_csam": is_csam, "is_nsfw": bool(signals.nsfw)}
        async with http.post(
            f"{self.base}/api/v1/pop", json=body, headers={"apikey": self.key}
        ) as resp:
            self.answered.append((filename, resp.status))
        return filename

    async def run(self, http: aiohttp.ClientSession, stop: asyncio.Event) -> None:
        while not stop.is_set():
            if await self.poll_once(http) is None:
                await asyncio.sleep(0.05)  # fedi-safety polls every 0.1 s


async def wait_until(predicate, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


async def test_pictrs_safety_worker_judges_uploads(tmp_path: Path):
    async with running_service(worker_settings(tmp_path)) as svc, aiohttp.ClientSession() as http:
        worker, stop = PictrsSafetyWorker(svc.url), asyncio.Event()
        task = asyncio.create_task(worker.run(http, stop))
        await wait_until(lambda: svc.parts.workers.live_workers())
        red = await validate_upload(http, svc.scan_url(), images.jpeg("red", seed=1), "image/jpeg")
        magenta = await validate_upload(
            http, svc.scan_url(), images.jpeg("magenta", seed=2), "image/jpeg"
        )
        green = await validate_upload(
            http, svc.scan_url(), images.jpeg("green", seed=3), "image/jpeg"
        )
        async with http.get(f"{svc.url}/readyz") as resp:
            ready = await resp.json()
        stop.set()
        await task
    assert (red.status, red.body["label"]) == (406, "csam")
    assert "worker says is_csam" in " ".join(red.body["reasons"])
    assert (magenta.status, magenta.body["label"]) == (200, "nsfw")
    assert (green.status, green.body["label"]) == (200, "clean")
    assert [status for _, status in worker.answered] == [201, 201, 201]
    assert all(name.endswith(".webp") for name in worker.taken)
    assert ready["paths"]["workers"]["live"] is True


async def test_several_workers_share_the_work(tmp_path: Path):
    async with running_service(worker_settings(tmp_path)) as svc, aiohttp.ClientSession() as http:
        workers = [PictrsSafetyWorker(svc.url, think_s=0.15) for _ in range(3)]
        stop = asyncio.Event()
        # Each has its own name, as fedi-safety workers on different hosts would.
        sessions = [aiohttp.ClientSession(headers={"X-Worker-Name": f"w{i}"}) for i in range(3)]
        tasks = [
            asyncio.create_task(w.run(s, stop)) for w, s in zip(workers, sessions, strict=True)
        ]
        await wait_until(lambda: len(svc.parts.workers.live_workers()) == 3)
        uploads = [images.jpeg(c, seed=10 + i) for i, c in enumerate(["green", "red"] * 4)]
        results = await asyncio.gather(
            *(validate_upload(http, svc.scan_url(), u, "image/jpeg") for u in uploads)
        )
        stop.set()
        await asyncio.gather(*tasks)
        for s in sessions:
            await s.close()
        pool = svc.parts.workers
    assert [r.status for r in results] == [200, 406] * 4
    assert sum(len(a) for a in [w.answered for w in workers]) == 8
    assert sum(1 for w in pool.workers.values() if w.answered) >= 2


async def test_job_of_a_vanished_worker_goes_to_another(tmp_path: Path):
    settings = worker_settings(tmp_path, job_timeout_s=0.6)
    red = images.jpeg("red", seed=20)
    async with running_service(settings) as svc, aiohttp.ClientSession() as http:
        pool = svc.parts.workers
        dying = PictrsSafetyWorker(svc.url, answer=False)
        assert await dying.poll_once(http) is None  # registers as live, nothing to do yet
        upload = asyncio.create_task(validate_upload(http, svc.scan_url(), red, "image/jpeg"))
        await wait_until(lambda: pool.queued == 1)
        taken = await dying.poll_once(http)  # takes the job, then "crashes"
        assert taken is not None
        healthy = PictrsSafetyWorker(svc.url)
        async with aiohttp.ClientSession(headers={"X-Worker-Name": "healthy"}) as other:
            # Before the timeout nothing is handed out twice.
            assert await healthy.poll_once(other) is None
            stop = asyncio.Event()
            task = asyncio.create_task(healthy.run(other, stop))
            result = await upload
            stop.set()
            await task
        # The dead worker's late answer finds the job closed.
        async with http.post(
            f"{svc.url}/api/v1/pop",
            headers={"apikey": KEY},
            json={"image": taken, "is_csam": False, "is_nsfw": False},
        ) as r:
            late = (r.status, await r.json())
    assert result.status == 406 and result.body["label"] == "csam"
    assert healthy.taken == [taken] and pool.reassigned == 1
    assert late[0] == 404 and late[1]["error"] == "unknown_job"


async def test_when_every_worker_is_gone_the_job_waits_for_later(tmp_path: Path):
    settings = worker_settings(tmp_path, deadline_s=1.5, missing_after_s=0.3, job_timeout_s=0.3)
    data = images.jpeg("red", seed=30)
    async with running_service(settings) as svc, aiohttp.ClientSession() as http:
        gone = PictrsSafetyWorker(svc.url, answer=False)
        await gone.poll_once(http)
        await asyncio.sleep(0.4)  # it stops polling: gone
        result = await validate_upload(http, svc.scan_url(), data, "image/jpeg")
        # No worker live: answered at once by on_timeout, not after the deadline.
        assert result.body["route"] == "unavailable" and result.status == 200
        assert await svc.parts.store.count_jobs() == 1  # kept for a worker to come back
        async with http.get(f"{svc.url}/readyz") as resp:
            ready = await resp.json()
        assert ready["status"] == "degraded" and ready["paths"]["workers"]["live"] is False
        # A worker comes back: the persisted job is judged.
        stop = asyncio.Event()
        back = PictrsSafetyWorker(svc.url)
        task = asyncio.create_task(back.run(http, stop))
        store = svc.parts.store
        deadline = time.monotonic() + 15
        while (await store.get_verdict(sha256_hex(data))) is None:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.1)
        stop.set()
        await task
        stored = await store.get_verdict(sha256_hex(data))
    assert stored.verdict.label is Label.CSAM


async def test_bad_worker_requests_get_clear_errors(tmp_path: Path):
    async with running_service(worker_settings(tmp_path)) as svc, aiohttp.ClientSession() as http:
        url = f"{svc.url}/api/v1/pop"
        async with http.get(url) as r:
            assert r.status == 401 and (await r.json())["error"] == "bad_worker_key"
        async with http.get(url, headers={"apikey": "wrong"}) as r:
            assert r.status == 401
        async with http.get(url, headers={"apikey": KEY}, params={"wait": "soon"}) as r:
            assert r.status == 400 and (await r.json())["error"] == "bad_wait"
        async with http.get(url, headers={"apikey": KEY}, params={"wait": "999"}) as r:
            assert r.status == 400 and "max_poll_wait_s" in (await r.json())["detail"]
        async with http.post(url, headers={"apikey": KEY}, data=b"{not json") as r:
            assert r.status == 400 and (await r.json())["error"] == "bad_json"
        async with http.post(url, headers={"apikey": KEY}, json={"image": "x.webp"}) as r:
            assert r.status == 400 and (await r.json())["error"] == "bad_answer"
        async with http.post(
            url, headers={"apikey": KEY}, json={"image": "x.webp", "signals": {"nsfw": "maybe"}}
        ) as r:
            assert r.status == 400 and (await r.json())["error"] == "bad_signals"
        async with http.post(
            url,
            headers={"apikey": KEY},
            json={"image": "x.webp", "is_csam": False, "is_nsfw": False},
        ) as r:
            assert r.status == 404 and (await r.json())["error"] == "unknown_job"
        async with http.get(url, headers={"apikey": KEY}, params={"wait": "0.2"}) as r:
            assert r.status == 204
    # No keys configured: the endpoints say the pool is off.
    plain = make_settings(tmp_path / "p.db", NO_HORDE)
    async with running_service(plain) as svc, aiohttp.ClientSession() as http:
        async with http.get(f"{svc.url}/api/v1/pop", headers={"apikey": KEY}) as r:
            assert r.status == 404 and (await r.json())["error"] == "workers_disabled"


async def test_our_worker_protocol_posts_signals(tmp_path: Path):
    """The rich variant without torch: a stand-in scorer gives CLIP-style scores and the
    service judges them with its own policy."""
    from horde_scanner.policy.rules import CLIP_PREFIX
    from horde_scanner.verdict import Signals
    from local_gpu.worker import Worker, WorkerError

    class Scorer:
        phrases: list[str] = []

        async def set_phrases(self, phrases: list[str]) -> None:
            self.phrases = phrases

        async def judge(self, image) -> Signals:
            sexual = colour_marker_signals(image.image).nsfw
            hit = {"a photo of a child", "a nude body"} if sexual else set()
            return Signals(
                backend="clip",
                scores={CLIP_PREFIX + p: (0.3 if p in hit else 0.1) for p in self.phrases},
            )

    async with running_service(worker_settings(tmp_path)) as svc, aiohttp.ClientSession() as http:
        scorer = Scorer()
        worker = Worker(svc.url, KEY, scorer, name="ours", concurrency=2, poll_wait_s=0.3)
        stop = asyncio.Event()
        task = asyncio.create_task(worker.run(stop))
        await wait_until(lambda: svc.parts.workers.live_workers())
        assert scorer.phrases == svc.parts.policy.clip.phrases
        red = await validate_upload(http, svc.scan_url(), images.jpeg("red", seed=40), "image/jpeg")
        green = await validate_upload(
            http, svc.scan_url(), images.jpeg("green", seed=41), "image/jpeg"
        )
        stop.set()
        await task
        with pytest.raises(WorkerError, match="refused the worker key"):
            await Worker(svc.url, "bad", scorer, name="x").run()
    assert red.status == 406 and red.body["label"] == "csam"
    assert any("worker:key1/ours: clip 'a nude body'" in r for r in red.body["reasons"])
    assert green.status == 200 and green.body["label"] == "clean"


async def test_jobs_waiting_for_workers_resume_as_soon_as_one_polls_again(tmp_path: Path, http):
    """The worker outage of issue 12: while no worker is live, uploads are answered by
    on_timeout at once and kept; the backlog is judged right after a worker polls again,
    not after the jobs' retry backoff (which had grown to tens of seconds)."""
    async with running_service(worker_settings(tmp_path, missing_after_s=1.0)) as svc:
        first = PictrsSafetyWorker(svc.url)
        await first.poll_once(http)  # a worker was there, then it went away
        await wait_until(lambda: not svc.parts.workers.readiness().live, timeout=5)
        new = [images.encode(images.image("red", seed=s), "PNG") for s in (61, 62, 63)]
        for data in new:
            answer = await validate_upload(http, svc.scan_url(), data, "image/jpeg")
            assert answer.status == 200 and answer.body["route"] == "unavailable"
        store = svc.parts.store
        assert await store.count_jobs() == len(new)
        await asyncio.sleep(3.0)  # the jobs' backoff grows meanwhile
        stop = asyncio.Event()
        back_at = time.monotonic()
        worker = asyncio.create_task(PictrsSafetyWorker(svc.url).run(http, stop))
        try:

            async def all_judged() -> bool:
                got = [await store.get_verdict(sha256_hex(d)) for d in new]
                return all(v is not None for v in got)

            deadline = time.monotonic() + 10
            while not await all_judged():
                assert time.monotonic() < deadline, "backlog not judged after the worker came back"
                await asyncio.sleep(0.05)
            print(f"backlog judged {time.monotonic() - back_at:.1f} s after a worker came back")
        finally:
            stop.set()
            await worker
        for data in new:
            stored = await store.get_verdict(sha256_hex(data))
            assert stored is not None and stored.verdict.label is Label.CSAM
