"""The LSH embedding index (signals/lsh_index.py): near copies found at the rate its settings
guarantee, unrelated vectors not; adds, removals, the tail and the bucket directory kept
consistent; saved arrays mapped on restart; a torn or foreign save rebuilt."""

from __future__ import annotations

import json
import math
import threading
from pathlib import Path

import numpy as np
import pytest

import horde_scanner.signals.lsh_index as lsh
from horde_scanner.signals.lsh_index import (
    LshIndex,
    LshShape,
    bit_flip_probability,
    hamming_cutoff,
    recall_at,
)
from tests.embedding_helpers import unit_vectors

SHAPE = LshShape("m", 512, "i8", 20, 16)
TAIL_ROWS = 300  # the tail's bound, small here so that tests pass it quickly


@pytest.fixture(autouse=True)
def _small_tail(monkeypatch) -> None:
    monkeypatch.setattr(lsh, "TAIL_ROWS", TAIL_ROWS)


def at_cosine(x: np.ndarray, cosine: float, seed: int) -> np.ndarray:
    """A unit vector at exactly `cosine` to the unit vector x."""
    u = np.random.default_rng(seed).standard_normal(x.shape).astype(np.float32)
    u -= float(u @ x) * x
    u /= np.linalg.norm(u)
    q = cosine * x + np.sqrt(1 - cosine**2) * u
    return (q / np.linalg.norm(q)).astype(np.float32)


def filled(vectors: np.ndarray, threshold: float = 0.8, shape: LshShape = SHAPE) -> LshIndex:
    index = LshIndex(shape, probe_radius=2)
    keys = np.arange(len(vectors), dtype=np.uint64) * 2
    index.add(keys, vectors)
    index.seal()
    index.set_meta(keys, np.zeros(len(keys), np.uint8), np.full(len(keys), threshold, np.float32))
    return index


def found(index: LshIndex, query: np.ndarray, key: int, threshold: float = 0.8) -> bool:
    hits = index.search(query, threshold)
    return bool(hits) and hits[0].key == key


def test_the_stated_recall_is_the_binomial_formula():
    p = bit_flip_probability(0.90)
    assert abs(p - np.arccos(0.9) / np.pi) < 1e-12
    one_table = sum(math.comb(20, i) * p**i * (1 - p) ** (20 - i) for i in range(3))
    assert abs(recall_at(0.90, 20, 16, 2) - (1 - (1 - one_table) ** 16)) < 1e-12
    assert recall_at(1.0, 20, 16, 2) == 1.0
    assert recall_at(0.90, 20, 16, 2) > recall_at(0.80, 20, 16, 2) > recall_at(0.0, 20, 16, 2)
    # The defaults: near certain at 0.90, above 0.95 at an admin's lowered 0.80.
    assert recall_at(0.90, 20, 16, 2) > 0.9998 and recall_at(0.80, 20, 16, 2) > 0.96
    stated = {0.95: "1.0000", 0.90: "0.9999", 0.85: "0.9956", 0.80: "0.9667"}  # docs' table
    assert {c: f"{recall_at(c, 20, 16, 2):.4f}" for c in stated} == stated
    assert f"{recall_at(0.80, 20, 24, 2):.3f}" == "0.994"  # the docs' advice for 0.80
    # The docs' columns for entries sharing a mean (|mean|^2 0.35, 0.5, and 0.5 at radius 3).
    for mean_sq, radius, column in (
        (0.35, 2, ["1.0000", "0.9947", "0.9252", "0.7419"]),
        (0.5, 2, ["0.9999", "0.9667", "0.7639", "0.4717"]),
        (0.5, 3, ["1.0000", "0.9996", "0.9795", "0.8603"]),
    ):
        figures = [f"{recall_at(c, 20, 16, radius, mean_sq):.4f}" for c in stated]
        assert figures == column, (mean_sq, radius)


def test_memory_is_the_vectors_and_8_bytes_per_table_per_entry_and_4_mb_per_table():
    index = filled(unit_vectors(3000, 13))
    per_entry = 512 + 4 + 8 + 1 + 16 * 8  # int8 vector, its scale, key, live flag, tables
    directory = 16 * ((1 << 20) + 1) * 4
    meta = 3000 * (8 + 1 + 4)
    planes = 16 * 20 * 512 * 4
    assert index.nbytes == 3000 * per_entry + directory + meta + planes


@pytest.mark.parametrize("cosine", [0.95, 0.90, 0.85, 0.80])
def test_near_copies_are_found_at_the_stated_rate(cosine: float):
    vectors = unit_vectors(5000, 1)
    index = filled(vectors)
    picks = range(0, 5000, 25)  # 200 queries
    hits = sum(found(index, at_cosine(vectors[i], cosine, i), 2 * i) for i in picks)
    stated = recall_at(cosine, 20, 16, 2)
    # 200 draws: allow three standard deviations below the stated rate.
    slack = 3 * np.sqrt(stated * (1 - stated) / 200) + 1 / 200
    assert hits / 200 >= stated - slack, (hits, stated)


def test_unrelated_vectors_are_not_matched():
    index = filled(unit_vectors(5000, 2))
    assert not any(index.search(q, 0.8) for q in unit_vectors(300, 3))


@pytest.mark.parametrize("dtype", ["i8", "f16"])
def test_the_similarity_is_close_to_the_exact_one(dtype: str):
    vectors = unit_vectors(500, 4)
    index = filled(vectors, shape=LshShape("m", 512, dtype, 20, 16))
    for i in range(0, 500, 50):
        query = at_cosine(vectors[i], 0.92, i)
        hit = index.search(query, 0.8)[0]
        assert abs(hit.similarity - float(vectors[i] @ query)) < 2e-3


def test_removed_entries_are_not_found_and_a_key_added_again_is():
    vectors = unit_vectors(1000, 5)
    index = filled(vectors)
    keys = np.arange(1000, dtype=np.uint64) * 2
    index.remove(keys[:10])
    assert not index.contains(keys[:10]).any() and index.contains(keys[10:]).all()
    assert index.candidates(vectors[3], 0.8)[0].size == 0
    index.add(keys[3:4], vectors[3:4])
    assert index.contains(keys[3:4]).all()
    assert found(index, at_cosine(vectors[3], 0.9, 3), 6)


def test_rows_added_after_the_directory_are_searched_in_the_tail_then_sealed():
    vectors = unit_vectors(TAIL_ROWS + 600, 6)
    index = filled(vectors[:500])
    keys = np.arange(len(vectors), dtype=np.uint64) * 2
    index.add(keys[500:600], vectors[500:600])
    assert index._state.sealed == 500  # the 100 new rows are the tail
    meta = np.zeros(600, np.uint8), np.full(600, 0.8, np.float32)
    index.set_meta(keys[:600], *meta)
    assert found(index, at_cosine(vectors[550], 0.9, 1), 1100)
    index.add(keys[600:], vectors[600:])  # past TAIL_ROWS: the directory is remade
    assert index._state.sealed == len(vectors)
    index.set_meta(keys, np.zeros(len(keys), np.uint8), np.full(len(keys), 0.8, np.float32))
    assert found(index, at_cosine(vectors[550], 0.9, 1), 1100)
    assert found(index, at_cosine(vectors[-1], 0.9, 2), int(keys[-1]))


def test_many_removals_compact_the_rows_and_the_rest_stay_found():
    vectors = unit_vectors(4000, 7)
    index = filled(vectors)
    keys = np.arange(4000, dtype=np.uint64) * 2
    index.remove(keys[:2000])
    assert index.rows == 2000  # dead rows dropped, directory remade
    index.set_meta(keys[2000:], np.zeros(2000, np.uint8), np.full(2000, 0.8, np.float32))
    assert all(found(index, at_cosine(vectors[i], 0.95, i), 2 * i) for i in range(2000, 4000, 200))


def test_a_restart_maps_the_saved_arrays_and_takes_changes_after(tmp_path: Path):
    vectors = unit_vectors(2000, 8)
    index = filled(vectors[:1500])
    index.generation = 7
    index.save(tmp_path / "ix")
    loaded = LshIndex.load(tmp_path / "ix", SHAPE, probe_radius=2)
    assert loaded is not None and len(loaded) == 1500 and loaded.generation == 7
    assert isinstance(loaded._state.vectors, np.memmap)  # mapped, not read
    assert found(loaded, at_cosine(vectors[42], 0.9, 4), 84)
    keys = np.arange(2000, dtype=np.uint64) * 2
    loaded.add(keys[1500:], vectors[1500:])
    loaded.remove(keys[:1])
    loaded.set_meta(keys[1:], np.zeros(1999, np.uint8), np.full(1999, 0.8, np.float32))
    assert found(loaded, at_cosine(vectors[1800], 0.9, 5), 3600)
    assert not loaded.search(at_cosine(vectors[0], 0.95, 6), 0.8)
    loaded.save(tmp_path / "ix")  # replaces the save the arrays are mapped from
    assert len(list((tmp_path / "ix").glob("lsh-*"))) == 1
    again = LshIndex.load(tmp_path / "ix", SHAPE, probe_radius=2)
    assert again is not None and len(again) == 1999


def test_a_save_of_other_settings_or_torn_is_not_used(tmp_path: Path):
    index = filled(unit_vectors(300, 9))
    index.save(tmp_path / "ix")
    assert LshIndex.load(tmp_path / "ix", LshShape("m", 512, "i8", 18, 16), 2) is None
    assert LshIndex.load(tmp_path / "ix", LshShape("other", 512, "i8", 20, 16), 2) is None
    (saved,) = (tmp_path / "ix").glob("lsh-*")
    (saved / "order.npy").write_bytes(b"\x93NUMPY torn")
    assert LshIndex.load(tmp_path / "ix", SHAPE, 2) is None
    assert LshIndex.load(tmp_path / "nothing", SHAPE, 2) is None


def test_searches_beside_adds_and_removals_see_whole_snapshots():
    vectors = unit_vectors(3000, 10)
    index = filled(vectors[:1000])
    keys = np.arange(len(vectors), dtype=np.uint64) * 2
    errors: list[BaseException] = []
    done = threading.Event()

    def search() -> None:
        try:
            while not done.is_set():
                for i in range(0, 1000, 100):
                    assert found(index, at_cosine(vectors[i], 0.95, i), 2 * i)
        except BaseException as exc:  # reported below
            errors.append(exc)

    reader = threading.Thread(target=search)
    reader.start()
    for start in range(1000, len(vectors), 200):  # each batch past the tail's bound or near
        index.add(keys[start : start + 200], vectors[start : start + 200])
        index.remove(keys[start : start + 5])
    done.set()
    reader.join()
    assert not errors, errors[0]


def test_the_hamming_cutoff_keeps_a_true_match_but_for_one_in_a_million():
    n = 320
    for cosine in (0.95, 0.9, 0.77):
        cut = hamming_cutoff(n, cosine)
        p = bit_flip_probability(cosine)
        beyond = 1 - sum(math.comb(n, i) * p**i * (1 - p) ** (n - i) for i in range(cut + 1))
        assert beyond < 1e-6
    # and drops an unrelated vector's 160 differing bits of 320
    assert hamming_cutoff(n, 0.77) < 130


def test_a_bulk_build_seals_once_at_the_end():
    vectors = unit_vectors(TAIL_ROWS + 900, 14)
    index = LshIndex(SHAPE, probe_radius=2)
    keys = np.arange(len(vectors), dtype=np.uint64) * 2
    for start in range(0, len(vectors), 400):
        index.add(keys[start : start + 400], vectors[start : start + 400], seal=False)
    assert index._state.sealed == 0  # all tail, no directory made per batch
    index.set_meta(keys, np.zeros(len(keys), np.uint8), np.full(len(keys), 0.8, np.float32))
    assert found(index, at_cosine(vectors[9], 0.9, 9), 18)  # the tail is searched meanwhile
    index.seal()
    assert index._state.sealed == len(vectors)
    assert found(index, at_cosine(vectors[9], 0.9, 9), 18)


def test_a_lookup_in_crowded_entries_says_so_once(caplog, monkeypatch):
    monkeypatch.setattr(lsh, "CROWDED_PROBE", 100)
    # Entries close to one another: two tight clusters (hashing about the entries' mean
    # spreads one cluster, not two: each falls on its own side of most hyperplanes).
    rng = np.random.default_rng(15)
    shared = np.repeat(unit_vectors(2, 16), 1500, axis=0)
    vectors = 0.9 * shared + 0.1 * unit_vectors(3000, 17)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    index = filled(vectors.astype(np.float32))
    with caplog.at_level("WARNING"):
        for _ in range(3):
            index.search(vectors[int(rng.integers(0, 3000))], 0.8)
    assert caplog.text.count("the entries are close to one another") == 1


# -- entries sharing a mean direction (as real image embeddings do) ---------------------------

PULL = 0.5  # the squared length of the shared part: unrelated pairs' mean cosine


def clustered(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Unit vectors x = √PULL·m + √(1-PULL)·u, u a unit vector orthogonal to the unit m: the
    model the centred guarantee is stated for (each x's part along the mean is the mean)."""
    m = unit_vectors(1, seed)[0]
    u = unit_vectors(n, seed + 1)
    u -= (u @ m)[:, None] * m
    u /= np.linalg.norm(u, axis=1, keepdims=True)
    return (np.sqrt(PULL) * m + np.sqrt(1 - PULL) * u).astype(np.float32), m


def clustered_copy(x: np.ndarray, m: np.ndarray, cosine: float, seed: int) -> np.ndarray:
    """A unit vector at `cosine` to x with the same part along m (a near copy in the model)."""
    r = x - np.sqrt(PULL) * m
    r /= np.linalg.norm(r)
    u = np.random.default_rng(seed).standard_normal(x.shape).astype(np.float32)
    u -= float(u @ m) * m + float(u @ r) * r
    u /= np.linalg.norm(u)
    inner = (cosine - PULL) / (1 - PULL)  # the residuals' cosine that makes x·y = cosine
    s = inner * r + np.sqrt(1 - inner**2) * u
    return (np.sqrt(PULL) * m + np.sqrt(1 - PULL) * s).astype(np.float32)


def test_the_centred_cosine_is_that_of_the_vectors_less_their_mean():
    x, m = clustered(2, 30)
    mean = np.sqrt(PULL) * m
    for i, cosine in enumerate((0.95, 0.9, 0.8, 0.6)):
        y = clustered_copy(x[0], m, cosine, i)
        assert abs(float(x[0] @ y) - cosine) < 1e-5
        a, b = x[0] - mean, y - mean
        exact = float(a @ b) / float(np.linalg.norm(a) * np.linalg.norm(b))
        assert abs(lsh.centred_cosine(cosine, PULL) - exact) < 1e-5
        assert lsh.centred_cosine(cosine, PULL) < cosine  # lower than the cosine itself
    assert lsh.centred_cosine(0.8, 0.0) == 0.8  # spread-out data: unchanged
    assert recall_at(0.9, 20, 16, 2, PULL) == recall_at(0.8, 20, 16, 2)


def test_an_index_is_centred_on_its_entries_mean_once_and_keeps_it():
    vectors, m = clustered(3000, 31)
    index = filled(vectors[: lsh.MEAN_MIN_ROWS - 1])
    assert index.mean_sq is None  # too few entries: hashed as they are
    index.add(np.arange(2000, 4000, dtype=np.uint64), vectors[1000:])
    index.seal()
    first = index.mean_sq
    assert first is not None and abs(first - PULL) < 0.01
    mean = index._state.mean.copy()  # type: ignore[union-attr]
    other = unit_vectors(2000, 32)  # entries added later use the same mean
    index.add(np.arange(10_000, 12_000, dtype=np.uint64), other)
    index.seal()
    assert index.mean_sq == first and np.array_equal(index._state.mean, mean)
    later = index._state.codes[index.rows - 2000 : index.rows]
    assert np.array_equal(later, index._codes(other, index._state.bias))
    # A rebuild (a new index of the same entries) computes it afresh.
    rebuilt = filled(np.concatenate([vectors, other]))
    assert rebuilt.mean_sq is not None and rebuilt.mean_sq < first - 0.1


@pytest.mark.parametrize("cosine", [0.95, 0.90, 0.85, 0.80])
def test_near_copies_in_clustered_entries_are_found_at_the_centred_rate(cosine: float):
    vectors, m = clustered(5000, 33)
    index = filled(vectors, threshold=0.75)
    assert index.mean_sq is not None and abs(index.mean_sq - PULL) < 0.01
    picks = range(0, 5000, 10)  # 500 queries
    hits = sum(found(index, clustered_copy(vectors[i], m, cosine, i), 2 * i, 0.75) for i in picks)
    stated = index.recall_at(cosine)
    assert stated == recall_at(cosine, 20, 16, 2, index.mean_sq)
    # 500 draws: within three standard deviations of the stated rate, either way.
    slack = 3 * np.sqrt(stated * (1 - stated) / 500) + 1 / 500
    assert abs(hits / 500 - stated) <= slack, (hits, stated)


def test_clustered_entries_cost_a_lookup_about_what_spread_out_ones_do():
    n = 30_000
    rng = np.random.default_rng(34)
    shared = unit_vectors(1, 35)[0]
    pulled = np.sqrt(PULL) * shared + np.sqrt(1 - PULL) * unit_vectors(n, 36)
    pulled /= np.linalg.norm(pulled, axis=1, keepdims=True)
    pair_cosine = float(np.mean(np.sum(pulled[:2000] * pulled[2000:4000], axis=1)))
    assert abs(pair_cosine - PULL) < 0.02
    probed = {}
    for name, vectors in (("random", unit_vectors(n, 37)), ("clustered", pulled)):
        index = filled(vectors.astype(np.float32))
        picks = rng.integers(0, n, 100)
        probed[name] = np.mean([len(index.probed(at_cosine(vectors[i], 0.9, i))) for i in picks])
    uncentred = LshIndex(SHAPE, probe_radius=2, centre=False)
    uncentred.add(np.arange(n, dtype=np.uint64), pulled)
    uncentred.seal()
    before = np.mean([len(uncentred.probed(pulled[i])) for i in range(0, n, 300)])
    assert probed["clustered"] <= 3 * probed["random"], probed
    assert before > 10 * probed["clustered"], (before, probed)  # what centring saves


def test_a_restart_hashes_about_the_saved_mean(tmp_path: Path):
    vectors, m = clustered(2500, 38)
    index = filled(vectors[:2000])
    index.save(tmp_path / "ix")
    loaded = LshIndex.load(tmp_path / "ix", SHAPE, probe_radius=2)
    assert loaded is not None and loaded.mean_sq == index.mean_sq
    assert np.array_equal(loaded.codes(vectors[2000:]), index.codes(vectors[2000:]))
    keys = np.arange(2500, dtype=np.uint64) * 2
    loaded.add(keys[2000:], vectors[2000:])
    loaded.set_meta(keys, np.zeros(2500, np.uint8), np.full(2500, 0.8, np.float32))
    assert found(loaded, clustered_copy(vectors[2200], m, 0.97, 1), 4400)
    assert found(loaded, clustered_copy(vectors[100], m, 0.97, 2), 200)


def test_a_save_of_the_previous_format_is_rebuilt(tmp_path: Path, caplog):
    index = filled(unit_vectors(1200, 39))
    index.save(tmp_path / "ix")
    pointer = tmp_path / "ix" / "current.json"
    saved = json.loads(pointer.read_text())
    del saved["format"], saved["centred"]  # what the previous release wrote
    (directory,) = (tmp_path / "ix").glob("lsh-*")
    (directory / "mean.npy").unlink()
    pointer.write_text(json.dumps(saved))
    with caplog.at_level("INFO"):
        assert LshIndex.load(tmp_path / "ix", SHAPE, 2) is None
    assert "is of format 1 (now 2): rebuilding" in caplog.text
