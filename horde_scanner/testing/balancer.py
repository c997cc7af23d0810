"""HAProxy (Debian's `haproxy`) as a loopback load balancer in front of replicas."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

from horde_scanner.testing.net import free_port, wait_port

_CONFIG = """
global
    maxconn 4096
    tune.bufsize 1048576
defaults
    mode http
    timeout connect 2s
    timeout client 60s
    timeout server 60s
    # A request that reached a process just as it closed is sent to another.
    retries 3
    option redispatch 1
    retry-on conn-failure empty-response
    option http-buffer-request
    option http-server-close
frontend scanner
    bind 127.0.0.1:{port}
    default_backend replicas
backend replicas
    balance roundrobin
    option httpchk GET /readyz
    http-check expect status 200
    # Without it a check may take only `inter` (200 ms): one slow /readyz on a busy host
    # (fall 1) marks a healthy replica down, and a rolling restart then finds none up.
    timeout check 2s
{servers}
"""


class Haproxy:
    def __init__(self, ports: list[int]) -> None:
        binary = shutil.which("haproxy")
        if binary is None:
            raise RuntimeError("haproxy not found (Debian: apt-get install haproxy)")
        self.binary = binary
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.dir = Path(tempfile.mkdtemp(prefix="hs-haproxy-"))
        servers = "\n".join(
            f"    server r{i} 127.0.0.1:{p} check inter 200ms fall 1 rise 2"
            for i, p in enumerate(ports)
        )
        self.config = self.dir / "haproxy.cfg"
        self.config.write_text(_CONFIG.format(port=self.port, servers=servers))
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Haproxy:
        check = subprocess.run([self.binary, "-c", "-f", str(self.config)], capture_output=True)
        if check.returncode != 0:
            raise RuntimeError(check.stderr.decode() + check.stdout.decode())
        self.proc = subprocess.Popen(
            [self.binary, "-db", "-f", str(self.config)],
            stdout=subprocess.DEVNULL, stderr=open(self.dir / "log", "wb"),  # noqa: SIM115
        )  # fmt: skip
        wait_port(self.port)
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)
        shutil.rmtree(self.dir, ignore_errors=True)
