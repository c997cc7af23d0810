"""Two service processes on one PostgreSQL database and one fake AI Horde behave as one service."""

from __future__ import annotations

import asyncio
import time

import pytest

from horde_scanner.media.hashing import sha256_hex
from horde_scanner.store.sqlite import Store
from horde_scanner.testing import images
from horde_scanner.testing.images import distinct_png
from horde_scanner.testing.pictrs import validate_upload
from horde_scanner.testing.replicas import ADMIN_TOKEN, Replica, replica_env, replica_horde

pytestmark = pytest.mark.timeout(180)


@pytest.fixture
async def horde():
    async with replica_horde(latency=0.3) as fake:
        yield fake


@pytest.fixture
def replicas(tmp_path, pg_url, horde):
    started: list[Replica] = []

    def start(**extra) -> Replica:
        env = replica_env(pg_url, horde.url, **{"validation__deadline_s": "30", **extra})
        replica = Replica(env, tmp_path / f"r{len(started)}").start()
        started.append(replica)
        return replica

    yield start
    for replica in started:
        replica.kill()


async def verdict_count(pg_url: str) -> tuple[int, int]:
    async with await Store.open(pg_url) as store:
        verdicts = sum((await store.count_verdicts()).values())
        return verdicts, await store.count_jobs()


async def all_judged(pg_url: str, n: int, timeout: float = 60.0) -> tuple[int, int]:
    deadline = time.monotonic() + timeout
    while (counts := await verdict_count(pg_url)) != (n, 0) and time.monotonic() < deadline:
        await asyncio.sleep(0.25)
    return counts


async def test_a_burst_split_across_replicas_is_judged_once_each(replicas, horde, pg_url, http):
    # An upload left waiting (no verdict reached it) would be rejected: clean images pass
    # only when the replica that did not judge heard of the other's verdict.
    strict = {"validation__deadline_s": "15", "validation__on_timeout": "reject"}
    one, two = replicas(**strict), replicas(**strict)
    distinct = [distinct_png(1000 + i) for i in range(12)]
    # Each distinct image goes to both replicas at once, and a second time to one of them.
    sends = []
    for i, data in enumerate(distinct):
        sends += [(one, data), (two, data), ((one, two)[i % 2], data)]
    results = await asyncio.gather(
        *(validate_upload(http, r.scan_url(), data, "image/png") for r, data in sends)
    )
    assert all(result.status == 200 for result in results), [r.status for r in results]
    assert await all_judged(pg_url, len(distinct)) == (len(distinct), 0)
    assert len(horde.submissions) == len(distinct)


async def test_a_replica_killed_mid_burst_loses_nothing(replicas, horde, pg_url, http):
    horde.latency = 2.0
    fast = {"validation__deadline_s": "0.5", "store__job_lease_s": "3"}
    doomed, survivor = replicas(**fast), replicas(**fast)
    burst = [distinct_png(2000 + i) for i in range(10)]
    results = await asyncio.gather(
        *(validate_upload(http, doomed.scan_url(), data, "image/png") for data in burst)
    )
    # Answered by on_timeout (accept); the judgements are persisted jobs, half done.
    assert all(result.status == 200 for result in results)
    doomed.kill()
    assert await all_judged(pg_url, len(burst)) == (len(burst), 0)
    async with await Store.open(pg_url) as store:
        for data in burst:
            stored = await store.get_verdict(sha256_hex(data))
            assert stored is not None and stored.verdict.label.value == "clean"
    assert survivor.proc is not None and survivor.proc.poll() is None


async def test_an_allow_on_one_replica_is_honoured_by_the_other(replicas, http):
    one, two = replicas(), replicas()
    flagged = images.jpeg("red", seed=3000)
    sha = sha256_hex(flagged)
    first = await validate_upload(http, one.scan_url(), flagged, "image/jpeg")
    assert first.status == 406
    # The other replica has it cached as a positive now.
    assert (await validate_upload(http, two.scan_url(), flagged, "image/jpeg")).status == 406
    async with http.post(
        f"{one.url}/api/v1/admin/verdicts/{sha}/allow",
        json={"note": "false positive", "by": "alice"},
        headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
    ) as resp:
        assert resp.status == 200, await resp.text()
    statuses = []
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        statuses.append((await validate_upload(http, two.scan_url(), flagged, "image/jpeg")).status)
        if statuses[-1] == 200:
            break
        await asyncio.sleep(0.1)
    assert statuses[-1] == 200, statuses


async def test_the_store_password_stays_out_of_readyz_and_logs(tmp_path, pg_url, horde, http):
    # The test server trusts loopback, so any password is accepted: it must still not show.
    url = pg_url.replace("postgresql://postgres@", "postgresql://postgres:hunter2-secret@")
    env = replica_env(url, horde.url, log_level="INFO")
    replica = Replica(env, tmp_path / "r").start()
    try:
        async with http.get(f"{replica.url}/readyz") as resp:
            body = await resp.json()
        assert body["store"].startswith("postgresql://postgres:***@127.0.0.1")
        data = distinct_png(4000)
        assert (await validate_upload(http, replica.scan_url(), data, "image/png")).status == 200
    finally:
        replica.terminate()
    assert "hunter2" not in replica.log.read_text()


async def test_replicas_share_one_horde_submit_budget(replicas, horde, http):
    # The Horde counts submits per IP: both replicas are behind 127.0.0.1.
    horde.post_rate_per_min = 5
    budget = {"horde__submits_per_min": "5", "validation__deadline_s": "3"}
    one, two = replicas(**budget), replicas(**budget)
    burst = [distinct_png(9000 + i) for i in range(10)]
    results = await asyncio.gather(*(
        validate_upload(http, (one, two)[i % 2].scan_url(), data, "image/png")
        for i, data in enumerate(burst)
    ))  # fmt: skip
    assert all(r.status == 200 for r in results)  # on_timeout accept; the rest wait their turn
    await asyncio.sleep(2.0)
    assert len(horde.submissions) == 5  # one budget of 5 a minute, not 5 each
    assert horde.rate_limited == 0
