"""The service in front of a fake pict-rs, as the late-positive tests run it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from horde_scanner.testing.pictrs import FakePictrs
from horde_scanner.testing.service import RunningService, make_settings, running_service


def pictrs_section(pictrs: FakePictrs) -> dict[str, Any]:
    """The `pictrs` settings that reach this fake's API with its key."""
    return {"url": pictrs.url, "api_key": pictrs.api_key}


@asynccontextmanager
async def service_with_pictrs(
    tmp_path: Path, horde_url: str, pictrs: FakePictrs, *, deadline_s: float
) -> AsyncIterator[RunningService]:
    """The service answering by `deadline_s` (a judgement that comes later is a late
    positive) and enforcing late positives through `pictrs`."""
    settings = make_settings(
        tmp_path / "s.db",
        horde_url,
        validation={"deadline_s": deadline_s},
        pictrs=pictrs_section(pictrs),
    )
    async with running_service(settings) as svc:
        yield svc
