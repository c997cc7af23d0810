"""Wrong admin tokens make one client wait, never the admin: per-address throttling of the login
form and the bearer API, and no cross-site login posts. Clients on distinct loopback addresses
(127.0.0.2, 127.0.0.3: all of 127/8 is loopback on Linux)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import aiohttp

from horde_scanner.backends.mock import MockBackend
from horde_scanner.testing.service import make_settings, running_service

TOKEN = "admin-token-0123456789"


def settings(tmp_path: Path, **server):
    return make_settings(
        tmp_path / "s.db",
        "http://127.0.0.1:9/api",
        admin={"token": TOKEN},  # admin.max_failures: 10
        **({"server": server} if server else {}),
    )


@asynccontextmanager
async def client_from(address: str) -> AsyncIterator[aiohttp.ClientSession]:
    connector = aiohttp.TCPConnector(local_addr=(address, 0))
    async with aiohttp.ClientSession(connector=connector) as session:
        yield session


async def login(http: aiohttp.ClientSession, url: str, token: str, **headers: str) -> int:
    async with http.post(
        f"{url}/admin/login", data={"token": token}, headers=headers, allow_redirects=False
    ) as resp:
        return resp.status


async def api(http: aiohttp.ClientSession, url: str, token: str, **headers: str):
    async with http.get(
        f"{url}/api/v1/admin/stats", headers={"Authorization": f"Bearer {token}", **headers}
    ) as resp:
        return resp.status, await resp.json()


async def test_a_cross_site_page_cannot_lock_the_admin_out(tmp_path: Path):
    async with running_service(settings(tmp_path), backend=MockBackend()) as svc:
        async with client_from("127.0.0.2") as browser:
            for _ in range(8):
                async with browser.post(
                    f"{svc.url}/admin/login",
                    data={"token": "guess"},
                    headers={"Origin": "https://evil.example"},
                    allow_redirects=False,
                ) as resp:
                    assert resp.status == 403
                    assert (await resp.json())["error"] == "bad_origin"
            # The same browser, on the real page: signed in.
            assert await login(browser, svc.url, TOKEN, Origin=svc.url) == 303


async def test_login_lockout_keeps_to_the_client(tmp_path: Path):
    async with running_service(settings(tmp_path), backend=MockBackend()) as svc:
        async with client_from("127.0.0.2") as guesser, client_from("127.0.0.3") as admin:
            for _ in range(10):
                assert await login(guesser, svc.url, "wrong") == 401
            assert await login(guesser, svc.url, TOKEN) == 429  # this client waits
            assert await login(admin, svc.url, TOKEN) == 303  # the admin does not


async def test_bearer_api_failures_are_throttled_per_client(tmp_path: Path):
    async with running_service(settings(tmp_path), backend=MockBackend()) as svc:
        async with client_from("127.0.0.2") as guesser, client_from("127.0.0.3") as admin:
            for _ in range(10):
                status, body = await api(guesser, svc.url, "wrong-token-0000000")
                assert status == 401 and body["error"] == "unauthorized"
            status, body = await api(guesser, svc.url, TOKEN)
            assert status == 429 and body["error"] == "too_many_failures"
            assert "detail" in body
            status, _ = await api(admin, svc.url, TOKEN)
            assert status == 200
            # The login form and the API share the allowance: the guesser is out of both.
            assert await login(guesser, svc.url, TOKEN) == 429
        assert svc.parts.metrics.errors["admin_token_failed"] == 10


async def test_an_ipv6_client_is_one_client_across_its_64(tmp_path: Path):
    config = settings(tmp_path, trusted_proxies=["127.0.0.1"], client_ids=["test-pictrs"])
    async with running_service(config, backend=MockBackend()) as svc:
        async with aiohttp.ClientSession() as proxy:
            for host in range(1, 11):  # ten addresses of one /64
                status, _ = await api(
                    proxy,
                    svc.url,
                    "wrong-token-0000000",
                    **{"X-Forwarded-For": f"2001:db8::{host}"},
                )
                assert status == 401
            status, _ = await api(proxy, svc.url, TOKEN, **{"X-Forwarded-For": "2001:db8::99"})
            assert status == 429
            status, _ = await api(proxy, svc.url, TOKEN, **{"X-Forwarded-For": "2001:db9::1"})
            assert status == 200
