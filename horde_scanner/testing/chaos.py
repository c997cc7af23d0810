"""The chaotic AI Horde of issue 20, driven against the real service as a user meets it.

The fake Horde (testing/horde.py) runs in this process with failure knobs turned up: a share
of every call answered 5xx, a share of requests no worker ever picks up, a share whose forms
all fault, and the real per-IP submit limit. The service runs as a child process (`python -m
horde_scanner.cli serve`, from `code_root`: this checkout or a worktree of an older release)
on a SQLite store; a load generator sends `uploads` uploads of `distinct` images at
`concurrency`, kills the service with SIGKILL once `kill_after` of them were answered, starts
it again on the same store and port, and goes on. Then it watches the store until every
distinct image has a verdict or `settle_s` passed.

What it measures (ChaosResult): distinct images judged over time, submissions the Horde
accepted (and how many of those never finish or fault), 429s from the submit limiter (all,
and after the restart), answers later than the deadline, and how often the service logged
the Horde unreachable. Used by tests/integration/test_horde_chaos.py (scaled down) and
bench/horde_chaos.py (the full scenario, against the previous release too).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import aiohttp
import numpy as np
from PIL import Image

from horde_scanner.media.hashing import sha256_hex
from horde_scanner.testing import images
from horde_scanner.testing.horde import FakeHorde
from horde_scanner.testing.net import free_port

CLIENT = "chaos"
# Colours the fake's default judge reads (two clean, one nsfw, one csam marker).
_COLOURS = ("green", "blue", "magenta", "red")


@dataclass
class ChaosPlan:
    distinct: int = 120
    uploads: int = 2400
    concurrency: int = 64
    deadline_s: float = 8.0
    request_timeout_s: float = 40.0
    error_rate: float = 0.3
    never_finish_rate: float = 0.1
    fault_rate: float = 0.1
    post_limit: int = 90
    post_window_s: float = 60.0
    latency_s: tuple[float, float] = (2.8, 5.2)
    kill_after: float = 0.5
    settle_s: float = 420.0
    sample_every_s: float = 30.0
    # An answer later than deadline_s + this counts as past the deadline (event-loop and
    # loopback noise on a loaded machine; pict-rs itself waits 2 s longer than the default).
    late_slack_s: float = 1.0
    seed: int = 20
    # More HORDE_SCANNER_* settings for the service (scaled-down runs).
    service_env: dict[str, str] = field(default_factory=dict)


@dataclass
class ChaosResult:
    samples: list[tuple[float, int]]  # (seconds after the burst's end, distinct images judged)
    judged: int
    distinct: int
    all_judged_after_s: float | None  # after the burst's end
    burst_s: float
    submissions: int
    never_finishing: int  # submissions the Horde will never finish
    faulting: int  # submissions whose forms fault
    rate_limited: int  # POSTs answered 429 by the submit limiter
    rate_limited_after_restart: int
    answers: int
    past_deadline: int
    max_answer_s: float
    cut_by_kill: int  # uploads in flight when the service was killed (sent again)
    unreachable_logged: int  # times the service logged the Horde unreachable
    injected_errors: int

    @property
    def expired_or_faulted(self) -> int:
        return self.never_finishing + self.faulting

    @property
    def submission_bound(self) -> float:
        return 1.1 * self.distinct + self.expired_or_faulted


def service_env(
    plan: ChaosPlan, code_root: Path, db: Path, horde_url: str, port: int
) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HORDE_SCANNER_")}
    env.update(
        {
            "PYTHONPATH": str(code_root),
            "HORDE_SCANNER_STORE__PATH": str(db),
            "HORDE_SCANNER_HORDE__URL": horde_url,
            "HORDE_SCANNER_SERVER__PORT": str(port),
            "HORDE_SCANNER_SERVER__CLIENT_IDS": f'["{CLIENT}"]',
            "HORDE_SCANNER_VALIDATION__DEADLINE_S": str(plan.deadline_s),
            "HORDE_SCANNER_HORDE__REQUEST_TIMEOUT_S": str(plan.request_timeout_s),
            "HORDE_SCANNER_LOG_LEVEL": "WARNING",
            **plan.service_env,
        }
    )
    return env


def _start(code_root: Path, env: dict[str, str], log: IO[bytes]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "horde_scanner.cli", "serve"],
        cwd=code_root,
        env=env,
        stdout=log,
        stderr=log,
    )


async def _wait_listening(port: int, proc: subprocess.Popen[bytes], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the service exited ({proc.returncode}) before listening")
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            await asyncio.sleep(0.05)
            continue
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
        return
    raise RuntimeError(f"the service did not listen on {port} within {timeout:.0f} s")


def _judged(db: Path, sha256s: list[str]) -> int:
    if not db.exists():
        return 0
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)
    try:
        marks = ",".join("?" * len(sha256s))
        row = conn.execute(
            f"SELECT COUNT(*) FROM verdicts WHERE label != 'error' AND sha256 IN ({marks})",
            sha256s,
        ).fetchone()
        return int(row[0])
    except sqlite3.OperationalError:  # the schema is not there yet
        return 0
    finally:
        conn.close()


def chaos_images(count: int) -> list[bytes]:
    """`count` images no hash (sha256, PDQ) takes for one another: a marker colour under
    strong noise, so that near-copy matching does not answer for any of them."""
    rng = np.random.default_rng(20)
    out = []
    for i in range(count):
        colour = np.array(images.COLOURS[_COLOURS[i % len(_COLOURS)]], dtype=np.float32)
        noise = rng.normal(0.0, 45.0, (96, 128, 3))
        pixels = np.clip(colour + noise, 0, 255).astype(np.uint8)
        out.append(images.encode(Image.fromarray(pixels), "JPEG", quality=90))
    return out


async def run_chaos(
    plan: ChaosPlan,
    code_root: Path,
    workdir: Path,
    *,
    say: Callable[[str], None] = lambda line: None,
) -> ChaosResult:
    """Run the scenario once; the service's log is left in `workdir`/service.log."""
    rng = random.Random(plan.seed)
    low, high = plan.latency_s
    horde = FakeHorde(
        latency=lambda: rng.uniform(low, high),
        post_rate_per_min=plan.post_limit,
        post_window_s=plan.post_window_s,
    )
    horde.error_rate = plan.error_rate
    horde.never_finish_rate = plan.never_finish_rate
    horde.fault_rate = plan.fault_rate
    horde.rng = random.Random(plan.seed + 1)
    data = chaos_images(plan.distinct)
    sha256s = [sha256_hex(d) for d in data]
    order = [i % plan.distinct for i in range(plan.uploads)]
    random.Random(plan.seed + 2).shuffle(order)

    await asyncio.to_thread(workdir.mkdir, parents=True, exist_ok=True)
    db = workdir / "chaos.db"
    port = free_port()
    url = await horde.start()
    env = service_env(plan, code_root, db, url, port)
    log = (workdir / "service.log").open("ab")
    proc = _start(code_root, env, log)
    answers: list[float] = []
    cut_by_kill = 0
    restarted_429 = 0
    killed = asyncio.Event()
    restarted = asyncio.Event()
    restarted.set()
    try:
        await _wait_listening(port, proc, 60)
        say(f"service up (pid {proc.pid}); {plan.uploads} uploads of {plan.distinct} images")
        scan = f"http://127.0.0.1:{port}/api/v1/scan/{CLIENT}"
        queue: asyncio.Queue[int] = asyncio.Queue()
        for index in order:
            queue.put_nowait(index)
        started = time.monotonic()

        async def restart() -> None:
            nonlocal proc, restarted_429
            say(f"kill -9 after {len(answers)} answers ({time.monotonic() - started:.0f} s)")
            restarted.clear()
            proc.send_signal(signal.SIGKILL)
            await asyncio.to_thread(proc.wait)
            restarted_429 = horde.posts_rate_limited
            proc = _start(code_root, env, log)
            await _wait_listening(port, proc, 60)
            say(f"restarted on the same store (pid {proc.pid})")
            restarted.set()

        async def one(session: aiohttp.ClientSession, index: int) -> None:
            nonlocal cut_by_kill
            while True:
                await restarted.wait()
                t0 = time.monotonic()
                try:
                    async with session.post(
                        scan, data=data[index], headers={"Content-Type": "image/jpeg"}
                    ) as resp:
                        await resp.read()
                except (aiohttp.ClientError, OSError):
                    # The service is being killed or restarted: pict-rs would fail this
                    # upload; send it again to the restarted service.
                    if killed.is_set():
                        cut_by_kill += 1
                        await asyncio.sleep(0.05)
                        continue
                    raise
                answers.append(time.monotonic() - t0)
                if not killed.is_set() and len(answers) >= plan.kill_after * plan.uploads:
                    killed.set()
                    await restart()
                return

        async def client(session: aiohttp.ClientSession) -> None:
            while not queue.empty():
                await one(session, queue.get_nowait())

        connector = aiohttp.TCPConnector(limit=0, force_close=False)
        async with aiohttp.ClientSession(
            connector=connector, timeout=aiohttp.ClientTimeout(total=120)
        ) as session:
            await asyncio.gather(*(client(session) for _ in range(plan.concurrency)))
        burst_s = time.monotonic() - started
        ended = time.monotonic()
        say(f"burst done in {burst_s:.0f} s")

        samples: list[tuple[float, int]] = []
        all_after: float | None = None
        next_sample = 0.0
        while True:
            judged = await asyncio.to_thread(_judged, db, sha256s)
            since = time.monotonic() - ended
            if judged >= plan.distinct and all_after is None:
                all_after = since
            if since >= next_sample or all_after is not None:
                samples.append((since, judged))
                say(f"  {since:5.0f} s after the burst: {judged}/{plan.distinct} judged")
                next_sample += plan.sample_every_s
            if all_after is not None or since >= plan.settle_s:
                break
            await asyncio.sleep(min(1.0, plan.sample_every_s))
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                await asyncio.to_thread(proc.wait, 30)
            except subprocess.TimeoutExpired:
                proc.kill()
        log.close()
        await horde.stop()
    text = (workdir / "service.log").read_text(errors="replace")
    ids = {s.id for s in horde.submissions}
    late = plan.deadline_s + plan.late_slack_s
    return ChaosResult(
        samples=samples,
        judged=samples[-1][1] if samples else 0,
        distinct=plan.distinct,
        all_judged_after_s=all_after,
        burst_s=burst_s,
        submissions=len(horde.submissions),
        never_finishing=len(ids & horde.never_finishing),
        faulting=len(ids & horde.faulting),
        rate_limited=horde.posts_rate_limited,
        rate_limited_after_restart=horde.posts_rate_limited - restarted_429,
        answers=len(answers),
        past_deadline=sum(1 for t in answers if t > late),
        max_answer_s=max(answers, default=0.0),
        cut_by_kill=cut_by_kill,
        unreachable_logged=text.count("is unreachable"),
        injected_errors=horde.injected_errors,
    )
