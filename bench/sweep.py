"""Storage sweep benchmark: a cold sweep and a warm rescan of 20,000 small images.

    python -m bench.sweep [--count 20000] [--cache ~/.cache/horde-scanner-bench]

The tree (pict-rs 0.5.7+ layout, JPEG/PNG/WebP of 64-256 px, 1 % "red" positives) is made once
and kept in the cache directory, outside the repository. Judging uses an instant MockBackend,
so the cold figure is what our pipeline costs (read, hash, decode, store), not a backend.

Targets (2 cores): cold >= 150 images/s; warm >= 5,000 files/s with 0 bytes read; peak RSS
<= 300 MB. Figures are printed, never asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import random
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from PIL import Image, ImageDraw

DEFAULT_CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / (
    "horde-scanner-bench"
)


def _uuid7_path(when: datetime, rng: random.Random, ext: str) -> str:
    ms = int(when.timestamp() * 1000) & ((1 << 48) - 1)
    rand = rng.getrandbits(74)
    value = (
        (ms << 80) | (0x7 << 76) | ((rand >> 62) << 64) | (0b10 << 62) | (rand & ((1 << 62) - 1))
    )
    h = f"{value:032x}"
    return "/".join(h[i : i + 2] for i in range(0, 20, 2)) + f"/{h[20:]}.{ext}"


def generate(root: Path, count: int) -> None:
    rng = random.Random(count)
    when = datetime(2024, 1, 1, tzinfo=UTC)
    root.mkdir(parents=True, exist_ok=True)
    for n in range(count):
        when += timedelta(seconds=rng.randrange(1, 120))
        side = rng.randrange(64, 257)
        red = n % 100 == 0
        base = (230, 20, 20) if red else tuple(rng.randrange(40, 200) for _ in range(3))
        img = Image.new("RGB", (side, side), base)
        if not red:
            draw = ImageDraw.Draw(img)
            for _ in range(4):
                x, y = rng.randrange(side), rng.randrange(side)
                colour = tuple(rng.randrange(256) for _ in range(3))
                draw.rectangle((x, y, x + side // 4, y + side // 4), fill=colour)
        fmt, ext = rng.choice(
            [("JPEG", "jpeg"), ("JPEG", "jpeg"), ("PNG", "png"), ("WEBP", "webp")]
        )
        out = io.BytesIO()
        img.save(out, format=fmt)
        path = root / _uuid7_path(when, rng, ext)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(out.getvalue())
    (root.parent / f"{root.name}.complete").write_text(str(count))


def ensure_tree(cache: Path, count: int) -> Path:
    root = cache / f"tree-{count}"
    if not (cache / f"tree-{count}.complete").exists():
        print(f"generating {count} images in {root} (once) ...", flush=True)
        # In a child process, so that its memory does not count in our peak RSS.
        subprocess.run(
            [sys.executable, "-m", "bench.sweep", "--generate", str(root), "--count", str(count)],
            check=True,
        )
    return root


class RssSampler:
    """Peak RSS of this process while a phase runs (VmHWM cannot be reset, so sample)."""

    def __init__(self) -> None:
        self.peak_mb = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _rss(self) -> float:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return 0.0

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak_mb = max(self.peak_mb, self._rss())
            self._stop.wait(0.05)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak_mb = max(self.peak_mb, self._rss())


def _read_chars() -> int:
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("rchar:"):
            return int(line.split()[1])
    return 0


def _instant_judge(image: Image.Image) -> object:
    """The colour-marker judge on one pixel: the bench measures our pipeline, not the mock's
    own resize (solid red images are the positives)."""
    from horde_scanner.backends.mock import colour_marker_signals

    return colour_marker_signals(image.crop((0, 0, 1, 1)))


async def sweep(root: Path, db: Path, concurrency: int) -> tuple[float, object]:
    from horde_scanner.backends.mock import MockBackend
    from horde_scanner.config import load_settings
    from horde_scanner.runtime.sweeps import run_scan
    from horde_scanner.sweep.progress import Progress

    settings = load_settings(
        None, store={"path": db}, scan={"concurrency": concurrency}, log_level="WARNING"
    )
    started = time.perf_counter()
    cpu = time.process_time()
    report = await run_scan(
        settings,
        str(root),
        backend=MockBackend(_instant_judge),  # type: ignore[arg-type]
        progress=Progress(tty=False, log_every_s=1e9),
    )
    report.cpu_s = time.process_time() - cpu  # type: ignore[attr-defined]
    return time.perf_counter() - started, report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=20_000)
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--generate", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.generate:
        generate(args.generate, args.count)
        return
    root = ensure_tree(args.cache, args.count)
    print(
        f"tree: {root} ({args.count} images), {os.cpu_count()} cpus, "
        f"concurrency {args.concurrency}, load average {os.getloadavg()[0]:.1f}"
    )
    with tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp) / "bench.db"
        with RssSampler() as cold_rss:
            cold_s, cold = asyncio.run(sweep(root, db, args.concurrency))
        c = cold.counts  # type: ignore[attr-defined]
        print(
            f"cold sweep : {c.listed} files in {cold_s:.1f} s = {c.listed / cold_s:,.0f} images/s"
            f"  (judged {c.judged}, csam {c.csam}, clean {c.clean}, errors {c.errors})"
            f"  CPU {cold.cpu_s / c.listed * 1000:.2f} ms/image"  # type: ignore[attr-defined]
            f"  peak RSS {cold_rss.peak_mb:.0f} MB"
        )
        before = _read_chars()
        with RssSampler() as warm_rss:
            warm_s, warm = asyncio.run(sweep(root, db, args.concurrency))
        read_chars = _read_chars() - before
        w = warm.counts  # type: ignore[attr-defined]
        print(
            f"warm rescan: {w.listed} files in {warm_s:.2f} s = {w.listed / warm_s:,.0f} files/s"
            f"  (seen {w.seen}, image bytes read {w.bytes_read},"
            f" CPU {warm.cpu_s / w.listed * 1e6:.0f} us/file,"  # type: ignore[attr-defined]
            f" process read() bytes incl. SQLite {read_chars:,})"
            f"  peak RSS {warm_rss.peak_mb:.0f} MB"
        )
        print(
            f"peak RSS overall: {max(cold_rss.peak_mb, warm_rss.peak_mb):.0f} MB "
            "(targets: cold >= 150/s, warm >= 5,000/s with 0 bytes, RSS <= 300 MB)"
        )


if __name__ == "__main__":
    main()
