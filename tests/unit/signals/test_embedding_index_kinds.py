"""The matcher's two index kinds (embeddings.index_kind): LSH by default (without usearch:
tests/integration/test_embeddings.py); a saved index of the other kind (or other LSH
settings) rebuilt from the store at start; the start-up line stating the recall the LSH
settings guarantee."""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from horde_scanner.config import EmbeddingsSettings
from horde_scanner.signals.embedding_index import EmbeddingIndex
from horde_scanner.signals.embedding_list import EmbeddingEntry
from horde_scanner.signals.embeddings import EmbeddingMatcher, describe_index
from horde_scanner.signals.lsh_index import LshIndex
from horde_scanner.store.hashes import LOCAL
from horde_scanner.store.sqlite import Store
from tests.embedding_helpers import MODEL_ID, unit_vectors


class NoEncoding:
    """Stands for the encoder pool (these tests hand vectors in): the matcher is on."""

    def close(self) -> None:
        pass


def matcher(store: Store, tmp_path: Path, **settings) -> EmbeddingMatcher:
    config = EmbeddingsSettings(model_id=MODEL_ID, index_dir=tmp_path / "ix", **settings)
    return EmbeddingMatcher(store, config, ThreadPoolExecutor(2), pool=NoEncoding())  # type: ignore[arg-type]


def near(vector: np.ndarray, seed: int) -> np.ndarray:
    v = vector + 0.01 * np.random.default_rng(seed).standard_normal(512).astype(np.float32)
    return v / np.linalg.norm(v)


@pytest.mark.parametrize(
    ("first", "then"),
    [
        ({"index_kind": "hnsw"}, {}),
        ({}, {"index_kind": "hnsw"}),
        ({}, {"index_bits": 18}),
        ({}, {"index_tables": 12}),
    ],
)
async def test_a_saved_index_of_the_other_kind_or_settings_is_rebuilt(
    tmp_path: Path, first: dict, then: dict, caplog
):
    vectors = unit_vectors(60, 11)
    async with await Store.open(tmp_path / "s.db") as store:
        await store.add_embedding_entries(LOCAL, MODEL_ID, [EmbeddingEntry(v) for v in vectors])
        one = matcher(store, tmp_path, **first)
        await one.start()
        await one.stop()
        caplog.set_level(logging.INFO)
        two = matcher(store, tmp_path, **then)
        await two.start()
        kind = EmbeddingIndex if then.get("index_kind") == "hnsw" else LshIndex
        assert isinstance(two.index, kind) and two.size == 60
        assert "loaded from" not in caplog.text  # built from the store, not the other save
        found = await two.match(near(vectors[5], 5))
        assert found is not None and found.rejects
        await two.stop()


async def test_the_probe_radius_changes_no_saved_index(tmp_path: Path, caplog):
    vectors = unit_vectors(40, 12)
    async with await Store.open(tmp_path / "s.db") as store:
        await store.add_embedding_entries(LOCAL, MODEL_ID, [EmbeddingEntry(v) for v in vectors])
        one = matcher(store, tmp_path)
        await one.start()
        await one.stop()
        caplog.set_level(logging.INFO)
        two = matcher(store, tmp_path, index_probe_radius=1)
        await two.start()
        assert "40 entries loaded from" in caplog.text
        assert "embedding index: LSH (20 bits x 16 tables, probe radius 1, i8)" in caplog.text
        assert await two.match(near(vectors[3], 3)) is not None
        await two.stop()


def test_the_start_up_line_states_the_guaranteed_recall():
    line = describe_index(EmbeddingsSettings(), [0.93])
    assert line.startswith("LSH (20 bits x 16 tables, probe radius 2, i8), not centred")
    assert "cos 0.90: 0.9999" in line and "cos 0.80: 0.9667" in line and "cos 0.93:" in line
    # Entries sharing a mean: the recall at the centred angle (0.90 -> 0.80 at |mean|^2 0.5).
    line = describe_index(EmbeddingsSettings(), [0.93], mean_sq=0.5)
    assert "hashed about the entries' mean, |mean|^2 0.500" in line
    assert "cos 0.90: 0.9667" in line and "cos 0.95: 0.9999" in line
    graph = describe_index(EmbeddingsSettings(index_kind="hnsw"))
    assert graph.startswith("HNSW graph") and "not guaranteed" in graph


async def test_the_start_up_line_states_the_recall_about_the_entries_mean(tmp_path: Path, caplog):
    shared = unit_vectors(1, 40)[0]
    vectors = np.sqrt(0.5) * shared + np.sqrt(0.5) * unit_vectors(1200, 41)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    async with await Store.open(tmp_path / "s.db") as store:
        await store.add_embedding_entries(LOCAL, MODEL_ID, [EmbeddingEntry(v) for v in vectors])
        caplog.set_level(logging.INFO)
        lines = []
        for _ in range(2):  # built from the store, then loaded from its save with the same mean
            caplog.clear()
            one = matcher(store, tmp_path)
            await one.start()
            assert isinstance(one.index, LshIndex) and one.index.mean_sq is not None
            m = one.index.mean_sq
            assert abs(m - 0.5) < 0.02
            (line,) = [r.message for r in caplog.records if "chance a stored vector" in r.message]
            assert f"|mean|^2 {m:.3f}" in line
            assert f"cos 0.90: {one.index.recall_at(0.9):.4f}" in line
            assert await one.match(near(vectors[7], 7)) is not None
            await one.stop()
            lines.append(line)
        assert "entries loaded from" in caplog.text and lines[0] == lines[1]
