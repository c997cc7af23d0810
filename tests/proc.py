"""Run the real `horde-scanner` as a child process, on pipes or on a pseudo-terminal, while the
test's event loop keeps serving its fakes."""

from __future__ import annotations

import asyncio
import contextlib
import os
import pty
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from horde_scanner.testing.net import wait_port

ROOT = Path(__file__).resolve().parent.parent
CLI = str(Path(sys.executable).with_name("horde-scanner"))


def cli_env(db: Path, horde_url: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HORDE_SCANNER_")}
    env.update(
        {
            "HORDE_SCANNER_STORE__PATH": str(db),
            "HORDE_SCANNER_HORDE__URL": horde_url,
            "HORDE_SCANNER_HORDE__POLL_INTERVAL_S": "0.12",
            "HORDE_SCANNER_HORDE__RETRIES": "1",
            "HORDE_SCANNER_HORDE__PROBE_INTERVAL_S": "0.3",
            "HORDE_SCANNER_SCAN__CONCURRENCY": "4",
            "PYTHONPATH": str(ROOT),
        }
    )
    env.update(extra)
    return env


@dataclass
class Done:
    rc: int
    stdout: str
    stderr: str


async def start_cli(
    args: list[str], env: dict[str, str], *, cwd: Path, **streams: Any
) -> asyncio.subprocess.Process:
    """`python -m horde_scanner.cli ARGS` as a child of the test's event loop; `streams` are
    the stdin/stdout/stderr (and other) keywords of `asyncio.create_subprocess_exec`."""
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "horde_scanner.cli", *args, env=env, cwd=cwd, **streams
    )


async def run(args: list[str], env: dict[str, str], *, cwd: Path, timeout: float = 120) -> Done:
    proc = await start_cli(
        args,
        env,
        cwd=cwd,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout)
    assert proc.returncode is not None
    return Done(proc.returncode, out.decode(), err.decode())


class OnTerminal:
    """The CLI with stdin, stdout and stderr on one pseudo-terminal; `text` is all it wrote."""

    def __init__(self, args: list[str], env: dict[str, str], *, cwd: Path) -> None:
        self.args, self.env, self.cwd = args, env, cwd
        self.raw = b""
        self.proc: asyncio.subprocess.Process | None = None
        self._master = -1

    @property
    def text(self) -> str:
        return self.raw.decode(errors="replace")

    async def start(self) -> None:
        master, slave = pty.openpty()
        self._master = master
        os.set_blocking(master, False)
        self.proc = await start_cli(
            self.args,
            {**self.env, "TERM": "xterm", "COLUMNS": "300"},
            cwd=self.cwd,
            stdin=slave,
            stdout=slave,
            stderr=slave,
            start_new_session=True,
        )
        os.close(slave)

    def _drain(self) -> None:
        while True:
            try:
                chunk = os.read(self._master, 65536)
            except (BlockingIOError, OSError):
                return
            if not chunk:
                return
            self.raw += chunk

    async def wait_for_text(self, needle: str, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while needle not in self.text:
            self._drain()
            if time.monotonic() > deadline:
                raise AssertionError(f"{needle!r} not seen; output so far:\n{self.text}")
            assert self.proc is not None
            if self.proc.returncode is not None and needle not in self.text:
                self._drain()
                if needle not in self.text:
                    raise AssertionError(f"exited before {needle!r}:\n{self.text}")
            await asyncio.sleep(0.05)

    async def read_for(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            self._drain()
            await asyncio.sleep(0.05)

    def send(self, text: str) -> None:
        os.write(self._master, text.encode())

    async def wait(self, timeout: float = 60.0) -> int:
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        while self.proc.returncode is None:
            self._drain()
            if time.monotonic() > deadline:
                self.proc.kill()
                raise AssertionError(f"still running after {timeout} s:\n{self.text}")
            try:
                await asyncio.wait_for(self.proc.wait(), 0.1)
            except TimeoutError:
                pass
        self._drain()
        os.close(self._master)
        return self.proc.returncode


@contextlib.contextmanager
def serving(env: dict[str, str], port: int, *, cwd: Path) -> Iterator[subprocess.Popen[bytes]]:
    """`horde-scanner serve` (the installed command) as a child process, listening on `port`:
    a server that does not come up fails the test with what it wrote to stderr."""
    proc = subprocess.Popen([CLI, "serve"], cwd=cwd, env=env, stderr=subprocess.PIPE)
    try:
        try:
            wait_port(port, timeout=30)
        except RuntimeError:
            proc.kill()
            raise AssertionError(f"serve did not start: {proc.communicate()[1].decode()}") from None
        yield proc
    finally:
        proc.terminate()
        proc.wait(timeout=60)
        if proc.stderr:
            proc.stderr.close()
