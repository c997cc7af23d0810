"""AI Horde path at its limit (issue 11): bursts of new images against the fake Horde.

The fake AI Horde (which enforces the Horde's fixed-window submit limit and per-path status
limit, answering 429 above them), the service and the load generator run as three processes
on loopback; deadline 8 s. Each scenario runs twice in the same run: with today's limiter and
schedule ("new") and with the one before issue 11 ("old": a token bucket of 80/min with a
burst of 5 for submits, one 8/s bucket for all status polls, every poll a full second apart,
40 requests in flight).

  64 distinct new images at once, Horde 2.8-5.2 s   in-deadline verdicts (target >= 60/64),
                                                    429s received (target 0), max answer time
  200 distinct new images at once, same Horde       in-time share, time until the last is judged
  one new image at a time, instant Horde            p50 / p99 answer time (target p50 <= 300 ms)

Run: .venv/bin/python -m bench.horde_burst [--quick]   (--quick: no old run of the 200 burst,
which takes minutes)
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import aiohttp
import numpy as np

from bench.common import horde_and_service, noisy_jpeg

CLIENT = "bench"
DEADLINE_S = 8.0
OLD_IN_FLIGHT = 40


# -- the old limiter, for the comparison ----------------------------------------------------


def legacy_backend(settings, session):  # type: ignore[no-untyped-def]
    """The client as it was before issue 11, built from today's parts."""
    from horde_scanner.backends.horde import HordeBackend, HordeClient
    from horde_scanner.backends.ratelimit import TokenBucket

    class Submits:
        waiting = 0

        def __init__(self) -> None:
            self._bucket = TokenBucket(80 / 60.0, burst=5)

        @asynccontextmanager
        async def slot(self, priority: float) -> AsyncIterator[None]:
            await self._bucket.acquire()
            yield

    class Polls:
        def __init__(self) -> None:
            self._bucket = TokenBucket(8.0)

        @asynccontextmanager
        async def slot(self, key: str) -> AsyncIterator[None]:
            await self._bucket.acquire()
            yield

    class OldSchedule(HordeBackend):
        def next_poll_s(self, state: str | None) -> float:
            return 1.0  # every poll, the first too, a full poll interval apart

    client = HordeClient(settings.horde, session, submits=Submits(), status_limiter=Polls())
    return OldSchedule(settings.horde, session, client=client)


async def serve(port: int, old: bool) -> None:
    """The service, in this process (spawned by the benchmark)."""
    from aiohttp import web

    from horde_scanner.config import load_settings
    from horde_scanner.service.app import build_app

    settings = load_settings(None)
    async with aiohttp.ClientSession() as session:
        backend = legacy_backend(settings, session) if old else None
        runner = web.AppRunner(build_app(settings, backend=backend), access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        try:
            await asyncio.Event().wait()
        finally:
            await runner.cleanup()


# -- the benchmark ---------------------------------------------------------------------------


@contextlib.contextmanager
def stack(horde_args: list[str], db: Path, old: bool) -> Iterator[str]:
    env = {"HORDE_SCANNER_HORDE__MAX_IN_FLIGHT": str(OLD_IN_FLIGHT)} if old else {}

    def service(port: int) -> list[str]:
        return ["-m", "bench.horde_burst", "--serve", str(port)] + (["--old"] if old else [])

    with horde_and_service(
        horde_args, service, db, client=CLIENT, deadline_s=DEADLINE_S, env=env
    ) as (port, _):
        yield f"http://127.0.0.1:{port}"


async def readyz(session: aiohttp.ClientSession, base: str) -> dict:
    async with session.get(f"{base}/readyz") as resp:
        body: dict = await resp.json()
        return body


async def burst(base: str, images: list[bytes]) -> tuple[list[float], list[str], float]:
    """All at once; (answer times, routes, seconds until every job was judged)."""
    url = f"{base}/api/v1/scan/{CLIENT}"
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        started = time.perf_counter()

        async def one(data: bytes) -> tuple[float, str]:
            t0 = time.perf_counter()
            async with session.post(url, data=data, headers={"Content-Type": "image/jpeg"}) as r:
                body = await r.json()
            return time.perf_counter() - t0, str(body["route"])

        results = await asyncio.gather(*(one(d) for d in images))
        while (await readyz(session, base))["jobs_waiting"]:
            await asyncio.sleep(0.2)
        judged_all = time.perf_counter() - started
    return [t for t, _ in results], [r for _, r in results], judged_all


async def one_at_a_time(base: str, images: list[bytes]) -> list[float]:
    url = f"{base}/api/v1/scan/{CLIENT}"
    out: list[float] = []
    async with aiohttp.ClientSession() as session:
        for data in images:
            t0 = time.perf_counter()
            async with session.post(url, data=data, headers={"Content-Type": "image/jpeg"}) as r:
                await r.read()
            out.append(time.perf_counter() - t0)
    return out


async def rate_limited(base: str) -> int:
    async with aiohttp.ClientSession() as session:
        return int((await readyz(session, base)).get("horde", {}).get("rate_limited", 0))


async def main(quick: bool) -> None:
    print("noisy machine (shared with other work): read the figures as rough", flush=True)
    print("generating distinct 30 KB JPEGs ...", flush=True)
    pool = [noisy_jpeg(seed, target_bytes=30_000) for seed in range(400)]
    burst_horde = ["--latency-range", "2.8", "5.2"]
    with tempfile.TemporaryDirectory() as tmp:
        for old in (False, True):
            name = "old" if old else "new"
            with stack(burst_horde, Path(tmp) / f"b64-{name}.db", old) as base:
                times, routes, _ = await burst(base, pool[:64])
                in_time = routes.count("backend")
                print(
                    f"[{name}] 64 at once, Horde 2.8-5.2 s: {in_time}/64 judged inside the "
                    f"deadline, {routes.count('timeout')} timeout, 429s received "
                    f"{await rate_limited(base)}, max answer {max(times):.2f} s  (target >= 60/64, "
                    "0 429s)",
                    flush=True,
                )
        for old in (False, True):
            name = "old" if old else "new"
            if old and quick:
                continue
            with stack(burst_horde, Path(tmp) / f"b200-{name}.db", old) as base:
                times, routes, judged_all = await burst(base, pool[64:264])
                print(
                    f"[{name}] 200 at once, Horde 2.8-5.2 s: {routes.count('backend') / 2:.0f}% "
                    f"judged in time, last judged after {judged_all:.0f} s, 429s received "
                    f"{await rate_limited(base)}, max answer {max(times):.2f} s",
                    flush=True,
                )
        for old in (False, True):
            name = "old" if old else "new"
            with stack(["--latency", "0"], Path(tmp) / f"seq-{name}.db", old) as base:
                times = await one_at_a_time(base, pool[264:304])
                p50, p99 = np.percentile(np.asarray(times) * 1000, [50, 99])
                print(
                    f"[{name}] one at a time, instant Horde: p50 {p50:.0f} ms, p99 {p99:.0f} ms "
                    "(target p50 <= 300 ms)",
                    flush=True,
                )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="skip the old 200-image burst")
    parser.add_argument("--serve", type=int, metavar="PORT", help=argparse.SUPPRESS)
    parser.add_argument("--old", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(serve(args.serve, args.old))
        sys.exit(0)
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    asyncio.run(main(args.quick))
