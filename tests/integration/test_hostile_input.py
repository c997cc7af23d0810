"""Hostile input, as an attacker on the same network would send it (loopback only): pixel bombs
under media.max_pixels, slow heads and bodies on every route group, oversized chunked bodies,
parallel big bodies from a locked-out address, CR/LF in a redirect, a worker named @everyone.
Each gets a clear answer inside its deadline and leaves no traceback in the log."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from PIL import Image

from horde_scanner.backends.mock import MockBackend
from horde_scanner.media.decode import DecodeLimits, decode_cost
from horde_scanner.media.memory import DecodeMemory
from horde_scanner.testing.pictrs import validate_upload
from horde_scanner.testing.service import make_settings, running_service
from tests.admin_helpers import webhook_sink

TOKEN = "admin-token-0123456789"
WORKER_KEY = "worker-secret-0123"
NO_HORDE = "http://127.0.0.1:9/api"
MIB = 1 << 20


@pytest.fixture
def log_records(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    caplog.set_level(logging.INFO)
    yield caplog
    # No traceback, no unhandled error, whatever was sent.
    for record in caplog.get_records("call"):
        assert record.exc_info is None, record.getMessage()
        assert "unhandled error" not in record.getMessage()
        assert "Error handling request" not in record.getMessage()


def hostile_settings(tmp_path: Path, **sections: dict[str, Any]):
    tree: dict[str, dict[str, Any]] = {
        "admin": {"token": TOKEN},
        "server": {"header_timeout_s": 1.0, "body_timeout_s": 1.0},
        "workers": {"keys": [WORKER_KEY]},
        "hashes": {"publish": True, "publish_token": "publish-token-0123456789"},
        "metrics": {"token": "metrics-token-0123456789"},
    }
    for name, values in sections.items():
        tree.setdefault(name, {}).update(values)
    return make_settings(tmp_path / "s.db", NO_HORDE, **tree)


@asynccontextmanager
async def client_from(address: str) -> AsyncIterator[aiohttp.ClientSession]:
    connector = aiohttp.TCPConnector(local_addr=(address, 0))
    async with aiohttp.ClientSession(connector=connector) as session:
        yield session


def _png(img: Image.Image) -> bytes:
    out = io.BytesIO()
    img.save(out, "PNG")
    return out.getvalue()


def bombs(side: int, copies: int) -> dict[str, bytes]:
    """One-colour images that are tiny on the wire and large in memory: RGB, RGBA, 16-bit grey,
    palette, and an animation of large frames; `copies` distinct files of each."""
    files: dict[str, bytes] = {}
    for i in range(copies):
        files[f"rgb-{i}"] = _png(Image.new("RGB", (side, side), (10 + i, 200, 30)))
        files[f"rgba-{i}"] = _png(Image.new("RGBA", (side, side), (10 + i, 20, 200, 128)))
        files[f"grey16-{i}"] = _png(Image.new("I;16", (side, side), 1000 + i))
        files[f"palette-{i}"] = _png(Image.new("P", (side, side), 7 + i))
        frames = [Image.new("RGB", (side // 2, side // 2), (i, 50 * k, 90)) for k in range(3)]
        out = io.BytesIO()
        frames[0].save(out, "PNG", save_all=True, append_images=frames[1:], duration=100)
        files[f"animated-{i}"] = out.getvalue()
    return files


def test_the_decode_cost_is_what_the_frame_holds_not_what_the_wire_carries():
    limits = DecodeLimits()
    files = bombs(2000, 1)
    assert all(len(data) < 200_000 for data in files.values())
    # One full-size copy of a frame, in its own mode, plus a fixed allowance for the bands.
    assert decode_cost(files["palette-0"], limits) < decode_cost(files["grey16-0"], limits)
    assert decode_cost(files["grey16-0"], limits) < decode_cost(files["rgb-0"], limits)
    assert decode_cost(files["rgb-0"], limits) == 2000 * 2000 * 4 + 24 * MIB
    # A file that could never fit the budget is unreadable, and the reason names the setting.
    memory = DecodeMemory(64 * MIB)
    with pytest.raises(Exception, match="media.decode_memory_bytes"):
        memory.check(decode_cost(_png(Image.new("RGB", (4000, 4000))), limits), "image/png")


async def test_pixel_bombs_four_at_once_stay_inside_the_decode_budget(
    tmp_path: Path, http, log_records
):
    budget = 64 * MIB
    settings = hostile_settings(
        tmp_path, media={"decode_memory_bytes": budget}, validation={"deadline_s": 3.0}
    )
    files = bombs(3000, 4)
    async with running_service(settings, backend=MockBackend()) as svc:
        memory = svc.parts.judge.memory
        started = time.monotonic()
        results = await asyncio.gather(
            *(validate_upload(http, svc.scan_url(), data, "image/png") for data in files.values())
        )
        # Every upload is answered by its deadline (plus the time to send it), verdict or not.
        for result in results:
            assert result.status == 200, result.body
            assert result.elapsed_s < settings.validation.deadline_s + 1.5
        assert time.monotonic() - started < settings.validation.deadline_s + 3.0
        # Never more memory than the budget: decodes that did not fit waited for it.
        assert memory.peak <= budget and memory.waited > 0
        # And nothing is lost: those answered by on_timeout are judged once there is room.
        store = svc.parts.store
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            found = [await store.get_verdict(r.body["sha256"]) for r in results]
            if all(v is not None for v in found):
                break
            await asyncio.sleep(0.2)
        labels = {v.verdict.label.value for v in found if v is not None}
        assert all(v is not None for v in found) and labels == {"clean"}, labels
        assert memory.used == 0


async def test_a_bomb_that_could_never_fit_is_unreadable_and_says_why(
    tmp_path: Path, http, log_records
):
    settings = hostile_settings(tmp_path, media={"decode_memory_bytes": 64 * MIB})
    data = _png(Image.new("RGBA", (5000, 5000), (1, 2, 3, 4)))
    async with running_service(settings, backend=MockBackend()) as svc:
        result = await validate_upload(http, svc.scan_url(), data, "image/png")
        assert result.status == 200 and result.body["label"] == "unreadable"
        assert "media.decode_memory_bytes" in " ".join(result.body["reasons"])


async def _slow_head(base: str, request_line: str) -> tuple[bytes, float]:
    """Send a request line, then one header line every 0.4 s; return what came back."""
    host, port = base.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    started = time.monotonic()
    writer.write(f"{request_line} HTTP/1.1\r\nHost: x\r\n".encode())
    answer = b""
    try:
        for i in range(40):
            await writer.drain()
            try:
                answer += await asyncio.wait_for(reader.read(65536), 0.4)
            except TimeoutError:
                writer.write(f"X-Slow-{i}: y\r\n".encode())
                continue
            if answer == b"" or reader.at_eof():
                break
        answer += await asyncio.wait_for(reader.read(), 2.0)
    except (ConnectionError, TimeoutError):
        pass
    finally:
        writer.close()
    return answer, time.monotonic() - started


async def test_slow_heads_on_every_route_group_are_cut_off(tmp_path: Path, log_records):
    async with running_service(hostile_settings(tmp_path), backend=MockBackend()) as svc:
        routes = [
            "POST /api/v1/scan/test-pictrs",
            "GET /healthz",
            "GET /readyz",
            "GET /metrics",
            "GET /api/v1/hashes",
            "GET /api/v1/pop",
            "POST /api/v1/pop",
            "GET /api/v1/admin/stats",
            "POST /admin/login",
            "GET /admin",
        ]
        answers = await asyncio.gather(*(_slow_head(svc.url, route) for route in routes))
    for route, (answer, took) in zip(routes, answers, strict=True):
        assert answer.startswith(b"HTTP/1.1 408"), (route, answer[:200])
        body = json.loads(answer.split(b"\r\n\r\n", 1)[1])
        assert body["error"] == "header_timeout" and "server.header_timeout_s" in body["detail"]
        assert took < 5.0, (route, took)
    assert any("server.header_timeout_s" in r.getMessage() for r in log_records.records)


async def test_a_kept_alive_connection_gets_the_same_head_pace(tmp_path: Path, log_records):
    async with running_service(hostile_settings(tmp_path), backend=MockBackend()) as svc:
        host, port = svc.url.removeprefix("http://").split(":")
        reader, writer = await asyncio.open_connection(host, int(port))
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        first = await asyncio.wait_for(reader.read(65536), 5)
        assert first.startswith(b"HTTP/1.1 200")
        writer.write(b"GET /healthz HTTP/1.1\r\n")  # and the rest never comes
        second = await asyncio.wait_for(reader.read(65536), 5)
        writer.close()
        assert second.startswith(b"HTTP/1.1 408")


async def _slow_body(base: str, path: str, length: int, headers: str = "") -> bytes:
    host, port = base.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(
        f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\n{headers}"
        "Content-Type: application/x-www-form-urlencoded\r\n"
        f"Content-Length: {length}\r\n\r\n".encode()
    )
    answer = b""
    try:
        for _ in range(length):
            writer.write(b"a")
            await writer.drain()
            try:
                answer += await asyncio.wait_for(reader.read(65536), 0.4)
            except TimeoutError:
                continue
            if answer:
                break
    except ConnectionError:
        pass
    finally:
        writer.close()
    return answer


async def test_a_slow_body_to_any_form_route_is_cut_off(tmp_path: Path, log_records):
    async with running_service(hostile_settings(tmp_path), backend=MockBackend()) as svc:
        started = time.monotonic()
        answers = await asyncio.gather(
            _slow_body(svc.url, "/admin/login", 40),
            _slow_body(svc.url, "/api/v1/pop", 40, f"apikey: {WORKER_KEY}\r\n"),
            _slow_body(
                svc.url,
                "/api/v1/admin/verdicts/" + "a" * 64 + "/allow",
                40,
                f"Authorization: Bearer {TOKEN}\r\n",
            ),  # fmt: skip
        )
        assert time.monotonic() - started < 5.0
    for answer in answers:
        assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
        assert json.loads(answer.split(b"\r\n\r\n", 1)[1])["error"] == "body_timeout"


async def _chunked(size: int) -> AsyncIterator[bytes]:
    chunk = b" " * 65536
    for _ in range(size // len(chunk)):
        yield chunk


async def test_oversized_worker_answers_are_413_chunked_or_not(tmp_path: Path, http, log_records):
    async with running_service(hostile_settings(tmp_path), backend=MockBackend()) as svc:
        url = f"{svc.url}/api/v1/pop"
        headers = {"apikey": WORKER_KEY, "Content-Type": "application/json"}
        async with http.post(url, data=_chunked(4 * MIB), headers=headers) as resp:
            assert resp.status == 413 and (await resp.json())["error"] == "too_large"
        async with http.post(url, data=b" " * (2 * MIB), headers=headers) as resp:
            assert resp.status == 413 and (await resp.json())["error"] == "too_large"
        # An admin action or a login form is far smaller still.
        async with http.post(
            f"{svc.url}/admin/login", data=_chunked(1 * MIB),
            headers={"Content-Type": "application/x-www-form-urlencoded"},
        ) as resp:  # fmt: skip
            assert resp.status == 413


async def test_twenty_parallel_big_login_bodies_are_refused_unread(tmp_path: Path, log_records):
    async with running_service(hostile_settings(tmp_path), backend=MockBackend()) as svc:
        url = f"{svc.url}/admin/login"
        form = {"Content-Type": "application/x-www-form-urlencoded"}
        body = b"token=" + b"x" * (5 * MIB)
        async with client_from("127.0.0.2") as http:
            # Not locked out: 413 from the route's cap (64 KiB), not 40 MiB of server.max_body.
            statuses = await asyncio.gather(
                *(_post_status(http, url, body, form) for _ in range(20))
            )
            assert set(statuses) == {413}
            for _ in range(10):
                assert await _post_status(http, url, b"token=wrong", form) == 401
            # Locked out: 429 before a byte of the body is read (none is ever sent here).
            answers = await asyncio.gather(
                *(_head_only(svc.url, "/admin/login", 5 * MIB, "127.0.0.2") for _ in range(20))
            )
        for answer in answers:
            assert answer.startswith(b"HTTP/1.1 429"), answer[:100]
        # Another address is not locked out.
        async with client_from("127.0.0.3") as other:
            assert await _post_status(other, url, f"token={TOKEN}".encode(), form) == 303


async def _post_status(http: aiohttp.ClientSession, url: str, body: bytes, headers) -> int:
    async with http.post(url, data=body, headers=headers, allow_redirects=False) as resp:
        await resp.read()
        return resp.status


async def _head_only(base: str, path: str, length: int, local: str) -> bytes:
    host, port = base.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port), local_addr=(local, 0))
    writer.write(
        f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Length: {length}\r\n"
        "Content-Type: application/x-www-form-urlencoded\r\n\r\n".encode()
    )
    try:
        return await asyncio.wait_for(reader.read(65536), 3.0)
    finally:
        writer.close()


async def test_every_credential_is_throttled_per_client(tmp_path: Path, log_records):
    async with running_service(hostile_settings(tmp_path), backend=MockBackend()) as svc:
        wrong = {
            "worker key": ("GET", "/api/v1/pop", {"apikey": "guess"}),
            "metrics token": ("GET", "/metrics", {"Authorization": "Bearer guess"}),
            "publish token": ("GET", "/api/v1/hashes", {"Authorization": "Bearer guess"}),
            "client id": ("POST", "/api/v1/scan/guess", {}),
        }
        right = {
            "worker key": {"apikey": WORKER_KEY},
            "metrics token": {"Authorization": "Bearer metrics-token-0123456789"},
            "publish token": {"Authorization": "Bearer publish-token-0123456789"},
            "client id": {},
        }
        async with client_from("127.0.0.4") as http, client_from("127.0.0.5") as other:
            for kind, (method, path, headers) in wrong.items():
                for _ in range(10):
                    async with http.request(method, svc.url + path, headers=headers) as resp:
                        assert resp.status == 401, kind
                async with http.request(method, svc.url + path, headers=headers) as resp:
                    assert resp.status == 429 and kind in (await resp.json())["detail"]
                # While it waits, even the right credential tells it nothing.
                good_path = "/api/v1/scan/test-pictrs" if kind == "client id" else path
                async with http.request(method, svc.url + good_path, headers=right[kind]) as resp:
                    assert resp.status == 429, kind
                # Another client is not held back.
                async with other.request(method, svc.url + path, headers=headers) as resp:
                    assert resp.status == 401, kind


async def test_cr_lf_in_next_is_refused_cleanly(tmp_path: Path, http, log_records):
    async with running_service(hostile_settings(tmp_path), backend=MockBackend()) as svc:
        for evil in ("/admin\r\nSet-Cookie: a=b", "/admin\nX: y", "/admin\x00", "/admin\\x"):
            async with http.post(
                f"{svc.url}/admin/login",
                data={"token": TOKEN, "next": evil},
                allow_redirects=False,
            ) as resp:
                assert resp.status == 303 and resp.headers["Location"] == "/admin"
                assert "a" not in resp.cookies and "X" not in resp.headers
                cookie = resp.cookies["hs_admin"].value
            async with http.get(
                f"{svc.url}/admin/login",
                params={"next": evil},
                cookies={"hs_admin": cookie},
                allow_redirects=False,
            ) as resp:
                assert resp.status == 303 and resp.headers["Location"] == "/admin"


async def test_a_worker_named_everyone_cannot_ping_the_moderators(
    tmp_path: Path, http, log_records
):
    name = "@everyone [verify](https://evil.example/login) <@&123>"
    async with webhook_sink() as sink:
        settings = hostile_settings(
            tmp_path,
            backend={"kind": "local"},
            local={"in_process": False},
            notify={"webhook_url": sink.url, "template": "discord"},
            validation={"deadline_s": 5.0},
        )
        async with running_service(settings) as svc:
            headers = {"apikey": WORKER_KEY, "X-Worker-Name": name}
            upload = asyncio.ensure_future(
                validate_upload(
                    http, svc.scan_url(), _png(Image.new("RGB", (64, 64), "red")), "image/png"
                )  # fmt: skip
            )
            filename = None
            for _ in range(100):
                async with http.get(f"{svc.url}/api/v1/pop", headers=headers) as resp:
                    if resp.status == 200:
                        filename = resp.headers["Content-Disposition"].split("=", 1)[1]
                        break
                await asyncio.sleep(0.05)
            assert filename is not None
            answer = {"image": filename, "is_csam": True, "is_nsfw": True}
            async with http.post(f"{svc.url}/api/v1/pop", json=answer, headers=headers) as resp:
                assert resp.status == 201
            result = await upload
            assert result.status == 406
            for _ in range(100):
                if sink.received:
                    break
                await asyncio.sleep(0.05)
    (payload,) = sink.received
    content = payload["content"]
    assert payload["allowed_mentions"] == {"parse": []}
    assert "@everyone" not in content and "<@&" not in content and "https://evil" not in content
    assert "\\[verify\\]" in content  # shown, quoted and escaped, never a link
