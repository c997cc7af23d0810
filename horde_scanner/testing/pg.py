"""A throwaway PostgreSQL server for tests and benchmarks (Debian's `postgresql` package).

`initdb` into a temporary directory (as the `postgres` user when we are root: PostgreSQL
refuses to run as root), then `postgres` on a free loopback port and a unix socket in that
directory, trust authentication, stopped and removed at the end.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

from horde_scanner.errors import FinalError
from horde_scanner.testing.net import free_port, wait_port


class PostgresMissing(FinalError, RuntimeError):
    pass


def find_bin(name: str) -> str:
    found = shutil.which(name)
    if found:
        return found
    # Debian keeps the server programs off PATH, one directory per major version.
    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    if candidates:
        return candidates[-1]
    raise PostgresMissing(
        f"PostgreSQL's {name} not found (Debian: apt-get install postgresql; .ci/system-deps)"
    )


class PgServer:
    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="hs-pg-"))
        self.port = free_port()
        self._proc: subprocess.Popen[bytes] | None = None
        self._as_root = os.geteuid() == 0

    def _cmd(self, *args: str) -> list[str]:
        return ["runuser", "-u", "postgres", "--", *args] if self._as_root else list(args)

    def start(self) -> PgServer:
        initdb = find_bin("initdb")
        data = self.dir / "data"
        if self._as_root:
            shutil.chown(self.dir, "postgres", "postgres")
        subprocess.run(
            self._cmd(initdb, "-D", str(data), "-A", "trust", "-U", "postgres", "-E", "UTF8",
                      "--no-sync"),
            check=True, capture_output=True,
        )  # fmt: skip
        try:
            self._launch()
        except Exception:
            self.stop()
            raise
        return self

    def _launch(self) -> None:
        log = open(self.dir / "server.log", "ab")  # noqa: SIM115 - lives as long as the server
        self._proc = subprocess.Popen(
            self._cmd(
                find_bin("postgres"), "-D", str(self.dir / "data"), "-p", str(self.port),
                "-k", str(self.dir),
                "-c", "listen_addresses=127.0.0.1", "-c", "fsync=off",
                "-c", "synchronous_commit=off", "-c", "full_page_writes=off",
                "-c", "max_connections=300",
            ),
            stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        log.close()
        wait_port(self.port, timeout=30)
        self._wait_ready()

    def crash(self) -> None:
        """Stop the server as `pg_ctl stop -m immediate` does: every backend killed at once,
        no checkpoint (recovery runs at the next start). Clients see their connections
        dropped, then refused."""
        subprocess.run(
            self._cmd(find_bin("pg_ctl"), "stop", "-D", str(self.dir / "data"), "-m",
                      "immediate", "-w", "-t", "20"),
            capture_output=True, timeout=30, check=True,
        )  # fmt: skip
        if self._proc is not None:
            self._proc.wait(timeout=20)

    def start_again(self) -> None:
        """Start the server crashed by `crash()` on the same port and data (crash recovery)."""
        self._launch()

    def restart(self, down_s: float) -> None:
        """An immediate stop, `down_s` seconds down, then the same server again."""
        self.crash()
        time.sleep(down_s)
        self.start_again()

    def _wait_ready(self) -> None:
        psql = find_bin("psql")
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            done = subprocess.run(
                [psql, "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", "-c", "SELECT 1"],
                capture_output=True,
            )
            if done.returncode == 0:
                return
            time.sleep(0.2)
        raise RuntimeError(f"PostgreSQL did not start: {(self.dir / 'server.log').read_text()}")

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def psql(self, sql: str, database: str = "postgres") -> str:
        done = subprocess.run(
            [find_bin("psql"), "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres",
             "-d", database, "-v", "ON_ERROR_STOP=1", "-tA", "-c", sql],
            capture_output=True, text=True, check=True,
        )  # fmt: skip
        return done.stdout.strip()

    def new_database(self) -> str:
        """A fresh empty database; returns its URL."""
        name = "t_" + uuid.uuid4().hex[:12]
        self.psql(f"CREATE DATABASE {name}")
        return self.url(name)

    def drop_role(self, name: str) -> None:
        """Drop a role and the database of the same name: the one-liner in docs/scaling.md makes
        both with fixed names, and more than one test runs it on this session's server."""
        self.psql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        self.psql(f"DROP ROLE IF EXISTS {name}")

    def stop(self) -> None:
        # pg_ctl, not a signal to our child: as root the child is runuser, which does not pass
        # signals on, and the server would outlive the session.
        with contextlib.suppress(PostgresMissing, OSError):
            subprocess.run(
                self._cmd(find_bin("pg_ctl"), "stop", "-D", str(self.dir / "data"), "-m", "fast",
                          "-w", "-t", "20"),
                capture_output=True, timeout=30,
            )  # fmt: skip
        if self._proc is not None and self._proc.poll() is None:
            # SIGINT: PostgreSQL's "fast" shutdown.
            self._proc.send_signal(signal.SIGINT)
            try:
                self._proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)
