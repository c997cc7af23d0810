"""What a judgement is: the raw Signals a backend returned and the Verdict a policy made of them.

Signals are stored as they came, so that a new policy version can re-judge a cached image
without asking a backend again. A Verdict is always derived: (signals, policy) -> verdict.
"""

from __future__ import annotations

import time
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, Field


class Label(StrEnum):
    CLEAN = "clean"
    NSFW = "nsfw"
    CSAM = "csam"
    # Could not be decoded or exceeded a decode limit: nothing was judged.
    UNREADABLE = "unreadable"
    # A backend failed for good (not just slowly); the image was not judged.
    ERROR = "error"

    @property
    def severity(self) -> int:
        return _SEVERITY[self]


_SEVERITY = {Label.CLEAN: 0, Label.UNREADABLE: 1, Label.ERROR: 1, Label.NSFW: 2, Label.CSAM: 3}


class Signals(BaseModel):
    """Raw opinion of one backend about one image. Fields a backend cannot give stay empty."""

    backend: str
    nsfw: bool | None = None
    caption: str | None = None
    # Interrogation tags (AI Horde `interrogation` form), lower-cased, with their confidences.
    tags: dict[str, float] = Field(default_factory=dict)
    # Per-phrase similarities (local CLIP) or per-class scores (pre-screen detector).
    scores: dict[str, float] = Field(default_factory=dict)
    extra: dict[str, Any] = Field(default_factory=dict)


class VerdictRoute(StrEnum):
    """What a verdict rests on. The store keeps it with the verdict; the hash-list rules read it
    (a verdict from a hash match never becomes a hash entry itself, and lasts only as long as
    the entry it rests on)."""

    # A backend's signals through the policy (or a decoder's or a backend's failure).
    JUDGED = "judged"
    # A hash-list entry (exact sha256 or PDQ) matched: no backend was asked.
    MATCH = "match"


class Verdict(BaseModel):
    label: Label
    reasons: list[str] = Field(default_factory=list)
    policy_version: str = ""
    backend: str = ""
    route: VerdictRoute = VerdictRoute.JUDGED
    signals: Signals | None = None
    # Animation or video: the frames whose judgement gave `label` (None for a still image).
    frames: list[int] | None = None
    judged_at: float = Field(default_factory=time.time)

    @property
    def is_positive(self) -> bool:
        return self.label in (Label.NSFW, Label.CSAM)
