"""`server.processes`: several copies of the service sharing one port (stopping each one
without failing an upload is in serve.py).

With `server.processes = N > 1` this process supervises N copies of itself, each binding the
port with SO_REUSEPORT (the kernel spreads connections between them); a copy that dies is
started again; a SIGTERM is passed on to all of them and waited for.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
import time

from horde_scanner.config import Settings

log = logging.getLogger(__name__)

# Set in the copies a supervisor starts: bind with SO_REUSEPORT, run one process.
_CHILD_ENV = "HORDE_SCANNER_SERVER__PROCESSES"
# Outside the HORDE_SCANNER_ prefix: it is no option an admin sets.
_REUSE_ENV = "HS_SUPERVISED_REUSE_PORT"


def supervise(settings: Settings) -> int:
    """Run `server.processes` copies of this command line and keep them running."""
    n = settings.server.processes
    env = {**os.environ, _CHILD_ENV: "1", _REUSE_ENV: "1"}
    argv = [sys.executable, "-m", "horde_scanner.cli", *sys.argv[1:]]
    children: list[subprocess.Popen[bytes]] = [subprocess.Popen(argv, env=env) for _ in range(n)]
    stopping = False

    def forward(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True
        for child in children:
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    started = [time.monotonic()] * n
    while not stopping:
        time.sleep(0.2)
        for i, child in enumerate(children):
            if child.poll() is not None and not stopping:
                if child.returncode > 0 and time.monotonic() - started[i] < 10.0:
                    # Failed at start-up (bad config, port taken): stop rather than loop.
                    log.error("a service process exited at start-up (%s)", child.returncode)
                    forward(signal.SIGTERM, None)
                    break
                log.warning("service process %d exited (%s); starting another",
                            child.pid, child.returncode)  # fmt: skip
                children[i] = subprocess.Popen(argv, env=env)
                started[i] = time.monotonic()
    codes = []
    for child in children:
        with contextlib.suppress(subprocess.TimeoutExpired):
            child.wait(settings.server.shutdown_timeout_s + settings.server.drain_s + 10)
        if child.poll() is None:
            child.kill()
            child.wait()
        codes.append(child.returncode)
    return 0 if all(code == 0 for code in codes) else 1


def is_child() -> bool:
    return os.environ.get(_REUSE_ENV) == "1"
