"""The one way times are written for people and files: ISO 8601 in UTC, to the second; and
the one way a `since` a person types is read."""

from __future__ import annotations

import time
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


def parse_since(value: str, *, now: float | None = None) -> float:
    """`2024-05-01`, an ISO time, or a duration back from now: `90m`, `12h`, `7d`."""
    now = time.time() if now is None else now
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
    text = value.strip()
    if text and text[-1] in units and text[:-1].replace(".", "", 1).isdigit():
        return now - float(text[:-1]) * units[text[-1]]
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(
            f"--since {value!r}: expected a date (2024-05-01), an ISO time or a duration "
            "(90m, 12h, 7d)"
        ) from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.timestamp()
