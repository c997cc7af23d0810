"""Shared helpers for benchmarks: processes on loopback ports, percentiles, peak RSS."""

from __future__ import annotations

import contextlib
import io
import os
import subprocess
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from horde_scanner.testing.net import free_port, wait_port

ROOT = Path(__file__).resolve().parent.parent


def spawn(
    args: Sequence[str],
    env: dict[str, str] | None = None,
    cwd: Path = ROOT,
    launcher: Sequence[str] = (),
) -> subprocess.Popen[bytes]:
    """`python ARGS` in `cwd` (another checkout's directory runs that checkout's code: the
    current directory comes first on the module path), under `launcher` if given (valgrind)."""
    return subprocess.Popen(
        [*launcher, sys.executable, *args],
        cwd=cwd,
        env={**os.environ, **(env or {})},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


@contextlib.contextmanager
def horde_and_service(
    horde_args: Sequence[str],
    service_args: Callable[[int], list[str]],
    db: Path,
    *,
    client: str,
    deadline_s: float,
    env: dict[str, str] | None = None,
    cwd: Path = ROOT,
    launcher: Sequence[str] = (),
    start_timeout_s: float = 30.0,
) -> Iterator[tuple[int, subprocess.Popen[bytes]]]:
    """The fake AI Horde (with `horde_args`) and the service (python `service_args(port)`, run
    in `cwd`, under `launcher` if given) as processes on free loopback ports, the service's
    store at `db` and `env` added to its environment; yields the service's port and process
    once both listen."""
    horde_port, port = free_port(), free_port()
    horde = spawn(["-m", "horde_scanner.testing.horde", "--port", str(horde_port), *horde_args])
    service_env = {
        "HORDE_SCANNER_STORE__PATH": str(db),
        "HORDE_SCANNER_HORDE__URL": f"http://127.0.0.1:{horde_port}/api",
        "HORDE_SCANNER_SERVER__CLIENT_IDS": f'["{client}"]',
        "HORDE_SCANNER_VALIDATION__DEADLINE_S": str(deadline_s),
        "HORDE_SCANNER_LOG_LEVEL": "ERROR",
        **(env or {}),
    }
    service = spawn(service_args(port), service_env, cwd, launcher)
    try:
        wait_port(horde_port)
        wait_port(port, timeout=start_timeout_s)
        yield port, service
    finally:
        for proc in (service, horde):
            proc.terminate()
            proc.wait(30)


def peak_rss_mb(pid: int) -> float:
    """VmHWM: the process's peak resident set size so far."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def pin(pid: int, cpus: set[int]) -> None:
    """Keep every thread of `pid` on `cpus` (threads it starts later inherit it): the service
    measured on a core of its own, the load generator on the other, so they do not take turns
    on one core's caches."""
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(ProcessLookupError):
            os.sched_setaffinity(int(task.name), cpus)


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def percentiles(values_s: Sequence[float]) -> str:
    ms = np.asarray(values_s) * 1000
    if ms.size == 0:
        return "no samples"
    p50, p90, p99 = np.percentile(ms, [50, 90, 99])
    return f"p50 {p50:.2f} ms  p90 {p90:.2f} ms  p99 {p99:.2f} ms  max {ms.max():.2f} ms"


def noisy_jpeg(seed: int, target_bytes: int = 200_000) -> bytes:
    """A photo-like JPEG of about target_bytes (noise over a gradient, so it is incompressible)."""
    rng = np.random.default_rng(seed)
    side = 256
    while True:
        base = np.linspace(0, 255, side, dtype=np.float32)[None, :, None]
        pixels = np.clip(base + rng.normal(0, 40, (side, side, 3)), 0, 255).astype(np.uint8)
        out = io.BytesIO()
        Image.fromarray(pixels).save(out, "JPEG", quality=85)
        if out.tell() >= target_bytes:
            return out.getvalue()
        side = int(side * 1.15)
