"""Service replicas as real processes (`horde-scanner serve`) on one store, for tests and bench."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

from horde_scanner.testing.net import free_port, wait_port
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
