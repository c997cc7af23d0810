"""The CPU pre-screen: a nudity detector that runs first on every miss.

An image with no sexual body part above its threshold (policy [prescreen]) is judged here, in
tens of milliseconds, and never reaches a slower backend: its Signals say so and the policy
finds nothing in them. Anything else goes on to the next backend, whose Signals carry the
detector's scores too (`nudenet:<CLASS>`), so the policy sees both opinions.

The detector runs in its own bounded thread pool; when more images wait than
`prescreen.max_queue`, new ones skip the pre-screen and go straight to the next backend instead
of queueing without bound.
"""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor
from typing import Protocol

from PIL import Image

from horde_scanner.backends.base import (
    CLEARED,
    PASSED_ON,
    SCREEN_KEY,
    Backend,
    BackendUnavailable,
    Readiness,
    describe_paths,
    judge_image,
    mark_screen,
)
from horde_scanner.media.decode import Frame, PreparedImage
from horde_scanner.policy import frames as framesignals
from horde_scanner.policy.rules import PRESCREEN_PREFIX, PrescreenRules
from horde_scanner.verdict import Signals

log = logging.getLogger(__name__)

# What the pre-screen did with an image is marked as the backend contract says (base.py):
# CLEARED (a second opinion may be asked) or PASSED_ON.


class Detector(Protocol):
    def scores(self, image: Image.Image) -> dict[str, float]: ...


class PrescreenBackend(Backend):
    name = "prescreen"
    # Frames of an animation are scored in one trip to the detector's thread; only those it
    # does not clear go on to the next backend.
    takes_frames = True

    def __init__(
        self,
        detector: Detector,
        rules: PrescreenRules,
        next_backend: Backend | None,
        *,
        threads: int = 2,
        max_queue: int = 64,
    ) -> None:
        self.detector = detector
        self.rules = rules
        self.next = next_backend
        self._executor = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="prescreen")
        self._max_queue = max_queue
        self.waiting = 0
        self.cleared = 0
        self.passed_on = 0
        self.skipped = 0

    async def _scores(self, image: PreparedImage) -> dict[str, float] | None:
        if self.waiting >= self._max_queue:
            self.skipped += 1
            return None
        self.waiting += 1
        try:
            loop = asyncio.get_running_loop()
            raw = await loop.run_in_executor(self._executor, self.detector.scores, image.image)
        finally:
            self.waiting -= 1
        return {PRESCREEN_PREFIX + c: round(s, 4) for c, s in raw.items()}

    async def _frame_scores(self, image: PreparedImage) -> list[dict[str, float]] | None:
        if self.waiting >= self._max_queue:
            self.skipped += 1
            return None
        self.waiting += 1
        try:
            loop = asyncio.get_running_loop()
            images = [frame.image for frame in image.frames]
            raw = await loop.run_in_executor(
                self._executor, lambda: [self.detector.scores(i) for i in images]
            )
        finally:
            self.waiting -= 1
        return [{PRESCREEN_PREFIX + c: round(s, 4) for c, s in r.items()} for r in raw]

    async def _judge_frames(self, image: PreparedImage) -> Signals:
        per_frame = await self._frame_scores(image)
        if per_frame is None:
            if self.next is None:
                raise BackendUnavailable("pre-screen saturated", retry_after_s=1.0)
            self.passed_on += 1
            return await judge_image(self.next, image)
        parts: list[tuple[list[Frame], Signals]] = []
        flagged: list[tuple[Frame, dict[str, float]]] = []
        for frame, scores in zip(image.frames, per_frame, strict=True):
            if self.rules.hits(scores):
                flagged.append((frame, scores))
            else:
                cleared = Signals(
                    backend=self.name, nsfw=False, scores=scores, extra={SCREEN_KEY: CLEARED}
                )
                parts.append(([frame], cleared))
        if not flagged:
            self.cleared += 1
            combined = framesignals.combine(self.name, parts)
            return mark_screen(combined, CLEARED)
        self.passed_on += 1
        scores_of = {frame.index: scores for frame, scores in flagged}
        if self.next is None:
            parts += [
                ([f], Signals(backend=self.name, scores=s, extra={SCREEN_KEY: PASSED_ON}))
                for f, s in flagged
            ]
        else:
            rest = image.subset([frame for frame, _ in flagged])
            answer = await judge_image(self.next, rest)
            for indices, _, signals in framesignals.split(answer) or [
                ([f.index for f in rest.frames], "", answer)
            ]:
                frames = [f for f in rest.frames if f.index in indices]
                merged: dict[str, float] = {}
                for f in frames:
                    for name, value in scores_of[f.index].items():
                        merged[name] = max(value, merged.get(name, 0.0))
                parts.append((frames, merge_prescreen(signals, merged)))
        combined = framesignals.combine(self.name, parts)
        return mark_screen(combined, PASSED_ON)

    async def judge(self, image: PreparedImage) -> Signals:
        if image.animated:
            return await self._judge_frames(image)
        scores = await self._scores(image)
        if scores is not None and not self.rules.hits(scores):
            self.cleared += 1
            return Signals(
                backend=self.name, nsfw=False, scores=scores, extra={SCREEN_KEY: CLEARED}
            )
        if self.next is None:
            if scores is None:
                raise BackendUnavailable("pre-screen saturated", retry_after_s=1.0)
            # Nothing to ask: the detector's hits alone make it sexual content (never CSAM).
            self.passed_on += 1
            return Signals(backend=self.name, scores=scores, extra={SCREEN_KEY: PASSED_ON})
        self.passed_on += 1
        signals = await judge_image(self.next, image)
        return merge_prescreen(signals, scores)

    def readiness(self) -> Readiness:
        if self.next is None:
            return self._own_readiness()
        return self.next.readiness()

    def _own_readiness(self) -> Readiness:
        detail = (
            f"{self.cleared} cleared, {self.passed_on} passed on, {self.skipped} skipped "
            f"(busy), {self.waiting} waiting"
        )
        return Readiness(self.name, True, detail)

    def paths(self) -> list[Readiness]:
        rest = describe_paths(self.next) if self.next is not None else []
        return [self._own_readiness(), *rest]

    def inner(self) -> list[Backend]:
        return [self.next] if self.next is not None else []

    def passes_on(self) -> Backend | None:
        return self.next

    async def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
        await super().close()


def merge_prescreen(signals: Signals, scores: dict[str, float] | None) -> Signals:
    """The next backend's Signals with the detector's scores added."""
    if not scores:
        return signals
    return signals.model_copy(
        update={
            "scores": {**scores, **signals.scores},
            "extra": {**signals.extra, SCREEN_KEY: PASSED_ON},
        }
    )
