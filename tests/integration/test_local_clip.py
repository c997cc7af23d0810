"""Local CLIP: a tiny random-weight model saved by the test and loaded by the real transformers
code, from a directory and from a Hugging Face cache layout; batching; the service and our own
worker judging with it."""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path

import aiohttp
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from horde_scanner.backends.kinds import build_backend  # noqa: E402
from horde_scanner.config import ConfigError  # noqa: E402
from horde_scanner.media.decode import DecodeLimits, prepare  # noqa: E402
from horde_scanner.policy.rules import CLIP_PREFIX, Policy  # noqa: E402
from horde_scanner.testing import images  # noqa: E402
from horde_scanner.testing.horde import FakeHorde  # noqa: E402
from horde_scanner.testing.pictrs import validate_upload  # noqa: E402
from horde_scanner.testing.service import make_settings, running_service  # noqa: E402
from horde_scanner.testing.tiny_clip import build_tiny_clip  # noqa: E402
from local_gpu.backend import LocalClipBackend  # noqa: E402
from local_gpu.clip import ClipScorer, ModelUnavailable  # noqa: E402
from local_gpu.worker import Worker  # noqa: E402

PHRASES = ["a photo of a child", "a nude body", "a photo of an adult woman", "a tree"]


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_clip(tmp_path_factory.mktemp("clip") / "tiny")


@pytest.fixture(scope="module")
def scorer(tiny_model: Path) -> ClipScorer:
    s = ClipScorer.load(model_dir=tiny_model, device="cpu")
    s.set_phrases(PHRASES)
    return s


def forced_policy(path: Path, threshold: float) -> Path:
    """A policy whose CLIP thresholds make every image csam (-1) or clean (above 1)."""
    path.write_text(
        f'version = "test-clip-{threshold}"\n[clip]\n'
        'underage_phrases = ["a photo of a child"]\nsexual_phrases = ["a nude body"]\n'
        f"control_phrases = []\nunderage_threshold = {threshold}\n"
        f"sexual_threshold = {threshold}\n"
    )
    return path


def test_scores_are_the_model_s_own_cosine_similarities(scorer: ClipScorer, tiny_model: Path):
    from transformers import AutoTokenizer, CLIPModel

    imgs = [images.image("green", seed=1), images.image("red", size=(300, 200), seed=2)]
    got = scorer.score(imgs)
    assert [sorted(g) for g in got] == [sorted(PHRASES)] * 2

    # Independently: CLIP's forward pass gives logit_scale * cosine similarity.
    model = CLIPModel.from_pretrained(tiny_model).eval()
    tok = AutoTokenizer.from_pretrained(tiny_model)
    enc = tok(PHRASES, padding=True, return_tensors="pt")
    pixels = torch.from_numpy(scorer.preprocess.pixels(imgs))
    with torch.inference_mode():
        out = model(
            input_ids=enc["input_ids"], attention_mask=enc["attention_mask"], pixel_values=pixels
        )
        cos = (out.logits_per_image / model.logit_scale.exp()).numpy()
    for row, expected in zip(got, cos, strict=True):
        for phrase, value in zip(PHRASES, expected, strict=True):
            assert row[phrase] == pytest.approx(float(value), abs=1e-4)
            assert -1.0 <= row[phrase] <= 1.0
    # Different images, different scores (the model really looked at the pixels).
    assert got[0] != got[1]


def test_preprocessing_follows_the_model_s_preprocessor_config(tmp_path: Path, tiny_model: Path):
    copy = Path(shutil.copytree(tiny_model, tmp_path / "m"))
    (copy / "preprocessor_config.json").write_text(
        json.dumps(
            {
                "size": {"shortest_edge": 40},
                "crop_size": {"height": 32, "width": 32},
                "image_mean": [0.5, 0.5, 0.5],
                "image_std": [0.25, 0.25, 0.25],
            }
        )
    )
    s = ClipScorer.load(model_dir=copy, device="cpu")
    assert (s.preprocess.resize, s.preprocess.crop) == (40, 32)
    assert s.preprocess.mean == (0.5, 0.5, 0.5)
    pixels = s.preprocess.pixels([images.image("yellow", size=(120, 60))])
    assert pixels.shape == (1, 3, 32, 32)
    # Pure white maps to (1 - 0.5) / 0.25 with these values.
    white = s.preprocess.pixels([images.Image.new("RGB", (50, 50), (255, 255, 255))])
    assert float(white.max()) == pytest.approx(2.0)
    # Without the file, CLIP's own values and the model's image size.
    default = ClipScorer.load(model_dir=tiny_model, device="cpu").preprocess
    assert default.crop == 32 and default.mean[0] == pytest.approx(0.48145466)


def test_phrase_embeddings_are_computed_once(tiny_model: Path):
    s = ClipScorer.load(model_dir=tiny_model, device="cpu")
    s.set_phrases(PHRASES)
    assert s.text_embeddings_computed == len(PHRASES)
    s.set_phrases(list(reversed(PHRASES)))
    assert s.text_embeddings_computed == len(PHRASES)
    s.set_phrases([*PHRASES, "a dog"])
    assert s.text_embeddings_computed == len(PHRASES) + 1
    assert s.phrases[-1] == "a dog"


async def test_concurrent_requests_share_batches(scorer: ClipScorer):
    backend = LocalClipBackend(scorer, PHRASES, batch_size=8, batch_wait_ms=50)
    limits = DecodeLimits()
    prepared = [prepare(images.jpeg("blue", seed=i), limits) for i in range(12)]
    try:
        results = await asyncio.gather(*(backend.judge(p) for p in prepared))
    finally:
        await backend.aclose()
    assert backend.batcher.items == 12
    assert backend.batcher.batches < 12 and backend.batcher.largest_batch > 1
    # Batched scores equal one-at-a-time scores.
    alone = scorer.score([prepared[5].image])[0]
    for phrase, value in alone.items():
        assert results[5].scores[CLIP_PREFIX + phrase] == pytest.approx(value, abs=1e-4)
    assert results[0].backend == "clip"


def test_load_errors_say_what_to_do(tmp_path: Path):
    with pytest.raises(ModelUnavailable, match="not a directory"):
        ClipScorer.load(model_dir=tmp_path / "missing", device="cpu")
    with pytest.raises(ModelUnavailable, match="local.model_dir"):
        ClipScorer.load(
            model="nobody/no-such-clip", cache_dir=tmp_path / "hub", offline=True, device="cpu"
        )
    if not torch.cuda.is_available():
        with pytest.raises(ModelUnavailable, match="no CUDA"):
            ClipScorer.load(model_dir=tmp_path, device="cuda")


def test_loads_a_hub_name_from_the_hugging_face_cache(tmp_path: Path, tiny_model: Path):
    # The layout huggingface_hub writes: models--ORG--NAME/{refs/main, snapshots/REV/...}.
    repo = tmp_path / "hub" / "models--tiny-org--tiny-clip"
    shutil.copytree(tiny_model, repo / "snapshots" / "0123abcd")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0123abcd")
    s = ClipScorer.load(
        model="tiny-org/tiny-clip", cache_dir=tmp_path / "hub", offline=True, device="cpu"
    )
    s.set_phrases(PHRASES)
    assert len(s.score([images.image()])[0]) == len(PHRASES)


@pytest.mark.parametrize("threshold, status, label", [(-1.0, 406, "csam"), (1.5, 200, "clean")])
async def test_service_judges_uploads_with_local_clip(
    tmp_path: Path, tiny_model: Path, threshold: float, status: int, label: str
):
    async with FakeHorde(latency=0.1) as horde:
        settings = make_settings(
            tmp_path / "s.db",
            horde.url,
            backend={"kind": "local"},
            local={"model_dir": tiny_model, "device": "cpu", "batch_wait_ms": 1},
            policy={"path": forced_policy(tmp_path / "p.toml", threshold)},
        )
        async with running_service(settings) as svc, aiohttp.ClientSession() as http:
            result = await validate_upload(http, svc.scan_url(), images.jpeg(seed=3), "image/jpeg")
            assert (result.status, result.body["label"]) == (status, label)
            if label == "csam":
                assert any("clip 'a photo of a child'" in r for r in result.body["reasons"])
            async with http.get(f"{svc.url}/readyz") as resp:
                ready = await resp.json()
        assert ready["paths"]["clip"]["live"] is True
        assert "cpu" in ready["paths"]["clip"]["detail"]
    assert horde.posts == 0  # local means local


async def test_auto_uses_in_process_clip_when_cuda_is_there(
    tmp_path: Path, tiny_model: Path, monkeypatch: pytest.MonkeyPatch
):
    import local_gpu

    settings = make_settings(
        tmp_path / "s.db",
        "http://127.0.0.1:9/api",
        local={"model_dir": tiny_model, "device": "cpu"},
    )
    async with aiohttp.ClientSession() as session:
        # This machine has no GPU: auto means the Horde.
        assert build_backend(settings, session).name == "horde"
        monkeypatch.setattr(local_gpu, "cuda_available", lambda: True)
        backend = build_backend(settings, session)
        assert backend.name == "clip"
        await backend.aclose()
        broken = make_settings(
            tmp_path / "s.db",
            "http://127.0.0.1:9/api",
            local={"model_dir": tmp_path / "nothing", "device": "cpu"},
        )
        with pytest.raises(ConfigError, match="local: local.model_dir"):
            build_backend(broken, session)


async def test_our_worker_scores_the_service_s_phrases_with_clip(tmp_path: Path, tiny_model: Path):
    policy_path = forced_policy(tmp_path / "p.toml", -1.0)
    async with FakeHorde(latency=0.1) as horde:
        settings = make_settings(
            tmp_path / "s.db",
            horde.url,
            backend={"kind": "local"},
            local={"in_process": False},
            workers={"keys": ["gpu-key"]},
            policy={"path": policy_path},
        )
        async with running_service(settings) as svc, aiohttp.ClientSession() as http:
            scorer = ClipScorer.load(model_dir=tiny_model, device="cpu")
            backend = LocalClipBackend(scorer, Policy.load().clip.phrases, batch_wait_ms=1)
            worker = Worker(
                svc.url, "gpu-key", backend, name="gpu-1", concurrency=2, poll_wait_s=0.5
            )
            stop = asyncio.Event()
            run = asyncio.create_task(worker.run(stop))
            pool = svc.parts.workers
            while not pool.live_workers():
                await asyncio.sleep(0.02)
            # It scores the service's phrases, not its own bundled ones.
            assert set(scorer.phrases) == {"a photo of a child", "a nude body"}
            result = await validate_upload(http, svc.scan_url(), images.jpeg(seed=4), "image/jpeg")
            stop.set()
            stats = await run
            await backend.aclose()
        assert result.status == 406 and result.body["label"] == "csam"
        assert any(r.startswith("worker:key1/gpu-1: clip") for r in result.body["reasons"])
        assert stats.judged == 1 and pool.workers["key1/gpu-1"].answered == 1


def test_worker_command_reports_bad_arguments(tmp_path: Path):
    from click.testing import CliRunner

    from horde_scanner.cli import main

    runner = CliRunner()
    result = runner.invoke(main, ["worker", "--server", "scanner:14051", "--key", "k"])
    assert result.exit_code == 2 and "http:// or https://" in result.output
    result = runner.invoke(
        main,
        [
            "--db",
            str(tmp_path / "s.db"),
            "worker",
            "--server",
            "http://127.0.0.1:9",
            "--key",
            "k",
            "--model-dir",
            str(tmp_path / "none"),
            "--device",
            "cpu",
        ],
    )
    assert result.exit_code == 4 and "not a directory" in result.output


async def test_the_worker_command_decodes_with_the_configured_media_limits(
    tmp_path: Path, tiny_model: Path
):
    """`horde-scanner worker` takes every [media] limit from its config (MediaSettings.limits),
    not defaults: a job over its own pixel limit is answered as an error naming that limit."""
    import os
    import subprocess
    import sys

    settings = make_settings(
        tmp_path / "s.db",
        "http://127.0.0.1:9/api",
        backend={"kind": "local"},
        local={"in_process": False},
        workers={"keys": ["gpu-key"]},
        validation={"deadline_s": 20.0},
    )
    env = {
        **os.environ,
        "HORDE_SCANNER_MEDIA__MAX_PIXELS": "1000",
        "HORDE_SCANNER_STORE__PATH": str(tmp_path / "worker.db"),
    }
    async with running_service(settings) as svc, aiohttp.ClientSession() as http:
        command = [
            sys.executable, "-m", "horde_scanner.cli", "worker", "--server", svc.url,
            "--key", "gpu-key", "--name", "limits", "--model-dir", str(tiny_model),
            "--device", "cpu", "--poll-wait", "0.5",
        ]  # fmt: skip
        worker = await asyncio.create_subprocess_exec(
            *command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
        )
        try:
            pool = svc.parts.workers
            async with asyncio.timeout(120):
                while not pool.live_workers():
                    assert worker.returncode is None
                    await asyncio.sleep(0.1)
            result = await validate_upload(
                http, svc.scan_url(), images.jpeg(size=(300, 200), seed=9), "image/jpeg"
            )
        finally:
            worker.terminate()
            await worker.wait()
    assert result.body["label"] == "error", result.body
    (reason,) = result.body["reasons"]
    assert "could not judge" in reason and "limit of 1000 pixels" in reason
