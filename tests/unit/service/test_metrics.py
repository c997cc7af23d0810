"""/metrics parsed with prometheus_client's own parser: every family the issue names is there
and counts what happened."""

from __future__ import annotations

from pathlib import Path

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from horde_scanner.backends.mock import MockBackend
from horde_scanner.media.hashing import sha256_hex
from horde_scanner.testing import images
from horde_scanner.testing.horde import FakeHorde
from horde_scanner.testing.pictrs import validate_upload
from horde_scanner.testing.service import make_settings, running_service
from tests.admin_helpers import admin_settings


async def scrape(http: aiohttp.ClientSession, base: str, token: str | None = None) -> dict:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with http.get(f"{base}/metrics", headers=headers) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/plain")
        text = await resp.text()
    samples: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples


def value(samples: dict, name: str, **labels: str) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


async def test_metrics_count_answers_routes_deadlines_errors_and_sweeps(tmp_path: Path, http):
    backend = MockBackend(delay_s=0.0)
    settings = admin_settings(tmp_path, validation={"deadline_s": 0.4})
    async with running_service(settings, backend=backend) as svc:
        red, green, slow = (
            images.jpeg(c, seed=50 + i) for i, c in enumerate(["red", "green", "blue"])
        )
        assert (await validate_upload(http, svc.scan_url(), red, "image/jpeg")).status == 406
        assert (await validate_upload(http, svc.scan_url(), red, "image/jpeg")).status == 406
        assert (await validate_upload(http, svc.scan_url(), green, "image/jpeg")).status == 200
        await svc.parts.store.set_list(sha256_hex(green), "allow")
        svc.parts.judge.forget()
        assert (await validate_upload(http, svc.scan_url(), green, "image/jpeg")).status == 200
        backend.delay_s = 3.0
        timed_out = await validate_upload(http, svc.scan_url(), slow, "image/jpeg")
        assert timed_out.status == 200 and timed_out.body["route"] == "timeout"
        # An unknown client is an error of its own kind.
        async with http.post(svc.scan_url("nobody"), data=red) as resp:
            assert resp.status == 401
        run = svc.parts.sweeps.start("local:/srv/pictrs", total=10)
        run.advance(3, label="clean")
        run.advance(2, skipped=True)
        run.fail()
        run.act("quarantine")

        m = await scrape(http, svc.url)

    assert value(m, "horde_scanner_validation_seconds_count") == 5
    assert value(m, "horde_scanner_validation_seconds_bucket", le="+Inf") == 5
    assert value(m, "horde_scanner_validation_seconds_bucket", le="0.002") <= 5
    assert value(m, "horde_scanner_answers_total", label="csam", route="mock", answer="reject") == 1
    assert (
        value(m, "horde_scanner_answers_total", label="csam", route="cache", answer="reject") == 1
    )
    assert (
        value(m, "horde_scanner_answers_total", label="clean", route="mock", answer="accept") == 1
    )
    assert (
        value(m, "horde_scanner_answers_total", label="clean", route="list", answer="accept") == 1
    )
    assert (
        value(m, "horde_scanner_answers_total", label="none", route="timeout", answer="accept") == 1
    )
    assert value(m, "horde_scanner_deadline_hits_total", on_timeout="accept") == 1
    assert value(m, "horde_scanner_cache_hit_ratio") == pytest.approx(2 / 5)
    assert value(m, "horde_scanner_errors_total", kind="unknown_client") == 1
    assert value(m, "horde_scanner_judgements_total", label="csam", backend="mock") == 1
    assert value(m, "horde_scanner_backend_up", backend="mock") == 1
    assert value(m, "horde_scanner_jobs_outstanding") == 1  # the slow one is still judging
    sweep = {"sweep": "local:/srv/pictrs"}
    assert value(m, "horde_scanner_sweep_files_done", **sweep) == 6
    assert value(m, "horde_scanner_sweep_files_total", **sweep) == 10
    assert value(m, "horde_scanner_sweep_files_skipped", **sweep) == 2
    assert value(m, "horde_scanner_sweep_files_failed", **sweep) == 1
    assert value(m, "horde_scanner_sweep_running", **sweep) == 1
    assert value(m, "horde_scanner_sweep_files_by_label", label="clean", **sweep) == 3
    assert value(m, "horde_scanner_sweep_actions", action="quarantine", **sweep) == 1


async def test_horde_in_flight_and_kudos_and_per_app_registries(tmp_path: Path, http):
    async with FakeHorde(latency=0.2) as horde:
        one = make_settings(tmp_path / "a.db", horde.url)
        two = make_settings(tmp_path / "b.db", horde.url, metrics={"token": "scrape-secret"})
        # Two apps in one process: each has its own registry, no duplicate-series error.
        async with running_service(one) as a, running_service(two) as b:
            await validate_upload(http, a.scan_url(), images.jpeg("red", seed=60), "image/jpeg")
            ma = await scrape(http, a.url)
            async with http.get(f"{b.url}/metrics") as resp:
                assert resp.status == 401
            mb = await scrape(http, b.url, token="scrape-secret")
    assert value(ma, "horde_scanner_horde_in_flight") == 0
    # nsfw + caption, each 1 kudos + 2 burn with slow workers (reference §4).
    assert value(ma, "horde_scanner_horde_kudos_estimated_total") == 6
    assert (
        value(ma, "horde_scanner_answers_total", label="csam", route="horde", answer="reject") == 1
    )
    assert value(mb, "horde_scanner_horde_kudos_estimated_total") == 0
    assert (
        "horde_scanner_answers_total",
        (("answer", "reject"), ("label", "csam"), ("route", "horde")),
    ) not in mb


async def test_metrics_can_be_turned_off(tmp_path: Path, http):
    settings = make_settings(
        tmp_path / "s.db", "http://127.0.0.1:9/api", metrics={"enabled": False}
    )
    async with running_service(settings, backend=MockBackend()) as svc:
        async with http.get(f"{svc.url}/metrics") as resp:
            assert resp.status == 404
            assert (await resp.json())["error"] == "metrics_disabled"
