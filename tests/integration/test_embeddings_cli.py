"""The embedding commands as an admin runs them: `models export` (its export code on a model
the test builds; without open_clip a clear message), `embeddings import / export` in the
JSON and HMA forms, and `embeddings calibrate DIR`."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from horde_scanner.signals.embedding_list import EmbeddingEntry, Model, dump_hma, dump_json
from horde_scanner.signals.encoder import ImageEncoder
from horde_scanner.signals.export import export_encoder
from horde_scanner.signals.vectors import to_hex
from horde_scanner.testing import textures
from horde_scanner.testing.tiny_encoder import tiny_encoder, write_tiny_encoder
from tests.embedding_helpers import MODEL_ID, PREPROCESS, unit_vectors

pytestmark = pytest.mark.timeout(180)


@pytest.fixture
def cli(tmp_path: Path, encoder: Path):
    env = {
        **os.environ,
        "HORDE_SCANNER_STORE__PATH": str(tmp_path / "cli.db"),
        "HORDE_SCANNER_EMBEDDINGS__MODEL_PATH": str(encoder),
        "HORDE_SCANNER_EMBEDDINGS__MODEL_ID": MODEL_ID,
    }

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "horde_scanner.cli", *args],
            env=env,
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=150,
        )

    return run


def test_the_exported_encoder_gives_the_torch_models_embedding(tmp_path: Path):
    import torch

    module = tiny_encoder(seed=3)
    path = export_encoder(module, tmp_path / "m.onnx")
    encoder = ImageEncoder(path, PREPROCESS, 512)
    picture = textures.textured("blue", seed=5, size=(300, 200))
    pixels = torch.from_numpy(encoder.preprocess.pixels(picture)[None])
    with torch.no_grad():
        expected = torch.nn.functional.normalize(module(pixels), dim=-1)[0].numpy()
    assert np.allclose(encoder.encode(picture), expected, atol=1e-5)
    # Batches of any size (the export's batch axis is dynamic).
    assert encoder._run(np.zeros((3, 3, 224, 224), np.float32)).shape == (3, 512)


def test_models_export_without_open_clip_says_what_to_install(cli, tmp_path: Path):
    result = cli("models", "export", "--output", str(tmp_path / "clip.onnx"))
    assert result.returncode == 4
    assert "open_clip" in result.stderr and "horde-scanner[export]" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "clip.onnx").exists()


def test_a_wrong_model_file_is_refused_with_its_shape(tmp_path: Path):
    from horde_scanner.signals.encoder import EncoderUnavailable

    path = write_tiny_encoder(tmp_path / "small.onnx", dim=64)
    with pytest.raises(EncoderUnavailable, match=r"shape \(1, 64\), embeddings.dim says 512"):
        ImageEncoder(path, PREPROCESS, 512)
    (tmp_path / "junk.onnx").write_bytes(b"not a model")
    with pytest.raises(EncoderUnavailable, match="cannot load image encoder"):
        ImageEncoder(tmp_path / "junk.onnx", PREPROCESS, 512)


def test_import_and_export_in_both_forms(cli, tmp_path: Path):
    vectors = unit_vectors(3)
    hma = tmp_path / "from-hma.txt"
    hma.write_text(dump_hma(EmbeddingEntry(v) for v in vectors[:2]) + "zz\n")
    # An HMA file has no header: the admin names the model.
    refused = cli("embeddings", "import", str(hma))
    assert refused.returncode == 2 and "--model" in refused.stderr
    wrong = cli("embeddings", "import", str(hma), "--model", "another-clip")
    assert wrong.returncode == 2 and "another-clip" in wrong.stderr
    done = cli("embeddings", "import", str(hma), "--model", MODEL_ID, "--source", "hma.example")
    assert done.returncode == 1  # one bad row, reported with its line
    assert "line 3" in done.stderr and "imported 2 entries" in done.stdout

    other = tmp_path / "other.json"
    other.write_text(
        dump_json(Model("another-clip", PREPROCESS, 512), [EmbeddingEntry(vectors[2])])
    )
    refused = cli("embeddings", "import", str(other))
    assert refused.returncode == 2 and "another-clip" in refused.stderr

    exported = cli("embeddings", "export", "--format", "hma")
    assert exported.returncode == 0, exported.stderr
    assert sorted(exported.stdout.split()) == sorted(to_hex(v) for v in vectors[:2])
    as_json = cli("embeddings", "export")
    assert f'"model": "{MODEL_ID}"' in as_json.stdout and "hma.example" in as_json.stdout


def test_calibrate_prints_both_distributions_and_the_false_match_rates(cli, tmp_path: Path):
    images = tmp_path / "benign"
    images.mkdir()
    for i in range(6):
        colour = ("green", "blue", "red")[i % 3]
        textures.textured(colour, seed=200 + i, size=(320, 240)).save(images / f"{i}.jpg")
    (images / "broken.jpg").write_bytes(b"not an image")
    result = cli("embeddings", "calibrate", str(images), "--index-size", "100000")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "6 images, 15 unrelated pairs" in out
    for variant in ("jpeg-q30", "resize-50%", "crop-10%", "crop-30%", "flip", "text-overlay"):
        assert variant in out
    assert "false match per query at 100,000 entries" in out
    assert "0.90" in out
    assert "broken.jpg: skipped" in result.stderr
