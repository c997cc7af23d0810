"""HNSW settings grid for the embedding index (issue 24): which connectivity, expansion_add,
dtype and expansion_search meet the targets. For each build setting at N random unit vectors
(512-d): build rate, memory (usearch's own count, and the saved size), then for each search
list one-query lookup p50 / p99 and recall@1 against an exact search, for near-copy queries (a
stored vector plus noise, as bench/embeddings.py makes them) and random queries.

Run: .venv/bin/python -m bench.embedding_grid [--n 100000] [--grid 16:64:i8,24:128:f16,...]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from bench.common import percentiles
from horde_scanner.signals.embedding_index import usearch_index

DIM = 512
QUERIES = 300
SEARCH_LISTS = (32, 64, 128, 256)
GRID = "16:64:i8,12:64:i8,24:64:i8,16:128:i8,16:64:f16,24:128:i8,12:128:i8,24:64:f16,16:128:f16"


def unit(rng: np.random.Generator, n: int) -> np.ndarray:
    x = rng.standard_normal((n, DIM), dtype=np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--grid", default=GRID, help="connectivity:expansion_add:dtype,...")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    n = args.n
    rng = np.random.default_rng(n)
    data = unit(rng, n)
    picks = rng.integers(0, n, QUERIES)
    near = data[picks] + 0.02 * rng.standard_normal((QUERIES, DIM), dtype=np.float32)
    near /= np.linalg.norm(near, axis=1, keepdims=True)
    far = unit(rng, QUERIES)
    truth = {
        "near-copy": np.argmax(data @ near.T, axis=0),
        "random": np.argmax(data @ far.T, axis=0),
    }
    Index = usearch_index()
    print(f"grid at {n:,} random unit vectors, {args.threads} add threads", flush=True)
    for spec in args.grid.split(","):
        m, ea, dtype = spec.split(":")
        graph = Index(
            ndim=DIM, metric="cos", dtype=dtype, connectivity=int(m), expansion_add=int(ea)
        )
        started, cpu = time.perf_counter(), time.process_time()
        graph.add(np.arange(n, dtype=np.uint64), data, threads=args.threads)
        wall = time.perf_counter() - started
        rate, cpu_rate = n / wall, n / (time.process_time() - cpu)
        print(
            f"M={m:>2} ef_add={ea:>3} {dtype:>3}: build {rate:6.0f} vectors/s"
            f" ({cpu_rate:.0f} per CPU-second: the rest is the machine's other load)"
            f"  memory {graph.memory_usage / 2**20:6.1f} MiB"
            f"  saved {graph.serialized_length / 2**20:6.1f} MiB"
            f"  ({graph.serialized_length / n:.0f} B/vector)",
            flush=True,
        )
        for ef in SEARCH_LISTS:
            graph.expansion_search = ef
            row = []
            for name, qs in (("near-copy", near), ("random", far)):
                lat = []
                got = np.empty(QUERIES, np.int64)
                for i, q in enumerate(qs):
                    t = time.perf_counter()
                    found = graph.search(q, 1, threads=1)
                    lat.append(time.perf_counter() - t)
                    got[i] = int(np.asarray(found.keys).reshape(-1)[0])
                recall = float(np.mean(got == truth[name]))
                row.append(f"{name} recall@1 {recall:.3f} lookup {percentiles(lat)}")
            print(f"    ef_search={ef:>3}: " + "; ".join(row), flush=True)
        del graph


if __name__ == "__main__":
    main()
