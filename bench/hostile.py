"""Hostile input: the service's peak memory through pixel bombs, big and slow requests, with
each backend kind, this tree against the previous release in the same run; and cache-hit
throughput against the previous release, interleaved.

Run: .venv/bin/python -m bench.hostile [--kinds horde,prescreen,workers] [--no-baseline]
     (--kinds '' runs only the cache-hit comparison)
     [--baseline-commit 3579f71] [--hits-seconds 5] [--hits-rounds 3]

Each run starts the service as a `horde-scanner serve` process on default settings (only the
store, the fake AI Horde, a client id, an admin token and, for `workers`, a worker key are set)
and sends at once:
- pixel bombs, four distinct files of each form: 7,999 x 7,999 one-colour PNGs in RGB, RGBA,
  16-bit grey and palette (~200 KB each on the wire, under media.max_pixels) and a 3-frame
  APNG of 4,000 x 4,000 frames: 20 uploads;
- 20 parallel POST /admin/login with 5 MiB bodies from an address already locked out;
- 5 chunked 4 MB worker answers (POST /api/v1/pop);
- 10 connections sending one header line every 0.5 s for 14 s;
then waits until every bomb has a stored verdict (those answered by on_timeout are judged
later) and reads the process's peak RSS (VmHWM). The previous release runs from a git
worktree of its commit (made under the system's temporary directory when missing), with the
same Python environment.

Backends: `horde` (the fake AI Horde in this process), `prescreen` (NudeNet on CPU in front of
it), `workers` (backend.kind=local with remote workers: a pictrs-safety-style worker in this
process pulls the jobs and answers).
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import statistics
import subprocess
import tempfile
import time
import zlib
from pathlib import Path
from typing import Any

import aiohttp
from PIL import Image

from horde_scanner.media.hashing import sha256_hex
from horde_scanner.testing.horde import FakeHorde
from horde_scanner.testing.images import distinct_png
from horde_scanner.testing.replicas import ADMIN_TOKEN, Replica, replica_env, replica_horde

ROOT = Path(__file__).resolve().parent.parent
BASELINE = "3579f71"
WORKER_KEY = "bench-worker-key-0123456789"
KINDS: dict[str, dict[str, str]] = {
    "horde": {"backend__kind": "horde"},
    "prescreen": {"backend__kind": "horde", "prescreen__enabled": "true"},
    "workers": {
        "backend__kind": "local",
        "local__in_process": "false",
        "workers__keys": json.dumps([WORKER_KEY]),
    },
}
MIB = 1 << 20


# -- the files ---------------------------------------------------------------------------------


def _with_text(png: bytes, note: str) -> bytes:
    """The same pixels under another sha256: a tEXt chunk before IEND."""
    payload = b"Comment\x00" + note.encode()
    chunk = b"tEXt" + payload
    crc = zlib.crc32(chunk).to_bytes(4, "big")
    return png[:-12] + len(payload).to_bytes(4, "big") + chunk + crc + png[-12:]


def _png(img: Image.Image, **kwargs: Any) -> bytes:
    out = io.BytesIO()
    img.save(out, "PNG", **kwargs)
    return out.getvalue()


def bombs(copies: int = 4) -> dict[str, bytes]:
    side = 7999
    forms = {
        "rgb": _png(Image.new("RGB", (side, side), (20, 200, 40))),
        "rgba": _png(Image.new("RGBA", (side, side), (20, 40, 200, 128))),
        "grey16": _png(Image.new("I;16", (side, side), 1234)),
        "palette": _png(Image.new("P", (side, side), 7)),
    }
    frames = [Image.new("RGB", (4000, 4000), (40 * k, 90, 30)) for k in range(3)]
    forms["apng"] = _png(frames[0], save_all=True, append_images=frames[1:], duration=100)
    del frames
    return {
        f"{name}-{i}": _with_text(data, f"copy {i}")
        for name, data in forms.items()
        for i in range(copies)
    }


# -- the service process -------------------------------------------------------------------------


def baseline_tree(commit: str) -> Path:
    """A git worktree of the previous release (made once, reused)."""
    path = Path(tempfile.gettempdir()) / f"horde-scanner-{commit}"
    if not (path / "horde_scanner").is_dir():
        subprocess.run(
            ["git", "-C", str(ROOT), "worktree", "add", "--detach", str(path), commit],
            check=True,
            capture_output=True,
        )
    return path


def service(kind: str, horde_url: str, tmp: Path, tree: Path | None) -> Replica:
    env = replica_env(f"sqlite:///{tmp / 'bench.db'}", horde_url, **KINDS[kind])
    env.pop("HORDE_SCANNER_HORDE__HTTP_TIMEOUT_S", None)
    if tree is not None:
        env["PYTHONPATH"] = str(tree)
    return Replica(env, tmp).start()


def status_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


# -- the hostile load ------------------------------------------------------------------------------


async def upload(http: aiohttp.ClientSession, url: str, data: bytes) -> tuple[int, float]:
    started = time.monotonic()
    async with http.post(url, data=data, headers={"Content-Type": "image/png"}) as resp:
        await resp.read()
        return resp.status, time.monotonic() - started


async def big_logins(base: str) -> list[int | str]:
    form = {"Content-Type": "application/x-www-form-urlencoded"}
    connector = aiohttp.TCPConnector(local_addr=("127.0.0.2", 0), limit=40)
    async with aiohttp.ClientSession(connector=connector) as http:
        for _ in range(12):  # lock this address out (admin.max_failures: 10)
            async with http.post(f"{base}/admin/login", data=b"token=wrong", headers=form) as r:
                await r.read()
        body = b"token=" + b"x" * (5 * MIB)

        async def one() -> int | str:
            try:
                async with http.post(f"{base}/admin/login", data=body, headers=form) as resp:
                    await resp.read()
                    return resp.status
            except aiohttp.ClientError as exc:
                return type(exc).__name__

        return await asyncio.gather(*(one() for _ in range(20)))


async def big_answers(http: aiohttp.ClientSession, base: str) -> list[int | str]:
    async def body() -> Any:
        for _ in range(64):
            yield b" " * 65536

    async def one() -> int | str:
        try:
            async with http.post(
                f"{base}/api/v1/pop",
                data=body(),
                headers={"apikey": WORKER_KEY, "Content-Type": "application/json"},
            ) as resp:
                await resp.read()
                return resp.status
        except aiohttp.ClientError as exc:
            return type(exc).__name__

    return await asyncio.gather(*(one() for _ in range(5)))


async def slow_head(port: int, seconds: float) -> str:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
    stop = time.monotonic() + seconds
    try:
        while time.monotonic() < stop:
            try:
                answer = await asyncio.wait_for(reader.read(100), 0.5)
                return answer.split(b"\r\n", 1)[0].decode() or "closed"
            except TimeoutError:
                writer.write(b"X-Slow: y\r\n")
        return "still open"
    except ConnectionError:
        return "closed"
    finally:
        writer.close()


async def worker_loop(http: aiohttp.ClientSession, base: str, stop: asyncio.Event) -> None:
    """What a pictrs-safety worker does: pull, answer clean."""
    headers = {"apikey": WORKER_KEY, "X-Worker-Name": "bench"}
    while not stop.is_set():
        try:
            async with http.get(f"{base}/api/v1/pop", headers=headers) as resp:
                if resp.status != 200:
                    await asyncio.sleep(0.05)
                    continue
                name = resp.headers["Content-Disposition"].split("=", 1)[1]
                await resp.read()
            answer = {"image": name, "is_csam": False, "is_nsfw": False}
            async with http.post(f"{base}/api/v1/pop", json=answer, headers=headers) as resp:
                await resp.read()
        except aiohttp.ClientError:
            await asyncio.sleep(0.1)


async def all_judged(
    http: aiohttp.ClientSession, base: str, shas: list[str], timeout: float
) -> int:
    auth = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    stop = time.monotonic() + timeout
    done: set[str] = set()
    while time.monotonic() < stop and len(done) < len(shas):
        for sha in shas:
            if sha in done:
                continue
            async with http.get(f"{base}/api/v1/admin/verdicts/{sha}", headers=auth) as resp:
                if resp.status == 200:
                    done.add(sha)
        await asyncio.sleep(0.5)
    return len(done)


async def hostile_run(
    kind: str, release: str, tree: Path | None, files: dict[str, bytes]
) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        async with replica_horde(latency=0.5) as horde:
            svc = service(kind, horde.url, Path(tmp), tree)
            pid = svc.proc.pid if svc.proc else 0
            stop = asyncio.Event()
            try:
                async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=100)) as http:
                    worker = None
                    if kind == "workers":
                        worker = asyncio.ensure_future(worker_loop(http, svc.url, stop))
                    status, _ = await upload(http, svc.scan_url(), distinct_png(1))
                    await asyncio.sleep(1.0)
                    idle = status_kib(pid, "VmRSS")
                    started = time.monotonic()
                    shas = [sha256_hex(d) for d in files.values()]
                    answers, logins, worker_answers, heads = await asyncio.gather(
                        asyncio.gather(*(upload(http, svc.scan_url(), d) for d in files.values())),
                        big_logins(svc.url),
                        big_answers(http, svc.url),
                        asyncio.gather(*(slow_head(svc.port, 14.0) for _ in range(10))),
                    )
                    judged = await all_judged(http, svc.url, shas, 240)
                    took = time.monotonic() - started
                    peak = status_kib(pid, "VmHWM")
                    stop.set()
                    if worker is not None:
                        await worker
            finally:
                svc.terminate(60)
    return {
        "kind": kind,
        "release": release,
        "idle_mib": idle / 1024,
        "peak_mib": peak / 1024,
        "bomb_status": sorted({s for s, _ in answers}),
        "bomb_answer_max_s": max(t for _, t in answers),
        "judged": f"{judged}/{len(shas)}",
        "logins": _count(logins),
        "worker_answers": _count(worker_answers),
        "slow_heads": _count(heads),
        "took_s": took,
    }


def _count(values: list[Any]) -> str:
    counts: dict[str, int] = {}
    for value in values:
        counts[str(value)] = counts.get(str(value), 0) + 1
    return ", ".join(f"{k} x{v}" for k, v in sorted(counts.items()))


# -- cache hits ------------------------------------------------------------------------------------


async def closed_loop(url: str, images: list[bytes], clients: int, seconds: float) -> float:
    done = 0
    stop = time.perf_counter() + seconds
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=clients)) as http:

        async def client(i: int) -> None:
            nonlocal done
            n = i
            while time.perf_counter() < stop:
                async with http.post(url, data=images[n % len(images)]) as resp:
                    await resp.read()
                n += 1
                done += 1

        started = time.perf_counter()
        await asyncio.gather(*(client(i) for i in range(clients)))
        return done / (time.perf_counter() - started)


async def cache_hits(tree: Path, seconds: float, rounds: int) -> None:
    images = [distinct_png(1000 + i) for i in range(16)]
    with tempfile.TemporaryDirectory() as a, tempfile.TemporaryDirectory() as b:
        async with FakeHorde(latency=0.2) as horde:
            new = service("horde", horde.url, Path(a), None)
            old = service("horde", horde.url, Path(b), tree)
            try:
                async with aiohttp.ClientSession() as http:
                    for svc in (new, old):
                        for _ in range(60):
                            routes = set()
                            for data in images:
                                async with http.post(svc.scan_url(), data=data) as resp:
                                    routes.add((await resp.json())["route"])
                            if routes == {"cache"}:
                                break
                            await asyncio.sleep(0.5)
                rates: dict[str, list[float]] = {"this tree": [], BASELINE: []}
                pair = [("this tree", new), (BASELINE, old)]
                for i in range(rounds):
                    # Each goes first in every other round: the machine's load drifts.
                    for name, svc in pair if i % 2 == 0 else pair[::-1]:
                        rates[name].append(await closed_loop(svc.scan_url(), images, 32, seconds))
            finally:
                new.terminate(60)
                old.terminate(60)
    med = {k: statistics.median(v) for k, v in rates.items()}
    print(f"\ncache hits, closed loop, 32 clients, {seconds:g} s x {rounds} rounds interleaved:")
    for name, values in rates.items():
        each = ", ".join(f"{v:.0f}" for v in values)
        print(f"  {name:<10} median {med[name]:7.0f} requests/s  ({each})")
    paired = statistics.median(
        n / o for n, o in zip(rates["this tree"], rates[BASELINE], strict=True)
    )
    print(
        f"  ratio this tree / {BASELINE}: of the medians {med['this tree'] / med[BASELINE]:.3f}, "
        f"median of each round's pair {paired:.3f} [target >= 0.95]"
    )


# -- main ------------------------------------------------------------------------------------------


async def main(args: argparse.Namespace) -> None:
    tree = None if args.no_baseline else baseline_tree(args.baseline_commit)
    if not args.kinds:
        if tree is not None:
            await cache_hits(tree, args.hits_seconds, args.hits_rounds)
        return
    print("making the files...", flush=True)
    files = bombs()
    sizes = sorted({len(d) // 1024 for d in files.values()})
    print(f"{len(files)} bombs, {sizes[0]}-{sizes[-1]} KB each on the wire", flush=True)
    print(
        f"\n{'backend':<10} {'release':<10} {'idle':>7} {'peak RSS':>9} {'judged':>7} "
        f"{'max answer':>10}  logins (20 x 5 MiB) / worker answers (5 x 4 MB chunked) / slow heads"
    )
    for kind in [k for k in args.kinds.split(",") if k]:
        releases: list[tuple[str, Path | None]] = [("this tree", None)]
        if tree is not None:
            releases.append((args.baseline_commit, tree))
        for release, path in releases:
            r = await hostile_run(kind, release, path, files)
            print(
                f"{r['kind']:<10} {r['release']:<10} {r['idle_mib']:5.0f} MiB "
                f"{r['peak_mib']:5.0f} MiB "
                f"{r['judged']:>7} {r['bomb_answer_max_s']:8.1f} s  "
                f"{r['logins']} / {r['worker_answers']} / {r['slow_heads']}",
                flush=True,
            )
    print("[target: peak RSS <= 600 MB on default settings]")
    if tree is not None and args.hits_rounds:
        await cache_hits(tree, args.hits_seconds, args.hits_rounds)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--kinds", default="horde,prescreen,workers")
    parser.add_argument("--no-baseline", action="store_true")
    parser.add_argument("--baseline-commit", default=BASELINE)
    parser.add_argument("--hits-seconds", type=float, default=5.0)
    parser.add_argument("--hits-rounds", type=int, default=6)
    os.environ.setdefault("PYTHONHASHSEED", "0")
    asyncio.run(main(parser.parse_args()))
