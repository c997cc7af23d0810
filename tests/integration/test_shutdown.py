"""Stopping without failing an upload: SIGTERM, `server.processes`, a rolling restart."""

from __future__ import annotations

import asyncio
import signal
import time

import pytest

from horde_scanner.testing.images import distinct_png
from horde_scanner.testing.pictrs import validate_upload
from horde_scanner.testing.replicas import (
    Replica,
    SteadyUploads,
    replica_env,
    replica_horde,
    restart_each,
)

pytestmark = pytest.mark.timeout(180)


@pytest.fixture
async def horde():
    async with replica_horde(latency=1.5) as fake:
        yield fake


async def test_sigterm_answers_uploads_in_flight_and_turns_readyz_away(tmp_path, horde, http):
    store = f"sqlite:///{tmp_path / 'store.db'}"
    env = replica_env(store, horde.url, validation__deadline_s="20", server__drain_s="1.5")
    replica = Replica(env, tmp_path / "r").start()
    async with http.get(f"{replica.url}/readyz") as resp:
        assert resp.status == 200
    uploads = [
        asyncio.ensure_future(
            validate_upload(http, replica.scan_url(), distinct_png(6000 + i), "image/png")
        )
        for i in range(6)
    ]
    await asyncio.sleep(0.5)  # in flight: the fake Horde takes 1.5 s per form
    assert replica.proc is not None
    replica.proc.send_signal(signal.SIGTERM)
    await asyncio.sleep(0.2)
    async with http.get(f"{replica.url}/readyz") as resp:
        assert resp.status == 503
        assert (await resp.json())["status"] == "draining"
    results = await asyncio.gather(*uploads)
    assert [r.status for r in results] == [200] * len(uploads)
    assert results[0].body is not None
    code = await asyncio.get_running_loop().run_in_executor(None, replica.proc.wait, 60)
    assert code == 0
    assert "Traceback" not in replica.log.read_text()


async def readyz_pids(http, url: str, want: int, timeout: float = 30.0) -> set[int]:
    pids: set[int] = set()
    deadline = time.monotonic() + timeout
    while len(pids) < want and time.monotonic() < deadline:
        # Fresh connections are spread by the kernel; /readyz names the process.
        try:
            async with http.get(f"{url}/readyz", headers={"Connection": "close"}) as resp:
                body = await resp.json()
                if resp.status == 200:
                    pids.add(body["pid"])
        except OSError:
            await asyncio.sleep(0.1)
    return pids


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
async def test_processes_share_the_port_and_the_work(kind, tmp_path, horde, http, request):
    import os

    store = (f"sqlite:///{tmp_path / 'store.db'}" if kind == "sqlite"
             else request.getfixturevalue("pg_url"))  # fmt: skip
    horde.latency = 0.3
    env = replica_env(store, horde.url, server__processes="2", validation__deadline_s="15",
                      validation__on_timeout="reject")  # fmt: skip
    replica = Replica(env, tmp_path / "r").start()
    try:
        pids = await readyz_pids(http, replica.url, 2)
        assert len(pids) == 2
        # Each image several times at once, on fresh connections (so on both processes):
        # every copy is answered with the one judgement, none waits in vain (reject).
        distinct = [distinct_png(7000 + i) for i in range(8)]
        results = await asyncio.gather(*(
            validate_upload(http, replica.scan_url(), data, "image/png")
            for data in distinct for _ in range(4)
        ))  # fmt: skip
        refused = [r.body for r in results if r.status != 200]
        assert [r.status for r in results] == [200] * len(results), refused
        assert len(horde.submissions) == len(distinct)
        # A process that dies is replaced.
        victim = next(iter(pids))
        os.kill(victim, 9)
        await asyncio.sleep(1.0)
        again = await readyz_pids(http, replica.url, 2)
        assert len(again) == 2 and victim not in again
    finally:
        code = replica.terminate(60)
    assert code == 0


async def test_rolling_restart_behind_haproxy_answers_every_upload(tmp_path, horde, http, pg_url):
    from horde_scanner.testing.balancer import Haproxy

    horde.latency = 0.2
    env = replica_env(pg_url, horde.url, validation__deadline_s="20", server__drain_s="1")
    replicas = [Replica(env, tmp_path / f"r{i}").start() for i in range(2)]
    balancer = Haproxy([r.port for r in replicas]).start()
    scan = f"{balancer.url}/api/v1/scan/test-pictrs"
    # A mix of new images and cache hits.
    load = SteadyUploads(http, scan, lambda n: distinct_png(8000 + n % 40), rate=20.0)

    async def seen_ready(replica: Replica) -> None:
        # Ready itself, then seen so by the balancer (rise 2 x 200 ms), before the next.
        await readyz_pids(http, replica.url, 1)
        await asyncio.sleep(1.5)

    try:
        for replica in replicas:  # both healthy, and seen so by the balancer
            await seen_ready(replica)
        async with load:
            await asyncio.sleep(1.0)
            codes = await restart_each(replicas, seen_ready)
    finally:
        balancer.stop()
        for r in replicas:
            r.kill()
    assert codes == [0, 0]
    assert len(load.statuses) > 60
    failed = [s for s in load.statuses if s != 200]
    assert failed == []
