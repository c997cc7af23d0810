"""Validation endpoint benchmark (issue 2).

The real service (`horde-scanner serve`) and the fake AI Horde run as their own processes on
loopback; this process is the load generator, on the same 2-core machine. Figures:

  cache hits, closed loop, 64 clients       requests/s            (target >= 1,500)
      the previous release (a git worktree of PREVIOUS), this checkout, and a bare aiohttp
      handler that only reads and hashes the body (bench/bare_hash.py), interleaved in
      rounds; medians and ratios (this checkout >= 0.95 x previous; aim >= 0.8 x bare)
  cache hits, open loop at 200 requests/s   p50 / p99 latency     (target p99 <= 10 ms;
      previous release and this checkout interleaved, median p99 of the rounds)
  cache hits, one client alone              p99 latency           (target <= 5 ms)
  misses, Horde latency 2 s                 max answer time       (must be < deadline)
  misses, Horde latency 30 s, 1000 at once  max answer time, peak service RSS (target <= 400 MB)

Run: .venv/bin/python -m bench.validate [--quick] [--hits-only] [--previous COMMIT|DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import re
import shutil
import statistics
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp

from bench.common import (
    ROOT,
    cpu_s,
    horde_and_service,
    noisy_jpeg,
    peak_rss_mb,
    percentiles,
    rss_mb,
    spawn,
)
from horde_scanner.testing.net import free_port, wait_port

CLIENT = "bench"
DEADLINE_S = 8.0
# The release cache-hit throughput is compared with (issue 20).
PREVIOUS = "2fa284f"  # the release before the store moved to SQLAlchemy (issue 22)


@contextlib.contextmanager
def stack(horde_latency: float, db: Path, cwd: Path = ROOT) -> Iterator[tuple[str, int]]:
    with horde_and_service(
        ["--latency", str(horde_latency)],
        lambda port: ["-m", "horde_scanner.cli", "serve", "--port", str(port)],
        db,
        client=CLIENT,
        deadline_s=DEADLINE_S,
        cwd=cwd,
    ) as (port, service):
        yield f"http://127.0.0.1:{port}/api/v1/scan/{CLIENT}", service.pid


@contextlib.contextmanager
def previous_release(commit: str) -> Iterator[Path]:
    """A git worktree of `commit`, removed afterwards."""
    tree = Path(tempfile.mkdtemp(prefix="hs-previous-"))
    subprocess.run(
        ["git", "worktree", "add", "--detach", "--force", str(tree), commit],
        cwd=ROOT, check=True, capture_output=True,
    )  # fmt: skip
    try:
        yield tree
    finally:
        subprocess.run(["git", "worktree", "remove", "--force", str(tree)], cwd=ROOT,
                       capture_output=True)  # fmt: skip
        shutil.rmtree(tree, ignore_errors=True)


@contextlib.contextmanager
def previous_tree(previous: str) -> Iterator[Path]:
    """`previous` as a checkout: a directory as it is (an existing worktree, used read-only),
    or a commit checked out into a worktree of its own for the run."""
    if Path(previous).is_dir():
        yield Path(previous)
        return
    with previous_release(previous) as tree:
        yield tree


@contextlib.contextmanager
def bare_handler() -> Iterator[tuple[str, int]]:
    port = free_port()
    proc = spawn(["-m", "bench.bare_hash", "--port", str(port)])
    try:
        wait_port(port)
        yield f"http://127.0.0.1:{port}/api/v1/scan/{CLIENT}", proc.pid
    finally:
        proc.terminate()
        proc.wait(30)


async def post(session: aiohttp.ClientSession, url: str, data: bytes) -> tuple[float, int]:
    started = time.perf_counter()
    async with session.post(url, data=data, headers={"Content-Type": "image/jpeg"}) as resp:
        await resp.read()
        return time.perf_counter() - started, resp.status


async def closed_loop(url: str, images: list[bytes], clients: int, seconds: float) -> float:
    return (await counted_closed_loop(url, images, clients, seconds))[0]


async def counted_closed_loop(
    url: str, images: list[bytes], clients: int, seconds: float
) -> tuple[float, int]:
    """(requests/s, requests answered) of `clients` clients posting back to back."""
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
        return done / (time.perf_counter() - started), done


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


async def cache_hits(
    hits: list[bytes], seconds: float, rounds: int, tmp: Path, previous: str = PREVIOUS
) -> None:
    """Closed-loop and open-loop cache hits: the previous release, this checkout and the bare
    handler, interleaved (the order turns each round), so the machine's noise hits all alike."""
    with (
        previous_tree(previous) as old_tree,
        stack(0.2, tmp / "hits-old.db", cwd=old_tree) as (old_url, old_pid),
        stack(0.2, tmp / "hits.db") as (url, pid),
        bare_handler() as (bare_url, bare_pid),
    ):
        await prime(old_url, hits)
        await prime(url, hits)
        targets = {
            f"previous ({previous})": old_url,
            "this checkout": url,
            "bare handler": bare_url,
        }
        pids = dict(zip(targets, (old_pid, pid, bare_pid), strict=True))
        rps: dict[str, list[float]] = {name: [] for name in targets}
        cpu_us: dict[str, list[float]] = {name: [] for name in targets}
        p99: dict[str, list[float]] = {name: [] for name in list(targets)[:2]}
        names = list(targets)
        for r in range(rounds):
            order = names[r % 3 :] + names[: r % 3]
            for name in order:
                used = cpu_s(pids[name])
                rate, done = await counted_closed_loop(targets[name], hits, 64, seconds)
                rps[name].append(rate)
                cpu_us[name].append((cpu_s(pids[name]) - used) / done * 1e6)
            for name in order:
                if name in p99:
                    lat = await open_loop(targets[name], hits, 200, seconds)
                    p99[name].append(float(sorted(lat)[int(0.99 * (len(lat) - 1))]) * 1000)
            print(
                f"  round {r + 1}: "
                + ", ".join(f"{n} {rps[n][-1]:,.0f}/s ({cpu_us[n][-1]:.0f} us CPU)" for n in names)
                + "; open-loop p99 "
                + ", ".join(f"{n} {p99[n][-1]:.2f} ms" for n in p99),
                flush=True,
            )
        med = {n: statistics.median(v) for n, v in rps.items()}
        prev, mine, bare = (med[n] for n in names)
        print(
            f"cache hits, closed loop, 64 clients (median of {rounds} interleaved rounds): "
            f"{mine:,.0f} requests/s  (target >= 1,500); previous release {prev:,.0f}, "
            f"bare handler {bare:,.0f}"
        )
        print(
            f"  this checkout / previous release: {mine / prev:.2f}  (must be >= 0.95);  "
            f"/ bare handler: {mine / bare:.2f}  (aim >= 0.8)"
        )
        cpu = {n: statistics.median(v) for n, v in cpu_us.items()}
        print(
            "  service CPU per cache hit (median; less disturbed by other load than "
            "throughput): " + ", ".join(f"{n} {cpu[n]:.0f} us" for n in names)
        )
        print(
            f"  bare handler CPU / this checkout's: {cpu[names[2]] / cpu[names[1]]:.2f};  "
            f"previous release's / this checkout's: {cpu[names[0]] / cpu[names[1]]:.2f}"
        )
        print(
            "cache hits, open loop 200 req/s, median p99: "
            + ", ".join(f"{n} {statistics.median(v):.2f} ms" for n, v in p99.items())
            + "  (target p99 <= 10 ms; must not regress)"
        )
        wrk_rps = wrk_closed_loop(url, hits[0], 64, seconds)
        if wrk_rps is not None:
            print(f"  same, load from wrk instead:      {wrk_rps:,.0f} requests/s")
        lat = await open_loop(url, hits, 200, seconds)
        print(f"cache hits, open loop 200 req/s:     {percentiles(lat)}  (target p99 <= 10 ms)")
        lat = await sequential(url, hits, 1000)
        print(f"cache hits, one client:              {percentiles(lat)}  (target p99 <= 5 ms)")
        print(f"service peak RSS: {peak_rss_mb(pid):.0f} MB")


async def main(quick: bool, rounds: int, hits_only: bool, previous: str = PREVIOUS) -> None:
    seconds = 4.0 if quick else 10.0
    print("generating 200 KB JPEGs ...", flush=True)
    hits = [noisy_jpeg(seed) for seed in range(16)]
    print(f"  image size {len(hits[0]) / 1000:.0f} KB")
    with tempfile.TemporaryDirectory() as tmp:
        await cache_hits(hits, seconds, rounds, Path(tmp), previous)
        if hits_only:
            return

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
    parser.add_argument("--rounds", type=int, default=5, help="interleaved cache-hit rounds")
    parser.add_argument("--hits-only", action="store_true", help="only the cache-hit figures")
    parser.add_argument(
        "--previous",
        default=PREVIOUS,
        help=f"the release compared with: a commit or an existing checkout (default {PREVIOUS})",
    )
    args = parser.parse_args()
    try:
        import uvloop

        uvloop.run(main(args.quick, args.rounds, args.hits_only, args.previous))
    except ImportError:
        asyncio.run(main(args.quick, args.rounds, args.hits_only, args.previous))
