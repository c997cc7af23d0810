"""A cached verdict meets an embedding entry that arrived after it: the next lookup of the
image from the store (another replica, a restart, an answer no longer held in memory) matches
the embedding kept with its verdict against today's index, as the PDQ path does, with no
encoding; an admin's allow still lifts it."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from horde_scanner.backends.mock import MockBackend
from horde_scanner.signals.embedding_list import EmbeddingEntry
from horde_scanner.signals.vectors import from_blob
from horde_scanner.store.hashes import LOCAL
from horde_scanner.testing import textures
from horde_scanner.testing.pictrs import validate_upload
from horde_scanner.testing.service import make_settings, running_service
from horde_scanner.verdict import Signals
from tests.embedding_helpers import MODEL_ID

pytestmark = pytest.mark.timeout(120)
ADMIN = "admin-token-0123456789"


def always_clean(image: Image.Image) -> Signals:
    return Signals(backend="mock", nsfw=False, caption="a photo of a wall")


async def test_a_cached_clean_verdict_is_held_by_an_entry_that_came_later(
    tmp_path: Path, http, encoder: Path
):
    settings = make_settings(
        tmp_path / "a.db",
        "http://127.0.0.1:9/api",
        admin={"token": ADMIN},
        embeddings={
            "model_path": encoder,
            "model_id": MODEL_ID,
            "index_dir": tmp_path / "ix",
            "sync_interval_s": 0.1,
        },
    )
    image = textures.encode(textures.textured("green", seed=31))
    backend = MockBackend(always_clean)
    async with running_service(settings, backend=backend) as svc:
        first = await validate_upload(http, svc.scan_url(), image, "image/jpeg")
        assert first.status == 200, first.body
        store, judge = svc.parts.store, svc.parts.judge
        sha256 = first.body["sha256"]
        kept = await store.embedding_of(sha256, MODEL_ID)
        assert kept is not None  # kept with the verdict when the image was judged
        # Another instance's confirmed positive of the same picture arrives afterwards.
        await store.add_embedding_entries(LOCAL, MODEL_ID, [EmbeddingEntry(from_blob(kept[1]))])
        await store.bump_hash_generation()
        await svc.parts.embeddings.sync()  # type: ignore[union-attr]
        judged = backend.calls
        # As another replica or a restart finds it: in the store, not in this one's memory.
        judge.forget(sha256)
        again = await validate_upload(http, svc.scan_url(), image, "image/jpeg")
        assert again.status == 406 and again.body["route"] == "match", again.body
        assert "embedding match" in " ".join(again.body["reasons"])
        assert backend.calls == judged  # no new judgement: the cached verdict was re-checked

        # An admin's allow of the image lifts it again.
        async with http.post(
            f"{svc.url}/api/v1/admin/verdicts/{sha256}/allow",
            json={"by": "bob"},
            headers={"Authorization": f"Bearer {ADMIN}"},
        ) as resp:
            assert resp.status == 200, await resp.text()
        lifted = await validate_upload(http, svc.scan_url(), image, "image/jpeg")
        assert lifted.status == 200 and lifted.body["route"] == "allow", lifted.body
