"""PDQ index benchmark: `python -m bench.pdq_index [--hashes N] [--uploads N]`.

1. N (default 1,000,000) random PDQ hashes imported into a real store file, then loaded the way
   the service loads them at start-up: load time, index memory, process RSS growth.
2. Index lookups: near copies of indexed hashes (20 bits flipped) and unrelated hashes,
   p50/p99 of one lookup, and of a full match (thread hop + entry description from SQLite).
3. End to end through the real service on loopback, with that index loaded: pict-rs-style
   uploads of near-duplicates (re-encoded, resized, a few pixels changed) of a positive judged
   before; latency p50/p99 from the client, and proof that the backend was not called.

Targets (issue 5): lookup p99 <= 20 ms, load <= 10 s, index <= 200 MB, end to end p99 <= 50 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import random
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import aiohttp
import numpy as np
from PIL import Image

from horde_scanner.backends.mock import MockBackend
from horde_scanner.config import HashesSettings
from horde_scanner.media.hashing import PdqHash
from horde_scanner.signals.hash_list import HashEntry
from horde_scanner.signals.hash_matcher import HashMatcher
from horde_scanner.store.hashes import LOCAL
from horde_scanner.store.sqlite import Store
from horde_scanner.testing import textures
from horde_scanner.testing.pictrs import validate_upload
from horde_scanner.testing.service import make_settings, running_service


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def pct(samples: list[float], q: float) -> float:
    return float(np.percentile(np.array(samples) * 1000, q))


def flip(value: str, bits: int, rng: random.Random) -> str:
    number = int(value, 16)
    for bit in rng.sample(range(256), bits):
        number ^= 1 << bit
    return f"{number:064x}"


async def index_figures(db: Path, count: int) -> list[str]:
    rng = np.random.default_rng(5)
    raw = rng.integers(0, 256, size=(count, 32), dtype=np.uint8)
    values = [row.hex() for row in (bytes(r) for r in raw)]
    entries = [HashEntry("pdq", v, "csam", "bench") for v in values]
    async with await Store.open(db) as store:
        started = time.perf_counter()
        await store.add_hash_entries(LOCAL, entries)
        print(f"import of {count:,} entries into the store: {time.perf_counter() - started:.1f} s")
    del entries, raw
    gc.collect()

    executor = ThreadPoolExecutor(max_workers=4)
    async with await Store.open(db) as store:
        before = rss_mb()
        matcher = HashMatcher(store, HashesSettings(), executor)
        started = time.perf_counter()
        await matcher.start()
        load_s = time.perf_counter() - started
        gc.collect()
        grown = rss_mb() - before
        print(f"index load at start-up ({matcher.size:,} hashes): {load_s:.2f} s")
        print(
            f"index memory: {matcher.index_bytes / 2**20:.1f} MiB (arrays); "
            f"process RSS grew {grown:.1f} MiB"
        )

        pick = random.Random(9)
        near = [flip(values[pick.randrange(count)], 20, pick) for _ in range(3000)]
        unrelated = [f"{pick.getrandbits(256):064x}" for _ in range(3000)]
        for name, queries in (("near copy (20 bits)", near), ("unrelated", unrelated)):
            times = []
            found = 0
            for q in queries:
                t = time.perf_counter()
                hits = matcher.search([PdqHash(q, 100)])
                times.append(time.perf_counter() - t)
                found += bool(hits)
            print(
                f"lookup, {name}: p50 {pct(times, 50):.2f} ms, p99 {pct(times, 99):.2f} ms, "
                f"max {pct(times, 100):.2f} ms ({found}/{len(queries)} matched)"
            )
        times = []
        for q in near[:1000]:
            t = time.perf_counter()
            match = await matcher.match_image([PdqHash(q, 100)])
            times.append(time.perf_counter() - t)
            assert match is not None
        print(
            f"full match (pool hop + SQLite description): p50 {pct(times, 50):.2f} ms, "
            f"p99 {pct(times, 99):.2f} ms"
        )
        await matcher.stop()
    executor.shutdown()
    return values


def near_duplicates(img: Image.Image, count: int) -> list[bytes]:
    rng = random.Random(3)
    out = []
    w, h = img.size
    for i in range(count):
        copy = img.copy()
        if i % 3 == 1:
            scale = rng.uniform(0.6, 1.3)
            copy = copy.resize((int(w * scale), int(h * scale)))
        for _ in range(5):
            copy.putpixel(
                (rng.randrange(copy.width), rng.randrange(copy.height)), (rng.randrange(256), 0, 0)
            )
        fmt = ("JPEG", "WEBP", "PNG")[i % 3]
        options = {"quality": rng.randint(60, 95)} if fmt != "PNG" else {}
        out.append(textures.encode(copy, fmt, **options))
    return out


async def end_to_end(db: Path, uploads: int) -> None:
    backend = MockBackend(textures.red_is_csam)
    settings = make_settings(db, "http://127.0.0.1:9/api")
    positive = textures.textured("red", seed=1234)
    copies = near_duplicates(positive, uploads)
    started = time.perf_counter()
    async with aiohttp.ClientSession() as http, running_service(settings, backend=backend) as svc:
        print(f"service start-up with the index: {time.perf_counter() - started:.1f} s")
        first = await validate_upload(http, svc.scan_url(), textures.encode(positive), "image/jpeg")
        assert first.status == 406 and first.body["route"] == "backend", first.body
        calls = backend.calls
        for _ in range(5):  # warm up connections and code paths
            await validate_upload(http, svc.scan_url(), copies[0], "image/jpeg")
        times = []
        routes: dict[str, int] = {}
        for data in copies:
            t = time.perf_counter()
            result = await validate_upload(http, svc.scan_url(), data, "image/jpeg")
            times.append(time.perf_counter() - t)
            routes[result.body["route"]] = routes.get(result.body["route"], 0) + 1
            assert result.status == 406, result.body
        print(
            f"end to end, near-duplicate of a known positive ({uploads} uploads, one at a "
            f"time, {sum(len(c) for c in copies) // uploads // 1024} KiB average): "
            f"p50 {pct(times, 50):.1f} ms, p99 {pct(times, 99):.1f} ms, "
            f"max {pct(times, 100):.1f} ms; routes {routes}"
        )

        gate = asyncio.Semaphore(4)

        async def one(data: bytes) -> float:
            async with gate:
                t = time.perf_counter()
                result = await validate_upload(http, svc.scan_url(), data, "image/jpeg")
                assert result.status == 406
                return time.perf_counter() - t

        more = near_duplicates(textures.trim(positive, 0.003), uploads)
        wall = time.perf_counter()
        times = list(await asyncio.gather(*(one(d) for d in more)))
        wall = time.perf_counter() - wall
        print(
            f"end to end, 4 at a time: p50 {pct(times, 50):.1f} ms, p99 {pct(times, 99):.1f} "
            f"ms, {uploads / wall:.0f} uploads/s"
        )
        print(f"backend calls for the near-duplicates: {backend.calls - calls}")


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hashes", type=int, default=1_000_000)
    parser.add_argument("--uploads", type=int, default=300)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="  log: %(name)s: %(message)s")
    # Index (re)loads are worth seeing: they are what competes with uploads.
    logging.getLogger("horde_scanner.signals.hash_matcher").setLevel(logging.INFO)
    with tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp) / "bench.db"
        await index_figures(db, args.hashes)
        await end_to_end(db, args.uploads)


if __name__ == "__main__":
    asyncio.run(main())
