"""The store work of one validation miss, old release against this checkout (issue 22).

What the service asks of the store for an upload it has not judged before, in its order:
the lists and the verdict cache (judging/judge.py `lookup`: `list_kind`, `get_verdict`), the
persisted job (judging/jobs.py `submit`: `add_job`, `get_verdict`; the feeder's
`claim_jobs`), the AI Horde request kept across restarts (backends/horde.py:
`live_horde_request`, `hold_horde_request`, `drop_horde_request`), the verdict and the end of
the job (jobs.py `_finish`/`_complete`: `put_verdict`, `finish_job`), and the audit record
(`audit`, written in batches by `flush_audit`).

Each implementation runs in a process of its own (the old release from a worktree of
PREVIOUS, this checkout from here), on a new SQLite file and on a new PostgreSQL database,
with CLIENTS misses in flight at once; rounds alternate old/new and the medians are printed:
misses/s, the p50 / p99 of one miss's store work, and the client process's CPU time per miss
(the database server's not counted; steadier than wall-clock figures on a shared machine).
Target: new >= 0.95 x old.

Run: .venv/bin/python -m bench.store_work [--rounds 5] [--misses 2000] [--previous DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PREVIOUS = "2fa284f"
CLIENTS = 8
PAYLOAD = bytes(range(256)) * 128  # 32 KiB: a small upload, kept in the job row


async def _one_miss(store: object, sha: str) -> float:
    from horde_scanner.verdict import Label, Verdict

    s: object = store
    start = time.perf_counter()
    await s.list_kind(sha)  # type: ignore[attr-defined]
    await s.get_verdict(sha)  # type: ignore[attr-defined]
    await s.add_job(  # type: ignore[attr-defined]
        sha, PAYLOAD, media_type="image/png", size=len(PAYLOAD), source="upload:bench"
    )
    await s.get_verdict(sha)  # type: ignore[attr-defined]
    claimed = await s.claim_jobs(1)  # type: ignore[attr-defined]
    key = sha[:32]
    await s.live_horde_request(key)  # type: ignore[attr-defined]
    await s.hold_horde_request(key, "req-" + key, time.time())  # type: ignore[attr-defined]
    await s.drop_horde_request(key, "req-" + key)  # type: ignore[attr-defined]
    verdict = Verdict(label=Label.CLEAN, reasons=["bench"], backend="horde")
    await s.put_verdict(  # type: ignore[attr-defined]
        sha, verdict, media_type="image/png", size=len(PAYLOAD), source="upload:bench"
    )
    for job in claimed:
        await s.finish_job(job.sha256)  # type: ignore[attr-defined]
    await s.audit(  # type: ignore[attr-defined]
        "judged", sha256=sha, label="clean", source="upload:bench", detail={"backend": "horde"}
    )
    return time.perf_counter() - start


async def _child(target: str, misses: int, tag: str) -> dict[str, object]:
    import horde_scanner
    from horde_scanner.store.sqlite import Store

    store = await Store.open(target)
    try:
        # Warm up (connections, statement caches), then measure.
        for i in range(50):
            await _one_miss(store, f"{tag}w{i:062x}"[:64])
        latencies: list[float] = []
        queue = iter(range(misses))

        async def client() -> None:
            for i in queue:
                latencies.append(await _one_miss(store, f"{tag}{i:063x}"[:64]))

        start, cpu = time.perf_counter(), time.process_time()
        await asyncio.gather(*(client() for _ in range(CLIENTS)))
        await store.flush_audit()
        elapsed = time.perf_counter() - start
        cpu = time.process_time() - cpu
    finally:
        await store.close()
    latencies.sort()
    return {
        "code": str(Path(horde_scanner.__file__).parent.parent),
        "misses_s": misses / elapsed,
        "p50_ms": 1000 * latencies[len(latencies) // 2],
        "p99_ms": 1000 * latencies[int(len(latencies) * 0.99)],
        # This process's CPU per miss (the database server's not counted): steadier than
        # the wall-clock figures on a shared machine.
        "cpu_ms": 1000 * cpu / misses,
    }


def _run_child(root: Path, target: str, misses: int, tag: str) -> dict[str, float]:
    done = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), "--child", str(root), target,
         str(misses), tag],
        capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    if done.returncode != 0:
        raise RuntimeError(f"{root}: {done.stderr[-3000:]}")
    out = json.loads(done.stdout.strip().splitlines()[-1])
    if Path(out.pop("code")).resolve() != root.resolve():
        raise RuntimeError(f"the child ran the wrong code for {root}")
    return out  # type: ignore[no-any-return]


def _worktree(commit: str) -> Path:
    tree = Path(tempfile.mkdtemp(prefix="hs-previous-"))
    subprocess.run(
        ["git", "worktree", "add", "--detach", "--force", str(tree), commit],
        cwd=ROOT, check=True, capture_output=True,
    )  # fmt: skip
    return tree


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--misses", type=int, default=2000)
    parser.add_argument(
        "--previous", type=Path, help=f"a checkout of {PREVIOUS} (default: a new worktree)"
    )
    parser.add_argument("--only", choices=["sqlite", "postgresql"])
    args = parser.parse_args()
    previous = args.previous or _worktree(PREVIOUS)
    from horde_scanner.testing.pg import PgServer

    server = PgServer().start() if args.only != "sqlite" else None
    work = Path(tempfile.mkdtemp(prefix="hs-store-work-"))
    try:
        kinds = [args.only] if args.only else ["sqlite", "postgresql"]
        for kind in kinds:
            results: dict[str, list[dict[str, float]]] = {"old": [], "new": []}
            for r in range(args.rounds):
                order = [("old", previous), ("new", ROOT)]
                if r % 2:
                    order.reverse()
                for name, root in order:
                    if kind == "sqlite":
                        target = f"sqlite:///{work / f'{name}{r}.db'}"
                    else:
                        assert server is not None
                        target = server.new_database()
                    results[name].append(_run_child(root, target, args.misses, f"{r:x}"))
            print(f"\n{kind}: store work of one miss, {CLIENTS} in flight, "
                  f"{args.misses} misses x {args.rounds} rounds (medians)")  # fmt: skip
            med = {
                name: {k: statistics.median(r[k] for r in rows) for k in rows[0]}
                for name, rows in results.items()
            }
            for name in ("old", "new"):
                m = med[name]
                print(f"  {name:<4} {m['misses_s']:8.0f} misses/s   p50 {m['p50_ms']:6.2f} ms"
                      f"   p99 {m['p99_ms']:6.2f} ms   CPU {m['cpu_ms']:5.2f} ms/miss")  # fmt: skip
            ratio = med["new"]["misses_s"] / med["old"]["misses_s"]
            print(f"  new/old throughput {ratio:.3f} (target >= 0.95)"
                  f"   per-round new: {[round(r['misses_s']) for r in results['new']]}"
                  f"   old: {[round(r['misses_s']) for r in results['old']]}")  # fmt: skip
    finally:
        if server is not None:
            server.stop()
        if args.previous is None:
            subprocess.run(["git", "worktree", "remove", "--force", str(previous)], cwd=ROOT,
                           capture_output=True)  # fmt: skip


if __name__ == "__main__" and len(sys.argv) > 1 and sys.argv[1] == "--child":
    sys.path.insert(0, sys.argv[2])
    print(json.dumps(asyncio.run(_child(sys.argv[3], int(sys.argv[4]), sys.argv[5]))))
elif __name__ == "__main__":
    main()
