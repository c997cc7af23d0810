"""Running the service: one process, or `server.processes` of them sharing one port, and
stopping without failing an upload.

On SIGTERM (or SIGINT) a process turns /readyz to 503 at once, keeps answering for
`server.drain_s` so that a load balancer's health check sees it go, then closes its listening
socket, lets the uploads in flight finish (up to `server.shutdown_timeout_s`), closes the store
and exits 0.

With `server.processes = N > 1` this process supervises N copies of itself, each binding the
port with SO_REUSEPORT (the kernel spreads connections between them); a copy that dies is
started again; a SIGTERM is passed on to all of them and waited for.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import subprocess
import sys
import time

from aiohttp import web

from horde_scanner.config import Settings
from horde_scanner.service.health import DRAINING, Draining

log = logging.getLogger(__name__)

# Set in the copies a supervisor starts: bind with SO_REUSEPORT, run one process.
_CHILD_ENV = "HORDE_SCANNER_SERVER__PROCESSES"
# Outside the HORDE_SCANNER_ prefix: it is no option an admin sets.
_REUSE_ENV = "HS_SUPERVISED_REUSE_PORT"


async def serve_app(
    app: web.Application, settings: Settings, host: str, port: int, *, reuse_port: bool
) -> None:
    draining = Draining()
    app[DRAINING] = draining
    runner = web.AppRunner(
        app, access_log=None, handle_signals=False,
        shutdown_timeout=settings.server.shutdown_timeout_s,
    )  # fmt: skip
    await runner.setup()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        # A burst of federated thumbnails opens many connections at once; 128 would drop some.
        site = web.TCPSite(runner, host, port, backlog=1024, reuse_port=reuse_port or None)
        await site.start()
        log.info("listening on %s:%d (pid %d)", host, port, os.getpid())
        await stop.wait()
        draining.since = time.time()
        log.info("stopping: /readyz answers 503; draining for %.1f s", settings.server.drain_s)
        await asyncio.sleep(settings.server.drain_s)
    finally:
        # Closes the listener, waits for requests in flight, then closes the services.
        await runner.cleanup()
        log.info("stopped")


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
