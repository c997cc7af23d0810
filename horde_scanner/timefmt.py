"""The one way times are written for people and files: ISO 8601 in UTC, to the second."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import overload


@overload
def iso(ts: float) -> str: ...


@overload
def iso(ts: None) -> None: ...


@overload
def iso(ts: float | None) -> str | None: ...


def iso(ts: float | None) -> str | None:
    """`2024-05-01T12:00:00+00:00` for unix seconds; None stays None (never known)."""
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds")
