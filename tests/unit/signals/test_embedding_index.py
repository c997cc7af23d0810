"""The embedding index kept in step with the store: saved, loaded on restart without
rebuilding (only what changed meanwhile is applied), matches checked against the exact
vector; and the encoder pool's bound."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from horde_scanner.config import EmbeddingsSettings
from horde_scanner.signals.embedding_list import EmbeddingEntry
from horde_scanner.signals.embeddings import EmbeddingMatcher
from horde_scanner.signals.encoder import EncoderPool
from horde_scanner.store.hashes import LOCAL
from horde_scanner.store.sqlite import Store

MODEL = "tiny-test-encoder-v1"


def unit_vectors(n: int, seed: int = 0) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, 512)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def near(vector: np.ndarray, noise: float, seed: int = 9) -> np.ndarray:
    v = vector + noise * np.random.default_rng(seed).standard_normal(512).astype(np.float32)
    return v / np.linalg.norm(v)


class Counting:
    """Counts the vectors a matcher fetches from the store (a rebuild fetches them all)."""

    def __init__(self, store: Store) -> None:
        self.fetched = 0
        original = store.embedding_vectors

        async def counted(kind: str, ids):
            rows = await original(kind, ids)
            self.fetched += len(rows)
            return rows

        store.embedding_vectors = counted  # type: ignore[method-assign]


class NoEncoding:
    """Stands for the encoder pool (these tests hand vectors in): the matcher is on."""

    def close(self) -> None:
        pass


def matcher(store: Store, tmp_path: Path) -> EmbeddingMatcher:
    settings = EmbeddingsSettings(model_id=MODEL, index_dir=tmp_path / "ix")
    return EmbeddingMatcher(store, settings, ThreadPoolExecutor(2), pool=NoEncoding())  # type: ignore[arg-type]


async def test_a_restart_loads_the_saved_index_and_applies_only_the_difference(tmp_path: Path):
    vectors = unit_vectors(300)
    async with await Store.open(tmp_path / "s.db") as store:
        await store.add_embedding_entries(LOCAL, MODEL, [EmbeddingEntry(v) for v in vectors[:200]])
        first = matcher(store, tmp_path)
        await first.start()
        assert first.size == 200
        match = await first.match(near(vectors[7], 0.01))
        assert match is not None and match.rejects and match.similarity > 0.95
        assert match.entry.origin == LOCAL
        assert await first.match(unit_vectors(1, 99)[0]) is None
        await first.stop()

        # While it was down: 100 entries come, one goes.
        await store.add_embedding_entries(LOCAL, MODEL, [EmbeddingEntry(v) for v in vectors[200:]])
        async with store.aside() as db:
            await db.execute(
                "DELETE FROM embedding_entries WHERE digest = ?",
                (EmbeddingEntry(vectors[7]).digest,),
            )
        await store.bump_hash_generation()

        counting = Counting(store)
        second = matcher(store, tmp_path)
        await second.start()
        assert counting.fetched == 100  # the new ones only: the rest came from the file
        assert second.size == 299
        assert await second.match(near(vectors[7], 0.01)) is None  # its entry is gone
        found = await second.match(near(vectors[250], 0.01))
        assert found is not None
        await second.stop()


async def test_a_saved_index_of_other_settings_is_rebuilt(tmp_path: Path):
    vectors = unit_vectors(50, 3)
    async with await Store.open(tmp_path / "s.db") as store:
        await store.add_embedding_entries(LOCAL, MODEL, [EmbeddingEntry(v) for v in vectors])
        first = matcher(store, tmp_path)
        await first.start()
        await first.stop()
        counting = Counting(store)
        settings = EmbeddingsSettings(model_id=MODEL, index_dir=tmp_path / "ix", index_dtype="f16")
        second = EmbeddingMatcher(store, settings, ThreadPoolExecutor(2), pool=NoEncoding())  # type: ignore[arg-type]
        await second.start()
        assert counting.fetched == 50 and second.size == 50
        await second.stop()


async def test_a_threshold_is_checked_on_the_exact_vector(tmp_path: Path):
    base = unit_vectors(1, 4)[0]
    async with await Store.open(tmp_path / "s.db") as store:
        await store.add_embedding_entries(LOCAL, MODEL, [EmbeddingEntry(base)])
        m = matcher(store, tmp_path)
        await m.start()
        for noise in (0.005, 0.01, 0.02, 0.03):
            query = near(base, noise, seed=int(noise * 1000))
            exact = float(np.dot(query, base))
            found = await m.match(query)
            assert (found is not None) == (exact >= 0.90), (noise, exact)
            if found is not None:
                assert abs(found.similarity - exact) < 1e-5
        await m.stop()


class SlowEncoder:
    def __init__(self) -> None:
        self.release = threading.Event()

    def encode(self, image) -> np.ndarray:
        self.release.wait(10)
        return unit_vectors(1)[0]


async def test_the_encoder_pool_refuses_beyond_its_queue_instead_of_waiting():
    slow = SlowEncoder()
    pool = EncoderPool(slow, threads=1, max_queue=2)  # type: ignore[arg-type]
    running = [asyncio.ensure_future(pool.encode(None)) for _ in range(3)]  # type: ignore[arg-type]
    await asyncio.sleep(0.1)
    assert await pool.encode(None) is None  # type: ignore[arg-type]
    assert pool.refused == 1
    slow.release.set()
    assert all(v is not None for v in await asyncio.gather(*running))
    pool.close()


def test_usearch_then_onnxruntime_in_one_process_works():
    # usearch's native module, loaded first, made a later `import onnxruntime` crash the
    # process (signals/embedding_index.usearch_index loads onnxruntime first).
    code = (
        "from horde_scanner.signals.embedding_index import EmbeddingIndex, IndexShape\n"
        "EmbeddingIndex(IndexShape('m', 8, 'i8', 8, 16), 16)\n"
        "import onnxruntime, nudenet\n"
        "print('ok')\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr


@pytest.mark.parametrize("dtype", ["i8", "f16"])
def test_near_copies_are_found_in_either_dtype(dtype: str):
    from horde_scanner.signals.embedding_index import EmbeddingIndex, IndexShape

    vectors = unit_vectors(2000, 6)
    index = EmbeddingIndex(IndexShape("m", 512, dtype, 32, 64), 128)
    keys = np.arange(2000, dtype=np.uint64) * 2
    index.add(keys, vectors)
    index.set_meta(keys, np.zeros(2000, np.uint8), np.full(2000, 0.9, np.float32))
    for i in range(0, 2000, 97):
        hits = index.search(near(vectors[i], 0.01, seed=i), 0.9)
        assert hits and hits[0].key == 2 * i
