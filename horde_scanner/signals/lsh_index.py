"""A near-copy index of unit embeddings: sign-random-projection LSH tables (numpy), with the
few candidates re-ranked on the stored (int8 or float16) vectors.

Why not a graph: what a match needs is every stored vector at or above a list's threshold
(cos >= 0.90 by default, 0.80 if an admin lowers it), not the nearest of unrelated ones; and
between a near copy and an unrelated embedding there is a wide gap. Random hyperplanes turn
that gap into a guarantee. One bit is the side of a random hyperplane a vector falls on; two
vectors at angle θ disagree on it with probability θ/π. A table keys each vector by `bits`
such bits; a query probes every bucket within `probe_radius` flips of its own key; so a stored
vector at angle θ is found by one table with probability P(Binomial(bits, θ/π) <= radius) and
by at least one of `tables` tables with 1 - (1 - that)^tables (`recall_at`), whatever the
index's size.

Real image embeddings share a mean direction μ (CLIP: unrelated pairs at cosine ~0.5), so
through the origin most of them fall on the same side of most hyperplanes and a query probes
a large share of the index. So the hyperplanes pass through μ, the mean of the stored vectors,
fixed when the index is first sealed with MEAN_MIN_ROWS rows (saved with it; later rows use
it; a rebuild computes it afresh): a bit is the side of h that x - μ falls on. For unit x =
μ + r, y = μ + s with r, s orthogonal to μ, the centred vectors' cosine is (c - |μ|²) / (1 -
|μ|²) (`centred_cosine`), lower than c, and the recall is the formula above at that angle.

Unrelated vectors (θ near π/2 once centred) land in a probed bucket with probability
(buckets probed) / 2^bits each: at the defaults (20 bits, radius 2, 16 tables) that is about
3,200 candidates at a million entries. Before any vector is read, each candidate's keys in all
tables (320 bits) must differ from the query's in no more than a Binomial quantile for the
search's lowest threshold, at its centred angle (`hamming_cutoff`; it drops a true match with
probability < 1e-6), which removes nearly every unrelated candidate; the rest are scored on
the stored vectors.
On 1 M random unit vectors (bench/embeddings.py) this met the lookup and recall targets the
HNSW graph did not (docs/benchmarks.md).

Layout: rows (keys, quantised vectors, their scales, every table's key per row, a live flag)
are appended to arrays with spare capacity; each table is a bucket directory (CSR: the start
of every one of the 2^bits buckets in `order`, the rows sorted by that table's key). Rows
added since the directory was last made (the tail, at most TAIL_ROWS) are compared with the
query's keys directly. A search reads one snapshot (`_State`) and takes no lock; changes are
serialised by a lock and publish a new snapshot. Removed rows stay in the arrays, flagged dead,
until dead rows are a quarter of all: then the directory is remade without them.

Saved as numpy arrays in a directory per save (`save`), mapped on restart (`load`): a restart
reads the keys of each row to count the buckets again, and the rest (the vectors) as lookups
touch them.
"""

from __future__ import annotations

import itertools
import json
import logging
import math
import os
import shutil
import threading
import uuid
from dataclasses import dataclass, replace
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from horde_scanner.signals.embedding_index import QUANTISATION_MARGIN, Hit, KeyedMeta

log = logging.getLogger(__name__)

# Rows added since the bucket directory was made; a search compares the query's keys with
# each of them (about a millisecond per 16,000 rows), so past this the directory is remade.
TAIL_ROWS = 16_384
# A lookup probing more rows than this says so in the log, once per index: its entries are
# close to one another (clustered data), and each lookup costs milliseconds more.
CROWDED_PROBE = 50_000
# A probed candidate whose keys, over all tables, differ from the query's in more bits than
# the Binomial quantile at this probability is dropped before its vector is read.
CUTOFF_MISS = 1e-6
_POINTER = "current.json"
# The bucket directory's offsets (4 MB per table, whatever the size) are not saved: a load
# counts them again from the codes (a bincount per table, a fraction of a second at a million).
_ARRAYS = ("keys", "vectors", "scales", "codes", "live", "order", "planes", "mean")
# The saved layout's version: a save of another (format 1: no mean) is rebuilt, not read.
FORMAT = 2
# An index is centred on its entries' mean once it first seals this many live rows (a mean of
# fewer is mostly noise, and so few entries cost little to probe uncentred).
MEAN_MIN_ROWS = 1000


@dataclass(frozen=True, slots=True)
class LshShape:
    """What a saved index must have been built with to be reused."""

    model: str
    dim: int
    dtype: str  # "i8" or "f16": how the vectors kept for scoring are stored
    bits: int
    tables: int
    seed: int = 24

    def record(self) -> dict[str, Any]:
        return {
            "kind": "lsh",
            "model": self.model,
            "dim": self.dim,
            "dtype": self.dtype,
            "bits": self.bits,
            "tables": self.tables,
            "seed": self.seed,
            "format": FORMAT,
        }


def centred_cosine(cosine: float, mean_sq: float) -> float:
    """The cosine of x - μ and y - μ for unit vectors x, y at `cosine` whose part along the
    mean μ (|μ|² = mean_sq) is μ itself: x = μ + r, y = μ + s, r and s orthogonal to μ, so
    |r|² = |s|² = 1 - |μ|² and r·s = cosine - |μ|²."""
    if mean_sq <= 0.0:
        return cosine
    if mean_sq >= 1.0:
        return 1.0 if cosine >= 1.0 else -1.0
    return (cosine - mean_sq) / (1.0 - mean_sq)


def bit_flip_probability(cosine: float) -> float:
    """The chance that a random hyperplane separates two vectors at this cosine: θ/π."""
    return math.acos(max(-1.0, min(1.0, cosine))) / math.pi


def _binomial_cdf(n: int, p: float, r: int) -> float:
    return sum(math.comb(n, i) * p**i * (1 - p) ** (n - i) for i in range(r + 1))


def recall_at(cosine: float, bits: int, tables: int, radius: int, mean_sq: float = 0.0) -> float:
    """The probability that a stored vector at `cosine` to the query is a candidate, in an
    index centred on a mean of squared length `mean_sq` (see centred_cosine)."""
    one = _binomial_cdf(bits, bit_flip_probability(centred_cosine(cosine, mean_sq)), radius)
    return 1.0 - (1.0 - one) ** tables


@lru_cache(maxsize=64)
def hamming_cutoff(bits_total: int, cosine: float) -> int:
    """The most differing key bits (of `bits_total`) a vector at `cosine` shows, but for a
    chance below CUTOFF_MISS."""
    p = bit_flip_probability(cosine)
    total = 0.0
    for i in range(bits_total + 1):
        total += math.comb(bits_total, i) * p**i * (1 - p) ** (bits_total - i)
        if total >= 1.0 - CUTOFF_MISS:
            return i
    return bits_total


@lru_cache(maxsize=16)
def _probe_masks(bits: int, radius: int) -> np.ndarray:
    """Every key difference of at most `radius` bits: the buckets a query probes."""
    masks = [0]
    for flips in range(1, radius + 1):
        masks += [
            sum(1 << b for b in chosen) for chosen in itertools.combinations(range(bits), flips)
        ]
    return np.array(sorted(masks), np.uint32)


@dataclass(frozen=True, slots=True)
class _State:
    """One consistent view for searches: rows [0, n) are valid; [0, sealed) are in the bucket
    directory, [sealed, n) are the tail. Arrays may have spare capacity past n."""

    n: int
    sealed: int
    keys: np.ndarray  # uint64 [cap]
    vectors: np.ndarray  # int8 or float16 [cap, dim]
    scales: np.ndarray  # float32 [cap]: int8 * scale = the vector
    codes: np.ndarray  # uint32 [cap, tables]: each table's key of each row
    live: np.ndarray  # bool [cap]
    order: np.ndarray  # uint32 [tables, sealed]: rows sorted by key, per table
    offsets: np.ndarray  # uint32 [tables, 2^bits + 1]: where each bucket starts in `order`
    # What every row's codes were hashed about: the entries' mean (None: not centred yet) and
    # each hyperplane's offset (planes @ mean). A query is hashed with the same snapshot's.
    mean: np.ndarray | None = None  # float32 [dim]
    bias: np.ndarray | None = None  # float32 [tables * bits]


class LshIndex(KeyedMeta):
    def __init__(self, shape: LshShape, probe_radius: int, *, centre: bool = True) -> None:
        """`centre=False` keeps hashing the vectors themselves (the benchmark's baseline)."""
        super().__init__()
        if not 1 <= shape.bits <= 30:
            raise ValueError(f"index bits must be 1-30, got {shape.bits}")
        self.shape = shape
        self.probe_radius = probe_radius
        self._planes = (
            np.random.default_rng(shape.seed)
            .standard_normal((shape.tables * shape.bits, shape.dim))
            .astype(np.float32)
        )
        self._weights = (1 << np.arange(shape.bits, dtype=np.uint64)).astype(np.float64)
        self._write = threading.Lock()
        self._state = self._empty()
        self._crowded_said = False
        self._centre = centre

    # -- contents ------------------------------------------------------------------------------

    @property
    def rows(self) -> int:
        """Rows held, dead ones included."""
        return self._state.n

    @property
    def nbytes(self) -> int:
        s = self._state
        n = s.n
        per_row = s.keys.itemsize + s.vectors[:1].nbytes + s.scales.itemsize + s.live.itemsize
        per_row += s.codes[:1].nbytes
        return (
            n * per_row + s.order.nbytes + s.offsets.nbytes + self._planes.nbytes + self.meta_nbytes
        )

    @property
    def mean_sq(self) -> float | None:
        """|μ|² of the mean the index hashes about; None while it is not centred."""
        mean = self._state.mean
        return None if mean is None else float(mean @ mean)

    def recall_at(self, cosine: float) -> float:
        """The chance a stored vector at `cosine` to a query is a candidate, in this index."""
        s = self.shape
        return recall_at(cosine, s.bits, s.tables, self.probe_radius, self.mean_sq or 0.0)

    def codes(self, vectors: np.ndarray) -> np.ndarray:
        """Each table's key (uint32) of each vector: [n, tables]."""
        return self._codes(vectors, self._state.bias)

    def _codes(self, vectors: np.ndarray, bias: np.ndarray | None) -> np.ndarray:
        """The keys of `vectors` hashed about the mean whose offsets are `bias`: the side of
        each hyperplane x - μ falls on, (x - μ)·h > 0, is x·h > μ·h."""
        vectors = np.asarray(vectors, np.float32).reshape(-1, self.shape.dim)
        out = np.empty((len(vectors), self.shape.tables), np.uint32)
        for start in range(0, len(vectors), 8192):
            part = vectors[start : start + 8192]
            projected = part @ self._planes.T
            signs = projected > (0 if bias is None else bias)
            # Summing powers of two as float64 is exact for up to 52 bits.
            keys = signs.reshape(-1, self.shape.bits).astype(np.float64) @ self._weights
            out[start : start + len(part)] = keys.reshape(len(part), -1).astype(np.uint32)
        return out

    def add(
        self, keys: np.ndarray, vectors: np.ndarray, *, threads: int = 1, seal: bool = True
    ) -> None:
        """Put vectors in (blocking). Their trust comes with set_meta. `threads` is unused
        (kept for the graph index's signature): numpy's own threads do the projection.
        `seal=False` lets the tail grow past TAIL_ROWS (an index built beside the live one,
        searched only once `seal` has run): one directory at the end instead of one per
        batch."""
        del threads
        if not len(keys):
            return
        keys = np.asarray(keys, np.uint64)
        vectors = np.asarray(vectors, np.float32).reshape(len(keys), self.shape.dim)
        with self._write:
            fresh = ~self._contains(keys)
            keys, vectors = keys[fresh], vectors[fresh]
            if not len(keys):
                return
            codes = self._codes(vectors, self._state.bias)
            quantised, scales = self._quantise(vectors)
            s = self._grown(self._state, len(keys))
            end = s.n + len(keys)
            s.keys[s.n : end] = keys
            s.vectors[s.n : end] = quantised
            s.scales[s.n : end] = scales
            s.codes[s.n : end] = codes
            s.live[s.n : end] = True
            s = replace(s, n=end)
            if seal and s.n - s.sealed > TAIL_ROWS:
                s = self._sealed(s)
            self._state = s

    def contains(self, keys: np.ndarray) -> np.ndarray:
        """Which of `keys` the index holds (bool per key)."""
        if not len(keys):
            return np.zeros(0, bool)
        return self._contains(np.asarray(keys, np.uint64))

    def _contains(self, keys: np.ndarray) -> np.ndarray:
        s = self._state
        held = s.keys[: s.n][s.live[: s.n]]
        return np.isin(keys, held)

    def remove(self, keys: np.ndarray) -> None:
        if not len(keys):
            return
        with self._write:
            s = self._state
            gone = np.isin(s.keys[: s.n], np.asarray(keys, np.uint64)) & s.live[: s.n]
            if not gone.any():
                return
            live = s.live.copy()  # a search holding the old snapshot keeps its own view
            live[: s.n][gone] = False
            s = replace(s, live=live)
            dead = s.n - int(live[: s.n].sum())
            if dead > max(1024, s.n // 4):
                s = self._compacted(s)
            self._state = s

    def seal(self) -> None:
        """Make the bucket directory cover every row (after a bulk add)."""
        with self._write:
            if self._state.sealed < self._state.n:
                self._state = self._sealed(self._state)

    # -- searching -----------------------------------------------------------------------------

    def search(self, vector: np.ndarray, min_threshold: float, count: int = 8) -> list[Hit]:
        """Live entries that may be at or above their threshold, most similar first (blocking).
        The similarities are approximate (quantised vectors): the caller re-checks them."""
        if not self.has_meta:
            return []
        rows, similarity = self.candidates(vector, min_threshold - QUANTISATION_MARGIN)
        order = np.argsort(-similarity, kind="stable")
        s = self._state
        return self.hits(s.keys[rows[order]], similarity[order], min_threshold, count)

    def candidates(self, vector: np.ndarray, floor: float) -> tuple[np.ndarray, np.ndarray]:
        """Rows that may be at or above cosine `floor` to `vector`, with their approximate
        similarity (only those at or above `floor`)."""
        s = self._state
        shape = self.shape
        vector = np.asarray(vector, np.float32).reshape(-1)
        query = self._codes(vector, s.bias)[0]
        masks = _probe_masks(shape.bits, self.probe_radius)
        found: list[np.ndarray] = []
        if s.sealed:
            found.append(self._probe(s, query, masks))
        if s.n > s.sealed:
            tail = np.arange(s.sealed, s.n)
            near = np.bitwise_count(s.codes[s.sealed : s.n] ^ query) <= self.probe_radius
            found.append(tail[near.any(axis=1)])
        rows = np.concatenate(found) if found else np.zeros(0, np.int64)
        if len(rows) > CROWDED_PROBE and not self._crowded_said:
            self._crowded_said = True
            log.warning(
                "embedding index: a lookup probed %d of %d entries: the entries are close to"
                " one another, so lookups cost more than on spread-out data; see the"
                " embeddings docs (index_kind)",
                len(rows),
                s.n,
            )
        if not len(rows):
            return rows, np.zeros(0, np.float32)
        # The keys over all tables: a cheap cosine estimate that drops unrelated candidates
        # before any vector is read (at the angle of the centred vectors the keys hash).
        mean_sq = 0.0 if s.mean is None else float(s.mean @ s.mean)
        centred = centred_cosine(max(-1.0, min(1.0, floor)), mean_sq)
        cutoff = hamming_cutoff(shape.bits * shape.tables, round(centred, 6))
        differing = np.bitwise_count(s.codes[rows] ^ query).sum(axis=1, dtype=np.int32)
        rows = np.unique(rows[differing <= cutoff])
        rows = rows[s.live[rows]]
        if not len(rows):
            return rows, np.zeros(0, np.float32)
        stored = s.vectors[rows].astype(np.float32)
        similarity = np.einsum("ij,j->i", stored, vector) * s.scales[rows]
        keep = similarity >= floor
        return rows[keep], similarity[keep]

    def probed(self, vector: np.ndarray) -> np.ndarray:
        """The rows a lookup's probes reach in the bucket directory, before any filtering
        (what the lookup's work grows with)."""
        s = self._state
        if not s.sealed:
            return np.zeros(0, np.int64)
        query = self._codes(vector, s.bias)[0]
        return self._probe(s, query, _probe_masks(self.shape.bits, self.probe_radius))

    def _probe(self, s: _State, query: np.ndarray, masks: np.ndarray) -> np.ndarray:
        """Rows in every bucket within the probe radius of the query's key, in every table."""
        buckets = (query[:, None] ^ masks[None, :]).astype(np.int64)  # [tables, probes]
        width = s.offsets.shape[1]
        at = (np.arange(self.shape.tables, dtype=np.int64)[:, None] * width + buckets).ravel()
        flat_offsets = s.offsets.reshape(-1)
        starts = flat_offsets[at].astype(np.int64)
        counts = flat_offsets[at + 1].astype(np.int64) - starts
        table = np.repeat(np.arange(self.shape.tables, dtype=np.int64), masks.size)
        full = counts > 0
        starts, counts, table = starts[full], counts[full], table[full]
        total = int(counts.sum())
        if not total:
            return np.zeros(0, np.int64)
        # Positions in the flattened `order` of every row in every probed bucket.
        first = starts + table * s.sealed
        shift = np.repeat(first - np.cumsum(counts) + counts, counts)
        positions = shift + np.arange(total, dtype=np.int64)
        return s.order.reshape(-1)[positions].astype(np.int64)

    # -- building ------------------------------------------------------------------------------

    def _quantise(self, vectors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if self.shape.dtype == "f16":
            return vectors.astype(np.float16), np.ones(len(vectors), np.float32)
        # int8 with a scale per row: a unit vector's largest component maps to 127, so the
        # rounding moves a similarity by about 1e-3 (QUANTISATION_MARGIN covers it).
        top = np.abs(vectors).max(axis=1)
        scales = np.where(top > 0, top / 127.0, 1.0).astype(np.float32)
        return np.rint(vectors / scales[:, None]).astype(np.int8), scales

    def _empty(self) -> _State:
        tables, dim = self.shape.tables, self.shape.dim
        dtype = np.float16 if self.shape.dtype == "f16" else np.int8
        return _State(
            0,
            0,
            np.zeros(0, np.uint64),
            np.zeros((0, dim), dtype),
            np.zeros(0, np.float32),
            np.zeros((0, tables), np.uint32),
            np.zeros(0, bool),
            np.zeros((tables, 0), np.uint32),
            np.zeros((tables, 2), np.uint32),
        )

    @staticmethod
    def _grown(s: _State, more: int) -> _State:
        """`s` with room for `more` rows (new arrays when it lacks it: a search holding the old
        snapshot keeps reading the old ones)."""
        need = s.n + more
        if need <= len(s.keys) and s.keys.flags.writeable and s.vectors.flags.writeable:
            return s
        cap = max(need, int(len(s.keys) * 1.5), 1024)

        def bigger(a: np.ndarray) -> np.ndarray:
            # np.empty: pages never written are never resident, so spare capacity is free.
            out = np.empty((cap, *a.shape[1:]), a.dtype)
            out[: s.n] = a[: s.n]
            return out

        return replace(
            s,
            keys=bigger(s.keys),
            vectors=bigger(s.vectors),
            scales=bigger(s.scales),
            codes=bigger(s.codes),
            live=bigger(s.live),
        )

    def _sealed(self, s: _State) -> _State:
        """`s` with a bucket directory over all its rows; centred on its rows' mean first if
        it is not yet and has enough of them."""
        if self._centre and s.mean is None and int(s.live[: s.n].sum()) >= MEAN_MIN_ROWS:
            s = self._centred(s)
        order = np.empty((self.shape.tables, s.n), np.uint32)
        for t in range(self.shape.tables):
            order[t] = np.argsort(s.codes[: s.n, t], kind="stable")
        offsets = _offsets(s.codes[: s.n], self.shape.bits)
        return replace(s, sealed=s.n, order=order, offsets=offsets)

    def _centred(self, s: _State) -> _State:
        """`s` hashed about the mean of its live rows: every row's codes again, in new arrays
        (a search holding the old snapshot keeps its codes, mean and offsets together). Once:
        rows added later are hashed about the same mean; a rebuild computes it afresh."""

        def rows(start: int, stop: int) -> np.ndarray:
            return s.vectors[start:stop].astype(np.float32) * s.scales[start:stop, None]

        step = 65_536  # 128 MB of float32 at a time
        total = np.zeros(self.shape.dim, np.float64)
        for start in range(0, s.n, step):
            stop = min(s.n, start + step)  # past n is spare capacity, never written
            total += rows(start, stop)[s.live[start:stop]].sum(axis=0, dtype=np.float64)
        mean = (total / max(1, int(s.live[: s.n].sum()))).astype(np.float32)
        bias = (self._planes @ mean).astype(np.float32)
        codes = np.empty_like(s.codes)
        for start in range(0, s.n, step):
            stop = min(s.n, start + step)
            codes[start:stop] = self._codes(rows(start, stop), bias)
        return replace(s, codes=codes, mean=mean, bias=bias)

    def _compacted(self, s: _State) -> _State:
        """`s` without its dead rows."""
        keep = np.flatnonzero(s.live[: s.n])
        compact = _State(
            len(keep),
            0,
            s.keys[keep],
            s.vectors[keep],
            s.scales[keep],
            s.codes[keep],
            np.ones(len(keep), bool),
            s.order[:, :0],
            s.offsets,
            s.mean,
            s.bias,
        )
        return self._sealed(compact)

    # -- saving --------------------------------------------------------------------------------

    def save(self, directory: Path) -> None:
        """Write the arrays to a new directory, then point `current.json` at it (atomic), then
        drop older saves: a reader never sees a half-written set."""
        directory.mkdir(parents=True, exist_ok=True)
        with self._write:
            if self._state.sealed < self._state.n:
                self._state = self._sealed(self._state)
            s = self._state
        name = f"lsh-{uuid.uuid4().hex[:12]}"
        target = directory / name
        target.mkdir()
        n = s.n
        arrays = {
            "keys": s.keys[:n],
            "vectors": s.vectors[:n],
            "scales": s.scales[:n],
            "codes": s.codes[:n],
            "live": s.live[:n],
            "order": s.order,
            "planes": self._planes,
            "mean": np.zeros(self.shape.dim, np.float32) if s.mean is None else s.mean,
        }
        for field, array in arrays.items():
            np.save(target / f"{field}.npy", np.ascontiguousarray(array))
        self.save_meta(target)
        pointer = {
            **self.shape.record(),
            "generation": self.generation,
            "dir": name,
            "rows": n,
            "centred": s.mean is not None,
        }
        tmp = directory / (_POINTER + ".tmp")
        tmp.write_text(json.dumps(pointer))
        os.replace(tmp, directory / _POINTER)
        for old in directory.glob("lsh-*"):
            if old.name != name:
                shutil.rmtree(old, ignore_errors=True)

    @classmethod
    def load(cls, directory: Path, shape: LshShape, probe_radius: int) -> LshIndex | None:
        """The saved index if it was built with `shape`, else None (then it is rebuilt). Its
        arrays are mapped, not read: pages come in as lookups touch them."""
        try:
            saved = json.loads((directory / _POINTER).read_text())
        except (OSError, ValueError):
            return None
        generation = saved.pop("generation", -1)
        name, rows = saved.pop("dir", ""), saved.pop("rows", -1)
        centred = bool(saved.pop("centred", False))
        if saved.get("format", 1) != FORMAT:
            log.info(
                "saved embedding index %s is of format %s (now %d): rebuilding",
                directory,
                saved.get("format", 1),
                FORMAT,
            )
            return None
        if saved != shape.record():
            log.info("saved embedding index %s was built differently: rebuilding", directory)
            return None
        index = cls(shape, probe_radius)
        try:
            where = directory / str(name)
            a = {f: np.load(where / f"{f}.npy", mmap_mode="r") for f in _ARRAYS}
            # Rows flip to dead in place: that one array is read, not mapped.
            live = np.array(a["live"], bool)
            tables = shape.tables
            if (
                len(a["keys"]) != rows
                or a["vectors"].shape != (rows, shape.dim)
                or a["codes"].shape != (rows, tables)
                or a["order"].shape != (tables, rows)
                or a["planes"].shape != index._planes.shape
                or a["mean"].shape != (shape.dim,)
            ):
                raise ValueError("arrays of the wrong shape")
            offsets = _offsets(a["codes"], shape.bits)
            index.load_meta(where)
        except Exception as exc:  # a torn or foreign file: rebuild rather than fail
            log.warning("saved embedding index %s unreadable (%s): rebuilding", directory, exc)
            return None
        index._planes = np.asarray(a["planes"], np.float32)
        mean = np.array(a["mean"], np.float32) if centred else None
        index._state = _State(
            rows,
            rows,
            a["keys"],
            a["vectors"],
            a["scales"],
            a["codes"],
            live,
            a["order"],
            offsets,
            mean,
            None if mean is None else (index._planes @ mean).astype(np.float32),
        )
        index.keep_held(index.contains)
        index.generation = int(generation)
        return index


def _offsets(codes: np.ndarray, bits: int) -> np.ndarray:
    """Where each bucket starts in each table's sorted rows: [tables, 2^bits + 1]."""
    tables, buckets = codes.shape[1], 1 << bits
    offsets = np.empty((tables, buckets + 1), np.uint32)
    offsets[:, 0] = 0
    for t in range(tables):
        np.cumsum(np.bincount(codes[:, t], minlength=buckets), out=offsets[t, 1:])
    return offsets
