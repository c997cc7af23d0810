"""The AI Horde unreachable (refused, stopped mid-run, silent): the real service over loopback
marks the path down, answers new uploads by on_timeout at once, keeps them as jobs, and
judges them as soon as the Horde is back on the same port."""

from __future__ import annotations

import asyncio
import socket
import time
from pathlib import Path

from horde_scanner.media.hashing import sha256_hex
from horde_scanner.store.sqlite import Store
from horde_scanner.testing import images
from horde_scanner.testing.horde import FakeHorde
from horde_scanner.testing.net import free_port
from horde_scanner.testing.pictrs import validate_upload
from horde_scanner.testing.service import make_settings, running_service, wait_for
from tests.admin_helpers import webhook_sink
from tests.unit.service.test_metrics import scrape, value


async def _readyz(http, base: str) -> dict:
    async with http.get(f"{base}/readyz") as resp:
        assert resp.status == 200
        return await resp.json()


async def _degraded(http, base: str, *, timeout: float) -> None:
    """Wait until /readyz says the service is degraded (the Horde path marked down)."""

    async def down() -> bool:
        return (await _readyz(http, base))["status"] == "degraded"

    await wait_for(down, timeout=timeout)


def _posted(sink, kind: str):
    async def predicate() -> bool:
        return bool(sink.events(kind))

    return predicate


def _settings(tmp_path: Path, url: str, hook: str, **extra):
    return make_settings(
        tmp_path / "s.db",
        url,
        horde={"retries": 1, "http_timeout_s": 3.0, "probe_interval_s": 0.2, **extra},
        notify={"webhook_url": hook, "readiness_interval_s": 0.1},
        validation={"deadline_s": 4.0},
    )


async def test_horde_stopped_then_started_on_the_same_port(tmp_path: Path, http):
    port = free_port()
    horde = FakeHorde(latency=0.1)
    url = await horde.start(port=port)
    async with webhook_sink() as sink:
        async with running_service(_settings(tmp_path, url, sink.url)) as svc:
            first = await validate_upload(
                http, svc.scan_url(), images.jpeg("green", seed=1), "image/jpeg"
            )
            assert first.body["route"] == "backend" and first.body["label"] == "clean"
            assert (await _readyz(http, svc.url))["status"] == "ready"

            await horde.stop()
            # The first miss finds out: its calls fail, the path goes down after a few.
            probe = await validate_upload(
                http, svc.scan_url(), images.jpeg("green", seed=2), "image/jpeg"
            )
            assert probe.status == 200 and probe.body["label"] is None

            await _degraded(http, svc.url, timeout=10)
            ready = await _readyz(http, svc.url)
            assert ready["paths"]["horde"]["live"] is False
            assert "unreachable" in ready["paths"]["horde"]["detail"]
            samples = await scrape(http, svc.url)
            assert value(samples, "horde_scanner_backend_up", backend="horde") == 0
            await wait_for(_posted(sink, "backend_down"), timeout=5)

            # Known down and nothing else can judge: answered by on_timeout at once.
            new = [images.encode(images.image("red", seed=s), "PNG") for s in (3, 4, 5)]
            for data in new:
                started = time.monotonic()
                answer = await validate_upload(http, svc.scan_url(), data, "image/jpeg")
                took = time.monotonic() - started
                print(f"answer while down: {took * 1000:.0f} ms (deadline 4 s)")
                assert answer.status == 200  # on_timeout=accept
                assert answer.body["route"] == "unavailable" and answer.body["label"] is None
            store = svc.parts.store
            assert await store.count_jobs() >= len(set(new)) == 3  # persisted, not lost

            # Back on the same port: the probe sees it, jobs resume without their backoff.
            back_at = time.monotonic()
            await horde.start(port=port)

            async def judged() -> bool:
                got = [await store.get_verdict(sha256_hex(d)) for d in new]
                return all(v is not None for v in got)

            await wait_for(judged, timeout=10)
            print(f"backlog judged {time.monotonic() - back_at:.1f} s after the Horde returned")
            for data in new:
                stored = await store.get_verdict(sha256_hex(data))
                assert stored is not None and stored.verdict.label.value == "csam"
            assert (await _readyz(http, svc.url))["status"] == "ready"
            samples = await scrape(http, svc.url)
            assert value(samples, "horde_scanner_backend_up", backend="horde") == 1
            await wait_for(_posted(sink, "backend_up"), timeout=5)
            # Late positives accepted while down are recorded for enforcement.
            late = {row.sha256 for row in await store.late_positives()}
            assert {sha256_hex(d) for d in new} <= late
    await horde.stop()
    assert len(sink.events("backend_down")) == 1 and len(sink.events("backend_up")) == 1


async def test_refused_port_marks_the_horde_down(tmp_path: Path, http):
    url = f"http://127.0.0.1:{free_port()}/api"  # nothing listens there
    async with webhook_sink() as sink:
        async with running_service(_settings(tmp_path, url, sink.url)) as svc:
            await validate_upload(http, svc.scan_url(), images.jpeg("green", seed=7), "image/jpeg")

            await _degraded(http, svc.url, timeout=10)
            started = time.monotonic()
            answer = await validate_upload(
                http, svc.scan_url(), images.jpeg("green", seed=8), "image/jpeg"
            )
            print(f"answer with a refused port: {(time.monotonic() - started) * 1000:.0f} ms")
            assert answer.body["route"] == "unavailable"
            await wait_for(_posted(sink, "backend_down"), timeout=5)
            assert "unreachable" in sink.events("backend_down")[0]["detail"]
    async with await Store.open(tmp_path / "s.db") as store:
        assert await store.count_jobs() == 2


async def test_a_horde_that_never_answers_times_out_into_down(tmp_path: Path, http):
    """TCP accepted, nothing ever said back: per-call timeouts count as failures."""
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(64)
    url = f"http://127.0.0.1:{silent.getsockname()[1]}/api"
    try:
        async with webhook_sink() as sink:
            settings = _settings(tmp_path, url, sink.url, http_timeout_s=0.3)
            async with running_service(settings) as svc:
                await validate_upload(
                    http, svc.scan_url(), images.jpeg("green", seed=9), "image/jpeg"
                )

                await _degraded(http, svc.url, timeout=15)
                detail = (await _readyz(http, svc.url))["paths"]["horde"]["detail"]
                assert "Timeout" in detail
    finally:
        silent.close()


async def test_down_after_a_few_failed_calls_in_a_row(tmp_path: Path, http):
    """With many retries per call, `down_after_failures` failures already mark it down (and
    end the call's remaining retries)."""
    url = f"http://127.0.0.1:{free_port()}/api"
    async with webhook_sink() as sink:
        settings = _settings(
            tmp_path, url, sink.url, retries=6, down_after_failures=2, probe_interval_s=60
        )
        async with running_service(settings) as svc:
            image = images.jpeg("green", seed=10)
            answer = await validate_upload(http, svc.scan_url(), image, "image/jpeg")
            assert answer.body["route"] == "unavailable"
            detail = (await _readyz(http, svc.url))["paths"]["horde"]["detail"]
            assert "(2 failed calls in a row" in detail


async def test_a_name_that_does_not_resolve_marks_the_horde_down(tmp_path: Path, http, monkeypatch):
    """DNS failure: the resolver says the AI Horde's name does not exist. The event loop's
    getaddrinfo answers in-process and refuses every name but loopback's, so no query can
    leave the machine; aiohttp's own resolver and error path are the real ones."""
    loop = asyncio.get_running_loop()
    real = loop.getaddrinfo

    async def getaddrinfo(host, *args, **kwargs):
        if host not in ("127.0.0.1", "localhost", "::1"):
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return await real(host, *args, **kwargs)

    monkeypatch.setattr(loop, "getaddrinfo", getaddrinfo)
    async with webhook_sink() as sink:
        settings = _settings(tmp_path, "http://aihorde.invalid/api", sink.url)
        async with running_service(settings) as svc:
            first = await validate_upload(
                http, svc.scan_url(), images.jpeg("green", seed=11), "image/jpeg"
            )
            assert first.status == 200 and first.body["label"] is None

            await _degraded(http, svc.url, timeout=10)
            detail = (await _readyz(http, svc.url))["paths"]["horde"]["detail"]
            assert "unreachable" in detail and "aihorde.invalid" in detail
            assert "DNS" in detail  # aiohttp's ClientConnectorDNSError, named for the admin
            answer = await validate_upload(
                http, svc.scan_url(), images.jpeg("green", seed=12), "image/jpeg"
            )
            assert answer.body["route"] == "unavailable"
            await wait_for(_posted(sink, "backend_down"), timeout=5)
            assert await svc.parts.store.count_jobs() == 2  # kept, to judge when it resolves
