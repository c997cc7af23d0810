"""What the backend contract (backends/base.py) lets any backend say, and the Judge honours
without knowing which backend said it: "I cleared this cheaply" earns a second opinion."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from horde_scanner.backends.base import CLEARED, Readiness, cleared, mark_screen
from horde_scanner.backends.mock import MockBackend
from horde_scanner.judging.judge import Judge
from horde_scanner.judging.policy import Policy
from horde_scanner.media.decode import DecodeLimits, PreparedImage
from horde_scanner.media.hashing import sha256_hex
from horde_scanner.store.sqlite import Store
from horde_scanner.testing import images
from horde_scanner.verdict import Label, Signals


class QuickLook:
    """A made-up cheap path (not the pre-screen) that clears everything it sees."""

    name = "quick"

    async def judge(self, image: PreparedImage) -> Signals:
        return mark_screen(Signals(backend=self.name, nsfw=False), CLEARED)

    def readiness(self) -> Readiness:
        return Readiness(self.name, True)

    async def aclose(self) -> None:
        pass


async def test_any_backend_s_cheap_clear_gets_a_second_opinion(tmp_path: Path):
    red = images.jpeg("red", seed=5)
    policy = Policy.load()
    with ThreadPoolExecutor(2) as pool:
        async with await Store.open(tmp_path / "s.db") as store:
            judge = Judge(
                store,
                policy,
                QuickLook(),
                pool,
                limits=DecodeLimits(),
                workers=2,
                second_opinion=MockBackend(),
            )
            await judge.start()
            try:
                first = await judge.evaluate(red, source="test", within_s=None)
                assert first.verdict is not None and first.label is Label.CLEAN
                assert first.verdict.signals is not None and cleared(first.verdict.signals)
                async with asyncio.timeout(10):
                    while True:
                        stored = await store.get_verdict(sha256_hex(red))
                        if stored is not None and stored.verdict.label is Label.CSAM:
                            break
                        await asyncio.sleep(0.05)
            finally:
                await judge.stop()
            trail = [a.event for a in await store.audit_trail(sha256_hex(red))]
    assert "second_opinion" in trail
    # A verdict that no path cleared cheaply is not asked about again.
    assert not cleared(Signals(backend="mock", nsfw=False))
