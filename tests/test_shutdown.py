"""Stopping without failing an upload: SIGTERM, `server.processes`, a rolling restart."""

from __future__ import annotations

import asyncio
import signal
import time

import pytest

from tests.fakes.horde import FakeHorde
from tests.fakes.pictrs import validate_upload
from tests.replicas import Replica, replica_env
from tests.test_replicas import distinct_png

pytestmark = pytest.mark.timeout(180)


@pytest.fixture
async def horde():
    fake = FakeHorde(
        latency=1.5, post_rate_per_min=None, status_rate_per_s=None, interrogator_count=32
    )
    await fake.start()
    yield fake
    await fake.stop()


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


async def test_processes_share_the_port(tmp_path, horde, http, pg_url):
    env = replica_env(pg_url, horde.url, server__processes="2", validation__deadline_s="20")
    replica = Replica(env, tmp_path / "r").start()
    try:
        pids = set()
        deadline = time.monotonic() + 30
        while len(pids) < 2 and time.monotonic() < deadline:
            # Fresh connections are spread by the kernel; /readyz names the process.
            async with http.get(f"{replica.url}/readyz", headers={"Connection": "close"}) as resp:
                pids.add((await resp.json()).get("pid"))
        assert len(pids) == 2
        data = distinct_png(7000)
        result = await validate_upload(http, replica.scan_url(), data, "image/png")
        assert result.status == 200
    finally:
        code = replica.terminate(60)
    assert code == 0
