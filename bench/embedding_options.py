"""The index options for issue 24's targets, measured side by side on one data set (the same
random unit vectors as bench/embeddings.py, near-copy queries at cos 0.90 and 0.80): which one
finds near copies (recall@1 against an exact search) within 5 ms for one query.

  hnsw two-stage   usearch's int8 graph (the service's settings), a shortlist of 16 at a short
                   search list, re-ranked on the exact float32 vectors: does the shortlist
                   hold the near copy when the graph's first answer is not it?
  faiss hnsw       FAISS IndexHNSWFlat (HMA's settings: 32 links, efConstruction 200), at
                   several efSearch (float32 vectors: 2 GB at a million)
  faiss ivf        FAISS IndexIVFScalarQuantizer (int8), nlist 4·sqrt(N), several nprobe
  lsh              the service's LSH tables (signals/lsh_index.py)

FAISS is not a dependency: `pip install faiss-cpu` into the venv first (skipped otherwise).
The usearch and LSH indexes come from bench/embeddings.py's cache when built there.

Run: .venv/bin/python -m bench.embedding_options [--n 100000] [--faiss-hnsw]
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import time
from pathlib import Path

import numpy as np

from bench.common import ROOT, percentiles
from bench.embeddings import _load, at_cosine, cached_index, dataset

QUERIES = 200
SHORTLIST = 16


def timed(search, queries: np.ndarray) -> tuple[list[int], list[float]]:
    got, lat = [], []
    for q in queries:
        t = time.perf_counter()
        got.append(search(q))
        lat.append(time.perf_counter() - t)
    return got, lat


def report(name: str, truth: dict[float, np.ndarray], results: dict, extra: str = "") -> None:
    parts = []
    for cosine, (got, lat) in results.items():
        recall = float(np.mean(np.array(got) == truth[cosine]))
        parts.append(f"cos {cosine:.2f}: recall@1 {recall:.3f}, {percentiles(lat)}")
    print(f"  {name:34} " + " | ".join(parts) + extra, flush=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--cache", default=str(ROOT / ".bench-cache" / "embeddings"))
    parser.add_argument("--faiss-hnsw", action="store_true", help="also build FAISS HNSW")
    parser.add_argument("--nlist", type=int, default=0, help="IVF lists (0: 4 sqrt(N))")
    parser.add_argument(
        "--options", default="hnsw,faiss,lsh", help="which of hnsw (usearch), faiss, lsh"
    )
    args = parser.parse_args()
    n, cache = args.n, Path(args.cache)
    print(f"options at {n:,} random unit vectors; load {_load()}", flush=True)
    data = dataset(n, 0, n)
    rng = np.random.default_rng(n + 2)
    picks = rng.integers(0, n, QUERIES)
    queries = {c: at_cosine(rng, data[picks], c) for c in (0.90, 0.80)}
    truth = {c: np.argmax(data @ q.T, axis=0) for c, q in queries.items()}

    options = set(args.options.split(","))
    if "hnsw" in options:
        two_stage(n, cache, data, queries, truth)
    if "faiss" in options:
        faiss_options(n, data, queries, truth, rng, args.faiss_hnsw, args.nlist)
    if "lsh" in options:
        lsh = cached_index("lsh", n, cache)[0]

        def lsh_search(q: np.ndarray) -> int:
            hits = lsh.search(q, 0.80)
            return int(hits[0].key) // 2 if hits else -1

        report(
            "lsh (service defaults)", truth, {c: timed(lsh_search, q) for c, q in queries.items()}
        )


def two_stage(n: int, cache: Path, data: np.ndarray, queries: dict, truth: dict) -> None:
    """usearch's graph, one stage and two (built by bench/embeddings.py, or here)."""
    graph_index = cached_index("hnsw", n, cache)[0]
    graph = graph_index._graph
    for ef in (64, 128, 256, 512):
        graph.expansion_search = ef

        def one(q: np.ndarray) -> int:
            return int(graph.search(q, 1, threads=1).keys[0]) // 2

        def two(q: np.ndarray) -> int:
            keys = np.asarray(graph.search(q, SHORTLIST, threads=1).keys, np.int64) // 2
            return int(keys[np.argmax(data[keys] @ q)])

        report(
            f"usearch hnsw ef {ef}, top 1", truth, {c: timed(one, q) for c, q in queries.items()}
        )
        report(
            f"usearch hnsw ef {ef}, {SHORTLIST} re-ranked",
            truth,
            {c: timed(two, q) for c, q in queries.items()},
        )
    del graph_index


def faiss_options(
    n: int,
    data: np.ndarray,
    queries: dict,
    truth: dict,
    rng: np.random.Generator,
    hnsw: bool,
    nlist: int,
) -> None:
    if importlib.util.find_spec("faiss") is None:
        print("  faiss: not installed (pip install faiss-cpu): skipped", flush=True)
    else:
        import faiss

        faiss.omp_set_num_threads(1)  # one query, one thread: as the service would search
        nlist = nlist or int(4 * np.sqrt(n))
        quantizer = faiss.IndexFlatIP(512)
        ivf = faiss.IndexIVFScalarQuantizer(
            quantizer, 512, nlist, faiss.ScalarQuantizer.QT_8bit, faiss.METRIC_INNER_PRODUCT
        )
        started = time.perf_counter()
        faiss.omp_set_num_threads(os.cpu_count() or 1)
        ivf.train(data[rng.choice(n, min(n, 50 * nlist), replace=False)])
        ivf.add(data)
        faiss.omp_set_num_threads(1)
        build = time.perf_counter() - started
        for nprobe in (8, 16, 32, 64, 128):
            ivf.nprobe = nprobe

            def ivf_search(q: np.ndarray) -> int:
                return int(ivf.search(q[None], 1)[1][0, 0])

            report(
                f"faiss ivf{nlist},sq8 nprobe {nprobe}",
                truth,
                {c: timed(ivf_search, q) for c, q in queries.items()},
                f" (build {build:.0f} s)" if nprobe == 8 else "",
            )
        del ivf
        if hnsw:
            hnsw = faiss.IndexHNSWFlat(512, 32, faiss.METRIC_INNER_PRODUCT)
            hnsw.hnsw.efConstruction = 200
            started = time.perf_counter()
            faiss.omp_set_num_threads(os.cpu_count() or 1)
            hnsw.add(data)
            faiss.omp_set_num_threads(1)
            build = time.perf_counter() - started
            for ef in (128, 256, 512):
                hnsw.hnsw.efSearch = ef

                def hnsw_search(q: np.ndarray) -> int:
                    return int(hnsw.search(q[None], 1)[1][0, 0])

                report(
                    f"faiss hnsw32 efC200 ef {ef}",
                    truth,
                    {c: timed(hnsw_search, q) for c, q in queries.items()},
                    f" (build {build:.0f} s)" if ef == 128 else "",
                )
            del hnsw


if __name__ == "__main__":
    main()
