"""Webhook notifications over loopback: new positives, backend down / back up, the payload
templates, failures logged, and a bounded queue that never blocks."""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path

import aiohttp

from horde_scanner.backends.mock import MockBackend
from horde_scanner.config import NotifySettings
from horde_scanner.integrations.notify import Notifier, load_templates, render
from horde_scanner.media.hashing import sha256_hex
from horde_scanner.service.auth import client_tag
from horde_scanner.testing import images
from horde_scanner.testing.pictrs import validate_upload
from horde_scanner.testing.service import CLIENT_ID, running_service
from tests.admin_helpers import admin_settings, webhook_sink


async def wait_until(predicate, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.02)


async def test_positive_and_backend_down_up_are_posted(tmp_path: Path, http):
    backend = MockBackend()
    async with webhook_sink() as sink:
        settings = admin_settings(
            tmp_path,
            notify={
                "webhook_url": sink.url,
                "readiness_interval_s": 0.05,
                "admin_url": "https://scanner.example/admin",
            },
        )
        async with running_service(settings, backend=backend) as svc:
            red, green = images.jpeg("red", seed=70), images.jpeg("green", seed=71)
            await validate_upload(http, svc.scan_url(), red, "image/jpeg")
            await validate_upload(http, svc.scan_url(), green, "image/jpeg")
            await validate_upload(http, svc.scan_url(), red, "image/jpeg")  # cached: no news
            await wait_until(lambda: sink.events("positive"))
            backend.available = False
            await wait_until(lambda: sink.events("backend_down"))
            backend.available = True
            await wait_until(lambda: sink.events("backend_up"))
            await asyncio.sleep(0.2)  # nothing else arrives: one event per transition

    (positive,) = sink.events("positive")
    assert positive["sha256"] == sha256_hex(red) and positive["label"] == "csam"
    assert positive["source"] == f"upload:{client_tag(CLIENT_ID)}" and positive["late"] is False
    assert positive["link"] == f"https://scanner.example/admin/item/{sha256_hex(red)}"
    assert any("young girl" in r for r in positive["reasons"])
    assert len(sink.events("backend_down")) == 1 and len(sink.events("backend_up")) == 1
    assert sink.events("backend_down")[0]["backend"] == "mock"
    assert "switched off" in sink.events("backend_down")[0]["detail"]


async def test_discord_template_and_failures_are_logged_not_fatal(tmp_path: Path, http, caplog):
    async with webhook_sink(status=500) as sink:
        settings = admin_settings(tmp_path, notify={"webhook_url": sink.url, "template": "discord"})
        async with running_service(settings, backend=MockBackend()) as svc:
            with caplog.at_level(logging.WARNING, logger="horde_scanner.integrations.notify"):
                result = await validate_upload(
                    http, svc.scan_url(), images.jpeg("magenta", seed=72), "image/jpeg"
                )
                assert result.status == 200 and result.body["label"] == "nsfw"
                await wait_until(lambda: svc.parts.notifier.failed == 1)
    (payload,) = sink.received
    assert set(payload) == {"content", "username", "allowed_mentions"}
    assert "new nsfw verdict" in payload["content"] and payload["allowed_mentions"] == {"parse": []}
    assert any("HTTP 500" in r.getMessage() for r in caplog.records)


def test_templates_are_data_for_matrix_discord_slack_and_plain_json():
    templates = load_templates()
    assert set(templates) >= {"json", "matrix", "discord", "slack"}
    event = {"event": "backend_down", "backend": "horde", "detail": "maintenance <soon>"}
    assert render(templates["json"], event) == event
    matrix = render(templates["matrix"], event)
    # Text from outside (here the upstream's own words) is quoted, and escaped per target.
    down = "horde-scanner: backend \u201chorde\u201d is DOWN: "
    assert matrix["text"] == down + "\u201cmaintenance <soon>\u201d"
    assert "&lt;soon&gt;" in matrix["html"] and matrix["username"] == "horde-scanner"
    assert render(templates["slack"], event) == {
        "text": down + "\u201cmaintenance &lt;soon&gt;\u201d"
    }
    assert render(templates["discord"], event)["content"] == (
        down + "\u201cmaintenance \\<soon\\>\u201d"
    )


HOSTILE = {
    "event": "positive",
    "label": "csam",
    "sha256": "ab" * 32,
    "source": "list:[verify your account](https://evil.example/login) @everyone",
    "backend": "worker:gpu/@everyone",
    "reasons": ["caption: <@123> <!channel> <https://evil.example|click> @room\nhorde-scanner: ok"],
    "link": "https://scanner.example/admin/item/" + "ab" * 32,
}


def test_remote_text_cannot_ping_or_phish_a_moderators_channel():
    templates = load_templates()
    discord = render(templates["discord"], HOSTILE)["content"]
    slack = render(templates["slack"], HOSTILE)["text"]
    matrix = render(templates["matrix"], HOSTILE)
    for text in (discord, slack, matrix["text"], matrix["html"]):
        # No mention survives: @ is followed by a zero-width space wherever it came from outside.
        assert "@everyone" not in text and "@room" not in text and "@123" not in text
        # No link is made from remote text; our own review link stays whole.
        assert "https://evil" not in text and "https://scanner.example/admin/item/" in text
        # A forged second line stays on the quoted line it came in.
        assert "\nhorde-scanner: ok" not in text
    assert "[verify your account]" not in discord and "\\[verify your account\\]" in discord
    assert "\\<@" in discord and "<!channel>" not in discord
    assert "<!channel>" not in slack and "&lt;!channel&gt;" in slack and "<https" not in slack
    assert "<@" not in matrix["html"] and "&lt;" in matrix["html"]
    # Remote text is clearly quoted.
    assert "\u201clist:" in matrix["text"] and "\u201cworker:gpu/@" in matrix["text"]


async def test_a_stuck_webhook_never_blocks_and_the_queue_is_bounded():
    async with webhook_sink(delay_s=1.0) as sink, aiohttp.ClientSession() as session:
        notifier = Notifier(
            NotifySettings(webhook_url=sink.url, queue_size=2, timeout_s=0.5), session
        )
        await notifier.start()
        # notify() is a plain function: it cannot wait for the webhook, only queue or drop.
        for i in range(10):
            notifier.notify({"event": "positive", "sha256": f"{i:064x}", "label": "csam"})
        assert notifier.dropped == 8 and notifier.queued == 2
        await wait_until(lambda: notifier.failed >= 1, timeout=3)  # timed out, counted
        await notifier.stop()
