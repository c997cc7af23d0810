"""Embedding benchmark (issue 24). Figures:

  index, N random unit vectors (512-d, int8, HNSW M=32):
      build time, memory (index bytes; process RSS growth), save and restart (load) time,
      one-query lookup p50 / p99, recall@1 against an exact search
      (near-copy queries: a stored vector plus noise, what a variant looks like; and random
      queries, the worst case for any graph index)             targets at 1 M: <= 1 GB,
                                                                restart <= 5 s, p99 <= 5 ms,
                                                                recall@1 >= 0.95
  exact one-by-one comparison (numpy, float32 matrix x vector) vs the index, at each N
  encoder: ViT-B/32-sized image tower (random weights, exported to ONNX here), one image on
      this CPU, p50 / p99                                      target p50 <= 150 ms
  a miss's added latency: the in-process service answering unique images with a backend of
      0 ms and 500 ms, embeddings off vs on (interleaved); and with a 5 s backend and a 0.3 s
      deadline, the longest answer (the deadline must hold)
  cache hits: requests/s of the service (subprocess) of the previous release (3579f71, a git
      worktree), this one with embeddings off, and on, interleaved rounds, medians

Run: .venv/bin/python -m bench.embeddings [--sizes 10000,100000,1000000] [--parts ...]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np

from bench import common
from bench.common import ROOT, percentiles, rss_mb

DIM = 512
PREVIOUS_RELEASE = "3579f71"


def unit(rng: np.random.Generator, n: int) -> np.ndarray:
    x = rng.standard_normal((n, DIM), dtype=np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x


# -- the index -------------------------------------------------------------------------------


def bench_index(n: int, tmp: Path, search_lists: list[int]) -> None:
    from horde_scanner.config import EmbeddingsSettings
    from horde_scanner.signals.embedding_index import EmbeddingIndex, IndexShape

    cfg = EmbeddingsSettings()
    shape = IndexShape(
        "bench", DIM, cfg.index_dtype, cfg.index_connectivity, cfg.index_expansion_add
    )
    rng = np.random.default_rng(n)
    pid = os.getpid()
    # The exact search's copy, float32 (2 GB at 1 M).
    exact = np.empty((n, DIM), np.float32)
    index = EmbeddingIndex(shape, cfg.index_expansion_search)
    before = rss_mb(pid)
    started, cpu = time.perf_counter(), time.process_time()
    chunk = 50_000
    for start in range(0, n, chunk):
        x = unit(rng, min(chunk, n - start))
        exact[start : start + len(x)] = x
        keys = np.arange(start, start + len(x), dtype=np.uint64) * 2
        index.add(keys, x, threads=os.cpu_count() or 1)
        if n >= 500_000 and (start + len(x)) % 100_000 == 0:
            print(
                f"  ... {start + len(x):,} added in {time.perf_counter() - started:.0f} s,"
                f" graph {index._graph.memory_usage / 2**20:.0f} MiB",
                flush=True,
            )
    keys = np.arange(n, dtype=np.uint64) * 2
    index.set_meta(keys, np.zeros(n, np.uint8), np.full(n, 0.9, np.float32))
    build = time.perf_counter() - started
    build_cpu = time.process_time() - cpu
    grown = rss_mb(pid) - before - exact.nbytes / 2**20  # the exact copy is not the index
    queries = 300
    picks = rng.integers(0, n, queries)
    near = exact[picks] + 0.02 * rng.standard_normal((queries, DIM), dtype=np.float32)
    near /= np.linalg.norm(near, axis=1, keepdims=True)
    far = unit(rng, queries)
    directory = tmp / f"index-{n}"
    started = time.perf_counter()
    index.save(directory)
    save = time.perf_counter() - started
    size_mb = sum(f.stat().st_size for f in directory.iterdir()) / 1e6
    del index
    gc.collect()
    before = rss_mb(pid)
    started = time.perf_counter()
    loaded = EmbeddingIndex.load(directory, shape, cfg.index_expansion_search)
    restart = time.perf_counter() - started
    loaded_mb = rss_mb(pid) - before
    assert loaded is not None and len(loaded) == n
    print(
        f"index {n:>9,} (M={cfg.index_connectivity}, ef_add={cfg.index_expansion_add},"
        f" {cfg.index_dtype}): build {build:7.1f} s ({n / build:.0f} vectors/s;"
        f" {n / max(build_cpu, 1e-9):.0f} per CPU-second)  memory {loaded.nbytes / 2**20:7.1f} MiB"
        f" (RSS growth {grown:7.1f} MiB building, {loaded_mb:7.1f} MiB loaded)"
        f"  file {size_mb:7.1f} MB  save {save:5.2f} s  restart {restart:5.2f} s",
        flush=True,
    )
    # The exact answers, once (a million-row search per query), timed: the seed's brute force.
    truth: dict[str, list[int]] = {}
    exact_lat: list[float] = []
    for name, qs in (("near-copy", near), ("random", far)):
        truth[name] = []
        for q in qs:
            t = time.perf_counter()
            truth[name].append(_exact_best(exact, q))
            exact_lat.append(time.perf_counter() - t)
    print(
        f"  exact one-by-one (numpy matrix x vector over {n:,}): {percentiles(exact_lat)}",
        flush=True,
    )
    del exact
    gc.collect()
    for ef in [cfg.index_expansion_search, *search_lists]:
        loaded._graph.expansion_search = ef
        print(f"  search list (ef_search) {ef}:", flush=True)
        for name, qs in (("near-copy", near), ("random", far)):
            lat: list[float] = []
            agree = 0
            for q, want in zip(qs, truth[name], strict=True):
                t = time.perf_counter()
                loaded.search(q, 0.9)  # what a miss does: graph, then trust and threshold
                lat.append(time.perf_counter() - t)
                found = loaded._graph.search(q, 1, threads=1)
                agree += int(found.keys[0]) // 2 == want
            print(f"    {name:9} lookup (index, one query): {percentiles(lat)}", flush=True)
            print(f"    {name:9} recall@1 vs exact: {agree / len(qs):.3f}", flush=True)
    del loaded
    gc.collect()
    shutil.rmtree(directory, ignore_errors=True)


def _exact_best(exact: np.ndarray, q: np.ndarray) -> int:
    best, best_at = -2.0, -1
    for start in range(0, len(exact), 200_000):
        sims = exact[start : start + 200_000] @ q
        at = int(np.argmax(sims))
        if sims[at] > best:
            best, best_at = float(sims[at]), start + at
    return best_at


# -- the encoder -----------------------------------------------------------------------------


def write_vit(tmp: Path) -> Path:
    from horde_scanner.testing.tiny_encoder import write_vit_b32

    started = time.perf_counter()
    path = write_vit_b32(tmp / "vit-b32.onnx")
    print(
        f"ViT-B/32-sized encoder exported: {path.stat().st_size / 1e6:.0f} MB in"
        f" {time.perf_counter() - started:.1f} s",
        flush=True,
    )
    return path


def bench_encoder(model: Path) -> None:
    from horde_scanner.signals.encoder import ImageEncoder
    from horde_scanner.testing import textures

    for threads in (1, 2):
        encoder = ImageEncoder(
            model, "resize224-bicubic-centercrop-clipnorm", DIM, intra_op_threads=threads
        )
        pictures = [textures.textured("green", seed=i, size=(640, 480)) for i in range(5)]
        for p in pictures[:2]:
            encoder.encode(p)  # warm-up
        lat = []
        for i in range(30):
            t = time.perf_counter()
            encoder.encode(pictures[i % len(pictures)])
            lat.append(time.perf_counter() - t)
        print(f"encode one image, ViT-B/32, {threads} thread(s): {percentiles(lat)}", flush=True)


async def _answers(model: Path | None, delay_s: float, deadline_s: float, count: int, seed: int):
    import aiohttp

    from horde_scanner.backends.mock import MockBackend
    from horde_scanner.testing import textures
    from horde_scanner.testing.pictrs import validate_upload
    from horde_scanner.testing.service import make_settings, running_service

    with tempfile.TemporaryDirectory() as tmp:
        emb = {"model_path": model or Path(tmp) / "none.onnx", "index_dir": Path(tmp) / "ix"}
        settings = make_settings(
            Path(tmp) / "s.db",
            "http://127.0.0.1:9/api",
            embeddings=emb,
            validation={"deadline_s": deadline_s},
        )
        backend = MockBackend(textures.red_is_csam, delay_s=delay_s)
        lat = []
        async with (
            running_service(settings, backend=backend) as svc,
            aiohttp.ClientSession() as http,
        ):
            for i in range(count):
                data = textures.encode(textures.textured("green", seed=seed + i, size=(640, 480)))
                result = await validate_upload(http, svc.scan_url(), data, "image/jpeg")
                lat.append(result.elapsed_s)
        return lat


def bench_miss(model: Path) -> None:
    for delay in (0.0, 0.5):
        off: list[float] = []
        on: list[float] = []
        for round_ in range(2):  # interleaved: the machine's load shifts under both alike
            off += asyncio.run(_answers(None, delay, 8.0, 10, 10_000 * round_))
            on += asyncio.run(_answers(model, delay, 8.0, 10, 10_000 * round_ + 500))
        added = statistics.median(on) - statistics.median(off)
        print(f"miss, backend {delay * 1000:.0f} ms, embeddings off: {percentiles(off)}")
        print(f"miss, backend {delay * 1000:.0f} ms, embeddings on:  {percentiles(on)}")
        print(f"  added latency (p50 on - p50 off): {added * 1000:.1f} ms", flush=True)
    late = asyncio.run(_answers(model, 5.0, 0.3, 5, 90_000))
    print(
        f"miss, backend 5 s, deadline 0.3 s, embeddings on: longest answer"
        f" {max(late) * 1000:.0f} ms (deadline 300 ms)",
        flush=True,
    )


# -- cache hits against the previous release ---------------------------------------------------


def bench_hits(model: Path, seconds: float, rounds: int) -> None:
    from bench.common import horde_and_service, noisy_jpeg
    from bench.validate import closed_loop

    old = Path(tempfile.mkdtemp(prefix="hs-prev-"))
    subprocess.run(
        ["git", "worktree", "add", "--detach", str(old), PREVIOUS_RELEASE],
        cwd=ROOT,
        check=True,
        capture_output=True,
    )
    try:
        image = noisy_jpeg(7)
        results: dict[str, list[float]] = {"previous (3579f71)": [], "off": [], "on": []}
        for _ in range(rounds):
            for name in results:
                with tempfile.TemporaryDirectory() as tmp:
                    env = {
                        "HORDE_SCANNER_EMBEDDINGS__MODEL_PATH": str(
                            model if name == "on" else Path(tmp) / "none.onnx"
                        ),
                        "HORDE_SCANNER_EMBEDDINGS__INDEX_DIR": str(Path(tmp) / "ix"),
                    }
                    # The previous release runs from its own worktree (python -m imports
                    # from the working directory first).
                    common.ROOT = old if name.startswith("previous") else ROOT
                    if name.startswith("previous"):
                        env = {}
                    with horde_and_service(
                        ["--latency", "0.05"],
                        lambda port: ["-m", "horde_scanner.cli", "serve", "--port", str(port)],
                        Path(tmp) / "s.db",
                        client="bench",
                        deadline_s=8.0,
                        env=env,
                    ) as (port, _):
                        url = f"http://127.0.0.1:{port}/api/v1/scan/bench"
                        asyncio.run(closed_loop(url, [image], 1, 2.0))  # judged once: cached
                        results[name].append(asyncio.run(closed_loop(url, [image], 32, seconds)))
        for name, values in results.items():
            shown = ", ".join(f"{v:.0f}" for v in values)
            print(
                f"cache hits, 32 clients, {name:>18}: median {statistics.median(values):.0f}"
                f" requests/s ({shown})",
                flush=True,
            )
    finally:
        common.ROOT = ROOT
        subprocess.run(
            ["git", "worktree", "remove", "--force", str(old)], cwd=ROOT, capture_output=True
        )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", default="10000,100000,1000000")
    parser.add_argument("--parts", default="index,encoder,miss,hits")
    parser.add_argument(
        "--search-lists", default="", help="more ef_search values to measure, e.g. 256,512"
    )
    parser.add_argument("--hit-seconds", type=float, default=8.0)
    parser.add_argument("--hit-rounds", type=int, default=3)
    args = parser.parse_args()
    parts = set(args.parts.split(","))
    print(f"machine: {os.cpu_count()} CPUs; {time.strftime('%Y-%m-%d %H:%M:%S')}", flush=True)
    with tempfile.TemporaryDirectory(prefix="bench-emb-") as name:
        tmp = Path(name)
        if "index" in parts:
            for n in (int(s) for s in args.sizes.split(",")):
                bench_index(n, tmp, [int(v) for v in args.search_lists.split(",") if v])
        model = write_vit(tmp) if parts & {"encoder", "miss", "hits"} else None
        if model is not None and "encoder" in parts:
            bench_encoder(model)
        if model is not None and "miss" in parts:
            bench_miss(model)
        if model is not None and "hits" in parts:
            bench_hits(model, args.hit_seconds, args.hit_rounds)


if __name__ == "__main__":
    main()
