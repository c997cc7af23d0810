"""Service replicas as real processes (`horde-scanner serve`) on one store, for tests and bench."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp

from horde_scanner.testing.horde import FakeHorde
from horde_scanner.testing.net import free_port, wait_port
from horde_scanner.testing.pictrs import validate_upload
from horde_scanner.testing.service import CLIENT_ID

ROOT = Path(__file__).resolve().parent.parent
ADMIN_TOKEN = "replica-admin-token-0123456789abcdef"


def replica_env(store_url: str, horde_url: str, **extra: Any) -> dict[str, str]:
    env = {
        **os.environ,
        "HORDE_SCANNER_STORE__URL": store_url,
        "HORDE_SCANNER_HORDE__URL": horde_url,
        "HORDE_SCANNER_HORDE__POLL_INTERVAL_S": "0.12",
        "HORDE_SCANNER_HORDE__STATUS_POLLS_PER_S": "10",
        "HORDE_SCANNER_HORDE__API_KEY": "0000000000",
        "HORDE_SCANNER_HORDE__HTTP_TIMEOUT_S": "5",
        "HORDE_SCANNER_SERVER__CLIENT_IDS": json.dumps([CLIENT_ID]),
        "HORDE_SCANNER_ADMIN__TOKEN": ADMIN_TOKEN,
        "HORDE_SCANNER_LOG_LEVEL": "WARNING",
    }
    for key, value in extra.items():
        env[f"HORDE_SCANNER_{key.upper()}"] = str(value)
    return env


def replica_horde(latency: float, interrogators: int = 32) -> FakeHorde:
    """A fake AI Horde for replicas to share: its submit and status limits off (they would
    set the pace, not the replicas) and interrogators enough for a burst."""
    return FakeHorde(
        latency=latency,
        post_rate_per_min=None,
        status_rate_per_s=None,
        interrogator_count=interrogators,
    )


class Replica:
    def __init__(self, env: dict[str, str], workdir: Path, port: int | None = None) -> None:
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._env = env
        self._workdir = workdir
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = workdir / f"replica-{self.port}.log"

    def scan_url(self) -> str:
        return f"{self.url}/api/v1/scan/{CLIENT_ID}"

    def successor(self) -> Replica:
        """A new replica on this one's port and environment, in a directory of its own."""
        workdir = self._workdir.with_name(f"{self._workdir.name}b")
        return Replica(self._env, workdir, port=self.port)

    def start(self, wait: bool = True) -> Replica:
        self._workdir.mkdir(parents=True, exist_ok=True)
        out = open(self.log, "ab")  # noqa: SIM115 - kept by the child
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "horde_scanner.cli", "serve",
             "--host", "127.0.0.1", "--port", str(self.port)],
            env=self._env, cwd=self._workdir, stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
        out.close()
        if wait:
            try:
                wait_port(self.port, timeout=60)
            except RuntimeError:
                raise RuntimeError(f"replica did not start: {self.log.read_text()}") from None
        return self

    def kill(self) -> None:
        """As a crash would: SIGKILL, nothing flushed."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def terminate(self, timeout: float = 30) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


async def restart_each(
    replicas: list[Replica], settle: Callable[[Replica], Awaitable[object]]
) -> list[int | None]:
    """A rolling restart: each replica in turn is stopped (SIGTERM, drained) and a new one
    started on its port, in its own directory, in its place in `replicas`; `settle` waits
    until the new one may take traffic before the next is stopped. Returns the stopped
    processes' exit codes."""
    loop = asyncio.get_running_loop()
    codes: list[int | None] = []
    for i, old in enumerate(replicas):
        codes.append(await loop.run_in_executor(None, old.terminate, 60))
        replicas[i] = old.successor().start()
        await settle(replicas[i])
    return codes


class SteadyUploads:
    """Inside `async with`: PNG uploads to `url` at `rate` a second (upload n sends
    `image(n)`); on leaving, the ones in flight are waited for. `statuses` holds each
    answer's status, or the name of the exception: a refused or reset connection is a
    failed upload too."""

    def __init__(
        self,
        http: aiohttp.ClientSession,
        url: str,
        image: Callable[[int], bytes],
        rate: float,
    ) -> None:
        self.statuses: list[int | str] = []
        self._http, self._url, self._image, self._rate = http, url, image, rate
        self._stop = asyncio.Event()
        self._task: asyncio.Future[None] | None = None

    async def _upload(self, data: bytes) -> None:
        try:
            result = await validate_upload(self._http, self._url, data, "image/png")
            self.statuses.append(result.status)
        except Exception as exc:
            self.statuses.append(type(exc).__name__)

    async def _steady(self) -> None:
        sent, started = 0, time.monotonic()
        pending = []
        while not self._stop.is_set():
            pending.append(asyncio.ensure_future(self._upload(self._image(sent))))
            sent += 1
            await asyncio.sleep(max(0.0, started + sent / self._rate - time.monotonic()))
        await asyncio.gather(*pending)

    async def __aenter__(self) -> SteadyUploads:
        self._task = asyncio.ensure_future(self._steady())
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._stop.set()
        if self._task is not None:
            await self._task
