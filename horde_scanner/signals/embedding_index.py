"""An HNSW index of unit embeddings (usearch, cosine), held in memory and saved to disk.

Why usearch: it has wheels for this machine, adds and removes entries in place (FAISS's HNSW
cannot remove), stores vectors as int8 or float16, and saves and restores a file in one call.
The default settings (int8 vectors, 24 links per node, a search list of 512) were chosen by
bench/embedding_grid.py on this 2-core machine: fewer links or a shorter search list lose
near-copy recall as the index grows; float16 vectors double the memory and halve the build
rate; bench/embeddings.py prints the figures at the large sizes.

Keys are the store's: `2 * id` for a list entry (embedding_entries), `2 * id + 1` for one of
this instance's own images (verdict_embeddings). What each key is trusted for (deny, review)
and its threshold live beside the graph in numpy arrays, replaced whole on each sync, so a
search never sees them half changed. Vectors in the graph are quantised: a hit's similarity
here is approximate, and the matcher re-checks it against the exact vector from the store.

The graph is changed and searched under one lock: usearch's Python binding makes no promise
about a search running beside an add, and a search costs a millisecond.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

DENY = 0
REVIEW = 1
ENTRY = 0  # key parity: a list entry
OWN = 1  # key parity: one of this instance's images
_META = "meta.json"
_GRAPH = "index.usearch"
_KEYS = "keys.npz"
# Search a little below the threshold: int8 vectors move a similarity by about 0.01.
QUANTISATION_MARGIN = 0.03


def entry_key(entry_id: int) -> int:
    return 2 * entry_id + ENTRY


def own_key(row_id: int) -> int:
    return 2 * row_id + OWN


@dataclass(frozen=True, slots=True)
class Hit:
    key: int
    similarity: float  # approximate (quantised vectors)
    trust: int
    threshold: float


@dataclass(frozen=True, slots=True)
class IndexShape:
    """What a saved index must have been built with to be reused."""

    model: str
    dim: int
    dtype: str
    connectivity: int
    expansion_add: int

    def record(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "dim": self.dim,
            "dtype": self.dtype,
            "connectivity": self.connectivity,
            "expansion_add": self.expansion_add,
        }


@dataclass(frozen=True, slots=True)
class _Meta:
    """Trust and threshold by key, sorted by key (replaced whole, never changed in place)."""

    keys: np.ndarray  # uint64, sorted
    trust: np.ndarray  # uint8
    threshold: np.ndarray  # float32
    suppressed: np.ndarray  # uint64, sorted: keys an admin's allow overrides


def _empty_meta() -> _Meta:
    return _Meta(
        np.zeros(0, np.uint64),
        np.zeros(0, np.uint8),
        np.zeros(0, np.float32),
        np.zeros(0, np.uint64),
    )


class KeyedMeta:
    """What an index knows of each key beside its vector: trust, threshold, and whether an
    admin's allow overrides it (sorted arrays, replaced whole, never changed in place); and
    the filter every search's raw hits pass through. Shared by both index kinds."""

    def __init__(self) -> None:
        self._meta = _empty_meta()
        self._loaded_meta = _empty_meta()
        self.generation = -1

    def __len__(self) -> int:
        return len(self._meta.keys)

    @property
    def has_meta(self) -> bool:
        return bool(len(self._meta.keys))

    @property
    def meta_nbytes(self) -> int:
        meta = self._meta
        return sum(a.nbytes for a in (meta.keys, meta.trust, meta.threshold, meta.suppressed))

    def keys(self) -> np.ndarray:
        return self._meta.keys

    def add(
        self, keys: np.ndarray, vectors: np.ndarray, *, threads: int = 1, seal: bool = True
    ) -> None:
        raise NotImplementedError

    def set_meta(
        self,
        keys: np.ndarray,
        trust: np.ndarray,
        threshold: np.ndarray,
        suppressed: np.ndarray | None = None,
    ) -> None:
        order = np.argsort(keys, kind="stable")
        self._meta = _Meta(
            np.asarray(keys, np.uint64)[order],
            np.asarray(trust, np.uint8)[order],
            np.asarray(threshold, np.float32)[order],
            np.unique(np.asarray(suppressed if suppressed is not None else [], np.uint64)),
        )

    def suppress(self, keys: np.ndarray) -> None:
        meta = self._meta
        joined = np.union1d(meta.suppressed, np.asarray(keys, np.uint64))
        self._meta = _Meta(meta.keys, meta.trust, meta.threshold, joined)

    def add_one(self, key: int, vector: np.ndarray, trust: int, threshold: float) -> None:
        """One new entry, searchable at once (a positive the backend just found)."""
        if self.position(key) is not None:
            return
        self.add(np.array([key], np.uint64), vector[None])
        meta = self._meta
        self.set_meta(
            np.append(meta.keys, np.uint64(key)),
            np.append(meta.trust, np.uint8(trust)),
            np.append(meta.threshold, np.float32(threshold)),
            meta.suppressed,
        )

    def position(self, key: int) -> int | None:
        keys = self._meta.keys
        at = int(np.searchsorted(keys, np.uint64(key)))
        return at if at < len(keys) and int(keys[at]) == key else None

    def hits(
        self, keys: np.ndarray, similarity: np.ndarray, min_threshold: float, count: int
    ) -> list[Hit]:
        """Of raw hits (most similar first), those live, not overridden by an allow, and
        within the quantisation margin of their own threshold; at most `count`."""
        meta = self._meta
        hits: list[Hit] = []
        for key, sim in zip(
            np.asarray(keys, np.uint64).reshape(-1).tolist(),
            np.asarray(similarity, np.float32).reshape(-1).tolist(),
            strict=True,
        ):
            if len(hits) >= count:
                break
            if sim < min_threshold - QUANTISATION_MARGIN:
                continue
            at = self.position(key)
            if at is None:  # removed since (or not yet described)
                continue
            if len(meta.suppressed) and _contains(meta.suppressed, key):
                continue
            threshold = float(meta.threshold[at])
            if sim < threshold - QUANTISATION_MARGIN:
                continue
            hits.append(Hit(key, sim, int(meta.trust[at]), threshold))
        return hits

    def save_meta(self, directory: Path, name: str = _KEYS) -> None:
        meta = self._meta
        np.savez(
            directory / name,
            keys=meta.keys,
            trust=meta.trust,
            threshold=meta.threshold,
            suppressed=meta.suppressed,
        )

    def load_meta(self, directory: Path, name: str = _KEYS) -> None:
        with np.load(directory / name) as arrays:
            self._loaded_meta = _Meta(
                arrays["keys"], arrays["trust"], arrays["threshold"], arrays["suppressed"]
            )

    def keep_held(self, contains: Any) -> None:
        """The loaded meta, less keys the vectors do not hold."""
        meta = self._loaded_meta
        held = contains(meta.keys)
        self.set_meta(meta.keys[held], meta.trust[held], meta.threshold[held], meta.suppressed)


class EmbeddingIndex(KeyedMeta):
    def __init__(self, shape: IndexShape, expansion_search: int, graph: Any = None) -> None:
        super().__init__()
        Index = usearch_index()
        self.shape = shape
        self._graph = graph or Index(
            ndim=shape.dim,
            metric="cos",
            dtype=shape.dtype,
            connectivity=shape.connectivity,
            expansion_add=shape.expansion_add,
        )
        self._graph.expansion_search = expansion_search
        self._lock = threading.Lock()

    # -- contents ------------------------------------------------------------------------------

    @property
    def nbytes(self) -> int:
        return int(self._graph.memory_usage) + self.meta_nbytes

    def add(
        self, keys: np.ndarray, vectors: np.ndarray, *, threads: int = 1, seal: bool = True
    ) -> None:
        """Put vectors into the graph (blocking). Their trust comes with set_meta. (`seal`
        is the LSH index's; the graph takes each vector in as it comes.)"""
        del seal
        if not len(keys):
            return
        keys = np.asarray(keys, np.uint64)
        with self._lock:
            # A key may have come in meanwhile (a positive noted while a sync ran).
            fresh = ~np.asarray(self._graph.contains(keys), bool).reshape(-1)
            if fresh.any():
                self._graph.add(keys[fresh], vectors[fresh], threads=threads)

    def contains(self, keys: np.ndarray) -> np.ndarray:
        """Which of `keys` the graph holds (bool per key)."""
        if not len(keys):
            return np.zeros(0, bool)
        with self._lock:
            return np.asarray(self._graph.contains(np.asarray(keys, np.uint64)), bool).reshape(-1)

    def remove(self, keys: np.ndarray) -> None:
        if not len(keys):
            return
        with self._lock:
            self._graph.remove(np.asarray(keys, np.uint64))

    def seal(self) -> None:
        """Nothing to do: the graph takes each vector in as it comes."""

    # -- searching -----------------------------------------------------------------------------

    def search(self, vector: np.ndarray, min_threshold: float, count: int = 8) -> list[Hit]:
        """Live entries that may be at or above their threshold, most similar first (blocking).
        The similarities are approximate: the caller re-checks them."""
        if not self.has_meta:
            return []
        with self._lock:
            found = self._graph.search(vector, count, threads=1)
        keys = np.asarray(found.keys, np.uint64).reshape(-1)
        similarity = 1.0 - np.asarray(found.distances, np.float32).reshape(-1)
        return self.hits(keys, similarity, min_threshold, count)

    # -- saving --------------------------------------------------------------------------------

    def save(self, directory: Path) -> None:
        """Write graph, keys and shape; readers never see a half-written set (renames last)."""
        directory.mkdir(parents=True, exist_ok=True)
        tmp_graph = directory / (_GRAPH + ".tmp")
        with self._lock:
            self._graph.save(str(tmp_graph))
        tmp_keys = _KEYS + ".tmp.npz"
        self.save_meta(directory, tmp_keys)
        tmp_meta = directory / (_META + ".tmp")
        tmp_meta.write_text(json.dumps({**self.shape.record(), "generation": self.generation}))
        os.replace(tmp_graph, directory / _GRAPH)
        os.replace(directory / tmp_keys, directory / _KEYS)
        os.replace(tmp_meta, directory / _META)

    @classmethod
    def load(
        cls, directory: Path, shape: IndexShape, expansion_search: int
    ) -> EmbeddingIndex | None:
        """The saved index if it was built with `shape`, else None (then it is rebuilt)."""
        try:
            saved = json.loads((directory / _META).read_text())
        except (OSError, ValueError):
            return None
        generation = saved.pop("generation", -1)
        if saved != shape.record():
            log.info("saved embedding index %s was built differently: rebuilding", directory)
            return None
        Index = usearch_index()
        try:
            graph = Index.restore(str(directory / _GRAPH), view=False)
            if graph is None:
                log.warning("saved embedding index %s is empty: rebuilding", directory)
                return None
            index = cls(shape, expansion_search, graph)
            index.load_meta(directory)
        except Exception as exc:  # a torn or foreign file: rebuild rather than fail
            log.warning("saved embedding index %s unreadable (%s): rebuilding", directory, exc)
            return None
        index.keep_held(index.contains)
        index.generation = int(generation)
        return index


def usearch_index() -> Any:
    """usearch's Index class. Once usearch's native module is loaded, importing onnxruntime
    (the encoder; also nudenet's pre-screen) crashes the process: a clash of the native
    libraries the two wheels bring, like FAISS's with torch. Loaded the other way round, both
    work: so onnxruntime goes first, where it is installed."""
    with contextlib.suppress(ImportError):
        import onnxruntime  # noqa: F401
    from usearch.index import Index

    return Index


def _contains(sorted_keys: np.ndarray, key: int) -> bool:
    at = int(np.searchsorted(sorted_keys, np.uint64(key)))
    return at < len(sorted_keys) and int(sorted_keys[at]) == key
