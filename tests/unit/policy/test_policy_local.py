"""Policy rules for local scorers: CLIP phrases, pre-screen classes, worker booleans; and the
dynamic batcher on its own."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import pytest

from horde_scanner.backends.base import BackendUnavailable
from horde_scanner.policy.rules import (
    CLIP_PREFIX,
    PRESCREEN_PREFIX,
    WORKER_CSAM,
    Policy,
    PolicyError,
)
from horde_scanner.verdict import Label, Signals
from local_gpu.batching import DynamicBatcher


def clip(**scores: float) -> Signals:
    return Signals(
        backend="clip", scores={CLIP_PREFIX + k.replace("_", " "): v for k, v in scores.items()}
    )


@pytest.fixture
def policy(tmp_path: Path) -> Policy:
    path = tmp_path / "p.toml"
    path.write_text(
        'version = "t-1"\n[clip]\nunderage_phrases = ["a child"]\n'
        'sexual_phrases = ["a nude body"]\ncontrol_phrases = ["an adult"]\n'
        "underage_threshold = 0.2\nsexual_threshold = 0.25\ncontrol_margin = 0.02\n"
        '[prescreen]\nsexual_classes = ["ANUS_EXPOSED", "BUTTOCKS_EXPOSED"]\nthreshold = 0.4\n'
        "[prescreen.class_thresholds]\nBUTTOCKS_EXPOSED = 0.6\n"
    )
    return Policy.load(path)


def test_clip_csam_needs_both_cues(policy: Policy):
    assert policy.judge(clip(a_child=0.3, a_nude_body=0.3, an_adult=0.1)).label is Label.CSAM
    assert policy.judge(clip(a_child=0.1, a_nude_body=0.3, an_adult=0.1)).label is Label.NSFW
    assert policy.judge(clip(a_child=0.3, a_nude_body=0.2, an_adult=0.1)).label is Label.CLEAN
    verdict = policy.judge(clip(a_child=0.3, a_nude_body=0.3, an_adult=0.1))
    assert "clip: clip 'a child' 0.300" in verdict.reasons


def test_control_phrase_cancels_a_borderline_underage_cue(policy: Policy):
    # The adult phrase fits within the margin of the child phrase: not an underage cue.
    assert policy.judge(clip(a_child=0.3, a_nude_body=0.3, an_adult=0.29)).label is Label.NSFW
    assert policy.judge(clip(a_child=0.3, a_nude_body=0.3, an_adult=0.27)).label is Label.CSAM


def test_prescreen_classes_and_per_class_thresholds(policy: Policy):
    def pre(**scores: float) -> Signals:
        return Signals(
            backend="prescreen", scores={PRESCREEN_PREFIX + k: v for k, v in scores.items()}
        )

    assert policy.judge(pre(ANUS_EXPOSED=0.5)).label is Label.NSFW
    assert policy.judge(pre(BUTTOCKS_EXPOSED=0.5)).label is Label.CLEAN  # its own 0.6
    assert policy.judge(pre(FACE_FEMALE=0.99)).label is Label.CLEAN  # not a sexual class
    # A pre-screen hit plus an underage caption from the next backend is CSAM.
    merged = Signals(
        backend="horde", caption="a little girl", scores={PRESCREEN_PREFIX + "ANUS_EXPOSED": 0.9}
    )
    bundled = Policy.load()
    assert bundled.judge(merged).label is Label.CSAM


def test_worker_booleans(policy: Policy):
    says = Signals(backend="worker:w", nsfw=True, scores={WORKER_CSAM: 1.0})
    assert policy.judge(says).label is Label.CSAM
    assert policy.judge(says.model_copy(update={"scores": {WORKER_CSAM: 0.0}})).label is Label.NSFW


def test_bundled_policy_has_clip_phrases():
    policy = Policy.load()
    assert len(policy.clip.phrases) == len(set(policy.clip.phrases)) >= 10
    assert 0.15 < policy.clip.underage_threshold < 0.3
    assert "FEMALE_GENITALIA_EXPOSED" in policy.prescreen.sexual_classes


def test_bad_local_rules_name_the_key(tmp_path: Path):
    path = tmp_path / "p.toml"
    path.write_text('version = "x"\n[clip]\nunderage_phrases = "a child"\n')
    with pytest.raises(PolicyError, match="underage_phrases"):
        Policy.load(path)
    path.write_text('version = "x"\n[prescreen]\nthreshold = "high"\n')
    with pytest.raises(PolicyError, match=r"\[prescreen\].*threshold"):
        Policy.load(path)
    path.write_text('version = "x"\nclip = 3\n')
    with pytest.raises(PolicyError, match=r"\[clip\] must be a table"):
        Policy.load(path)


async def test_batcher_fills_batches_and_pushes_back():
    gate = threading.Event()
    seen: list[int] = []

    def run(batch: list[int]) -> list[int]:
        gate.wait(5)
        seen.append(len(batch))
        return [x * 2 for x in batch]

    batcher: DynamicBatcher[int, int] = DynamicBatcher(run, batch_size=4, wait_s=0.01, max_queue=5)
    first = asyncio.create_task(batcher.submit(0))  # runs alone, then blocks on the gate
    await asyncio.sleep(0.05)
    rest = [asyncio.create_task(batcher.submit(i)) for i in range(1, 6)]
    await asyncio.sleep(0.01)
    with pytest.raises(BackendUnavailable, match="5 requests queued"):
        await batcher.submit(99)
    gate.set()
    assert await first == 0
    assert [await t for t in rest] == [2, 4, 6, 8, 10]
    assert seen == [1, 4, 1] and batcher.largest_batch == 4
    await batcher.aclose()


async def test_batcher_failure_reaches_every_caller_and_it_keeps_going():
    calls = 0

    def run(batch: list[int]) -> list[int]:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("CUDA out of memory")
        return batch

    batcher: DynamicBatcher[int, int] = DynamicBatcher(run, batch_size=8, wait_s=0.02, max_queue=10)
    results = await asyncio.gather(*(batcher.submit(i) for i in range(3)), return_exceptions=True)
    assert all(isinstance(r, RuntimeError) for r in results)
    assert await batcher.submit(7) == 7
    await batcher.aclose()
