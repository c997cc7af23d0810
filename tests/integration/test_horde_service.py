"""The AI Horde path as an admin sees it, through the running service: the Horde's own load in
/readyz, /metrics and the start-up log, and the daily kudos budget (kept across a restart)."""

from __future__ import annotations

import logging
from pathlib import Path

import aiohttp
import pytest

from horde_scanner.backends.horde import HordeBackend
from horde_scanner.backends.kudos import KudosBudget, utc_day
from horde_scanner.config import HordeSettings
from horde_scanner.media.decode import DecodeLimits, prepare
from horde_scanner.testing import images
from horde_scanner.testing.horde import FakeHorde
from horde_scanner.testing.pictrs import validate_upload
from horde_scanner.testing.service import make_settings, running_service, wait_for
from tests.unit.service.test_metrics import scrape, value


def png(seed: int, colour: str = "green") -> bytes:
    return images.encode(images.image(colour, seed=seed), "PNG")


async def readyz(http: aiohttp.ClientSession, base: str) -> dict:
    async with http.get(f"{base}/readyz") as resp:
        assert resp.status == 200
        body: dict = await resp.json()
        return body


async def test_the_horde_queue_reaches_readyz_metrics_and_the_log(
    tmp_path: Path, http: aiohttp.ClientSession, caplog: pytest.LogCaptureFixture
):
    caplog.set_level(logging.INFO, logger="horde_scanner.backends.horde")
    async with FakeHorde(latency=0.1, interrogator_count=4) as horde:
        horde.extra_queued_forms = 400
        settings = make_settings(tmp_path / "s.db", horde.url, backend={"kind": "horde"})
        async with running_service(settings) as svc:

            async def queue_read() -> dict | None:
                body = await readyz(http, svc.url)
                return body if "queue" in body.get("horde", {}) else None

            body = await wait_for(queue_read)
            # 400 forms over 4 workers, then our own 2 forms, at about 3 s a form.
            assert body["horde"]["queue"]["queued_forms"] == 400
            assert body["horde"]["queue"]["interrogators"] == 4
            assert body["horde"]["expected_latency_s"] == 306.0
            assert body["horde"]["latency_from"] == "horde queue"
            assert "expected latency 306.0 s" in body["paths"]["horde"]["detail"]
            samples = await scrape(http, svc.url)
            assert value(samples, "horde_scanner_horde_expected_latency_seconds") == 306.0
            assert value(samples, "horde_scanner_horde_queued_forms") == 400
            assert value(samples, "horde_scanner_horde_interrogators") == 4
            assert value(samples, "horde_scanner_horde_rate_limited_total") == 0
            assert any(
                "AI Horde queue is long" in r.getMessage() and "5.1 min" in r.getMessage()
                for r in caplog.records
            )

            # Once our own requests come back, they are the better guide.
            result = await validate_upload(http, svc.scan_url(), png(1), "image/png")
            assert result.body["route"] == "backend"
            body = await readyz(http, svc.url)
            assert body["horde"]["latency_from"] == "own requests"
            assert body["horde"]["expected_latency_s"] < 5
            assert horde.performance_calls >= 1 and horde.rate_limited == 0


async def test_no_workers_on_the_horde_is_logged(
    tmp_path: Path, http: aiohttp.ClientSession, caplog: pytest.LogCaptureFixture
):
    async with FakeHorde(latency=0.1, interrogator_count=0) as horde:
        settings = make_settings(tmp_path / "s.db", horde.url, backend={"kind": "horde"})
        async with running_service(settings) as svc:
            await wait_for(lambda: _has_queue(http, svc.url))
            body = await readyz(http, svc.url)
            assert body["horde"]["expected_latency_s"] is None
    assert any("no interrogation workers online" in r.getMessage() for r in caplog.records)


async def _has_queue(http: aiohttp.ClientSession, base: str) -> bool:
    return "queue" in (await readyz(http, base)).get("horde", {})


async def test_daily_kudos_budget_defers_misses_and_survives_a_restart(
    tmp_path: Path, http: aiohttp.ClientSession
):
    # One image costs (1 + burn 2) x 2 forms = 6 kudos: a budget of 8 pays for one.
    async with FakeHorde(latency=0.1) as horde:
        settings = make_settings(
            tmp_path / "s.db",
            horde.url,
            backend={"kind": "horde"},
            horde={"max_kudos_per_day": 8},
            validation={"deadline_s": 1.5},
        )
        async with running_service(settings) as svc:
            first = await validate_upload(http, svc.scan_url(), png(1), "image/png")
            assert first.body["route"] == "backend"
            second = await validate_upload(http, svc.scan_url(), png(2), "image/png")
            # Not sent: answered by on_timeout (accept) at once, as no path can judge it now;
            # judged when the budget renews.
            assert (second.status, second.body["route"]) == (200, "unavailable")
            assert len(horde.submissions) == 1

            async def tried() -> bool:  # the job's own attempt, in the background
                return (await readyz(http, svc.url))["horde"]["kudos"]["refused"] >= 1

            await wait_for(tried, timeout=10)
            body = await readyz(http, svc.url)
            assert body["status"] == "degraded"
            assert not body["paths"]["horde"]["live"]
            assert "daily kudos budget spent (6 of 8" in body["paths"]["horde"]["detail"]
            kudos = body["horde"]["kudos"]
            assert kudos["spent_today"] == 6 and kudos["max_per_day"] == 8
            assert kudos["refused"] >= 1
            samples = await scrape(http, svc.url)
            assert value(samples, "horde_scanner_horde_kudos_spent_today") == 6
            assert value(samples, "horde_scanner_horde_kudos_budget") == 8
            assert value(samples, "horde_scanner_horde_budget_refused_total") >= 1
            # The deferred job waits for the new day, not for the usual backoff.
            jobs = await svc.parts.store.db.execute_fetchall(
                "SELECT not_before - strftime('%s','now') FROM jobs"
            )
            assert len(jobs) == 1 and jobs[0][0] > 60

        # A restart keeps the day's spend.
        async with running_service(settings) as svc:
            body = await readyz(http, svc.url)
            assert body["horde"]["kudos"]["spent_today"] == 6
            assert not body["paths"]["horde"]["live"]
    assert horde.kudos_spent["0000000000"] == 6.0


async def test_the_budget_renews_with_the_utc_day(http: aiohttp.ClientSession):
    now = [1_800_000_000.0]  # 2027-01-15 08:00 UTC
    async with FakeHorde(latency=0.05) as horde:
        config = HordeSettings(url=horde.url, max_kudos_per_day=6, retries=1)
        backend = HordeBackend(config, http)
        backend.budget = KudosBudget(6, clock=lambda: now[0])
        image = prepare(png(3), DecodeLimits())
        await backend.judge(image)
        assert not backend.readiness().live and backend.budget.spent == 6
        with pytest.raises(Exception, match="daily kudos budget spent"):
            await backend.judge(prepare(png(4), DecodeLimits()))
        day = utc_day(now[0])
        now[0] += backend.budget.renews_in_s()
        assert utc_day(now[0]) != day and backend.readiness().live
        await backend.judge(prepare(png(4), DecodeLimits()))
        assert backend.budget.spent == 6 and len(horde.submissions) == 2


async def test_judged_late_when_the_budget_renews(tmp_path: Path, http: aiohttp.ClientSession):
    """The deferred job is judged once the budget allows again (a bigger budget after a
    restart stands in for the new day)."""
    async with FakeHorde(latency=0.1) as horde:
        base = {"backend": {"kind": "horde"}, "validation": {"deadline_s": 1.0}}
        tight = make_settings(tmp_path / "s.db", horde.url, horde={"max_kudos_per_day": 6}, **base)
        async with running_service(tight) as svc:
            await validate_upload(http, svc.scan_url(), png(1), "image/png")
            late = await validate_upload(http, svc.scan_url(), png(2), "image/png")
            assert late.body["route"] == "unavailable"  # budget spent: no live path
            store = svc.parts.store

            async def deferred() -> bool:
                # Its attempt was refused and it waits for the new day (the answer came first).
                rows = await store.db.execute_fetchall("SELECT attempts, state FROM jobs")
                return bool(rows) and rows[0][0] >= 1 and rows[0][1] == "pending"

            await wait_for(deferred)
            await store.db.execute("UPDATE jobs SET not_before=0")
        roomy = make_settings(tmp_path / "s.db", horde.url, horde={"max_kudos_per_day": 60}, **base)
        async with running_service(roomy) as svc:

            async def judged() -> bool:
                return await svc.parts.store.get_verdict(late.body["sha256"]) is not None

            await wait_for(judged)
    assert len(horde.submissions) == 2 and horde.rate_limited == 0
