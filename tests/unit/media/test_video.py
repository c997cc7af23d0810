"""Animations and video: frames sampled, judged as a batch, the worst frame named; bounded
decoding of bad input. Files are made by the tests (Pillow, PyAV's own encoders); the service
runs for real over loopback with the fake AI Horde or the in-process MockBackend."""

from __future__ import annotations

import asyncio
import io
import time
from pathlib import Path

import aiohttp
import av
import pytest

from horde_scanner.backends.base import judge_image
from horde_scanner.backends.horde import HordeBackend
from horde_scanner.backends.mock import MockBackend, colour_marker_signals
from horde_scanner.backends.prescreen import CLEARED, PrescreenBackend
from horde_scanner.config import HordeSettings
from horde_scanner.media.decode import DecodeLimits, UnreadableMedia, decode, prepare
from horde_scanner.media.hashing import sha256_hex
from horde_scanner.policy import frames as framesignals
from horde_scanner.policy.rules import Policy
from horde_scanner.runtime.sweeps import run_scan
from horde_scanner.store.sqlite import Store
from horde_scanner.testing import images
from horde_scanner.testing.horde import FakeHorde
from horde_scanner.testing.pictrs import validate_upload
from horde_scanner.testing.service import make_settings, running_service
from horde_scanner.verdict import Label
from tests import media_files as mf
from tests.scan_helpers import scan_settings

MARKED = 6  # the one red frame of twelve


def marked(kind: str) -> tuple[bytes, str]:
    """A file of twelve frames where only frame 6 is red, and its Content-Type."""
    scene = mf.frames("green", count=12, marker=MARKED)
    if kind in mf.VIDEO_CODECS:
        return mf.video(scene, kind), {
            "mp4": "video/mp4",
            "webm": "video/webm",
            "mkv": "video/x-matroska",
        }[kind]
    fmt, ctype = {
        "gif": ("GIF", "image/gif"),
        "apng": ("PNG", "image/apng"),
        "webp": ("WEBP", "image/webp"),
        "avif": ("AVIF", "image/avif"),
    }[kind]
    return mf.animation(scene, fmt), ctype


@pytest.fixture
async def http():
    async with aiohttp.ClientSession() as session:
        yield session


def test_wheel_carries_the_encoders_the_tests_use():
    for codec, _ in mf.VIDEO_CODECS.values():
        assert av.codec.Codec(codec, "w").name


@pytest.mark.parametrize("kind", ["gif", "apng", "webp", "avif", "mp4", "webm", "mkv"])
def test_sample_starts_with_the_first_frame_and_holds_the_marker(kind: str):
    data, ctype = marked(kind)
    decoded = decode(data, DecodeLimits())
    assert decoded.media_type == ctype
    assert decoded.frame_count == 12
    frames = decoded.frames
    assert frames[0].index == 0 and frames[0].time_s == 0.0
    assert 1 < len(frames) <= 8
    assert [f.index for f in frames] == sorted(f.index for f in frames)
    red = [f for f in frames if colour_marker_signals(f.image).nsfw]
    assert [f.index for f in red] == [MARKED]
    assert red[0].time_s == pytest.approx(MARKED * (0.1 if ctype.startswith("image") else 0.25))


def test_still_scenes_collapse_to_distinct_frames():
    # Eleven identical green frames and one red one: two frames are worth judging.
    video = mf.video(mf.frames("green", count=12, marker=MARKED, moving=False), "mp4")
    frames = decode(video, DecodeLimits()).frames
    assert [f.index for f in frames] == [0, MARKED]
    moving = decode(mf.animation(mf.frames(count=40)), DecodeLimits(max_frames=5)).frames
    assert len(moving) == 5 and moving[0].index == 0 and moving[-1].index > 30


@pytest.mark.parametrize("kind", ["gif", "webp", "mp4", "webm"])
async def test_marker_frame_rejects_the_upload_and_is_named(tmp_path: Path, http, kind: str):
    data, ctype = marked(kind)
    clean = mf.animation(mf.frames("green", count=12), "GIF")
    backend = MockBackend()
    settings = make_settings(tmp_path / "v.db", "http://127.0.0.1:9")
    async with running_service(settings, backend=backend) as svc:
        result = await validate_upload(http, svc.scan_url(), data, ctype)
        assert result.status == 406, result.body
        assert result.body["label"] == "csam"
        assert any(r.startswith(f"frame {MARKED} at ") for r in result.body["reasons"])
        ok = await validate_upload(http, svc.scan_url(), clean, "image/gif")
        assert ok.status == 200 and ok.body["label"] == "clean"
        assert "frames judged, none flagged" in ok.body["reasons"][0]
        # Every sampled frame's PDQ joined the hash store, by frame; of the positive, only the
        # marked frame stays (its harmless frames must never become deny entries).
        store = svc.parts.judge.hashes.store
        clean_frames = decode(clean, DecodeLimits()).frames
        kept = [h.frame for h in await store.pdq_of(sha256_hex(clean))]
        assert kept == [f.index for f in clean_frames] and len(kept) > 1
        assert [h.frame for h in await store.pdq_of(sha256_hex(data))] == [MARKED]


async def test_fake_horde_sees_each_frame_and_policy_rejudges(tmp_path: Path, http):
    data, ctype = marked("mp4")
    async with FakeHorde(latency=0.05) as horde:
        settings = make_settings(tmp_path / "h.db", horde.url)
        async with running_service(settings) as svc:
            result = await validate_upload(http, svc.scan_url(), data, ctype)
            assert result.status == 406 and result.body["label"] == "csam"
            assert any(f"frame {MARKED} at 1.50 s: horde:" in r for r in result.body["reasons"])
            # One request per sampled frame (the rest were near-duplicates of frame 0).
            assert horde.posts == len(decode(data, DecodeLimits()).frames)
    # Stored signals keep every frame: a new policy re-judges without asking anyone.
    store = await Store.open(tmp_path / "h.db")
    try:
        stored = await store.get_verdict(sha256_hex(data))
    finally:
        await store.close()
    assert stored is not None and stored.verdict.signals is not None
    parts = framesignals.split(stored.verdict.signals)
    assert parts is not None and len(parts) >= 2
    again = Policy.load().judge(stored.verdict.signals)
    assert again.label is Label.CSAM and again.reasons == stored.verdict.reasons


async def test_horde_packs_four_frames_per_request():
    scene = mf.frames("magenta", count=8, size=(128, 128))
    prepared = prepare(mf.animation(scene), DecodeLimits())
    async with FakeHorde(latency=0.0) as horde, aiohttp.ClientSession() as session:
        settings = HordeSettings(
            url=horde.url,
            poll_interval_s=0.1,
            pack_frames=True,
            api_key="0000000000",
        )
        signals = await HordeBackend(settings, session).judge(prepared)
        assert horde.posts == -(-len(prepared.frames) // 4)
    parts = framesignals.split(signals)
    assert parts is not None and all(len(ix) <= 4 for ix, _, _ in parts)
    verdict = Policy.load().judge(signals)
    assert verdict.label is Label.NSFW
    assert "(packed into one image)" in verdict.reasons[0]


class _RedDetector:
    """A stand-in for the nudity detector: red frames score high, the rest nothing."""

    def __init__(self) -> None:
        self.calls = 0

    def scores(self, image):
        self.calls += 1
        hit = colour_marker_signals(image).nsfw
        return {"FEMALE_BREAST_EXPOSED": 0.9 if hit else 0.01}


async def test_prescreen_sends_on_only_the_frames_it_did_not_clear():
    prepared = prepare(marked("gif")[0], DecodeLimits())
    policy = Policy.load()
    behind = MockBackend()
    prescreen = PrescreenBackend(_RedDetector(), policy.prescreen, behind)
    try:
        signals = await judge_image(prescreen, prepared)
        assert behind.calls == 1  # only the red frame went on
        verdict = policy.judge(signals)
        assert verdict.label is Label.CSAM
        assert verdict.reasons[0].startswith(f"frame {MARKED} at 0.60 s: ")
        clean = prepare(mf.animation(mf.frames(count=12)), DecodeLimits())
        cleared = await judge_image(prescreen, clean)
        assert cleared.extra["prescreen"] == CLEARED and behind.calls == 1
        assert policy.judge(cleared).label is Label.CLEAN
    finally:
        await prescreen.aclose()


def _zero_frame_video(fmt: str) -> bytes:
    out = io.BytesIO()
    with av.open(out, mode="w", format=fmt) as muxer:
        stream = muxer.add_stream("libx264" if fmt == "mp4" else "libvpx", rate=4)
        stream.width, stream.height = 64, 64
        muxer.start_encoding()  # header and an empty video track, no frame
    return out.getvalue()


BAD_INPUT = {
    "truncated gif": (lambda: marked("gif")[0][:300], "image/gif", "image/gif: cannot decode"),
    "truncated mp4": (lambda: marked("mp4")[0][:-600], "video/mp4", "video/mp4: no video frames"),
    "truncated webm": (lambda: marked("webm")[0][:400], "video/webm", "video/webm: cannot decode"),
    "not a video, sent as video/webm": (
        lambda: images.jpeg()[:2] + b"\0" * 4000,
        "video/webm",
        "not a known image or video",
    ),
    "zero-frame mp4": (lambda: _zero_frame_video("mp4"), "video/mp4", "no video frames"),
    "zero-frame webm": (lambda: _zero_frame_video("webm"), "video/webm", "video/webm: cannot"),
    "10,000-frame gif": (lambda: mf.gif_screen(8, 8, 10_000), "image/gif", "10000 frames"),
    "16k x 16k frame": (lambda: mf.gif_screen(16_000, 16_000, 2), "image/gif", "decode limit"),
}


@pytest.mark.parametrize("case", list(BAD_INPUT))
async def test_bad_input_answered_in_time_with_a_reason(tmp_path: Path, http, case: str):
    make, ctype, why = BAD_INPUT[case]
    data = make()
    settings = make_settings(
        tmp_path / "b.db",
        "http://127.0.0.1:9",
        validation={"deadline_s": 2.0, "on_unreadable": "reject"},
    )
    async with running_service(settings, backend=MockBackend()) as svc:
        started = time.monotonic()
        result = await validate_upload(http, svc.scan_url(), data, ctype)
        took = time.monotonic() - started
    assert took < 5.0  # answered, not hung (the deadline is 2 s)
    assert result.body["label"] == "unreadable", result.body
    assert result.status == 406  # on_unreadable = reject
    assert any(why in r for r in result.body["reasons"]), result.body["reasons"]


def test_decode_time_bound_makes_a_file_unreadable():
    data = mf.animation(mf.frames(count=30))
    with pytest.raises(UnreadableMedia, match="longer than"):
        decode(data, DecodeLimits(max_decode_s=0.0))
    with pytest.raises(UnreadableMedia, match="pixels in all"):
        decode(data, DecodeLimits(max_total_pixels=160 * 120 * 10))


async def test_validation_deadline_holds_and_the_video_is_judged_later(tmp_path: Path, http):
    data, ctype = marked("mp4")
    backend = MockBackend(delay_s=0.6)  # per frame; frames run concurrently
    settings = make_settings(
        tmp_path / "d.db",
        "http://127.0.0.1:9",
        validation={"deadline_s": 0.3, "on_timeout": "accept"},
    )
    async with running_service(settings, backend=backend) as svc:
        first = await validate_upload(http, svc.scan_url(), data, ctype)
        assert first.status == 200 and first.body["route"] == "timeout"
        sha = sha256_hex(data)
        for _ in range(100):
            outcome = await svc.parts.judge.lookup(sha)
            if outcome is not None:
                break
            await asyncio.sleep(0.05)
        assert outcome is not None and outcome.label is Label.CSAM
        assert any(r.startswith(f"frame {MARKED} ") for r in outcome.verdict.reasons)


async def test_sweep_over_a_tree_with_videos(tmp_path: Path):
    root = tmp_path / "files"
    (root / "a" / "b").mkdir(parents=True)
    tree = {
        "a/clean-video": mf.video(mf.frames(count=12), "mp4"),
        "a/b/marked-video": marked("webm")[0],
        "a/marked-gif": marked("gif")[0],
        "a/b/clean-apng": mf.animation(mf.frames(count=6), "PNG"),
        "a/photo": images.jpeg("green", seed=3),
        "a/broken-video": marked("mp4")[0][:500],
    }
    for name, data in tree.items():
        (root / name).write_bytes(data)
    settings = scan_settings(tmp_path / "s.db")
    report = await run_scan(settings, str(root), backend=MockBackend())
    c = report.counts
    assert c.csam == 2 and c.clean == 3 and c.unreadable == 1
    assert sorted(p[0] for p in report.positives) == ["a/b/marked-video", "a/marked-gif"]


async def test_wrong_container_for_its_content_type_is_judged_by_its_bytes(tmp_path: Path, http):
    gif, _ = marked("gif")
    settings = make_settings(tmp_path / "w.db", "http://127.0.0.1:9")
    async with running_service(settings, backend=MockBackend()) as svc:
        result = await validate_upload(http, svc.scan_url(), gif, "video/mp4")
    assert result.status == 406 and result.body["label"] == "csam"
    assert any(r.startswith(f"frame {MARKED} at 0.60 s") for r in result.body["reasons"])
