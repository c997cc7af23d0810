"""Bulk hash-list writes and the index read, old release against this tree in the same run:
`python -m bench.hashlist_import [--entries 1000000] [--rounds 3] [--old /work/wt/base]`.

Each measurement runs in a process of its own (so its peak RSS is its own), old and new
interleaved, on a fresh SQLite file and a fresh PostgreSQL database (a server this run
starts): an import of N PDQ entries (`add_hash_entries`, what `hashes import` does), a
subscription refresh that changes 1% of them (`replace_hash_origin`: only the difference is
written), and the index read at start-up (`hash_index_rows`). Prints each figure's median of
the rounds and the rounds themselves: wall time (`_s`), the process's CPU time over all its
threads (`_cpu_s`: steadier than wall time on a shared machine; PostgreSQL's own work is
not in it), and the process's peak RSS.

The old release is a worktree of the previous release (`git worktree add /work/wt/base
2fa284f`), imported from its own directory with this interpreter.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _status_mb(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _peak_rss_mb() -> float:
    return _status_mb("VmHWM")


def _rss_mb() -> float:
    return _status_mb("VmRSS")


async def _one(target: str, count: int) -> dict[str, float]:
    """One measurement, in this process: what `--worker` prints."""
    import numpy as np

    try:
        from horde_scanner.signals.hash_list import HashEntry
    except ImportError:  # the release before the layers moved (2fa284f)
        from horde_scanner.hashlists.format import HashEntry  # type: ignore[no-redef]
    from horde_scanner.store.sqlite import Store

    rng = np.random.default_rng(5)
    values = [bytes(r).hex() for r in rng.integers(0, 256, size=(count, 32), dtype=np.uint8)]
    entries = [HashEntry("pdq", v, "csam", "bench") for v in values]
    out: dict[str, float] = {"before_rss_mb": _rss_mb()}
    async with await Store.open(target) as store:
        started, cpu = time.perf_counter(), time.process_time()
        await store.add_hash_entries("sub", entries)
        out["import_s"] = time.perf_counter() - started
        out["import_cpu_s"] = time.process_time() - cpu
        out["import_rss_mb"] = _peak_rss_mb()
        changed = count // 100
        fresh = [f"{int(v, 16) ^ 1:064x}" for v in values[:changed]]
        refreshed = [HashEntry("pdq", v, "csam", "bench") for v in fresh] + entries[changed:]
        started, cpu = time.perf_counter(), time.process_time()
        written = await store.replace_hash_origin("sub", refreshed)
        out["refresh_s"] = time.perf_counter() - started
        out["refresh_cpu_s"] = time.process_time() - cpu
        out["refresh_written"] = written
        del refreshed, entries, values
        started, cpu = time.perf_counter(), time.process_time()
        rows = 0
        async for chunk, _origins in store.hash_index_rows(50):
            rows += len(chunk)
        out["index_read_s"] = time.perf_counter() - started
        out["index_read_cpu_s"] = time.process_time() - cpu
        out["index_rows"] = rows
    out["peak_rss_mb"] = _peak_rss_mb()
    # What the writes and the read cost beyond the entries themselves and the code loaded.
    out["growth_mb"] = out["peak_rss_mb"] - out["before_rss_mb"]
    return out


def _measure(tree: Path, target: str, count: int) -> dict[str, float]:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    done = subprocess.run(
        # This file run as a script: the old tree has no such benchmark, only its store.
        [sys.executable, __file__, "--worker", target, "--entries", str(count)],
        cwd=tree, env=env, capture_output=True, text=True, check=False,
    )  # fmt: skip
    if done.returncode != 0:
        raise SystemExit(f"worker in {tree} failed:\n{done.stderr[-4000:]}")
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entries", type=int, default=1_000_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--old", type=Path, default=Path("/work/wt/base"))
    parser.add_argument("--databases", default="sqlite,postgresql")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(asyncio.run(_one(args.worker, args.entries))))
        return
    trees = {"old": args.old.resolve(), "new": ROOT}
    kinds = args.databases.split(",")
    server = None
    if "postgresql" in kinds:
        from horde_scanner.testing.pg import PgServer

        server = PgServer().start()
    results: dict[tuple[str, str], list[dict[str, float]]] = {}
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for round_ in range(args.rounds):
                for kind in kinds:
                    # Old first in even rounds, new first in odd ones: the machine's load drifts.
                    order = ["old", "new"] if round_ % 2 == 0 else ["new", "old"]
                    for name in order:
                        if kind == "sqlite":
                            target = f"sqlite:///{tmp}/{name}-{round_}.db"
                        else:
                            assert server is not None
                            target = server.new_database()
                        got = _measure(trees[name], target, args.entries)
                        results.setdefault((kind, name), []).append(got)
                        print(
                            f"round {round_ + 1} {kind:<10} {name}: {json.dumps(got)}", flush=True
                        )
                        if kind == "sqlite":
                            Path(f"{tmp}/{name}-{round_}.db").unlink(missing_ok=True)
    finally:
        if server is not None:
            server.stop()
    figures = (
        "import_s", "import_cpu_s", "refresh_s", "refresh_cpu_s", "index_read_s",
        "index_read_cpu_s", "before_rss_mb", "peak_rss_mb", "growth_mb",
    )  # fmt: skip
    print(f"\nmedians of {args.rounds} rounds, {args.entries:,} PDQ entries (old = {trees['old']})")
    head = f"{'database':<10} {'figure':<16} {'old':>8} {'new':>8} {'new/old':>8}"
    print(f"{head}   rounds old | new")
    for kind in kinds:
        for figure in figures:
            olds = [r[figure] for r in results[(kind, "old")]]
            news = [r[figure] for r in results[(kind, "new")]]
            old, new = statistics.median(olds), statistics.median(news)
            rounds = " ".join(f"{v:.2f}" for v in olds) + " | " + " ".join(f"{v:.2f}" for v in news)
            print(f"{kind:<10} {figure:<16} {old:>8.2f} {new:>8.2f} {new / old:>8.2f}   {rounds}")


if __name__ == "__main__":
    main()
