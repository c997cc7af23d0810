"""Embedding benchmark (issue 24). Figures:

  index, N random unit vectors (512-d), each kind of --kinds (lsh: the default tables; hnsw:
      the usearch graph), with the service's settings:
      build time, memory (index bytes; process RSS growth), save and restart (load) time,
      one-query lookup p50 / p99 (wall, and the lookup thread's CPU time), recall@1 against an
      exact search for near copies at cos 0.95 / 0.90 / 0.85 / 0.80 (a stored vector turned
      to that exact cosine), and false matches (a hit >= 0.90) for random queries
                                                                targets at 1 M: <= 1 GB,
                                                                restart <= 5 s, p99 <= 5 ms,
                                                                recall@1 >= 0.95
      Built indexes are cached (--cache, default .bench-cache/embeddings/): a later run loads
      them (restart measured) and reports the build recorded when they were made.
  spread: the LSH index's work when unrelated vectors share a mean direction
  exact one-by-one comparison (numpy, float32 matrix x vector) vs the index, at each N
  encoder: ViT-B/32-sized image tower (random weights, exported to ONNX here), one image on
      this CPU, p50 / p99                                      target p50 <= 150 ms
  a miss's added latency: the in-process service answering unique images with a backend of
      0 ms and 500 ms, embeddings off vs on (interleaved); and with a 5 s backend and a 0.3 s
      deadline, the longest answer (the deadline must hold)
  cache hits: requests/s of the service (subprocess) of the previous release (2fa284f, a git
      worktree), this one with embeddings off, and on, interleaved rounds, medians; with
      --hit-store, no answers kept in memory (every hit read from the store and re-checked
      against the PDQ and embedding indexes)

Run: .venv/bin/python -m bench.embeddings [--sizes 10000,100000,1000000] [--parts ...]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
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
PREVIOUS_RELEASE = "2fa284f"


def unit(rng: np.random.Generator, n: int) -> np.ndarray:
    x = rng.standard_normal((n, DIM), dtype=np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x


# -- the index -------------------------------------------------------------------------------

COSINES = (0.95, 0.90, 0.85, 0.80)
LOWEST = min(COSINES)
QUERIES = 300
EXACT_TIMED = 60  # one-by-one exact searches timed (50 ms each at a million)
CHUNK = 50_000


def dataset(n: int, start: int, stop: int) -> np.ndarray:
    """Rows [start, stop) of the n-vector data set: the same every run (seeded per chunk), so
    a cached index and a fresh exact copy agree without keeping 2 GB of vectors on disk."""
    parts = []
    for chunk in range(start // CHUNK, (stop - 1) // CHUNK + 1):
        x = unit(np.random.default_rng([n, chunk]), min(CHUNK, n - chunk * CHUNK))
        lo, hi = max(start, chunk * CHUNK) - chunk * CHUNK, min(stop, (chunk + 1) * CHUNK)
        parts.append(x[lo : hi - chunk * CHUNK])
    return np.concatenate(parts)


def at_cosine(rng: np.random.Generator, x: np.ndarray, cosine: float) -> np.ndarray:
    """Unit vectors at exactly `cosine` to each row of x, in a random direction: near copies."""
    u = rng.standard_normal(x.shape, dtype=np.float32)
    u -= (u * x).sum(axis=1, keepdims=True) * x
    u /= np.linalg.norm(u, axis=1, keepdims=True)
    q = cosine * x + np.sqrt(1 - cosine**2) * u
    return (q / np.linalg.norm(q, axis=1, keepdims=True)).astype(np.float32)


def _settings(kind: str):
    from horde_scanner.config import EmbeddingsSettings

    return EmbeddingsSettings(model_id="bench", index_kind=kind)


def cached_index(kind: str, n: int, cache: Path):
    """The n-vector index of `kind`: loaded from the cache when built there before (restart
    time measured), else built (time measured), saved there, and loaded."""
    from horde_scanner.signals.embeddings import index_shape, load_index, new_index

    settings = _settings(kind)
    shape = index_shape(settings)
    record = shape.record()
    slug = "-".join(str(v) for k, v in sorted(record.items()) if k != "model")
    directory = cache / f"{kind}-{n}-{slug}"
    built_file = directory / "bench-build.json"
    pid = os.getpid()
    if not built_file.exists():
        shutil.rmtree(directory, ignore_errors=True)
        index = new_index(settings, shape)
        before = rss_mb(pid)
        build = build_cpu = 0.0  # the index's own work: making the data is not counted
        for start in range(0, n, CHUNK):
            x = dataset(n, start, min(n, start + CHUNK))
            keys = np.arange(start, start + len(x), dtype=np.uint64) * 2
            started, cpu = time.perf_counter(), time.process_time()
            # As the service builds one beside the live index: sealed once at the end.
            index.add(keys, x, threads=os.cpu_count() or 1, seal=False)
            build += time.perf_counter() - started
            build_cpu += time.process_time() - cpu
            if n >= 500_000 and (start + len(x)) % 200_000 == 0:
                print(f"  ... {kind}: {start + len(x):,} added in {build:.0f} s", flush=True)
        started, cpu = time.perf_counter(), time.process_time()
        index.seal()
        keys = np.arange(n, dtype=np.uint64) * 2
        # Every entry at the lowest threshold measured (an admin's lowered list, 0.80).
        index.set_meta(keys, np.zeros(n, np.uint8), np.full(n, LOWEST, np.float32))
        build += time.perf_counter() - started
        build_cpu += time.process_time() - cpu
        grown = rss_mb(pid) - before
        started = time.perf_counter()
        index.generation = 0
        index.save(directory)
        save = time.perf_counter() - started
        built_file.write_text(
            json.dumps(
                {
                    "build_s": build,
                    "build_cpu_s": build_cpu,
                    "rss_growth_mb": grown,
                    "save_s": save,
                    "when": time.strftime("%Y-%m-%d %H:%M:%S"),
                    "load": os.getloadavg(),
                }
            )
        )
        del index
        gc.collect()
    built = json.loads(built_file.read_text())
    before = rss_mb(pid)
    started = time.perf_counter()
    loaded = load_index(directory, settings, shape)
    restart = time.perf_counter() - started
    assert loaded is not None and len(loaded) == n, "the cached index did not load"
    files = sum(f.stat().st_size for f in directory.rglob("*") if f.is_file()) / 1e6
    return loaded, built, restart, rss_mb(pid) - before, files


def bench_index(n: int, kinds: list[str], cache: Path) -> None:
    from horde_scanner.signals.lsh_index import LshIndex

    pid = os.getpid()
    rng = np.random.default_rng(n + 1)
    picks = rng.integers(0, n, QUERIES)
    originals = dataset_rows(n, picks)
    near = {c: at_cosine(rng, originals, c) for c in COSINES}
    far = unit(rng, QUERIES)
    indexes = {}
    print(f"index at {n:,} random unit vectors (512-d); load {_load()}", flush=True)
    for kind in kinds:
        index, built, restart, loaded_mb, files = cached_index(kind, n, cache)
        indexes[kind] = index
        print(
            f"  {kind}: {owner_line(kind, index)}\n"
            f"    build {built['build_s']:.1f} s ({n / built['build_s']:.0f} vectors/s,"
            f" {n / max(built['build_cpu_s'], 1e-9):.0f} per CPU-second; built"
            f" {built['when']}, load then {built['load'][0]:.1f})"
            f"  memory {index.nbytes / 2**20:.1f} MiB (RSS grew {built['rss_growth_mb']:.0f} MiB"
            f" building; {loaded_mb:.0f} MiB on restart)  files {files:.0f} MB"
            f"  save {built['save_s']:.2f} s  restart {restart:.3f} s",
            flush=True,
        )
    # The exact answers, by a chunked matrix product over the regenerated data set.
    queries = {**{f"near-copy cos {c:.2f}": near[c] for c in COSINES}, "random": far}
    best = {name: np.full(QUERIES, -1, np.int64) for name in queries}
    best_sim = {name: np.full(QUERIES, -2.0, np.float32) for name in queries}
    exact = np.empty((n, DIM), np.float32)
    for start in range(0, n, 200_000):
        x = dataset(n, start, min(n, start + 200_000))
        exact[start : start + len(x)] = x
        for name, qs in queries.items():
            sims = x @ qs.T
            at = np.argmax(sims, axis=0)
            top = sims[at, np.arange(QUERIES)]
            better = top > best_sim[name]
            best[name][better] = start + at[better]
            best_sim[name][better] = top[better]
    exact_lat = []
    for q in far[:EXACT_TIMED]:
        t = time.perf_counter()
        _exact_best(exact, q)
        exact_lat.append(time.perf_counter() - t)
    del exact
    gc.collect()
    print(f"  exact one-by-one (numpy float32 matrix x vector): {percentiles(exact_lat)}")
    above = int((best_sim["random"] >= 0.9).sum())
    print(f"  random queries with an exact match >= 0.90: {above} of {QUERIES}", flush=True)
    # Interleaved: each query goes to every kind in turn, so the machine's load falls on all.
    for name, qs in queries.items():
        lat: dict[str, list[float]] = {kind: [] for kind in kinds}
        cpu: dict[str, list[float]] = {kind: [] for kind in kinds}
        agree = dict.fromkeys(kinds, 0)
        matched = dict.fromkeys(kinds, 0)
        for i, q in enumerate(qs):
            for kind in kinds:
                t, c = time.perf_counter(), time.thread_time()
                hits = indexes[kind].search(q, LOWEST)  # what a miss does, at the lowest list
                lat[kind].append(time.perf_counter() - t)
                cpu[kind].append(time.thread_time() - c)
                agree[kind] += bool(hits) and int(hits[0].key) // 2 == int(best[name][i])
                matched[kind] += any(h.similarity >= 0.90 for h in hits)
        for kind in kinds:
            line = f"  {kind:4} {name:19} lookup {percentiles(lat[kind])}"
            # CPU time of the searching thread: what the lookup costs without the machine's
            # other load (wall time on a shared 2-core machine includes waiting for a core).
            c50, c99 = np.percentile(cpu[kind], [50, 99]) * 1000
            line += f" (CPU p50 {c50:.2f} ms, p99 {c99:.2f} ms)"
            if name == "random":
                line += f"; false matches at 0.90: {matched[kind]} of {QUERIES}"
            else:
                line += f"; recall@1 vs exact {agree[kind] / QUERIES:.3f}"
                lsh = indexes[kind]
                if isinstance(lsh, LshIndex):  # at the angle about the index's mean
                    line += f" (guaranteed {lsh.recall_at(float(name.split()[-1])):.4f})"
            print(line, flush=True)
    print(f"  RSS after lookups: {rss_mb(pid):.0f} MiB (whole process)", flush=True)
    del indexes
    gc.collect()


def bench_spread(n: int) -> None:
    """The LSH index's work and recall when unrelated vectors are not spread evenly: random
    vectors pulled toward one shared direction (as embeddings of real images share a mean),
    at several mean cosines between unrelated pairs. Each data set is indexed uncentred (the
    previous release's hashing) and centred on its mean (radius 2, the default; and radius 3),
    every query going to each in turn. Near copies: a stored vector turned to an exact cosine
    in a random direction (as in the index part), and, where there is a mean, one turned
    keeping its part along the mean (the model the stated recall is for)."""
    from horde_scanner.signals.embeddings import index_shape
    from horde_scanner.signals.lsh_index import LshIndex, LshShape

    print(f"LSH index at {n:,} vectors sharing a mean direction; load {_load()}", flush=True)
    rng = np.random.default_rng(7)
    settings = _settings("lsh")
    shape = index_shape(settings)
    assert isinstance(shape, LshShape)
    keys = np.arange(n, dtype=np.uint64) * 2
    for pull in (0.0, 0.2, 0.35, 0.5):
        mean = unit(rng, 1)[0]
        x = np.sqrt(pull) * mean + np.sqrt(1 - pull) * unit(rng, n)
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        variants: dict[str, LshIndex] = {}
        for name, centre in (("uncentred (before)", False), ("centred, radius 2", True)):
            index = LshIndex(shape, settings.index_probe_radius, centre=centre)
            cpu = time.process_time()
            index.add(keys, x, seal=False)
            index.seal()
            index.set_meta(keys, np.zeros(n, np.uint8), np.full(n, LOWEST, np.float32))
            print(f"    {name}: built in {time.process_time() - cpu:.1f} CPU-s", flush=True)
            variants[name] = index
        radius3 = LshIndex(shape, 3)  # the same tables and mean, probed one bit further
        radius3._state = variants["centred, radius 2"]._state
        radius3.set_meta(keys, np.zeros(n, np.uint8), np.full(n, LOWEST, np.float32))
        variants["centred, radius 3"] = radius3
        unrelated = float(np.mean(np.sum(x[:1000] * x[1000:2000], axis=1)))
        m = variants["centred, radius 2"].mean_sq or 0.0
        print(f"  unrelated pairs' mean cosine {unrelated:.2f} (|mean|^2 {m:.3f}):", flush=True)
        picks = rng.integers(0, n, 200)
        kinds = {"turned": {c: at_cosine(rng, x[picks], c) for c in COSINES}}
        if pull:
            along = np.sqrt(pull) * mean
            kinds["along the mean"] = {c: along_mean(rng, x[picks], along, c) for c in COSINES}
        probed = {name: [] for name in variants}
        cpu_s = {name: [] for name in variants}
        found = {(name, kind, c): 0 for name in variants for kind in kinds for c in COSINES}
        for kind, by_cosine in kinds.items():
            for c, queries in by_cosine.items():
                for i, q in zip(picks, queries, strict=True):
                    for name, index in variants.items():
                        if kind == "turned" and c == 0.90:
                            probed[name].append(len(index.probed(q)))
                        t = time.thread_time()
                        hits = index.search(q, LOWEST)
                        cpu_s[name].append(time.thread_time() - t)
                        found[name, kind, c] += bool(hits) and int(hits[0].key) == 2 * int(i)
        for name, index in variants.items():
            c50, c99 = np.percentile(cpu_s[name], [50, 99]) * 1000
            print(
                f"    {name:18}: candidates probed p50 {np.median(probed[name]):,.0f};"
                f" lookup CPU p50 {c50:.2f} ms, p99 {c99:.2f} ms",
                flush=True,
            )
            stated = " / ".join(f"{index.recall_at(c):.4f}" for c in COSINES)
            for kind in kinds:
                got = " / ".join(f"{found[name, kind, c] / len(picks):.3f}" for c in COSINES)
                print(f"      recall@1 at cos 0.95/0.90/0.85/0.80, {kind}: {got}", flush=True)
            print(f"      stated: {stated}", flush=True)
        del variants, radius3
        gc.collect()


def along_mean(
    rng: np.random.Generator, x: np.ndarray, mean: np.ndarray, cosine: float
) -> np.ndarray:
    """Unit vectors at `cosine` to each row of x whose part along `mean` is the row's own:
    the residual (x - its part along the mean) turned, the part along the mean kept."""
    unit_mean = mean / np.linalg.norm(mean)
    along = (x @ unit_mean)[:, None] * unit_mean
    r = x - along
    size = np.linalg.norm(r, axis=1, keepdims=True)
    inner = (cosine - (along**2).sum(axis=1)) / (size[:, 0] ** 2)  # the residuals' cosine
    u = rng.standard_normal(x.shape, dtype=np.float32)
    u -= (u @ unit_mean)[:, None] * unit_mean
    u -= ((u * r).sum(axis=1, keepdims=True) / size**2) * r
    u /= np.linalg.norm(u, axis=1, keepdims=True)
    turned = inner[:, None] * r + np.sqrt(1 - inner[:, None] ** 2) * u * size
    return (along + turned).astype(np.float32)


def dataset_rows(n: int, rows: np.ndarray) -> np.ndarray:
    out = np.empty((len(rows), DIM), np.float32)
    for chunk in np.unique(rows // CHUNK):
        x = dataset(n, int(chunk) * CHUNK, min(n, (int(chunk) + 1) * CHUNK))
        here = rows // CHUNK == chunk
        out[here] = x[rows[here] - chunk * CHUNK]
    return out


def owner_line(kind: str, index: object) -> str:
    from horde_scanner.signals.embeddings import describe_index
    from horde_scanner.signals.lsh_index import LshIndex

    mean_sq = index.mean_sq if isinstance(index, LshIndex) else None
    return describe_index(_settings(kind), mean_sq=mean_sq)


def _load() -> str:
    one, five, fifteen = os.getloadavg()
    return f"{one:.1f} / {five:.1f} / {fifteen:.1f} (1 / 5 / 15 min)"


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


def bench_hits(model: Path, seconds: float, rounds: int, store: bool = False) -> None:
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
        previous = f"previous ({PREVIOUS_RELEASE})"
        results: dict[str, list[float]] = {
            f"{previous}, off": [],
            f"{previous}, on": [],
            "off": [],
            "on": [],
        }
        # --hit-store: no answer kept in memory, so each hit is the store's lookup path.
        memory = {"HORDE_SCANNER_VALIDATION__VERDICT_CACHE_SIZE": "0"} if store else {}
        for _ in range(rounds):
            for name in results:
                with tempfile.TemporaryDirectory() as tmp:
                    env = {
                        "HORDE_SCANNER_EMBEDDINGS__MODEL_PATH": str(
                            model if name.endswith("on") else Path(tmp) / "none.onnx"
                        ),
                        "HORDE_SCANNER_EMBEDDINGS__INDEX_DIR": str(Path(tmp) / "ix"),
                        **memory,
                    }
                    # The previous release runs from its own worktree (python -m imports
                    # from the working directory first).
                    common.ROOT = old if name.startswith("previous") else ROOT
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
                f"cache hits, 32 clients, {name:>23}: median {statistics.median(values):.0f}"
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
    parser.add_argument("--parts", default="index,spread,encoder,miss,hits")
    parser.add_argument("--spread-size", type=int, default=100_000)
    parser.add_argument("--kinds", default="lsh,hnsw", help="index kinds, interleaved")
    parser.add_argument(
        "--cache",
        default=str(ROOT / ".bench-cache" / "embeddings"),
        help="built indexes are kept here and loaded by later runs (delete to rebuild)",
    )
    parser.add_argument("--hit-seconds", type=float, default=8.0)
    parser.add_argument("--hit-rounds", type=int, default=3)
    parser.add_argument(
        "--hit-store", action="store_true", help="hits read from the store (no memory cache)"
    )
    args = parser.parse_args()
    parts = set(args.parts.split(","))
    print(
        f"machine: {os.cpu_count()} CPUs; {time.strftime('%Y-%m-%d %H:%M:%S')}; load {_load()}",
        flush=True,
    )
    with tempfile.TemporaryDirectory(prefix="bench-emb-") as name:
        tmp = Path(name)
        if "index" in parts:
            for n in (int(s) for s in args.sizes.split(",")):
                bench_index(n, args.kinds.split(","), Path(args.cache))
        if "spread" in parts:
            bench_spread(args.spread_size)
        model = write_vit(tmp) if parts & {"encoder", "miss", "hits"} else None
        if model is not None and "encoder" in parts:
            bench_encoder(model)
        if model is not None and "miss" in parts:
            bench_miss(model)
        if model is not None and "hits" in parts:
            bench_hits(model, args.hit_seconds, args.hit_rounds, args.hit_store)


if __name__ == "__main__":
    main()
