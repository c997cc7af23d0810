"""How fast /metrics and the admin API answer on a store with many verdicts.

    python -m bench.admin [--verdicts 100000] [--requests 200]

Fills a fresh SQLite store (in a temporary directory) with verdicts of every label, a few
thousand audit rows and list entries, starts the real service on loopback with the mock
backend, and times sequential requests: /metrics, admin list (unfiltered, by label, by source
prefix, by time), the queue, one item with its audit trail, stats. Prints percentiles.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import tempfile
import time
from pathlib import Path

import aiohttp

from horde_scanner.backends.mock import MockBackend
from horde_scanner.config import load_settings
from horde_scanner.store.sqlite import Store
from horde_scanner.testing.service import running_service

TOKEN = "bench-admin-token-0123456789"
LABELS = ["clean"] * 90 + ["nsfw"] * 6 + ["csam"] * 1 + ["unreadable"] * 2 + ["error"] * 1


async def fill(db: Path, n: int) -> str:
    rng = random.Random(7)
    now = time.time()
    store = await Store.open(db)
    rows = []
    for i in range(n):
        sha = f"{i:064x}"
        label = rng.choice(LABELS)
        source = rng.choice(["upload:pictrs", "local:/srv/pictrs/files", "s3:media/files"])
        signals = json.dumps(
            {
                "backend": "horde",
                "nsfw": label in ("nsfw", "csam"),
                "caption": "a photo",
                "tags": {},
                "scores": {},
                "extra": {},
            }
        )
        ts = now - rng.random() * 30 * 86400
        rows.append(
            (
                sha,
                label,
                json.dumps([f"reason {label}"]),
                signals,
                "horde",
                "bench",
                "image/jpeg",
                12345,
                source,
                ts,
                ts,
            )
        )
    await store.db.execute("BEGIN")
    await store.db.executemany(
        "INSERT INTO verdicts (sha256, label, reasons, signals, backend, policy_version,"
        " media_type, size, source, first_seen, judged_at) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
        rows,
    )
    await store.db.execute("COMMIT")
    positive = next(r[0] for r in rows if r[1] == "csam")
    for i in range(0, n, max(1, n // 2000)):
        await store.audit("judged", sha256=rows[i][0], label=rows[i][1], source=rows[i][8])
    for i in range(0, n, max(1, n // 200)):
        await store.set_list(rows[i][0], "allow" if i % 2 else "deny", by="bench")
    await store.close()
    return positive


def pct(values: list[float], p: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))]


async def timed(http: aiohttp.ClientSession, url: str, n: int) -> list[float]:
    headers = {"Authorization": f"Bearer {TOKEN}"}
    out = []
    for _ in range(n):
        started = time.perf_counter()
        async with http.get(url, headers=headers) as resp:
            await resp.read()
            assert resp.status == 200, (url, resp.status)
        out.append((time.perf_counter() - started) * 1000)
    return out


async def main(verdicts: int, requests: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp) / "bench.db"
        started = time.perf_counter()
        positive = await fill(db, verdicts)
        print(f"filled {verdicts} verdicts in {time.perf_counter() - started:.1f} s")
        settings = load_settings(
            None,
            store={"path": db},
            admin={"token": TOKEN},
            quarantine={"dir": Path(tmp) / "q"},
            horde={"url": "http://127.0.0.1:9/api"},
        )
        async with running_service(settings, backend=MockBackend()) as svc:
            for i in range(50):  # some validation traffic so the histograms have data
                svc.parts.metrics.latency.observe(0.001 * i)
            run = svc.parts.sweeps.start("local:/srv/pictrs", total=verdicts)
            run.advance(verdicts // 3, label="clean")
            api = f"{svc.url}/api/v1/admin"
            since = time.time() - 86400
            cases = {
                "/metrics": f"{svc.url}/metrics",
                "list (newest 100)": f"{api}/verdicts?limit=100",
                "list label=csam": f"{api}/verdicts?label=csam&limit=100",
                "list source=s3:": f"{api}/verdicts?source=s3:&limit=100",
                "list since 24h": f"{api}/verdicts?since={since}&limit=100",
                "list undecided nsfw": f"{api}/verdicts?label=nsfw&undecided=1&limit=100",
                "queue": f"{api}/queue",
                "show one": f"{api}/verdicts/{positive}",
                "stats": f"{api}/stats",
            }
            async with aiohttp.ClientSession() as http:
                print(f"{'request':<24}{'p50 ms':>9}{'p95 ms':>9}{'p99 ms':>9}{'mean ms':>9}")
                for name, url in cases.items():
                    n = requests if name != "stats" else max(10, requests // 10)
                    await timed(http, url, 3)  # warm up
                    ms = await timed(http, url, n)
                    print(
                        f"{name:<24}{pct(ms, 50):>9.2f}{pct(ms, 95):>9.2f}{pct(ms, 99):>9.2f}"
                        f"{statistics.mean(ms):>9.2f}"
                    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--verdicts", type=int, default=100_000)
    parser.add_argument("--requests", type=int, default=200)
    args = parser.parse_args()
    asyncio.run(main(args.verdicts, args.requests))
