"""Local CLIP as a Backend: per-phrase similarities (`clip:<phrase>`) for the policy to judge."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from horde_scanner.backends.base import Backend, BackendFailed, Readiness
from horde_scanner.config import LocalSettings
from horde_scanner.media.decode import PreparedImage
from horde_scanner.policy import frames as framesignals
from horde_scanner.policy.rules import CLIP_PREFIX
from horde_scanner.verdict import Signals
from local_gpu.batching import DynamicBatcher
from local_gpu.clip import ClipScorer

if TYPE_CHECKING:
    from PIL import Image


class LocalClipBackend(Backend):
    name = "clip"
    # The frames of an animation enter the batcher together, so they form one model call.
    takes_frames = True

    def __init__(
        self,
        scorer: ClipScorer,
        phrases: list[str],
        *,
        batch_size: int = 16,
        batch_wait_ms: float = 5.0,
        max_queue: int = 256,
    ) -> None:
        if not phrases:
            raise ValueError("local CLIP needs phrases to score (policy [clip])")
        self.scorer = scorer
        scorer.set_phrases(phrases)
        self.batcher: DynamicBatcher[Image.Image, dict[str, float]] = DynamicBatcher(
            self._score_batch,
            batch_size=batch_size,
            wait_s=batch_wait_ms / 1000.0,
            max_queue=max_queue,
            name="clip",
        )
        # A GPU answers in well under a second; CPU inference of a large model takes seconds.
        self.expected_latency_s = 0.2 if scorer.device.startswith("cuda") else 3.0

    @classmethod
    def from_settings(cls, settings: LocalSettings, phrases: list[str]) -> LocalClipBackend:
        scorer = ClipScorer.load(
            model=settings.model,
            model_dir=settings.model_dir,
            cache_dir=settings.cache_dir,
            offline=settings.offline,
            device=settings.device,
            fp16=settings.fp16,
        )
        return cls(
            scorer,
            phrases,
            batch_size=settings.batch_size,
            batch_wait_ms=settings.batch_wait_ms,
            max_queue=settings.max_queue,
        )

    async def set_phrases(self, phrases: list[str]) -> None:
        """New phrases (the server's policy changed), embedded on the model's own thread."""
        await self.batcher.run_exclusive(lambda: self.scorer.set_phrases(phrases))

    def _score_batch(self, images: list[Image.Image]) -> list[dict[str, float]]:
        return self.scorer.score(images)

    async def judge(self, image: PreparedImage) -> Signals:
        frames = image.frames if image.animated else ()
        pictures = [f.image for f in frames] or [image.image]
        tasks = [asyncio.ensure_future(self.batcher.submit(p)) for p in pictures]
        try:
            results = await asyncio.gather(*tasks)
        except (ValueError, RuntimeError) as exc:  # torch raises RuntimeError on bad input
            raise BackendFailed(f"local CLIP could not score the image: {exc}") from None
        finally:
            for task in tasks:
                task.cancel()
        signals = [self._signals(sims) for sims in results]
        if not frames:
            return signals[0]
        return framesignals.combine(
            self.name, [([f], s) for f, s in zip(frames, signals, strict=True)]
        )

    def _signals(self, sims: dict[str, float]) -> Signals:
        return Signals(
            backend=self.name,
            scores={CLIP_PREFIX + p: s for p, s in sims.items()},
            extra={"model": self.scorer.name},
        )

    def readiness(self) -> Readiness:
        b = self.batcher
        detail = (
            f"{self.scorer.name} on {self.scorer.device}; {self.scorer.memory}; "
            f"{b.queued} queued, {b.batches} batches, {b.items} images"
        )
        if b.full:
            return Readiness(self.name, False, "saturated; " + detail)
        return Readiness(self.name, True, detail)

    async def close(self) -> None:
        await self.batcher.aclose()
