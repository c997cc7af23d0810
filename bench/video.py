"""Animations and video: time to a verdict with an instant backend, decode throughput, peak RSS.

    python -m bench.video            # makes the files, then measures in a fresh process

Files: a 30 s 720p MP4 (libx264, 30 fps) with a 2 s keyframe interval (what most sites and
phones produce) and with x264's default 250-frame interval, and a 200-frame 320x240 GIF.
Targets: MP4 <= 1 s, GIF <= 300 ms, peak RSS while decoding <= 300 MB.
"""

from __future__ import annotations

import asyncio
import io
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

from bench.common import ROOT, peak_rss_mb, rss_mb

REPS = 5


def make_mp4(path: Path, gop: int, seconds: int = 30, fps: int = 30) -> None:
    import av

    w, h = 1280, 720
    rng = np.random.default_rng(gop)
    base = rng.integers(0, 255, (h, w + seconds * fps * 4, 3), dtype=np.uint8)
    base = np.asarray(
        Image.fromarray(base)
        .resize((base.shape[1] // 8, h // 8))
        .resize((base.shape[1], h), Image.Resampling.BILINEAR)
    )
    with av.open(str(path), mode="w", format="mp4") as muxer:
        stream = muxer.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        stream.options = {"preset": "veryfast", "g": str(gop), "crf": "28"}
        for i in range(seconds * fps):
            frame = np.ascontiguousarray(base[:, i * 4 : i * 4 + w])
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                muxer.mux(packet)
        for packet in stream.encode():
            muxer.mux(packet)


def make_gif(path: Path, count: int = 200) -> None:
    """A smooth scene panning under a moving shape (like a clip turned GIF; pure noise would
    be a worst case no real GIF is)."""
    rng = np.random.default_rng(7)
    coarse = rng.integers(0, 255, (240 // 16, (320 + count * 2) // 16, 3), dtype=np.uint8)
    pattern = np.asarray(
        Image.fromarray(coarse).resize((320 + count * 2, 240), Image.Resampling.BILINEAR)
    )
    frames = []
    for i in range(count):
        img = Image.fromarray(np.ascontiguousarray(pattern[:, i * 2 : i * 2 + 320]))
        img.paste((250, 250, 250), (i % 280, 100, i % 280 + 40, 140))
        frames.append(img.quantize(64))
    out = io.BytesIO()
    frames[0].save(out, "GIF", save_all=True, append_images=frames[1:], duration=40, loop=0)
    path.write_bytes(out.getvalue())


async def time_to_verdict(data: bytes, workdir: Path) -> tuple[list[float], str]:
    from horde_scanner.backends.mock import MockBackend
    from horde_scanner.config import load_settings
    from horde_scanner.judging.judge import build_judge
    from horde_scanner.policy.rules import Policy
    from horde_scanner.store.sqlite import Store

    times: list[float] = []
    label = ""
    for rep in range(REPS):
        db = workdir / f"v{rep}-{time.monotonic_ns()}.db"
        settings = load_settings(None, store={"path": db})
        store = await Store.open(db)
        executor = ThreadPoolExecutor(max_workers=2)
        judge = build_judge(settings, store, Policy.load(), MockBackend(), executor)
        await judge.start()
        try:
            started = time.perf_counter()
            outcome = await judge.evaluate(data, source="bench", within_s=None)
            times.append(time.perf_counter() - started)
            label = f"{outcome.label}, {outcome.verdict.reasons[0] if outcome.verdict else ''}"
        finally:
            await judge.stop()
            await store.close()
            executor.shutdown()
    return times, label


def full_decode_fps(data: bytes, video: bool) -> float:
    """Every frame of the file, decoded (the capacity figure; sampling decodes fewer)."""
    started, n = time.perf_counter(), 0
    if video:
        import av

        with av.open(io.BytesIO(data)) as container:
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            for _ in container.decode(stream):
                n += 1
    else:
        img = Image.open(io.BytesIO(data))
        for i in range(img.n_frames):
            img.seek(i)
            img.load()
            n += 1
    return n / (time.perf_counter() - started)


def measure(files: list[Path]) -> None:
    from horde_scanner.media.decode import DecodeLimits, decode

    print(f"RSS after imports: {rss_mb(os.getpid()):.0f} MB")
    for path in files:
        data = path.read_bytes()
        decode(data, DecodeLimits())  # warm up codecs and imports
        started = time.perf_counter()
        decoded = decode(data, DecodeLimits())
        took = time.perf_counter() - started
        times, label = asyncio.run(time_to_verdict(data, path.parent))
        ms = sorted(t * 1000 for t in times)
        print(
            f"\n{path.name}: {len(data) / 1e6:.1f} MB, {decoded.frame_count} frames, "
            f"{decoded.width}x{decoded.height}"
        )
        print(
            f"  sample: {len(decoded.frames)} frames "
            f"{[f.index for f in decoded.frames]} decoded in {took * 1000:.0f} ms"
        )
        print(
            f"  time to verdict (MockBackend, {REPS} runs): median {ms[len(ms) // 2]:.0f} ms, "
            f"max {ms[-1]:.0f} ms -> {label}"
        )
        print(f"  peak RSS so far (sampling and judging only): {peak_rss_mb(os.getpid()):.0f} MB")
    for path in files:
        fps = full_decode_fps(path.read_bytes(), path.suffix == ".mp4")
        print(f"full decode of {path.name} (every frame, capacity figure): {fps:.0f} frames/s")
    print(f"peak RSS after full decodes (frame threads): {peak_rss_mb(os.getpid()):.0f} MB")


def main() -> None:
    if len(sys.argv) > 2 and sys.argv[1] == "--measure":
        measure([Path(p) for p in sys.argv[2:]])
        return
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        files = [d / "30s-720p-gop60.mp4", d / "30s-720p-gop250.mp4", d / "200-frames.gif"]
        started = time.perf_counter()
        make_mp4(files[0], gop=60)
        make_mp4(files[1], gop=250)
        make_gif(files[2])
        print(f"files made in {time.perf_counter() - started:.1f} s")
        subprocess.run(
            [sys.executable, "-m", "bench.video", "--measure", *map(str, files)],
            cwd=ROOT,
            check=True,
        )


if __name__ == "__main__":
    main()
