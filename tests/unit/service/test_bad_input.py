"""Every bad request gets a clear JSON answer with the right status, never a crash or a hang."""

from __future__ import annotations

from pathlib import Path

import aiohttp
import pytest

from horde_scanner.testing import images
from horde_scanner.testing.horde import FakeHorde
from horde_scanner.testing.pictrs import validate_upload
from horde_scanner.testing.service import make_settings, running_service


@pytest.fixture
async def service(tmp_path: Path):
    async with FakeHorde(latency=0.1) as horde:
        settings = make_settings(tmp_path / "s.db", horde.url, server={"max_body_bytes": 2_000_000})
        async with running_service(settings) as svc:
            svc.horde = horde  # type: ignore[attr-defined]
            yield svc


async def test_unknown_client_id_is_401(service, http):
    result = await validate_upload(http, service.scan_url("nobody"), images.jpeg(), "image/jpeg")
    assert result.status == 401 and result.body["error"] == "unknown_client"


async def test_ipaddr_from_loopback_is_allowed(service, http):
    result = await validate_upload(http, service.scan_url("IPADDR"), images.jpeg(), "image/jpeg")
    assert result.status == 200


async def test_spoofed_forwarded_for_is_ignored_from_untrusted_peers(tmp_path, http):
    async with FakeHorde(latency=0.1) as horde:
        settings = make_settings(
            tmp_path / "s.db", horde.url, server={"trusted_proxies": ["127.0.0.1/32"]}
        )
        async with running_service(settings) as svc:
            url = svc.scan_url("IPADDR")
            # From a trusted proxy, the forwarded address decides: 203.0.113.9 is not allowed.
            async with http.post(
                url, data=images.jpeg(), headers={"X-Forwarded-For": "203.0.113.9"}
            ) as resp:
                assert resp.status == 401
    async with FakeHorde(latency=0.1) as horde:
        settings = make_settings(tmp_path / "t.db", horde.url)
        async with running_service(settings) as svc:
            # Without trusted proxies the header is ignored and loopback is allowed.
            async with http.post(
                svc.scan_url("IPADDR"),
                data=images.jpeg(),
                headers={"X-Forwarded-For": "203.0.113.9"},
            ) as resp:
                assert resp.status == 200


async def test_empty_body_is_400(service, http):
    result = await validate_upload(http, service.scan_url(), b"", "image/jpeg")
    assert result.status == 400 and result.body["error"] == "empty_body"


async def test_body_over_the_limit_is_413_chunked(service, http):
    big = b"\xff\xd8\xff" + b"\0" * 2_100_000
    result = await validate_upload(http, service.scan_url(), big, "image/jpeg")
    assert result.status == 413 and result.body["error"] == "too_large"


async def test_body_over_the_limit_is_413_with_length(service, http):
    async with http.post(
        service.scan_url(), data=b"\0" * 2_100_000, headers={"Content-Type": "image/jpeg"}
    ) as resp:
        assert resp.status == 413
        assert (await resp.json())["error"] == "too_large"


async def test_multipart_file_field_is_accepted(service, http):
    form = aiohttp.FormData()
    form.add_field("file", images.jpeg("red", seed=40), filename="x.jpg", content_type="image/jpeg")
    async with http.post(service.scan_url(), data=form) as resp:
        assert resp.status == 406
        assert (await resp.json())["label"] == "csam"


async def test_multipart_without_file_field_is_400(service, http):
    form = aiohttp.FormData()
    form.add_field("other", b"abc", filename="x.bin")
    async with http.post(service.scan_url(), data=form) as resp:
        assert resp.status == 400
        assert (await resp.json())["error"] == "missing_file"


async def test_undecodable_bytes_follow_on_unreadable_accept(service, http):
    result = await validate_upload(http, service.scan_url(), b"%PDF-1.7 not an image", "image/jpeg")
    assert result.status == 200
    assert result.body["label"] == "unreadable" and "magic bytes" in result.body["reasons"][0]
    assert service.horde.posts == 0


async def test_truncated_image_is_unreadable(service, http):
    data = images.jpeg(size=(800, 800), seed=41)[:400]
    result = await validate_upload(http, service.scan_url(), data, "image/jpeg")
    assert result.status == 200 and result.body["label"] == "unreadable"


async def test_undecodable_bytes_rejected_when_configured(tmp_path, http):
    async with FakeHorde(latency=0.1) as horde:
        settings = make_settings(
            tmp_path / "s.db", horde.url, validation={"on_unreadable": "reject"}
        )
        async with running_service(settings) as svc:
            result = await validate_upload(http, svc.scan_url(), b"garbage" * 10, "image/png")
            assert result.status == 406 and result.body["label"] == "unreadable"


async def test_decompression_bomb_is_refused_cheaply(service, http):
    import psutil

    rss_before = psutil.Process().memory_info().rss
    result = await validate_upload(http, service.scan_url(), images.png_bomb(), "image/png")
    assert result.status == 200
    assert result.body["label"] == "unreadable"
    assert "exceeds the decode limit" in result.body["reasons"][0]
    assert psutil.Process().memory_info().rss - rss_before < 100 * 1024 * 1024


async def test_unknown_route_and_method_are_json(service, http):
    async with http.get(f"{service.url}/nope") as resp:
        assert resp.status == 404 and (await resp.json())["error"] == "not_found"
    async with http.get(service.scan_url()) as resp:
        assert resp.status == 405 and "error" in await resp.json()


async def test_health_and_readiness(service, http):
    async with http.get(f"{service.url}/healthz") as resp:
        assert resp.status == 200 and (await resp.json())["status"] == "ok"
    async with http.get(f"{service.url}/readyz") as resp:
        body = await resp.json()
        assert resp.status == 200 and body["status"] == "ready"
        assert body["backend"]["name"] == "horde"
    service.horde.maintenance = True
    await validate_upload(http, service.scan_url(), images.jpeg(seed=42), "image/jpeg")
    async with http.get(f"{service.url}/readyz") as resp:
        body = await resp.json()
        assert resp.status == 200 and body["status"] == "degraded"
        assert "maintenance" in body["why"]
