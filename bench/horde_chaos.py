"""An erratic AI Horde (issue 20, part 1): does every image get judged, once, across a restart?

The fake AI Horde answers 30 % of every call 5xx, never finishes 10 % of requests, faults the
forms of 10 %, and limits submits to 90 a minute per IP (fixed window, 429 as the real limiter
answers). The service (deadline 8 s, horde.request_timeout_s = 40) gets 2,400 uploads of 120
distinct images at 64 concurrency and is killed with SIGKILL half-way, then started again on
the same store. Both this checkout ("new") and the previous release (a git worktree of
3579f71, "old") run the same scenario in the same invocation.

Targets (new): every distinct image judged within 7 minutes of the burst's end; submissions
<= 1.1 x distinct images + the submissions that never finished or faulted; 0 answers past
the deadline; 0 x 429 after the restart.

Run: .venv/bin/python -m bench.horde_chaos [--quick] [--only new|old] [--runs N]
(--quick: 40 images, 800 uploads, 20 s request timeout, 3 min settle)
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import tempfile
from dataclasses import replace
from pathlib import Path

from bench.common import ROOT
from horde_scanner.testing.chaos import ChaosPlan, ChaosResult, run_chaos

PREVIOUS_RELEASE = "3579f71"


def _worktree(path: Path) -> None:
    subprocess.run(
        ["git", "worktree", "add", "--detach", str(path), PREVIOUS_RELEASE],
        cwd=ROOT,
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def _drop_worktree(path: Path) -> None:
    subprocess.run(
        ["git", "worktree", "remove", "--force", str(path)],
        cwd=ROOT,
        check=False,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def _timeline(result: ChaosResult) -> str:
    return "  ".join(f"{t:.0f}s:{n}" for t, n in result.samples)


def report(name: str, plan: ChaosPlan, r: ChaosResult) -> None:
    judged_in = (
        f"all {r.distinct} judged {r.all_judged_after_s:.0f} s after the burst"
        if r.all_judged_after_s is not None
        else f"{r.judged}/{r.distinct} judged {plan.settle_s:.0f} s after the burst"
    )
    print(f"[{name}] burst {r.burst_s:.0f} s; {judged_in}", flush=True)
    print(f"[{name}]   verdicts over time (s after the burst: images judged): {_timeline(r)}")
    print(
        f"[{name}]   submissions {r.submissions} (bound {r.submission_bound:.0f} = 1.1 x "
        f"{r.distinct} + {r.expired_or_faulted} expired/faulted: {r.never_finishing} never "
        f"finishing, {r.faulting} faulted)"
    )
    print(
        f"[{name}]   429s {r.rate_limited} ({r.rate_limited_after_restart} after the restart); "
        f"answers past the deadline {r.past_deadline} of {r.answers} (max {r.max_answer_s:.2f} s,"
        f" deadline {plan.deadline_s:g} s); Horde logged unreachable {r.unreachable_logged}x; "
        f"{r.injected_errors} calls answered 5xx; {r.cut_by_kill} uploads cut by the kill",
        flush=True,
    )


def _median(values: list[float]) -> str:
    return f"{statistics.median(values):.0f}" if values else "-"


async def main(plan: ChaosPlan, only: str | None, runs: int) -> None:
    print("noisy machine (2 cores shared with other work): read the times as rough", flush=True)
    names = [n for n in ("new", "old") if only in (None, n)]
    results: dict[str, list[ChaosResult]] = {n: [] for n in names}
    with tempfile.TemporaryDirectory(prefix="horde-chaos-") as tmp:
        old_root = Path(tmp) / "previous-release"
        if "old" in names:
            _worktree(old_root)
        try:
            for run in range(runs):
                # Interleaved, the order alternating, so that load drifts hit both alike.
                order = names if run % 2 == 0 else list(reversed(names))
                for name in order:
                    root = ROOT if name == "new" else old_root
                    print(f"-- run {run + 1}/{runs}: {name} ({root})", flush=True)
                    result = await run_chaos(
                        replace(plan, seed=plan.seed + run),
                        root,
                        Path(tmp) / f"{name}-{run}",
                        say=lambda line: print(f"   {line}", flush=True),
                    )
                    results[name].append(result)
                    report(name, plan, result)
        finally:
            if "old" in names:
                _drop_worktree(old_root)
    print("\nsummary (medians over runs)")
    for name, rs in results.items():
        after = [r.all_judged_after_s for r in rs if r.all_judged_after_s is not None]
        print(
            f"  {name}: judged {_median([r.judged for r in rs])}/{plan.distinct} "
            f"(all judged in {len(after)}/{len(rs)} runs, after {_median(after)} s); "
            f"submissions {_median([r.submissions for r in rs])} "
            f"(bound {_median([r.submission_bound for r in rs])}); "
            f"expired/faulted {_median([r.expired_or_faulted for r in rs])}; "
            f"429s after restart {_median([r.rate_limited_after_restart for r in rs])}; "
            f"past deadline {_median([r.past_deadline for r in rs])}; "
            f"unreachable logged {_median([r.unreachable_logged for r in rs])}"
        )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a smaller scenario")
    parser.add_argument("--only", choices=("new", "old"), help="run one side only")
    parser.add_argument("--runs", type=int, default=1, help="runs of each side, interleaved")
    parser.add_argument("--settle", type=float, help="seconds to watch after the burst")
    args = parser.parse_args()
    plan = ChaosPlan()
    if args.quick:
        plan = replace(
            plan,
            distinct=40,
            uploads=800,
            request_timeout_s=20.0,
            settle_s=180.0,
            sample_every_s=15.0,
        )
    if args.settle is not None:
        plan = replace(plan, settle_s=args.settle)
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    asyncio.run(main(plan, args.only, args.runs))
