"""In-memory nearest-neighbour index of PDQ hashes (Hamming distance), numpy only.

Brute force over 1,000,000 hashes costs about 25 ms per query on two cores, so the index uses
multi-index hashing: the 256 bits are cut into 16 chunks of 16 bits, and by the pigeonhole
principle two hashes within distance 31 agree up to one bit on at least one chunk. A query
looks up, for every chunk, its own value and the 16 values one bit away (272 buckets, about
15 hashes each for random hashes), then checks only those candidates exactly. Thresholds
above 31 widen the probe (more flipped bits per chunk) automatically.

Memory for n hashes: 32 n bytes of hashes + 16 x 4 n bytes of bucket order + 4 MiB of bucket
offsets, about 100 MB per million. An index is immutable once built, so worker threads can
search it while the event loop builds its replacement; new hashes go to a small `extra` array
searched by brute force until the next rebuild.
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

WORDS = 4  # 4 x 64 bits
CHUNKS = 16
CHUNK_BITS = 16
_BUCKETS = 1 << CHUNK_BITS
# Above this share of all rows as candidates, a full scan is cheaper than gathering buckets.
_SCAN_SHARE = 0.25

Trust = int
DENY: Trust = 0
REVIEW: Trust = 1


def hex_to_words(values: Sequence[str]) -> np.ndarray:
    """(n, 4) uint64 from n 64-character hex strings (validated by the caller)."""
    if not values:
        return np.zeros((0, WORDS), dtype=np.uint64)
    raw = np.frombuffer("".join(values).encode("ascii"), dtype=np.uint8).reshape(-1, 64)
    # ASCII hex digit -> nibble, vectorised: '0'-'9' -> 0-9, 'a'-'f' -> 10-15.
    nibbles = np.where(raw >= ord("a"), raw - (ord("a") - 10), raw - ord("0")).astype(np.uint8)
    packed = (nibbles[:, 0::2] << 4) | nibbles[:, 1::2]
    return packed.view(">u8").astype(np.uint64).reshape(-1, WORDS)


def words_to_hex(words: np.ndarray) -> str:
    return words.astype(">u8").tobytes().hex()


@dataclass(frozen=True, slots=True)
class Hit:
    row: int
    distance: int
    trust: Trust
    value: str


class PdqIndex:
    def __init__(self, words: np.ndarray, trust: np.ndarray | None = None) -> None:
        self._setup([np.asarray(words, dtype=np.uint64).reshape(-1, WORDS)], trust)

    @classmethod
    def from_chunks(cls, chunks: list[np.ndarray], trust: np.ndarray) -> PdqIndex:
        """Build from (n_i, 4) pieces without first joining them (one copy less in memory)."""
        index = cls.__new__(cls)
        index._setup(chunks, trust)
        return index

    def _setup(self, chunks: list[np.ndarray], trust: np.ndarray | None) -> None:
        n = sum(len(c) for c in chunks)
        self.trust = (
            np.zeros(n, dtype=np.uint8) if trust is None else np.asarray(trust, dtype=np.uint8)
        )
        # Column copies make the candidate check and the fallback scan cache friendly.
        self._columns = [
            np.concatenate([c[:, i] for c in chunks]) if chunks else np.zeros(0, np.uint64)
            for i in range(WORDS)
        ]
        chunks.clear()
        self._order: list[np.ndarray] = []
        self._offsets: list[np.ndarray] = []
        for chunk in range(CHUNKS):
            keys = _chunk_values(self._columns, chunk)
            # Stable sort of 16-bit keys is a radix sort in numpy: linear time.
            order = np.argsort(keys, kind="stable").astype(np.uint32)
            counts = np.bincount(keys, minlength=_BUCKETS)
            offsets = np.zeros(_BUCKETS + 1, dtype=np.int64)
            np.cumsum(counts, out=offsets[1:])
            self._order.append(order)
            self._offsets.append(offsets)
        self._alive: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.trust)

    def value(self, row: int) -> str:
        return words_to_hex(np.array([c[row] for c in self._columns], dtype=np.uint64))

    @property
    def nbytes(self) -> int:
        arrays: list[np.ndarray] = [self.trust, *self._columns, *self._order, *self._offsets]
        return sum(a.nbytes for a in arrays)

    def suppress(self, rows: np.ndarray) -> None:
        """Never report these rows again (an admin allowed what they match)."""
        if len(rows) == 0:
            return
        if self._alive is None:
            self._alive = np.ones(len(self), dtype=bool)
        self._alive[rows] = False

    def search(self, query: str, max_distance: int) -> list[Hit]:
        """Every live row within `max_distance` of `query` (hex), nearest first."""
        q = hex_to_words([query])[0]
        candidates = self._candidates(q, max_distance)
        distances = _distances(self._columns, q, candidates)
        keep = distances <= max_distance
        rows = np.flatnonzero(keep) if candidates is None else candidates[keep]
        distances = distances[keep]
        if candidates is not None and len(rows) > 1:
            rows, first = np.unique(rows, return_index=True)
            distances = distances[first]
        if self._alive is not None and len(rows):
            live = self._alive[rows]
            rows, distances = rows[live], distances[live]
        order = np.argsort(distances, kind="stable")
        return [
            Hit(int(rows[i]), int(distances[i]), int(self.trust[rows[i]]), self.value(int(rows[i])))
            for i in order
        ]

    def _candidates(self, q: np.ndarray, max_distance: int) -> np.ndarray | None:
        # Within distance d, some chunk differs in at most d // CHUNKS bits.
        flips = max_distance // CHUNKS
        masks = _flip_masks(flips)
        n = len(self)
        if n == 0:
            return np.zeros(0, dtype=np.int64)
        if len(masks) * CHUNKS * max(1.0, n / _BUCKETS) > n * _SCAN_SHARE:
            return None
        parts = []
        total = 0
        for chunk in range(CHUNKS):
            word, part = divmod(chunk, 64 // CHUNK_BITS)
            value = (int(q[word]) >> (part * CHUNK_BITS)) & (_BUCKETS - 1)
            probes = np.bitwise_xor(masks, value)
            offsets = self._offsets[chunk]
            starts, ends = offsets[probes], offsets[probes + 1]
            order = self._order[chunk]
            for s, e in zip(starts.tolist(), ends.tolist(), strict=True):
                if e > s:
                    parts.append(order[s:e])
                    total += e - s
            if total > n * _SCAN_SHARE:
                return None  # skewed buckets (real lists are not random): scan instead
        if not parts:
            return np.zeros(0, dtype=np.int64)
        # Duplicates (a row found through several chunks) are dropped after the distance check,
        # when few rows are left.
        return np.concatenate(parts).astype(np.int64)


class ExtraHashes:
    """Hashes added since the index was built; brute force, kept small by rebuilds."""

    def __init__(self, words: np.ndarray | None = None, trust: np.ndarray | None = None) -> None:
        self.words = np.zeros((0, WORDS), dtype=np.uint64) if words is None else words
        self.trust = np.zeros(0, dtype=np.uint8) if trust is None else trust

    def __len__(self) -> int:
        return len(self.words)

    def plus(self, values: Sequence[str], trust: Trust) -> ExtraHashes:
        """A new object (the old one may be in use by a searching thread)."""
        added = hex_to_words(values)
        return ExtraHashes(
            np.concatenate([self.words, added]),
            np.concatenate([self.trust, np.full(len(added), trust, dtype=np.uint8)]),
        )

    def search(self, query: str, max_distance: int) -> list[Hit]:
        if not len(self.words):
            return []
        q = hex_to_words([query])[0]
        distances = np.bitwise_count(self.words ^ q).sum(axis=1)
        rows = np.flatnonzero(distances <= max_distance)
        return sorted(
            (
                Hit(-1 - int(r), int(distances[r]), int(self.trust[r]), words_to_hex(self.words[r]))
                for r in rows
            ),
            key=lambda hit: hit.distance,
        )


def _chunk_values(columns: Sequence[np.ndarray], chunk: int) -> np.ndarray:
    word, part = divmod(chunk, 64 // CHUNK_BITS)
    shift = np.uint64(part * CHUNK_BITS)
    return ((columns[word] >> shift) & np.uint64(_BUCKETS - 1)).astype(np.uint16)


def _distances(columns: list[np.ndarray], q: np.ndarray, rows: np.ndarray | None) -> np.ndarray:
    total: np.ndarray | None = None
    for i, column in enumerate(columns):
        part = np.bitwise_count((column if rows is None else column[rows]) ^ q[i])
        total = part.astype(np.uint16) if total is None else total + part
    assert total is not None
    return total


@functools.cache
def _flip_masks(flips: int) -> np.ndarray:
    """All 16-bit masks with at most `flips` bits set."""
    values = [0]
    for k in range(1, flips + 1):
        for bits in itertools.combinations(range(CHUNK_BITS), k):
            values.append(sum(1 << b for b in bits))
    return np.array(values, dtype=np.int64)
