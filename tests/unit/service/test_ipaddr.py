"""The client id IPADDR: loopback and the private ranges by default (what pictrs-safety
accepts, so pict-rs on a docker network works unchanged), `server.allowed_ips` narrows or widens
it, and X-Forwarded-For counts only from a trusted proxy.

The real-request tests put a private address on the loopback interface (root only; skipped
otherwise) and send from it, so the service sees a private peer while nothing leaves `lo`."""

from __future__ import annotations

import ipaddress
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from horde_scanner.backends.mock import MockBackend
from horde_scanner.config import PRIVATE_NETWORKS
from horde_scanner.service.auth import ipaddr_allowed
from horde_scanner.testing import images
from horde_scanner.testing.pictrs import validate_upload
from horde_scanner.testing.service import make_settings, running_service

DEFAULT = [ipaddress.ip_network(n) for n in PRIVATE_NETWORKS]


@pytest.mark.parametrize(
    ("address", "allowed"),
    [
        ("127.0.0.1", True),
        ("127.3.4.5", True),
        ("::1", True),
        ("10.0.0.1", True),
        ("10.255.255.254", True),
        ("172.16.0.1", True),
        ("172.31.255.1", True),  # pictrs-safety's check stops at 172.30 (range(16, 31))
        ("172.32.0.1", False),
        ("172.15.0.1", False),
        ("192.168.1.20", True),
        ("192.169.1.20", False),
        ("100.64.0.1", False),  # carrier-grade NAT is not a private network
        ("8.8.8.8", False),
        ("::ffff:10.1.2.3", True),  # an IPv4 peer on a dual-stack socket
        ("fd12:3456::1", True),
        ("2001:db8::1", False),
        ("not an address", False),
    ],
)
def test_default_ipaddr_ranges(address: str, allowed: bool):
    assert ipaddr_allowed(address, DEFAULT) is allowed


def test_default_setting_is_the_private_ranges():
    settings = make_settings(Path("unused.db"), "http://127.0.0.1:9")
    assert settings.server.allowed_ips == list(PRIVATE_NETWORKS)


def _private_address() -> str:
    pid = os.getpid()
    return f"10.{200 + pid % 50}.{(pid >> 8) % 250 + 1}.{pid % 250 + 1}"


@pytest.fixture
def private_source() -> Iterator[str]:
    """A 10/8 address on `lo` for this test run; removed afterwards."""
    ip = shutil.which("ip")
    if os.geteuid() != 0 or ip is None:
        pytest.skip("needs root and iproute2 to add a private address to lo")
    address = _private_address()
    added = subprocess.run(
        [ip, "addr", "add", f"{address}/32", "dev", "lo"], capture_output=True, text=True
    )
    if added.returncode != 0 and "File exists" not in added.stderr:
        pytest.skip(f"cannot add {address} to lo: {added.stderr.strip()}")
    try:
        yield address
    finally:
        if added.returncode == 0:
            subprocess.run([ip, "addr", "del", f"{address}/32", "dev", "lo"], check=False)


async def _upload_from(source: str | None, url: str, headers: dict[str, str] | None = None):
    connector = aiohttp.TCPConnector(local_addr=(source, 0) if source else None)
    async with aiohttp.ClientSession(connector=connector, headers=headers) as http:
        return await validate_upload(http, url, images.jpeg("green", seed=1), "image/jpeg")


def _settings(tmp_path: Path, **server: Any):
    return make_settings(tmp_path / "s.db", "http://127.0.0.1:9", server=server)


async def test_ipaddr_from_a_private_address_is_accepted_by_default(
    tmp_path: Path, private_source: str
):
    async with running_service(_settings(tmp_path), backend=MockBackend()) as svc:
        result = await _upload_from(private_source, svc.scan_url("IPADDR"))
    assert result.status == 200 and result.body["label"] == "clean"


async def test_allowed_ips_narrows_and_widens_ipaddr(tmp_path: Path, private_source: str):
    # Narrowed to one docker network the private source is not on: refused; loopback still in.
    narrowed = _settings(tmp_path / "n", allowed_ips=["192.168.50.0/24"])
    async with running_service(narrowed, backend=MockBackend()) as svc:
        refused = await _upload_from(private_source, svc.scan_url("IPADDR"))
        local = await _upload_from(None, svc.scan_url("IPADDR"))
    # Widened to exactly that source (as pictrs-safety's KNOWN_PICTRS_IPS would).
    widened = _settings(tmp_path / "w", allowed_ips=["192.168.50.0/24", f"{private_source}/32"])
    async with running_service(widened, backend=MockBackend()) as svc:
        accepted = await _upload_from(private_source, svc.scan_url("IPADDR"))
    assert refused.status == 401 and refused.body["error"]
    assert local.status == 200
    assert accepted.status == 200


async def test_x_forwarded_for_counts_only_from_a_trusted_proxy(
    tmp_path: Path, private_source: str
):
    forwarded = {"X-Forwarded-For": "192.168.50.5"}
    untrusted = _settings(tmp_path / "u", allowed_ips=["192.168.50.0/24"])
    async with running_service(untrusted, backend=MockBackend()) as svc:
        spoofed = await _upload_from(private_source, svc.scan_url("IPADDR"), forwarded)
    trusted = _settings(
        tmp_path / "t", allowed_ips=["192.168.50.0/24"], trusted_proxies=[f"{private_source}/32"]
    )
    async with running_service(trusted, backend=MockBackend()) as svc:
        proxied = await _upload_from(private_source, svc.scan_url("IPADDR"), forwarded)
        outside = await _upload_from(
            private_source, svc.scan_url("IPADDR"), {"X-Forwarded-For": "203.0.113.9"}
        )
    assert spoofed.status == 401  # the header is ignored: the peer itself is not allowed
    assert proxied.status == 200
    assert outside.status == 401  # the proxy says the client is outside the allowed ranges
