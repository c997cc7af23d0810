"""Signals of a multi-frame file: one Signals per judged frame (or per packed group of frames),
kept inside one Signals so that the verdict cache, re-judging under a new policy and the second
opinion work on animations and videos exactly as on still images.

    Signals(backend, extra={"frames": [{"frames": [6], "label": "frame 6 at 1.50 s",
                                         "signals": {...}}, ...]})

A still image keeps plain Signals.
"""

from __future__ import annotations

from collections.abc import Sequence

from horde_scanner.media.decode import Frame
from horde_scanner.verdict import Signals

FRAMES_KEY = "frames"


def describe(frames: Sequence[Frame]) -> str:
    if len(frames) == 1:
        return frames[0].label()
    names = ", ".join(str(f.index) for f in frames)
    times = [f.time_s for f in frames if f.time_s is not None]
    span = f" at {min(times):.2f}-{max(times):.2f} s" if times else ""
    return f"frames {names}{span} (packed into one image)"


def combine(backend: str, parts: Sequence[tuple[Sequence[Frame], Signals]]) -> Signals:
    """Per-frame (or per-group) Signals -> one Signals. A single still frame stays as it is."""
    if len(parts) == 1 and len(parts[0][0]) == 1 and parts[0][0][0].time_s is None:
        return parts[0][1]
    ordered = sorted(parts, key=lambda part: part[0][0].index)
    extra: dict[str, object] = {
        FRAMES_KEY: [
            {
                "frames": [f.index for f in frames],
                "label": describe(frames),
                "signals": signals.model_dump(mode="json"),
            }
            for frames, signals in ordered
        ]
    }
    return Signals(backend=backend, extra=extra)


def split(signals: Signals) -> list[tuple[list[int], str, Signals]] | None:
    """(frame indices, label, Signals) per judged part, or None for a still image's Signals."""
    parts = signals.extra.get(FRAMES_KEY)
    if not isinstance(parts, list):
        return None
    return [
        (list(p.get("frames", [])), str(p.get("label", "")), Signals.model_validate(p["signals"]))
        for p in parts
        if isinstance(p, dict) and "signals" in p
    ]


def by_frame(signals: Signals) -> dict[int, Signals]:
    """Frame index -> the Signals that cover it (a still image is frame 0)."""
    parts = split(signals)
    if parts is None:
        return {0: signals}
    return {i: s for indices, _, s in parts for i in indices}
