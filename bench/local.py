"""Local judging benchmark: `python -m bench.local [--n N] [--clip-model-dir DIR]`.

1. CPU pre-screen (NudeNet's bundled ONNX model): images/s for 512 px images through the
   PrescreenBackend (its bounded thread pool, one core per thread); target >= 30/s on 2 cores.
2. p50/p95/p99 latency of pre-screened misses through the real validation endpoint (pict-rs
   style chunked upload, loopback, real SQLite store); target p99 <= 250 ms.
3. CLIP on CPU with a tiny random-weight model: what the backend adds per image on top of the
   model itself (batcher, executor hop, Signals).
4. ViT-L/14 on CUDA, batched (dynamic batcher, batch 32) against one image at a time; target
   >= 5x. Needs a CUDA GPU; uses the weights from --clip-model-dir / the Hugging Face cache, or
   with --random-weights the same architecture with random weights (throughput does not depend
   on the weights). Skipped, saying why, on a machine without CUDA or weights.

Figures are printed; nothing is asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from horde_scanner.media.decode import DecodeLimits, PreparedImage, prepare


def scene(seed: int, size: int = 512) -> Image.Image:
    """A 512 px synthetic photo: gradient sky, ground, a few shapes, sensor noise."""
    rng = np.random.default_rng(seed)
    arr = np.zeros((size, size, 3), np.float32)
    top, bottom = rng.integers(60, 255, 3), rng.integers(0, 200, 3)
    t = np.linspace(0, 1, size)[:, None, None]
    arr[:] = top * (1 - t) + bottom * t
    arr += rng.normal(0, 6, arr.shape)
    img = Image.fromarray(arr.clip(0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(img)
    for _ in range(6):
        x, y = rng.integers(0, size, 2)
        r = int(rng.integers(20, 120))
        colour = tuple(int(c) for c in rng.integers(0, 255, 3))
        draw.ellipse((int(x) - r, int(y) - r, int(x) + r, int(y) + r), fill=colour)
    return img


def jpeg(img: Image.Image) -> bytes:
    out = io.BytesIO()
    img.save(out, "JPEG", quality=88)
    return out.getvalue()


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


def rss_mib() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


async def bench_prescreen(n: int) -> None:
    from horde_scanner.backends.mock import MockBackend
    from horde_scanner.backends.nudenet import NudityDetector
    from horde_scanner.backends.prescreen import PrescreenBackend
    from horde_scanner.policy.rules import Policy

    detector = NudityDetector()
    limits = DecodeLimits()
    prepared = [prepare(jpeg(scene(i)), limits) for i in range(n)]
    start = time.perf_counter()
    for p in prepared[:20]:
        detector.scores(p.image)
    single_ms = (time.perf_counter() - start) / 20 * 1000
    print(f"[prescreen] detector alone, 1 thread: {single_ms:.1f} ms/image")
    for threads in (1, 2):
        backend = PrescreenBackend(
            detector, Policy.load().prescreen, MockBackend(), threads=threads, max_queue=n
        )
        await asyncio.gather(*(backend.judge(p) for p in prepared[: threads * 2]))  # warm up
        start = time.perf_counter()
        await asyncio.gather(*(backend.judge(p) for p in prepared))
        took = time.perf_counter() - start
        print(
            f"[prescreen] {threads} thread(s): {n / took:.1f} images/s for {n} images of "
            f"512 px ({backend.cleared} cleared, {backend.passed_on} passed on) "
            f"[target >= 30/s on 2 cores]"
        )
        await backend.aclose()


async def bench_validation(n: int, concurrency: int) -> None:
    import aiohttp

    from horde_scanner.config import load_settings
    from horde_scanner.testing.horde import FakeHorde
    from horde_scanner.testing.pictrs import validate_upload
    from horde_scanner.testing.service import running_service

    bodies = [jpeg(scene(10_000 + i)) for i in range(n)]
    with tempfile.TemporaryDirectory() as tmp:
        async with FakeHorde(latency=5.0) as horde:
            settings = load_settings(
                None,
                store={"path": Path(tmp) / "bench.db"},
                horde={"url": horde.url},
                server={"client_ids": ["bench"]},
                backend={"kind": "horde"},
                prescreen={"enabled": True},
            )
            async with running_service(settings) as svc, aiohttp.ClientSession() as http:
                url = svc.scan_url("bench")
                for body in bodies[:4]:
                    await validate_upload(http, url, body, "image/jpeg")  # warm up
                latencies: list[float] = []
                labels: dict[str, int] = {}
                sem = asyncio.Semaphore(concurrency)

                async def one(body: bytes) -> None:
                    async with sem:
                        result = await validate_upload(http, url, body, "image/jpeg")
                    latencies.append(result.elapsed_s * 1000)
                    labels[result.body["route"]] = labels.get(result.body["route"], 0) + 1

                start = time.perf_counter()
                await asyncio.gather(*(one(b) for b in bodies[4:]))
                took = time.perf_counter() - start
        m = len(latencies)
        print(
            f"[validate+prescreen] {m} misses, {concurrency} at a time: "
            f"{m / took:.1f} uploads/s; latency p50 {pct(latencies, 50):.0f} ms, "
            f"p95 {pct(latencies, 95):.0f} ms, p99 {pct(latencies, 99):.0f} ms, "
            f"max {max(latencies):.0f} ms [target p99 <= 250 ms]; routes {labels}; "
            f"Horde asked {horde.posts} times; RSS {rss_mib():.0f} MiB"
        )


async def bench_tiny_clip(n: int) -> None:
    try:
        import torch
    except ImportError:
        print("[clip-cpu] skipped: torch not installed (extra [gpu])")
        return
    from horde_scanner.policy.rules import Policy
    from horde_scanner.testing.tiny_clip import build_tiny_clip
    from local_gpu.backend import LocalClipBackend
    from local_gpu.clip import ClipScorer

    # One intra-op thread: torch's default pool thrashes on a small, shared CPU, and the
    # comparison below needs the same setting on both sides.
    torch.set_num_threads(1)
    phrases = Policy.load().clip.phrases
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = build_tiny_clip(Path(tmp) / "tiny", image_size=224)
        scorer = ClipScorer.load(model_dir=model_dir, device="cpu")
    scorer.set_phrases(phrases)
    limits = DecodeLimits()
    prepared = [prepare(jpeg(scene(20_000 + i)), limits) for i in range(n)]
    for p in prepared[:5]:
        scorer.score([p.image])
    start = time.perf_counter()
    for p in prepared:
        scorer.score([p.image])
    raw_ms = (time.perf_counter() - start) / n * 1000
    start = time.perf_counter()
    pre = scorer.preprocess.pixels([p.image for p in prepared])
    pre_ms = (time.perf_counter() - start) / n * 1000
    del pre
    backend = LocalClipBackend(scorer, phrases, batch_size=1, batch_wait_ms=0)
    start = time.perf_counter()
    for p in prepared:
        await backend.judge(p)
    one_ms = (time.perf_counter() - start) / n * 1000
    await backend.aclose()
    backend = LocalClipBackend(scorer, phrases, batch_size=16, batch_wait_ms=2)
    start = time.perf_counter()
    await asyncio.gather(*(backend.judge(p) for p in prepared))
    batched_ms = (time.perf_counter() - start) / n * 1000
    print(
        f"[clip-cpu tiny, {len(phrases)} phrases, 224 px] model call alone {raw_ms:.2f} "
        f"ms/image (of which pre-processing {pre_ms:.2f}); through the backend one at a "
        f"time {one_ms:.2f} ms/image (plumbing {one_ms - raw_ms:+.2f} ms); concurrent "
        f"{batched_ms:.2f} ms/image in {backend.batcher.batches} batches"
    )
    await backend.aclose()


async def bench_vit_l(model_dir: str | None, random_weights: bool, n: int) -> None:
    try:
        import torch
    except ImportError:
        print("[clip-gpu ViT-L/14] skipped: torch not installed (extra [gpu])")
        return
    if not torch.cuda.is_available():
        print(
            "[clip-gpu ViT-L/14] skipped: no CUDA GPU on this machine (run it on one: "
            "`python -m bench.local --only gpu [--random-weights]`)"
        )
        return
    from horde_scanner.policy.rules import Policy
    from local_gpu.backend import LocalClipBackend
    from local_gpu.clip import ClipScorer, ModelUnavailable

    phrases = Policy.load().clip.phrases
    if random_weights:
        scorer = _random_vit_l(torch)
    else:
        try:
            scorer = ClipScorer.load(
                model_dir=Path(model_dir) if model_dir else None,
                offline=True,
                device="cuda",
                fp16=True,
            )
        except ModelUnavailable as exc:
            print(
                f"[clip-gpu ViT-L/14] skipped: weights not found ({exc}); "
                "use --random-weights to time the architecture"
            )
            return
    print(f"[clip-gpu] {scorer.name}: {scorer.memory}")
    limits = DecodeLimits()
    prepared: list[PreparedImage] = [prepare(jpeg(scene(30_000 + i)), limits) for i in range(n)]
    results = {}
    for batch_size in (1, 32):
        backend = LocalClipBackend(scorer, phrases, batch_size=batch_size, batch_wait_ms=5)
        await asyncio.gather(*(backend.judge(p) for p in prepared[:batch_size]))  # warm up
        torch.cuda.synchronize()
        start = time.perf_counter()
        await asyncio.gather(*(backend.judge(p) for p in prepared))
        torch.cuda.synchronize()
        results[batch_size] = n / (time.perf_counter() - start)
        print(
            f"[clip-gpu ViT-L/14 fp16] batch {batch_size}: {results[batch_size]:.1f} images/s "
            f"({backend.batcher.batches} batches, largest {backend.batcher.largest_batch})"
        )
        await backend.aclose()
    print(
        f"[clip-gpu ViT-L/14] batching speed-up {results[32] / results[1]:.1f}x "
        "[target >= 5x]; peak GPU memory "
        f"{torch.cuda.max_memory_allocated() / 2**30:.2f} GiB"
    )


def _random_vit_l(torch):  # type: ignore[no-untyped-def]
    """openai/clip-vit-large-patch14's architecture with random weights and tokenizer."""
    from transformers import CLIPConfig, CLIPModel, CLIPTokenizer

    from horde_scanner.testing.tiny_clip import write_tokenizer_files
    from local_gpu.clip import ClipScorer, read_preprocess

    with tempfile.TemporaryDirectory() as tmp:
        vocab, merges, size = write_tokenizer_files(Path(tmp))
        tokenizer = CLIPTokenizer(vocab=str(vocab), merges=str(merges))
    config = CLIPConfig(
        text_config={
            "vocab_size": size,
            "hidden_size": 768,
            "intermediate_size": 3072,
            "num_hidden_layers": 12,
            "num_attention_heads": 12,
            "bos_token_id": size - 2,
            "eos_token_id": size - 1,
            "pad_token_id": size - 1,
        },
        vision_config={
            "hidden_size": 1024,
            "intermediate_size": 4096,
            "num_hidden_layers": 24,
            "num_attention_heads": 16,
            "image_size": 224,
            "patch_size": 14,
        },
        projection_dim=768,
    )
    model = CLIPModel(config).to("cuda", torch.float16).eval()
    return ClipScorer(
        model,
        tokenizer,
        read_preprocess(None, 224),
        "cuda",
        torch.float16,
        "ViT-L/14 architecture, random weights",
    )


async def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.local")
    parser.add_argument("--n", type=int, default=200, help="images per measurement")
    parser.add_argument("--concurrency", type=int, default=4, help="uploads in flight")
    parser.add_argument("--only", choices=["prescreen", "validate", "cpu", "gpu"], default=None)
    parser.add_argument("--clip-model-dir", default=os.environ.get("CLIP_MODEL_DIR"))
    parser.add_argument("--random-weights", action="store_true")
    args = parser.parse_args()
    print(f"bench.local on {os.cpu_count()} CPUs")
    if args.only in (None, "prescreen"):
        await bench_prescreen(args.n)
    if args.only in (None, "validate"):
        for concurrency in sorted({1, args.concurrency}):
            await bench_validation(args.n, concurrency)
    if args.only in (None, "cpu"):
        await bench_tiny_clip(min(args.n, 100))
    if args.only in (None, "gpu"):
        await bench_vit_l(args.clip_model_dir, args.random_weights, max(args.n, 256))


if __name__ == "__main__":
    asyncio.run(main())
