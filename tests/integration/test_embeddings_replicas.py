"""Replicas on one PostgreSQL database keep their embedding indexes in step: an entry imported
anywhere reaches every replica through the store's notification, not a poll."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from horde_scanner.signals.embedding_list import EmbeddingEntry, dump_hma
from horde_scanner.signals.encoder import ImageEncoder
from horde_scanner.testing import textures
from horde_scanner.testing.pictrs import validate_upload
from horde_scanner.testing.replicas import Replica, replica_env, replica_horde
from horde_scanner.testing.tiny_encoder import write_tiny_encoder
from tests.embedding_helpers import MODEL_ID, PREPROCESS

pytestmark = pytest.mark.timeout(180)
# Far longer than the test waits: what reaches a replica came by notification.
POLL_S = 600


@pytest.fixture
async def horde():
    async with replica_horde(latency=0.3) as fake:
        yield fake


async def indexed(http, replica: Replica) -> str:
    async with http.get(f"{replica.url}/readyz") as resp:
        return (await resp.json())["embeddings"]["detail"]


async def test_an_imported_entry_reaches_every_replica(tmp_path: Path, pg_url, horde, http):
    encoder = write_tiny_encoder(tmp_path / "tiny.onnx")
    env = replica_env(
        pg_url,
        horde.url,
        embeddings__model_path=encoder,
        embeddings__model_id=MODEL_ID,
        embeddings__sync_interval_s=POLL_S,
    )
    one = Replica(env, tmp_path / "r1").start()
    two = Replica(env, tmp_path / "r2").start()
    try:
        for replica in (one, two):
            assert (await indexed(http, replica)).endswith("; 0 entries indexed")

        picture = textures.textured("green", seed=300)
        vector = ImageEncoder(encoder, PREPROCESS, 512).encode(picture)
        listed = tmp_path / "list.txt"
        listed.write_text(dump_hma([EmbeddingEntry(vector)]))
        started = time.monotonic()
        imported = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-m", "horde_scanner.cli", "--db", pg_url, "embeddings",
             "import", str(listed), "--model", MODEL_ID],
            env={**os.environ, "HORDE_SCANNER_EMBEDDINGS__MODEL_ID": MODEL_ID},
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert imported.returncode == 0, imported.stderr
        imported_at = time.monotonic()
        seen: dict[int, float] = {}
        while len(seen) < 2 and time.monotonic() - imported_at < 30:
            for i, replica in enumerate((one, two)):
                if i not in seen and (await indexed(http, replica)).endswith("; 1 entries indexed"):
                    seen[i] = time.monotonic() - imported_at
            await asyncio.sleep(0.02)
        assert len(seen) == 2, seen
        # Well inside the poll interval: both heard the store's notification.
        assert max(seen.values()) < POLL_S, (seen, imported_at - started)
        print(f"replicas saw the entry {seen} s after the import finished")

        # A copy of its own to each (a copy answered before comes from the verdict cache).
        copies = textures.variants(picture)
        for replica, copy in ((one, copies["recompressed-q35"]), (two, copies["webp-thumbnail"])):
            held = await validate_upload(http, replica.scan_url(), copy, "image/jpeg")
            assert held.status == 406, held.body
            assert held.body["route"] == "match", held.body
            assert "embedding match" in " ".join(held.body["reasons"])
    finally:
        one.kill()
        two.kill()
