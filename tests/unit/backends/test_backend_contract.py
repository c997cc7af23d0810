"""What the backend contract (backends/base.py) lets any backend say, and the Judge honours
without knowing which backend said it: "I cleared this cheaply" earns a second opinion."""

from __future__ import annotations

import ast
import asyncio
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from horde_scanner.backend_registry import (
    backend_kind,
    backend_kinds,
    register_backend,
    unregister_backend,
)
from horde_scanner.backends.base import (
    CLEARED,
    DEFAULT_CONCURRENCY,
    Backend,
    Readiness,
    cleared,
    concurrency,
    describe_paths,
    iter_backends,
    judge_image,
    mark_screen,
)
from horde_scanner.backends.mock import MockBackend
from horde_scanner.judging.judge import Judge
from horde_scanner.media.decode import DecodeLimits, PreparedImage, prepare
from horde_scanner.media.hashing import sha256_hex
from horde_scanner.policy.rules import Policy
from horde_scanner.store.memory import MemoryStore
from horde_scanner.testing import images
from horde_scanner.verdict import Label, Signals
from tests import media_files


class QuickLook(Backend):
    """A made-up cheap path (not the pre-screen) that clears everything it sees."""

    name = "quick"

    async def judge(self, image: PreparedImage) -> Signals:
        return mark_screen(Signals(backend=self.name, nsfw=False), CLEARED)

    def readiness(self) -> Readiness:
        return Readiness(self.name, True)

    async def aclose(self) -> None:
        pass


async def test_any_backend_s_cheap_clear_gets_a_second_opinion() -> None:
    red = images.jpeg("red", seed=5)
    policy = Policy.load()
    with ThreadPoolExecutor(2) as pool:
        async with MemoryStore() as store:  # the verdict and audit rows: bookkeeping
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


class Bare(Backend):
    """A backend that says only what it must: its name and `judge`."""

    name = "bare"

    def __init__(self) -> None:
        self.frames_seen: list[int] = []

    async def judge(self, image: PreparedImage) -> Signals:
        self.frames_seen.append(len(image.frames))
        return Signals(backend=self.name, nsfw=False)


class Holder(Backend):
    """A backend that hands images on (like a router or a pre-screen) and keeps a lifetime."""

    name = "holder"

    def __init__(self, *inner: Backend) -> None:
        self.held = list(inner)
        self.events: list[str] = []

    async def judge(self, image: PreparedImage) -> Signals:
        return await judge_image(self.held[0], image)

    def inner(self) -> list[Backend]:
        return self.held


class Lifetime(Bare):
    def __init__(self, log: list[str], name: str) -> None:
        super().__init__()
        self.log, self.label = log, name

    async def start(self, store: object | None = None) -> None:
        self.log.append(f"start {self.label} {store}")

    async def close(self) -> None:
        self.log.append(f"close {self.label}")


async def test_every_optional_capability_has_a_default():
    bare = Bare()
    assert bare.readiness() == Readiness("bare", True)
    assert bare.paths() == [Readiness("bare", True)]
    assert list(bare.inner()) == []
    assert bare.describe() == {}
    assert list(bare.metrics()) == []
    assert bare.live_latency_s() is None
    assert bare.passes_on() is None
    assert bare.takes_frames is False
    assert bare.concurrency is None
    assert concurrency(bare) == DEFAULT_CONCURRENCY
    assert describe_paths(bare) == [Readiness("bare", True)]
    assert iter_backends(bare) == [bare]
    await bare.start(None)
    await bare.close()
    await bare.aclose()


async def test_a_backend_without_takes_frames_sees_one_frame_per_call():
    bare = Bare()
    frames = [images.image(c, seed=i) for i, c in enumerate(["red", "green", "blue"])]
    animation = prepare(media_files.animation(frames), DecodeLimits())
    assert animation.animated
    signals = await judge_image(bare, animation)
    assert bare.frames_seen == [1] * len(animation.frames)
    assert signals.backend == "bare"


async def test_start_and_close_reach_the_backends_inside():
    log: list[str] = []
    a, b = Lifetime(log, "a"), Lifetime(log, "b")
    outer = Holder(a, Holder(b))
    assert iter_backends(outer)[0] is outer and {a, b} <= set(iter_backends(outer))
    await outer.start("the-store")
    await outer.aclose()  # the old name closes too
    assert log == ["start a the-store", "start b the-store", "close a", "close b"]


async def test_concurrency_is_the_most_any_path_declares():
    small, big = Bare(), Bare()
    small.concurrency, big.concurrency = 3, 12
    assert concurrency(Holder(small, Holder(big))) == 12


def test_every_built_in_backend_is_a_backend():
    from horde_scanner.backends.horde import HordeBackend
    from horde_scanner.backends.prescreen import PrescreenBackend
    from horde_scanner.backends.router import RoutedBackend
    from horde_scanner.backends.workers import WorkerPool

    for cls in (HordeBackend, PrescreenBackend, RoutedBackend, WorkerPool, MockBackend):
        assert issubclass(cls, Backend), cls


def test_no_backend_capability_is_probed_by_name():
    """Capabilities are methods and attributes of the base class: nothing asks whether a
    backend has one (getattr/hasattr) anywhere in the backends or where they are read."""
    root = Path(__file__).resolve().parents[3] / "horde_scanner"
    wrong = []
    for path in [*(root / "backends").glob("*.py"), *(root / "service").rglob("*.py")]:
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Name)
                and node.func.id in ("getattr", "hasattr")
                and node.args
                and "backend" in ast.unparse(node.args[0]).lower()
            ):
                wrong.append(f"{path.name}:{node.lineno} {ast.unparse(node)}")
    assert [w for w in wrong] == []
    backends = "".join(p.read_text() for p in (root / "backends").glob("*.py"))
    assert "getattr(" not in backends and "hasattr(" not in backends


def test_the_registry_names_every_kind_and_refuses_a_clash():
    assert backend_kinds()[:4] == ["auto", "horde", "local", "hybrid"]
    with pytest.raises(KeyError, match="unknown backend kind 'nope'; known: auto, horde"):
        backend_kind("nope")
    with pytest.raises(ValueError, match="is registered already"):
        register_backend("horde", lambda ctx: Bare())
    with pytest.raises(ValueError, match="built in"):
        unregister_backend("horde")
    with pytest.raises(ValueError, match="lower-case"):
        register_backend("Not A Name", lambda ctx: Bare())
    register_backend("bare_kind", lambda ctx: Bare())
    try:
        assert "bare_kind" in backend_kinds()
        assert isinstance(backend_kind("bare_kind").load()(None), Bare)
    finally:
        unregister_backend("bare_kind")
    assert "bare_kind" not in backend_kinds()
