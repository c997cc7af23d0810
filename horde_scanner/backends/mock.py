"""An in-process backend for tests and benchmarks: a function of the pixels, optional delay."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from PIL import Image, ImageStat

from horde_scanner.backends.base import Backend, BackendUnavailable, Readiness
from horde_scanner.media.decode import PreparedImage
from horde_scanner.verdict import Signals


def colour_marker_signals(image: Image.Image) -> Signals:
    """Judge by mean colour: red = nsfw with an underage caption, magenta = nsfw, else clean.

    The same convention as the fake AI Horde in tests/, so fixtures work with either.
    """
    r, g, b = ImageStat.Stat(image.convert("RGB")).mean
    if r > 200 and g < 60 and b < 60:
        return Signals(backend="mock", nsfw=True, caption="a photo of a young girl in a bedroom")
    if r > 200 and g < 60 and b > 200:
        return Signals(backend="mock", nsfw=True, caption="a photo of a naked woman on a bed")
    return Signals(backend="mock", nsfw=False, caption="a photo of a landscape with trees")


class MockBackend(Backend):
    name = "mock"

    def __init__(
        self,
        judge: Callable[[Image.Image], Signals] = colour_marker_signals,
        *,
        delay_s: float = 0.0,
    ) -> None:
        self._judge = judge
        self.delay_s = delay_s
        self.calls = 0
        self.available = True

    async def judge(self, image: PreparedImage) -> Signals:
        if not self.available:
            raise BackendUnavailable("mock backend switched off", retry_after_s=0.1)
        self.calls += 1
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        return self._judge(image.image)

    def readiness(self) -> Readiness:
        return Readiness(self.name, self.available, "" if self.available else "switched off")
