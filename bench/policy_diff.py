"""How long a policy dry run takes on a big store.

    python -m bench.policy_diff [--verdicts 100000] [--db PATH]

Fills a SQLite store (a temporary one, or PATH, which is reused when it already holds the
verdicts) through the store's API with verdicts made by the previous bundled policy
(tests/data/policy-2026.11-2.toml) from BLIP-style captions, Horde tags on a third, CLIP scores
on a tenth, a few multi-frame videos and some admin decisions. Then times:

- the library call (`run_diff`) against the stored verdicts, and against a second policy file
  (two policies judge every row);
- the real CLI, `horde-scanner policy diff --json`, as a subprocess (start-up included).

Prints the figures; asserts nothing about time.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.common import ROOT
from horde_scanner.judging.policy_diff import run_diff
from horde_scanner.policy.frames import FRAMES_KEY
from horde_scanner.policy.rules import Policy
from horde_scanner.store.sqlite import Store
from horde_scanner.verdict import Signals

OLD = ROOT / "tests" / "data" / "policy-2026.11-2.toml"
NEW = ROOT / "horde_scanner" / "data" / "policy.toml"

SUBJECTS = [
    "a woman", "a man", "a girl", "a boy", "a young woman", "a couple", "two girls",
    "a little girl", "a teen", "a woman in a baby doll nightie", "arafed woman", "a child",
    "a girl and her daughter", "a cat", "a dog", "a group of people",
]  # fmt: skip
SCENES = [
    "laying on a bed", "sitting on a couch", "standing in front of a mirror", "on a beach",
    "in a kitchen", "posing for a picture", "in a school uniform", "playing in a park",
    "in the shower", "with her legs spread",
]  # fmt: skip
SEXUAL = ["naked", "nude", "topless", "sexy"]
TAGS = ["1girl", "nude", "bed", "lolicon", "smile", "outdoors", "nsfw", "school uniform"]


def _signals(rng: random.Random) -> Signals:
    subject, scene = rng.choice(SUBJECTS), rng.choice(SCENES)
    sexual = rng.random() < 0.3
    caption = f"{subject} {scene}"
    if sexual and rng.random() < 0.5:
        caption = f"a {rng.choice(SEXUAL)} {subject.removeprefix('a ')} {scene}"
    tags = {}
    if rng.random() < 0.33:
        tags = {t: round(rng.uniform(1, 45), 1) for t in rng.sample(TAGS, 3)}
    scores = {}
    if rng.random() < 0.1:
        scores = {
            "clip:a photo of a child": rng.uniform(0.1, 0.3),
            "clip:a photo of a naked person": rng.uniform(0.1, 0.3),
            "clip:a photo of an adult woman": rng.uniform(0.1, 0.3),
        }
    return Signals(
        backend="horde", nsfw=sexual and rng.random() < 0.8, caption=caption, tags=tags,
        scores=scores,
    )  # fmt: skip


async def fill(db: Path, n: int) -> float:
    rng = random.Random(16)
    old = Policy.load(OLD)
    started = time.perf_counter()
    now = time.time()
    async with await Store.open(db) as store:
        await store.db.execute("BEGIN")
        for i in range(n):
            if rng.random() < 0.02:
                frames = [
                    {"frames": [k], "label": f"frame {k}", "signals": _signals(rng).model_dump()}
                    for k in range(4)
                ]
                signals = Signals(backend="horde", extra={FRAMES_KEY: frames})
            else:
                signals = _signals(rng)
            verdict = old.judge(signals)
            verdict.judged_at = now - rng.random() * 60 * 86400
            sha = f"{i:064x}"
            await store.put_verdict(sha, verdict, media_type="image/webp", size=50_000)
            if rng.random() < 0.005:
                kind = "allow" if verdict.label.value != "clean" else "deny"
                await store.set_list(sha, kind, by="bench")
            if i % 10_000 == 9_999:
                await store.db.execute("COMMIT")
                await store.db.execute("BEGIN")
        await store.db.execute("COMMIT")
    return time.perf_counter() - started


async def count(db: Path) -> int:
    async with await Store.open(db) as store:
        return sum((await store.count_verdicts()).values())


async def library(db: Path, against: bool) -> tuple[float, dict]:
    candidate = Policy.load(NEW)
    baseline = Policy.load(OLD) if against else None
    async with await Store.open(db) as store:
        started = time.perf_counter()
        report = await run_diff(store, candidate, baseline=baseline)
        return time.perf_counter() - started, report.as_dict()


def cli(db: Path) -> tuple[float, dict]:
    started = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "horde_scanner.cli", "--db", str(db), "policy", "diff", str(NEW),
         "--json"],
        cwd=ROOT, capture_output=True, text=True, check=True,
    )  # fmt: skip
    return time.perf_counter() - started, json.loads(proc.stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--verdicts", type=int, default=100_000)
    parser.add_argument("--db", type=Path, default=None)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        db = args.db or Path(tmp) / "bench.db"
        n = asyncio.run(count(db)) if db.exists() else 0
        if n < args.verdicts:
            built = asyncio.run(fill(db, args.verdicts))
            n = asyncio.run(count(db))
            print(f"filled {n:,} verdicts through the store API in {built:.1f} s")
        else:
            print(f"reusing {db} ({n:,} verdicts)")
        size = db.stat().st_size / 1e6
        print(f"store: {size:.0f} MB")
        for against in (False, True):
            elapsed, report = asyncio.run(library(db, against))
            what = "against a second policy file" if against else "against the stored verdicts"
            print(
                f"run_diff {what}: {elapsed:.2f} s, {report['examined'] / elapsed:,.0f} verdicts/s"
                f" ({report['changed']:,} would change)"
            )
        elapsed, report = cli(db)
        print(
            f"CLI `policy diff --json` (subprocess, start-up included): {elapsed:.2f} s for "
            f"{report['examined']:,} verdicts"
        )
        for change in report["changes"]:
            print(f"  {change['from']} -> {change['to']}: {change['count']:,}")
        d = report["decisions"]
        print(f"  decisions: {d['agree']} agree, {d['disagree']} disagree")


if __name__ == "__main__":
    main()
