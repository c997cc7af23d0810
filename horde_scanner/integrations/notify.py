"""Webhook notifications: every new positive, and the backend going down or coming back.

Sending never blocks the caller: events go into a bounded queue that one task drains; when the
queue is full the event is dropped and counted (a webhook that is down must not hold memory).
Failures are logged and counted, never retried forever. Payload shapes are data
(`data/webhook_templates.toml`): the event itself, or Matrix (hookshot), Discord, Slack-style.
"""

from __future__ import annotations

import asyncio
import contextlib
import html
import logging
import re
import time
import tomllib
from collections.abc import Callable
from datetime import UTC, datetime
from importlib import resources
from string import Template
from typing import Any

import aiohttp

from horde_scanner.backends.base import Readiness
from horde_scanner.config import NotifySettings
from horde_scanner.tasks import cancel_and_wait

log = logging.getLogger(__name__)

# Chat services cut long messages (Discord at 2000 characters).
_SUMMARY_MAX = 1500


def load_templates() -> dict[str, dict[str, Any]]:
    text = resources.files("horde_scanner.data").joinpath("webhook_templates.toml").read_text()
    return tomllib.loads(text)


def render(template: dict[str, Any], event: dict[str, Any]) -> dict[str, Any]:
    """The payload for one event: the event itself for a raw template, else filled strings."""
    if template.get("raw"):
        return event
    values = _values(event, str(template.get("escape", "plain")))

    def fill(value: Any) -> Any:
        if isinstance(value, str):
            return Template(value).safe_substitute(values)
        if isinstance(value, dict):
            return {k: fill(v) for k, v in value.items()}
        if isinstance(value, list):
            return [fill(v) for v in value]
        return value

    return {k: fill(v) for k, v in template.items() if k != "escape"}


# Text from outside (a worker's name, caption or error, a hash list's source or note, an
# upstream's error) is shown quoted, on one line, at most this long.
_REMOTE_MAX = 300
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]+")
# Discord's markdown: emphasis, code, spoilers, block quotes, masked links, and
# <@user> / <#channel> / <:emoji:> tags.
_DISCORD_SPECIAL = re.compile(r"([\\*_~`|>\[\]()<])")
_ZWSP = "\u200b"


def _flat(text: str) -> str:
    text = _CONTROL.sub(" ", text).strip()
    return text if len(text) <= _REMOTE_MAX else text[: _REMOTE_MAX - 1] + "\u2026"


def _defang(text: str) -> str:
    """No mention (@everyone, @here, @room, @user) and no link a chat service would make."""
    text = text.replace("@", "@" + _ZWSP)
    return re.sub(r"(?i)([a-z][a-z0-9+.-]*)(:/)", r"\1" + _ZWSP + r"\2", text)


def quote_remote(text: str, style: str) -> str:
    """Remote text, escaped for the target (`escape` of the template table) and quoted."""
    text = _flat(text)
    if style == "discord":
        text = _DISCORD_SPECIAL.sub(r"\\\1", _defang(text))
    elif style == "slack":
        # Slack's control characters; <!everyone>, <@U..> and <url|text> all need a `<`.
        text = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
        text = _defang(text)
    elif style == "matrix":
        text = _defang(text)  # the HTML body is escaped as a whole (summary_html)
    return f"\u201c{text}\u201d"


def _values(event: dict[str, Any], style: str = "plain") -> dict[str, str]:
    def q(value: Any) -> str:
        return quote_remote(str(value), style) if value else ""

    summary = summarise(event, lambda text: quote_remote(text, style))
    return {
        "summary": summary,
        "summary_html": html.escape(summary).replace("\n", "<br>"),
        "event": str(event.get("event", "")),
        "sha256": str(event.get("sha256", "")),
        "label": str(event.get("label", "")),
        "reasons": "; ".join(q(r) for r in event.get("reasons") or []),
        "source": q(event.get("source")),
        "backend": q(event.get("backend")),
        "detail": q(event.get("detail")),
        "link": str(event.get("link") or ""),
    }


def summarise(event: dict[str, Any], quote: Callable[[str], str] | None = None) -> str:
    """One message for people. `quote` escapes and quotes text that came from outside (see
    quote_remote); without it, such text is still put on one line and quoted."""
    q = quote or (lambda text: quote_remote(text, "plain"))
    kind = event.get("event")
    source = event.get("source")
    if kind == "positive":
        late = " (late: the upload was accepted before the verdict)" if event.get("late") else ""
        reasons = "; ".join(q(str(r)) for r in event.get("reasons") or []) or "-"
        text = (
            f"horde-scanner: new {event.get('label')} verdict{late}\n"
            f"sha256 {event.get('sha256')}\n"
            f"found: {q(str(source)) if source else 'unknown'}; "
            f"backend: {q(str(event.get('backend')))}\n"
            f"why: {reasons}"
        )
    elif kind == "provenance":
        # Names and links only: who uploaded it, where it is used, which instances it came from.
        lines = [f"horde-scanner: provenance of {event.get('sha256')}"]
        lines += [f"uploaded by {u}" for u in event.get("uploaders") or []]
        lines += [f"thumbnail of {t}" for t in event.get("thumbnail_of") or []]
        lines += [f"used in {u}" for u in (event.get("used_in") or [])[:10]]
        if event.get("origin_instances"):
            lines.append("origin: " + ", ".join(event["origin_instances"]))
        text = "\n".join(lines)
    elif kind == "backend_down":
        text = (
            f"horde-scanner: backend {q(str(event.get('backend')))} is DOWN: "
            f"{q(str(event.get('detail')))}"
        )
    elif kind == "backend_up":
        text = f"horde-scanner: backend {q(str(event.get('backend')))} is back up"
    else:
        text = f"horde-scanner: {q(str(kind))}"
    if event.get("link"):
        text += f"\nreview: {event['link']}"
    return text[:_SUMMARY_MAX]


class Notifier:
    def __init__(self, settings: NotifySettings, session: aiohttp.ClientSession) -> None:
        self.settings = settings
        self._session = session
        self._template = load_templates()[settings.template]
        self._queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(maxsize=settings.queue_size)
        self._task: asyncio.Task[None] | None = None
        self._timeout = aiohttp.ClientTimeout(total=settings.timeout_s)
        self.sent = 0
        self.failed = 0
        self.dropped = 0

    @property
    def enabled(self) -> bool:
        return bool(self.settings.webhook_url)

    async def start(self) -> None:
        if self.enabled:
            self._task = asyncio.create_task(self._drain(), name="notify")

    async def stop(self) -> None:
        """Send what is queued (for at most one webhook timeout), then stop.

        A short-lived process (a sweep, `check`) often finds its positive just before it ends."""
        if self._task is not None and not self._task.done():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.settings.timeout_s):
                    await self._queue.join()
        await cancel_and_wait([self._task])
        self._task = None

    def notify(self, event: dict[str, Any]) -> None:
        """Queue an event; never waits. Dropped (and counted) when the queue is full."""
        if not self.enabled:
            return
        event = {"ts": datetime.now(UTC).isoformat(timespec="seconds"), **event}
        if self.settings.admin_url and "link" not in event:
            base = self.settings.admin_url.rstrip("/")
            event["link"] = f"{base}/item/{event['sha256']}" if event.get("sha256") else base
        try:
            self._queue.put_nowait(event)
        except asyncio.QueueFull:
            self.dropped += 1
            log.warning("notify: queue full (%d); dropped %s", self._queue.maxsize, event["event"])

    @property
    def queued(self) -> int:
        return self._queue.qsize()

    async def _drain(self) -> None:
        while True:
            event = await self._queue.get()
            try:
                await self._send(event)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the worker must outlive any one failure
                self.failed += 1
                log.warning("notify: webhook failed for %s: %s", event.get("event"), exc)
            finally:
                self._queue.task_done()

    async def _send(self, event: dict[str, Any]) -> None:
        url = self.settings.webhook_url
        assert url is not None
        payload = render(self._template, event)
        async with self._session.post(url, json=payload, timeout=self._timeout) as resp:
            if resp.status >= 300:
                body = (await resp.text())[:200]
                self.failed += 1
                log.warning(
                    "notify: webhook answered HTTP %d for %s: %s", resp.status, event["event"], body
                )
                return
        self.sent += 1


class ReadinessWatcher:
    """Looks at `readiness()` every interval and reports transitions (down, back up)."""

    def __init__(
        self,
        readiness: Callable[[], Readiness],
        interval_s: float,
        on_change: Callable[[Readiness], None],
    ) -> None:
        self._readiness = readiness
        self._interval = interval_s
        self._on_change = on_change
        self._task: asyncio.Task[None] | None = None
        self.live: bool | None = None
        self.changed_at = time.time()

    async def start(self) -> None:
        self.live = self._readiness().live
        self._task = asyncio.create_task(self._watch(), name="readiness-watch")

    async def stop(self) -> None:
        await cancel_and_wait([self._task])
        self._task = None

    def check(self) -> None:
        state = self._readiness()
        if state.live != self.live:
            self.live = state.live
            self.changed_at = time.time()
            log.warning(
                "backend %s is %s%s",
                state.name,
                "back up" if state.live else "DOWN",
                f": {state.detail}" if state.detail and not state.live else "",
            )
            self._on_change(state)

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            try:
                self.check()
            except Exception:
                log.exception("readiness watch failed")


def backend_event(state: Readiness) -> dict[str, Any]:
    return {
        "event": "backend_up" if state.live else "backend_down",
        "backend": state.name,
        "detail": state.detail,
    }
