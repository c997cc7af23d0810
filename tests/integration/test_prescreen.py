"""The CPU pre-screen with NudeNet's real bundled model on generated images."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import aiohttp
import numpy as np
import pytest
from PIL import Image, ImageDraw

pytest.importorskip("onnxruntime")
pytest.importorskip("nudenet")

from horde_scanner.backends.kinds import build_backend  # noqa: E402
from horde_scanner.backends.mock import MockBackend  # noqa: E402
from horde_scanner.backends.nudenet import NudityDetector, nudenet_classes  # noqa: E402
from horde_scanner.backends.prescreen import CLEARED, PrescreenBackend  # noqa: E402
from horde_scanner.config import ConfigError  # noqa: E402
from horde_scanner.media.decode import DecodeLimits, prepare  # noqa: E402
from horde_scanner.media.hashing import sha256_hex  # noqa: E402
from horde_scanner.policy.rules import PRESCREEN_PREFIX, Policy  # noqa: E402
from horde_scanner.testing import images  # noqa: E402
from horde_scanner.testing.horde import FakeHorde  # noqa: E402
from horde_scanner.testing.pictrs import validate_upload  # noqa: E402
from horde_scanner.testing.service import make_settings, running_service  # noqa: E402
from horde_scanner.verdict import Label  # noqa: E402


@pytest.fixture(scope="module")
def detector() -> NudityDetector:
    return NudityDetector()


def scenes() -> list[Image.Image]:
    """Everyday-looking synthetic pictures: flat colours, a gradient sky, shapes, noise."""
    out = [images.image(c, size=(512, 384), seed=i) for i, c in enumerate(images.COLOURS)]
    sky = np.zeros((512, 512, 3), np.uint8)
    sky[..., 2] = np.linspace(255, 120, 512, dtype=np.uint8)[:, None]
    sky[..., 1] = 160
    scene = Image.fromarray(sky)
    draw = ImageDraw.Draw(scene)
    draw.rectangle((0, 380, 512, 512), fill=(60, 130, 50))
    draw.ellipse((380, 40, 460, 120), fill=(250, 230, 90))
    draw.polygon([(100, 380), (160, 220), (220, 380)], fill=(30, 90, 40))
    out.append(scene)
    out.append(
        Image.fromarray(np.random.default_rng(1).integers(0, 256, (384, 512, 3), dtype=np.uint8))
    )
    return out


def test_real_model_scores_every_class(detector: NudityDetector):
    for image in scenes():
        scores = detector.scores(image)
        assert list(scores) == nudenet_classes() and len(scores) == 18
        assert all(0.0 <= s <= 1.0 for s in scores.values())
    policy = Policy.load()
    # None of these scenes shows a body: the bundled thresholds clear them all.
    for image in scenes():
        prefixed = {PRESCREEN_PREFIX + c: s for c, s in detector.scores(image).items()}
        assert policy.prescreen.hits(prefixed) == []


def test_preprocessing_matches_nudenet_s_own(detector: NudityDetector):
    from nudenet.nudenet import _read_image  # OpenCV-based; comes with the nudenet wheel

    # The model wants RGB (NudeNet 3.0 converted BGR2RGB after imread). 3.4's reader swaps
    # channels twice (RGBA2BGR on a 3-channel array, then swapRB), so it yields RGB when handed
    # RGB: that compares padding, scaling and value range, which is what this test is about.
    for image in scenes()[:3] + [scenes()[-2]]:
        theirs = _read_image(np.asarray(image).copy(), 320)[0]
        ours = detector.blob(image)
        assert ours.shape == theirs.shape == (1, 3, 320, 320)
        assert float(np.abs(ours - theirs).mean()) < 0.01


async def test_clean_images_are_answered_without_the_next_backend(detector: NudityDetector):
    nxt = MockBackend()
    backend = PrescreenBackend(detector, Policy.load().prescreen, nxt, threads=2)
    limits = DecodeLimits()
    try:
        results = await asyncio.gather(
            *(
                backend.judge(prepare(images.jpeg(c, seed=i), limits))
                for i, c in enumerate(["red", "green", "magenta"])
            )
        )
    finally:
        await backend.aclose()
    assert nxt.calls == 0 and backend.cleared == 3
    assert all(s.backend == "prescreen" and s.extra["prescreen"] == CLEARED for s in results)
    assert all(Policy.load().judge(s).label is Label.CLEAN for s in results)


def strict_policy(path: Path) -> Path:
    """A policy under which the detector's faintest FEET_COVERED score is a hit."""
    path.write_text(
        'version = "strict-1"\n[horde]\nunderage_words = ["girl"]\nsexual_words = ["naked"]\n'
        '[prescreen]\nsexual_classes = ["FEET_COVERED"]\nthreshold = 0.0\n'
    )
    return path


async def test_hits_go_on_to_the_next_backend_with_the_scores(tmp_path: Path, detector):
    policy = Policy.load(strict_policy(tmp_path / "p.toml"))
    nxt = MockBackend()
    backend = PrescreenBackend(detector, policy.prescreen, nxt)
    signals = await backend.judge(prepare(images.jpeg("red", seed=1), DecodeLimits()))
    await backend.aclose()
    assert nxt.calls == 1 and signals.backend == "mock"
    assert PRESCREEN_PREFIX + "FEET_COVERED" in signals.scores
    verdict = policy.judge(signals)
    assert verdict.label is Label.CSAM
    assert any(r.startswith("prescreen: FEET_COVERED") for r in verdict.reasons)


async def test_busy_pre_screen_hands_images_on_instead_of_queueing():
    release = threading.Event()

    class SlowDetector:
        def scores(self, image: Image.Image) -> dict[str, float]:
            release.wait(5)
            return {c: 0.0 for c in nudenet_classes()}

    nxt = MockBackend()
    backend = PrescreenBackend(SlowDetector(), Policy.load().prescreen, nxt, threads=1, max_queue=1)
    image = prepare(images.jpeg(), DecodeLimits())
    first = asyncio.create_task(backend.judge(image))
    await asyncio.sleep(0.05)
    second = await backend.judge(image)  # the queue is full: straight to the next backend
    release.set()
    assert (await first).backend == "prescreen"
    assert second.backend == "mock" and backend.skipped == 1
    await backend.aclose()


async def test_service_answers_clean_uploads_locally(tmp_path: Path):
    async with FakeHorde(latency=0.3) as horde, aiohttp.ClientSession() as http:
        settings = make_settings(
            tmp_path / "s.db", horde.url, backend={"kind": "horde"}, prescreen={"enabled": True}
        )
        async with running_service(settings) as svc:
            result = await validate_upload(
                http, svc.scan_url(), images.jpeg("red", seed=2), "image/jpeg"
            )
            async with http.get(f"{svc.url}/readyz") as resp:
                ready = await resp.json()
        assert (result.status, result.body["label"]) == (200, "clean")
        assert result.body["route"] == "backend" and horde.posts == 0
        assert ready["paths"]["prescreen"]["live"] and ready["paths"]["horde"]["live"]
        assert "1 cleared" in ready["paths"]["prescreen"]["detail"]

        # Under a stricter policy the same kind of image goes on to the Horde.
        strict = make_settings(
            tmp_path / "t.db",
            horde.url,
            backend={"kind": "horde"},
            prescreen={"enabled": True},
            policy={"path": strict_policy(tmp_path / "p.toml")},
        )
        async with running_service(strict) as svc:
            result = await validate_upload(
                http, svc.scan_url(), images.jpeg("red", seed=3), "image/jpeg"
            )
        assert result.status == 406 and horde.posts == 1


async def test_second_opinion_overrules_a_clear_in_the_background(tmp_path: Path):
    red = images.jpeg("red", seed=4)
    async with FakeHorde(latency=0.3) as horde, aiohttp.ClientSession() as http:
        settings = make_settings(
            tmp_path / "s.db",
            horde.url,
            backend={"kind": "horde"},
            prescreen={"enabled": True, "second_opinion": True},
        )
        async with running_service(settings) as svc:
            first = await validate_upload(http, svc.scan_url(), red, "image/jpeg")
            assert first.status == 200 and first.body["label"] == "clean"
            store = svc.parts.store
            for _ in range(100):
                late = await store.late_positives()
                if late:
                    break
                await asyncio.sleep(0.1)
            stored = await store.get_verdict(sha256_hex(red))
            again = await validate_upload(http, svc.scan_url(), red, "image/jpeg")
            trail = [a.event for a in await store.audit_trail(sha256_hex(red))]
    assert late and late[0].label == "csam"
    assert stored.verdict.label is Label.CSAM
    assert again.status == 406 and again.body["route"] == "cache"
    assert "second_opinion" in trail and horde.posts == 1


async def test_missing_model_is_a_config_error(tmp_path: Path):
    settings = make_settings(
        tmp_path / "s.db",
        "http://127.0.0.1:9/api",
        backend={"kind": "horde"},
        prescreen={"enabled": True, "model_path": tmp_path / "no.onnx"},
    )
    async with aiohttp.ClientSession() as session:
        with pytest.raises(ConfigError, match="prescreen: prescreen.model_path"):
            build_backend(settings, session)
        (tmp_path / "bad.onnx").write_bytes(b"not a model")
        bad = settings.model_copy(deep=True)
        bad.prescreen.model_path = tmp_path / "bad.onnx"
        with pytest.raises(ConfigError, match="cannot load pre-screen model"):
            build_backend(bad, session)
