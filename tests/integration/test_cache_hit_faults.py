"""A cache hit maps no fresh memory: `horde-scanner serve` pins glibc's mmap threshold above
a typical body (cli/serve.py), so a 250 KB body's buffer comes from the heap and its pages
are reused by the next hit. At glibc's 128 KiB each such buffer was mapped afresh and
faulted in page by page: 15-27 minor page faults a hit, about 50 us of its 400 (docs/
benchmarks.md). Faults are counted by the kernel, not timed, so this holds on a busy machine.
"""

from __future__ import annotations

import asyncio
import signal
import sys
from pathlib import Path

import aiohttp
import numpy as np
from PIL import Image

from horde_scanner.media.hashing import sha256_hex
from horde_scanner.store.sqlite import Store
from horde_scanner.testing import images
from horde_scanner.testing.net import free_port, wait_port
from horde_scanner.testing.procstat import minor_faults
from horde_scanner.verdict import Label, Verdict
from tests.proc import cli_env

CLIENT = "faults"


def _noise_png(seed: int) -> bytes:
    """About 250 KB: noise does not compress."""
    pixels = np.random.default_rng(seed).integers(0, 256, (290, 290, 3), dtype=np.uint8)
    return images.encode(Image.fromarray(pixels), "PNG")


async def _hits(url: str, bodies: list[bytes], count: int) -> list[str]:
    routes: list[str] = []
    async with aiohttp.ClientSession() as session:

        async def client(i: int) -> None:
            for n in range(i, count, 8):
                async with session.post(url, data=bodies[n % len(bodies)]) as resp:
                    assert resp.status == 200, await resp.text()
                    routes.append((await resp.json())["route"])

        await asyncio.gather(*(client(i) for i in range(8)))
    return routes


async def test_a_cache_hit_takes_no_page_faults(tmp_path: Path) -> None:
    bodies = [_noise_png(seed) for seed in range(8)]
    assert all(240_000 < len(b) < 300_000 for b in bodies)
    db = tmp_path / "s.db"
    async with await Store.open(f"sqlite:///{db}") as store:  # judged before: hits from now
        for body in bodies:
            verdict = Verdict(label=Label.CLEAN, reasons=["judged before"], backend="test")
            await store.put_verdict(sha256_hex(body), verdict, media_type="image/png")
    port = free_port()
    env = cli_env(
        db,
        f"http://127.0.0.1:{free_port()}/api",  # nothing is judged: a miss would fail the test
        HORDE_SCANNER_SERVER__CLIENT_IDS=f'["{CLIENT}"]',
        HORDE_SCANNER_LOG_LEVEL="WARNING",
    )
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "horde_scanner.cli", "serve", "--port", str(port),
        env=env, cwd=tmp_path,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        await asyncio.to_thread(wait_port, port)
        url = f"http://127.0.0.1:{port}/api/v1/scan/{CLIENT}"
        await _hits(url, bodies, 200)  # warm: the heap grows to its working size once
        before = minor_faults(proc.pid)
        routes = await _hits(url, bodies, 400)
        per_hit = (minor_faults(proc.pid) - before) / 400
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = await asyncio.wait_for(proc.communicate(), 30)
    assert set(routes) == {"cache"}
    assert per_hit < 2.0, f"{per_hit:.1f} minor page faults per cache hit"
    assert proc.returncode == 0, err.decode()[-2000:]
