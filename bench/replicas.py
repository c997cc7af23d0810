"""Replicas: cache-hit throughput with 1 and 2 processes on SQLite and PostgreSQL, 200 new
images split across 2 replicas (Horde submits, time until all judged), and a rolling restart of
2 replicas behind HAProxy under a steady 50 uploads/s (failed uploads).

Run: .venv/bin/python -m bench.replicas [--quick]

Needs PostgreSQL (Debian `postgresql`) and HAProxy (`haproxy`); starts its own of each, the
fake AI Horde in this process, and the services as `horde-scanner serve` processes.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path

import aiohttp

from bench.common import noisy_jpeg
from bench.validate import closed_loop
from horde_scanner.store.sqlite import Store
from horde_scanner.testing.balancer import Haproxy
from horde_scanner.testing.horde import FakeHorde
from horde_scanner.testing.images import distinct_png
from horde_scanner.testing.pg import PgServer
from horde_scanner.testing.pictrs import validate_upload
from horde_scanner.testing.replicas import (
    Replica,
    SteadyUploads,
    replica_env,
    replica_horde,
    restart_each,
)

FAST = {"horde__submits_per_min": "90", "validation__deadline_s": "8"}


async def prime(url: str, images: list[bytes]) -> None:
    async with aiohttp.ClientSession() as session:
        for _ in range(120):
            routes = set()
            for data in images:
                try:
                    async with session.post(url, data=data) as resp:
                        routes.add((await resp.json())["route"])
                except aiohttp.ClientError:  # a process still starting
                    routes.add("error")
            if routes == {"cache"}:
                return
            await asyncio.sleep(0.5)
    raise RuntimeError("cache did not fill")


async def cache_hits(pg: PgServer, horde: FakeHorde, tmp: Path, seconds: float) -> None:
    hits = [noisy_jpeg(seed) for seed in range(16)]
    print("\ncache hits, closed loop, 64 clients, 200 KB JPEGs (one Python client):")
    for kind in ("sqlite", "postgresql"):
        for processes in (1, 2):
            store = (f"sqlite:///{tmp / f'hits-{processes}.db'}" if kind == "sqlite"
                     else pg.new_database())  # fmt: skip
            env = replica_env(store, horde.url, server__processes=str(processes), **FAST)
            replica = Replica(env, tmp / f"hits-{kind}-{processes}").start()
            try:
                await asyncio.sleep(1.0 if processes == 1 else 2.0)
                await prime(replica.scan_url(), hits)
                rate = await closed_loop(replica.scan_url(), hits, 64, seconds)
                print(f"  {kind:<10} processes={processes}: {rate:8.0f} requests/s", flush=True)
            finally:
                replica.terminate(60)


async def judged(url: str, n: int, timeout: float) -> float | None:
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        async with await Store.open(url) as store:
            if sum((await store.count_verdicts()).values()) >= n and not await store.count_jobs():
                return time.monotonic() - started
        await asyncio.sleep(0.25)
    return None


async def split_burst(pg: PgServer, horde: FakeHorde, tmp: Path, count: int) -> None:
    url = pg.new_database()
    env = replica_env(url, horde.url, **FAST)
    replicas = [Replica(env, tmp / f"burst-{i}").start() for i in range(2)]
    before = len(horde.submissions)
    images = [distinct_png(100_000 + i) for i in range(count)]
    try:
        started = time.monotonic()
        # No client-side connection limit: the uploads must all be in flight at once.
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:
            # Every image goes to both replicas at once.
            await asyncio.gather(*(
                validate_upload(http, r.scan_url(), data, "image/png")
                for data in images for r in replicas
            ))  # fmt: skip
        answered = time.monotonic() - started
        took = await judged(url, count, timeout=600)
        submits = len(horde.submissions) - before
        print(f"\n{count} distinct new images, each sent to both of 2 replicas (PostgreSQL):")
        print(f"  AI Horde submits: {submits} (target exactly {count})")
        print(f"  all uploads answered after {answered:.1f} s; all judged after "
              + (f"{answered + took:.1f} s" if took is not None else "more than 600 s")
              + " (the shared submit limit, 90/min for both, sets the pace)")  # fmt: skip
    finally:
        for r in replicas:
            r.terminate(60)


async def rolling_restart(pg: PgServer, horde: FakeHorde, tmp: Path, rate: float) -> None:
    url = pg.new_database()
    env = replica_env(url, horde.url, server__drain_s="1", **FAST)
    replicas = [Replica(env, tmp / f"roll-{i}").start() for i in range(2)]
    balancer = Haproxy([r.port for r in replicas]).start()
    scan = f"{balancer.url}/api/v1/scan/test-pictrs"
    pool = [distinct_png(200_000 + i) for i in range(100)]
    async with aiohttp.ClientSession() as http:
        load = SteadyUploads(http, scan, lambda n: pool[n % len(pool)], rate)
        try:
            await asyncio.sleep(1.0)
            async with load:
                await asyncio.sleep(3.0)
                started = time.monotonic()
                await restart_each(replicas, lambda _: asyncio.sleep(2.0))
                restart_s = time.monotonic() - started
                await asyncio.sleep(2.0)
        finally:
            balancer.stop()
            for r in replicas:
                r.kill()
    statuses = load.statuses
    failed = [s for s in statuses if s != 200]
    print(f"\nrolling restart of 2 replicas behind HAProxy at {rate:.0f} uploads/s "
          f"({restart_s:.1f} s for both):")  # fmt: skip
    print(f"  uploads sent {len(statuses)}, failed {len(failed)} (target 0)"
          + (f": {sorted(set(map(str, failed)))}" if failed else ""))  # fmt: skip


async def main(quick: bool) -> None:
    pg = PgServer().start()
    horde = replica_horde(latency=0.5, interrogators=64)
    await horde.start()
    tmp = Path(tempfile.mkdtemp(prefix="bench-replicas-"))
    try:
        await cache_hits(pg, horde, tmp, 4.0 if quick else 10.0)
        await split_burst(pg, horde, tmp, 60 if quick else 200)
        await rolling_restart(pg, horde, tmp, 50.0)
    finally:
        await horde.stop()
        pg.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="shorter runs, 60 new images")
    asyncio.run(main(parser.parse_args().quick))
