"""Of an animation, more than the first frame is encoded (up to embeddings.max_frames of the
frames PDQ hashed): a listed picture in its second frame holds it, with the frame named in the
reason; with max_frames = 1 only the first frame counts."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from horde_scanner.backends.mock import MockBackend
from horde_scanner.signals.embedding_list import EmbeddingEntry
from horde_scanner.signals.encoder import ImageEncoder
from horde_scanner.store.hashes import LOCAL
from horde_scanner.testing import textures
from horde_scanner.testing.pictrs import validate_upload
from horde_scanner.testing.service import make_settings, running_service
from horde_scanner.verdict import Signals
from tests.embedding_helpers import MODEL_ID, PREPROCESS
from tests.media_files import animation

pytestmark = pytest.mark.timeout(120)


def always_clean(image: Image.Image) -> Signals:
    return Signals(backend="mock", nsfw=False, caption="a photo of a wall")


@pytest.mark.parametrize("max_frames", [4, 1])
async def test_a_listed_picture_in_a_later_frame_holds_the_animation(
    tmp_path: Path, http, encoder: Path, max_frames: int
):
    listed = textures.textured("red", seed=81, size=(256, 256))
    benign = textures.textured("green", seed=82, size=(256, 256))
    settings = make_settings(
        tmp_path / "a.db",
        "http://127.0.0.1:9/api",
        embeddings={
            "model_path": encoder,
            "model_id": MODEL_ID,
            "index_dir": tmp_path / "ix",
            "max_frames": max_frames,
        },
    )
    vector = ImageEncoder(encoder, PREPROCESS, 512).encode(listed)
    async with running_service(settings, backend=MockBackend(always_clean)) as svc:
        matcher = svc.parts.embeddings
        assert matcher is not None
        await svc.parts.store.add_embedding_entries(LOCAL, MODEL_ID, [EmbeddingEntry(vector)])
        await matcher.sync()
        data = animation([benign, listed], "PNG", duration_ms=500)
        result = await validate_upload(http, svc.scan_url(), data, "image/apng")
        if max_frames == 1:
            assert result.status == 200, result.body  # the first frame alone is benign
        else:
            assert result.status == 406 and result.body["route"] == "match", result.body
            assert "embedding match in frame 1" in " ".join(result.body["reasons"])
