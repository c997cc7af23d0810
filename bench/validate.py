"""Validation endpoint benchmark (issue 2).

The real service (`horde-scanner serve`) and the fake AI Horde run as their own processes on
loopback; this process is the load generator, on the same 2-core machine. Figures:

  cache hits, closed loop, 64 clients       requests/s            (target >= 1,500)
  cache hits, open loop at 200 requests/s   p50 / p99 latency     (target p99 <= 10 ms)
  cache hits, one client alone              p99 latency           (target <= 5 ms)
  misses, Horde latency 2 s                 max answer time       (must be < deadline)
  misses, Horde latency 30 s, 1000 at once  max answer time, peak service RSS (target <= 400 MB)

Run: .venv/bin/python -m bench.validate [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp

from bench.common import (
    horde_and_service,
    noisy_jpeg,
    peak_rss_mb,
    percentiles,
    rss_mb,
)

CLIENT = "bench"
DEADLINE_S = 8.0


@contextlib.contextmanager
def stack(horde_latency: float, db: Path) -> Iterator[tuple[str, int]]:
    with horde_and_service(
        ["--latency", str(horde_latency)],
        lambda port: ["-m", "horde_scanner.cli", "serve", "--port", str(port)],
        db,
        client=CLIENT,
        deadline_s=DEADLINE_S,
    ) as (port, service):
        yield f"http://127.0.0.1:{port}/api/v1/scan/{CLIENT}", service.pid


async def post(session: aiohttp.ClientSession, url: str, data: bytes) -> tuple[float, int]:
    started = time.perf_counter()
    async with session.post(url, data=data, headers={"Content-Type": "image/jpeg"}) as resp:
        await resp.read()
        return time.perf_counter() - started, resp.status


async def closed_loop(url: str, images: list[bytes], clients: int, seconds: float) -> float:
    done = 0
    stop = time.perf_counter() + seconds
    connector = aiohttp.TCPConnector(limit=clients)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def client(i: int) -> None:
            nonlocal done
            n = i
            while time.perf_counter() < stop:
                await post(session, url, images[n % len(images)])
                n += 1
                done += 1

        started = time.perf_counter()
        await asyncio.gather(*(client(i) for i in range(clients)))
        return done / (time.perf_counter() - started)


def wrk_closed_loop(url: str, body: bytes, clients: int, seconds: float) -> float | None:
    """The same closed loop driven by wrk (C), when installed: the Python load generator
    itself takes a good part of the 2 cores, so this shows what the service does."""
    wrk = shutil.which("wrk")
    if wrk is None:
        return None
    with tempfile.TemporaryDirectory() as tmp:
        payload = Path(tmp) / "body.jpg"
        payload.write_bytes(body)
        script = Path(tmp) / "post.lua"
        script.write_text(
            'wrk.method = "POST"\n'
            f'local f = io.open("{payload}", "rb"); wrk.body = f:read("*a"); f:close()\n'
            'wrk.headers["Content-Type"] = "image/jpeg"\n'
        )
        out = subprocess.run(
            [wrk, "-t1", f"-c{clients}", f"-d{int(seconds)}s", "-s", str(script), url],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    match = re.search(r"Requests/sec:\s+([\d.]+)", out)
    return float(match.group(1)) if match else None


async def open_loop(url: str, images: list[bytes], rate: float, seconds: float) -> list[float]:
    latencies: list[float] = []
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        start = time.perf_counter()
        tasks = []
        for i in range(int(rate * seconds)):
            at = start + i / rate
            delay = at - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)

            async def one(i: int = i, at: float = at) -> None:
                await post(session, url, images[i % len(images)])
                # Open loop: latency counts from when the request was due, not when it went out.
                latencies.append(time.perf_counter() - at)

            tasks.append(asyncio.create_task(one()))
        await asyncio.gather(*tasks)
    return latencies


async def sequential(url: str, images: list[bytes], count: int) -> list[float]:
    async with aiohttp.ClientSession() as session:
        return [(await post(session, url, images[i % len(images)]))[0] for i in range(count)]


async def misses(url: str, images: list[bytes], spacing_s: float) -> tuple[list[float], dict]:
    """Unique images (all misses), started spacing_s apart; all awaited."""
    routes: dict[str, int] = {}
    server_side: list[float] = []
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:

        async def one(data: bytes) -> float:
            started = time.perf_counter()
            async with session.post(url, data=data, headers={"Content-Type": "image/jpeg"}) as resp:
                body = await resp.json()
            routes[body["route"]] = routes.get(body["route"], 0) + 1
            server_side.append(body["elapsed_ms"] / 1000)
            return time.perf_counter() - started

        tasks = []
        for data in images:
            tasks.append(asyncio.create_task(one(data)))
            if spacing_s:
                await asyncio.sleep(spacing_s)
        latencies = list(await asyncio.gather(*tasks))
    routes["server_max_ms"] = int(max(server_side) * 1000)
    return latencies, routes


async def prime(url: str, images: list[bytes]) -> None:
    """Judge every image once, waiting out the Horde's submit rate limit."""
    async with aiohttp.ClientSession() as session:
        for _ in range(60):
            routes = set()
            for data in images:
                async with session.post(url, data=data) as resp:
                    routes.add((await resp.json())["route"])
            if routes == {"cache"}:
                return
            await asyncio.sleep(1.0)
    raise RuntimeError("cache did not fill")


async def main(quick: bool) -> None:
    seconds = 4.0 if quick else 10.0
    print("generating 200 KB JPEGs ...", flush=True)
    hits = [noisy_jpeg(seed) for seed in range(16)]
    print(f"  image size {len(hits[0]) / 1000:.0f} KB")
    with tempfile.TemporaryDirectory() as tmp:
        with stack(0.2, Path(tmp) / "hits.db") as (url, pid):
            await prime(url, hits)
            rps = await closed_loop(url, hits, 64, seconds)
            print(f"cache hits, closed loop, 64 clients: {rps:,.0f} requests/s  (target >= 1,500)")
            wrk_rps = wrk_closed_loop(url, hits[0], 64, seconds)
            if wrk_rps is not None:
                print(f"  same, load from wrk instead:      {wrk_rps:,.0f} requests/s")
            lat = await open_loop(url, hits, 200, seconds)
            print(f"cache hits, open loop 200 req/s:     {percentiles(lat)}  (target p99 <= 10 ms)")
            lat = await sequential(url, hits, 1000 if not quick else 300)
            print(f"cache hits, one client:              {percentiles(lat)}  (target p99 <= 5 ms)")
            print(f"service peak RSS: {peak_rss_mb(pid):.0f} MB")

        with stack(2.0, Path(tmp) / "m2.db") as (url, pid):
            count = 20 if quick else 60
            fresh = [noisy_jpeg(1000 + i) for i in range(count)]
            lat, routes = await misses(url, fresh, 1.0)
            print(
                f"misses, Horde 2 s, {count} at 1/s:      {percentiles(lat)}  answers by route "
                f"{routes}; deadline {DEADLINE_S:.0f} s"
            )

        with stack(30.0, Path(tmp) / "m30.db") as (url, pid):
            count = 300 if quick else 1000
            fresh = [noisy_jpeg(5000 + i) for i in range(count)]
            base = rss_mb(pid)
            lat, routes = await misses(url, fresh, 0)
            print(
                f"misses, Horde 30 s, {count} at once:  {percentiles(lat)}  answers by route "
                f"{routes}"
            )
            print(
                f"  service RSS at start {base:.0f} MB, peak with {count} misses outstanding "
                f"{peak_rss_mb(pid):.0f} MB  (target <= 400 MB)"
            )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="shorter runs")
    args = parser.parse_args()
    try:
        import uvloop

        uvloop.run(main(args.quick))
    except ImportError:
        asyncio.run(main(args.quick))
