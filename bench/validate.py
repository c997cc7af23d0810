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

  cache hits, instructions per hit           (--instructions N: each release under valgrind's
      callgrind, N hits each; a count that the machine's other load does not move)

--pin keeps the services on the last core and this load generator (and the fakes) on the
others while the hits are measured: a 2-core machine's scheduler otherwise moves them about,
and the rounds swing by 10-15 %.

Run: .venv/bin/python -m bench.validate [--quick] [--hits-only] [--previous COMMIT|DIR] [--pin]
     [--instructions N]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
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
    horde_and_service,
    noisy_jpeg,
    peak_rss_mb,
    percentiles,
    pin,
    rss_mb,
    spawn,
)
from horde_scanner.testing.net import free_port, wait_port
from horde_scanner.testing.procstat import cpu_s, minor_faults

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
    hits: list[bytes],
    seconds: float,
    rounds: int,
    tmp: Path,
    previous: str = PREVIOUS,
    pinned: bool = False,
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
        if pinned:
            _pin_apart(list(pids.values()))
        rps: dict[str, list[float]] = {name: [] for name in targets}
        cpu_us: dict[str, list[float]] = {name: [] for name in targets}
        faults: dict[str, list[float]] = {name: [] for name in targets}
        p99: dict[str, list[float]] = {name: [] for name in list(targets)[:2]}
        names = list(targets)
        for r in range(rounds):
            order = names[r % 3 :] + names[: r % 3]
            for name in order:
                used, faulted = cpu_s(pids[name]), minor_faults(pids[name])
                rate, done = await counted_closed_loop(targets[name], hits, 64, seconds)
                rps[name].append(rate)
                cpu_us[name].append((cpu_s(pids[name]) - used) / done * 1e6)
                faults[name].append((minor_faults(pids[name]) - faulted) / done)
            for name in order:
                if name in p99:
                    lat = await open_loop(targets[name], hits, 200, seconds)
                    p99[name].append(float(sorted(lat)[int(0.99 * (len(lat) - 1))]) * 1000)
            print(
                f"  round {r + 1}: "
                + ", ".join(
                    f"{n} {rps[n][-1]:,.0f}/s ({cpu_us[n][-1]:.0f} us CPU, "
                    f"{faults[n][-1]:.1f} page faults)"
                    for n in names
                )
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
            "  page faults per cache hit (median; a body mapped fresh is faulted in page by "
            "page): " + ", ".join(f"{n} {statistics.median(v):.1f}" for n, v in faults.items())
        )
        paired = [a / b for a, b in zip(rps[names[1]], rps[names[0]], strict=True)]
        print(
            f"  this checkout / previous release, round by round: "
            f"{', '.join(f'{r:.2f}' for r in paired)} (median {statistics.median(paired):.2f})"
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


def _pin_apart(service_pids: list[int]) -> None:
    """The services on the last core; this process (the load generator) and everything
    else it started on the others."""
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        print("  --pin: one core only, not pinned")
        return
    for service in service_pids:
        pin(service, {cpus[-1]})
    pin(os.getpid(), set(cpus[:-1]))
    print(f"  pinned: services on core {cpus[-1]}, load generator on {cpus[:-1]}")


async def _fixed_hits(url: str, images: list[bytes], count: int, clients: int) -> int:
    """`count` cache hits from `clients` clients; how many were answered 200."""
    answered = 0
    async with aiohttp.ClientSession() as session:

        async def client(i: int) -> None:
            nonlocal answered
            for n in range(i, count, clients):
                async with session.post(url, data=images[n % len(images)]) as resp:
                    await resp.read()
                    answered += resp.status == 200

        await asyncio.gather(*(client(i) for i in range(clients)))
    return answered


async def _callgrind_control(*args: str | int) -> None:
    proc = await asyncio.create_subprocess_exec(
        "callgrind_control", *map(str, args), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    if await proc.wait() != 0:
        raise RuntimeError(f"callgrind_control {args} failed")


def _callgrind_totals(out: Path) -> dict[str, int]:
    """The event totals (Ir, D1mr, DLmr, ...) of the dump(s) callgrind wrote for `out`."""
    totals: dict[str, int] = {}
    for dump in out.parent.glob(out.name + ".*"):
        events: list[str] = []
        for line in dump.read_text(errors="replace").splitlines():
            if line.startswith("events:"):
                events = line.split()[1:]
            elif line.startswith("totals:"):
                for event, value in zip(events, line.split()[1:], strict=False):
                    totals[event] = totals.get(event, 0) + int(value)
    return totals


def _cycle_estimate(t: dict[str, int]) -> int:
    """Callgrind's own estimate of cycles from its simulated caches (kcachegrind's CEst):
    a first-level miss costs 10 instructions' time, a last-level miss 100."""
    first = t.get("I1mr", 0) + t.get("D1mr", 0) + t.get("D1mw", 0)
    last = t.get("ILmr", 0) + t.get("DLmr", 0) + t.get("DLmw", 0)
    return t.get("Ir", 0) + 10 * first + 100 * last


async def instructions_per_hit(
    hits: list[bytes], count: int, tmp: Path, previous: str = PREVIOUS
) -> None:
    """Instructions each release executes per cache hit, counted by callgrind over `count`
    hits after a warm-up (instrumentation is off during start-up and priming). A count, not
    a time: the same on a busy machine as on a quiet one, so a small regression on the hit
    path shows even where the throughput rounds swing by 10 %. It does not see kernel time
    (page faults, syscalls): the throughput rounds print page faults per hit beside it. Cache
    misses are simulated too (`--cache-sim`), for the cycle estimate: a process with more
    objects alive could pay in misses what it does not in instructions."""
    if shutil.which("valgrind") is None or shutil.which("callgrind_control") is None:
        print("instructions per cache hit: valgrind is not installed (apt-get install valgrind)")
        return
    counts: dict[str, tuple[dict[str, int], float]] = {}
    with previous_tree(previous) as old_tree:
        for name, tree in ((f"previous ({previous})", old_tree), ("this checkout", ROOT)):
            out = tmp / f"callgrind-{len(counts)}.out"
            launcher = ["valgrind", "--tool=callgrind", "--instr-atstart=no", "--cache-sim=yes",
                        f"--callgrind-out-file={out}"]  # fmt: skip
            with horde_and_service(
                ["--latency", "0.2"],
                lambda port: ["-m", "horde_scanner.cli", "serve", "--port", str(port)],
                tmp / f"instr-{len(counts)}.db",
                client=CLIENT,
                deadline_s=60.0,  # misses are slow under valgrind, and priming makes some
                cwd=tree,
                launcher=launcher,
                start_timeout_s=600.0,
            ) as (port, service):
                url = f"http://127.0.0.1:{port}/api/v1/scan/{CLIENT}"
                await prime(url, hits)
                await _fixed_hits(url, hits, 64, 8)  # warm: the first hits take page faults
                faulted = minor_faults(service.pid)
                await _callgrind_control("-i", "on", service.pid)
                answered = await _fixed_hits(url, hits, count, 8)
                await _callgrind_control("-d", service.pid)
                if answered != count:
                    raise RuntimeError(f"{name}: {count - answered} of {count} hits failed")
                faults = (minor_faults(service.pid) - faulted) / count
            counts[name] = (_callgrind_totals(out), faults)
    (old_name, (old, old_faults)), (name, (new, new_faults)) = counts.items()
    print(
        f"instructions per cache hit ({count} hits, callgrind): {name} "
        f"{new['Ir'] / count / 1e6:.3f} M, {old_name} {old['Ir'] / count / 1e6:.3f} M; "
        f"this checkout / previous: {new['Ir'] / old['Ir']:.4f}"
    )
    print(
        f"  cycles estimated from simulated cache misses: {name} "
        f"{_cycle_estimate(new) / count / 1e6:.3f} M, {old_name} "
        f"{_cycle_estimate(old) / count / 1e6:.3f} M; this checkout / previous: "
        f"{_cycle_estimate(new) / _cycle_estimate(old):.4f}"
    )
    print(
        f"  page faults per hit under valgrind: {name} {new_faults:.1f}, "
        f"{old_name} {old_faults:.1f}"
    )


async def main(
    quick: bool,
    rounds: int,
    hits_only: bool,
    previous: str = PREVIOUS,
    pinned: bool = False,
    instructions: int = 0,
) -> None:
    seconds = 4.0 if quick else 10.0
    print("generating 200 KB JPEGs ...", flush=True)
    hits = [noisy_jpeg(seed) for seed in range(16)]
    print(f"  image size {len(hits[0]) / 1000:.0f} KB")
    with tempfile.TemporaryDirectory() as tmp:
        if instructions:
            await instructions_per_hit(hits, instructions, Path(tmp), previous)
        if rounds:
            await cache_hits(hits, seconds, rounds, Path(tmp), previous, pinned)
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
        "--pin", action="store_true", help="services on one core, the load generator on another"
    )
    parser.add_argument(
        "--instructions",
        type=int,
        default=0,
        metavar="N",
        help="also count instructions per cache hit under callgrind over N hits (valgrind)",
    )
    parser.add_argument(
        "--previous",
        default=PREVIOUS,
        help=f"the release compared with: a commit or an existing checkout (default {PREVIOUS})",
    )
    args = parser.parse_args()
    work = main(args.quick, args.rounds, args.hits_only, args.previous, args.pin, args.instructions)
    try:
        import uvloop

        uvloop.run(work)
    except ImportError:
        asyncio.run(work)
