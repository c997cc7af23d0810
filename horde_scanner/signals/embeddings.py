"""Matching a miss's image embedding against confirmed positives, with PDQ's trust rules.

`EmbeddingMatcher` encodes an image (signals/encoder.py, bounded pool), keeps the vector with
the image's verdict, and searches the index (signals/lsh_index.py by default, or the HNSW graph
of signals/embedding_index.py: `embeddings.index_kind`) of what the
store says it must hold: this instance's machine positives and deny-listed images, imported
entries, and the lists of subscriptions. Rules, as for PDQ (signals/hash_matcher.py):

- a match needs cosine similarity >= the list's threshold (embeddings.threshold, or the
  subscription's own), checked against the exact stored vector, not the index's quantised one;
- an entry from a `deny` source gives its label (`route` match, no backend verdict needed); a
  `review` source's match is flagged for an admin and the image is judged as usual;
- an admin's allow lifts the allowed image's own entry and every entry within the threshold
  of its embedding;
- a verdict from a match is never indexed nor published (a chain of near copies would drift).

The index is kept in step with the store like the PDQ index: a positive found here joins at
once; any other change bumps the store's hash generation, and a sync brings the index to what
the store says, adding and removing only the difference (a big difference rebuilds beside the
old index, which answers meanwhile). After each sync the index is saved, so a restart loads
the file and applies only what changed while it was down.

Until the model file exists the feature is off, and `status` says so in one line.
"""

from __future__ import annotations

import asyncio
import functools
import importlib.util
import logging
import time
from collections.abc import Iterable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from PIL import Image

from horde_scanner.config import EmbeddingsSettings, HashTrust
from horde_scanner.signals.embedding_index import (
    DENY,
    OWN,
    REVIEW,
    EmbeddingIndex,
    Hit,
    IndexShape,
    own_key,
)
from horde_scanner.signals.embedding_list import Model
from horde_scanner.signals.encoder import EncoderPool, EncoderUnavailable, ImageEncoder
from horde_scanner.signals.hash_matcher import entry_facts, list_of_origin, match_verdict
from horde_scanner.signals.hash_sync import IndexSync
from horde_scanner.signals.lsh_index import LshIndex, LshShape, recall_at
from horde_scanner.signals.vectors import BadVector, checked, from_blob, from_hex, to_blob
from horde_scanner.store.embeddings import EmbeddingRow
from horde_scanner.store.hashes import LOCAL, VERDICT
from horde_scanner.store.interfaces import (
    AuditStore,
    EmbeddingStore,
    HashBankStore,
    StoreLifecycle,
)
from horde_scanner.verdict import Label, Signals, Verdict, VerdictRoute


class EmbeddingMatchStore(EmbeddingStore, HashBankStore, AuditStore, StoreLifecycle, Protocol):
    """What the embedding matcher reads and records."""


log = logging.getLogger(__name__)

# The backend name an embedding-match verdict shows (what it rests on: VerdictRoute.MATCH).
EMBEDDING_BACKEND = "embeddings"
_TRUST_CODE = {HashTrust.DENY: DENY, HashTrust.REVIEW: REVIEW}
_TRUST_NAME = {DENY: HashTrust.DENY, REVIEW: HashTrust.REVIEW}
# A diff bigger than this share of the index rebuilds beside it instead of changing it in place
# (the lock a change holds would stall lookups).
_REBUILD_SHARE = 0.2
_REBUILD_MIN = 20_000
_VECTORS_PER_FETCH = 20_000
# The cosines the start-up log states the LSH index's recall at.
_STATED_COSINES = (0.95, 0.90, 0.85, 0.80)

AnyIndex = EmbeddingIndex | LshIndex


@dataclass(frozen=True, slots=True)
class EmbeddingMatch:
    similarity: float
    threshold: float
    trust: HashTrust
    entry: EmbeddingRow
    model: str
    key: int
    frame: int | None = None  # of an animation or video, when not the first frame

    @property
    def rejects(self) -> bool:
        return self.trust is HashTrust.DENY

    @property
    def label(self) -> Label:
        return Label(self.entry.label)

    @property
    def value(self) -> str:
        """How the entry is named in reasons and flags."""
        if self.entry.sha256:
            return f"image:{self.entry.sha256}"
        return f"entry:{self.entry.digest}"

    def reason(self) -> str:
        entry = self.entry
        where = f" in frame {self.frame}" if self.frame else ""
        parts = [
            f"{self.label.value} by embedding match{where} (cosine {self.similarity:.3f}"
            f" >= {self.threshold:.2f}, model {self.model})",
            f"{self.value} from {list_of_origin(entry.origin, entry.note)}",
        ]
        parts += entry_facts(entry.origin, entry.source, entry.first_seen, entry.note)
        return "; ".join(parts)

    def verdict(self, policy_version: str) -> Verdict:
        return match_verdict(self.label, self.reason(), EMBEDDING_BACKEND, policy_version)


class EmbeddingMatcher:
    def __init__(
        self,
        store: EmbeddingMatchStore,
        settings: EmbeddingsSettings,
        executor: Executor,
        *,
        pool: EncoderPool | None = None,
    ) -> None:
        self.store = store
        self.settings = settings
        self._executor = executor
        self.pool = pool
        self.model = Model(settings.model_id, settings.preprocess, settings.dim)
        self._trust = {LOCAL: DENY, VERDICT: DENY}
        self._threshold = {LOCAL: settings.threshold, VERDICT: settings.threshold}
        for sub in settings.subscriptions:
            self._trust[sub.name] = _TRUST_CODE[sub.trust]
            self._threshold[sub.name] = (
                sub.threshold if sub.threshold is not None else settings.threshold
            )
        self.shape = index_shape(settings)
        # Made at start, when on: the base install has no usearch (the graph index needs it).
        self._index: AnyIndex | None = None
        self._stated = ""  # the index line last logged
        self._sync_lock = asyncio.Lock()
        self.last_sync_s = 0.0
        self._index_sync = IndexSync(
            store,
            "embedding index",
            interval_s=settings.sync_interval_s,
            generation=lambda: self.index.generation,
            reload=self.sync,
            last_load_s=lambda: self.last_sync_s,
        )
        self.status = "off"

    @classmethod
    def open(
        cls, store: EmbeddingMatchStore, settings: EmbeddingsSettings, executor: Executor
    ) -> EmbeddingMatcher:
        """The matcher with its encoder, or without one (off: `status` says why)."""
        matcher = cls(store, settings, executor)
        try:
            encoder = ImageEncoder(
                settings.model_path,
                settings.preprocess,
                settings.dim,
                intra_op_threads=settings.intra_op_threads,
            )
        except EncoderUnavailable as exc:
            matcher.status = f"off: {exc}"
            return matcher
        if settings.index_kind == "hnsw" and importlib.util.find_spec("usearch") is None:
            matcher.status = "off: embeddings need usearch: pip install 'horde-scanner[embeddings]'"
            return matcher
        matcher.pool = EncoderPool(encoder, settings.threads, settings.max_queue)
        matcher.status = f"on: {settings.model_id} ({settings.model_path})"
        return matcher

    @property
    def enabled(self) -> bool:
        return self.pool is not None

    @property
    def size(self) -> int:
        return len(self._index) if self._index is not None else 0

    @property
    def index(self) -> AnyIndex:
        if self._index is None:
            self._index = self._new_index()
        return self._index

    def _new_index(self) -> AnyIndex:
        return new_index(self.settings, self.shape)

    def describe_index(self) -> str:
        index = self._index
        mean_sq = index.mean_sq if isinstance(index, LshIndex) else None
        return describe_index(self.settings, self._threshold.values(), mean_sq)

    async def start(self) -> None:
        if not self.enabled:
            log.warning("embeddings %s", self.status)
            return
        log.info("embeddings %s", self.status)
        stale = await self.store.drop_embedding_origins_except(self._trust)
        if stale:
            log.info("dropped embedding entries of subscriptions no longer configured: %s", stale)
        loop = asyncio.get_running_loop()
        saved = await loop.run_in_executor(
            self._executor, load_index, self._index_dir, self.settings, self.shape
        )
        if saved is not None:
            self._index = saved
            log.info("embedding index: %d entries loaded from %s", len(saved), self._index_dir)
        await self._index_sync.start()
        # After the first sync: the stated recall depends on the mean the index hashes about.
        self._stated = self.describe_index()
        log.info("embedding index: %s", self._stated)

    async def stop(self) -> None:
        await self._index_sync.stop()
        if self.pool is not None:
            self.pool.close()

    @property
    def _index_dir(self) -> Any:
        slug = "".join(c if c.isalnum() or c in "-_." else "_" for c in self.settings.model_id)
        return self.settings.index_dir / slug[:120]

    # -- keeping in step -----------------------------------------------------------------------

    async def sync(self) -> None:
        """Bring the index to what the store says it must hold, then save it."""
        async with self._sync_lock:
            started = time.monotonic()
            generation = await self.store.hash_generation()
            wanted_keys: list[np.ndarray] = []
            wanted_trust: list[np.ndarray] = []
            wanted_threshold: list[np.ndarray] = []
            async for kind, ids, origins in self.store.embedding_index_keys(self.model.model):
                trust = np.array([self._trust.get(o, 255) for o in origins], np.uint8)
                keep = trust != 255
                base = np.asarray(ids, np.uint64)[keep]
                keys = base * np.uint64(2) + np.uint64(OWN if kind == "own" else 0)
                wanted_keys.append(keys)
                wanted_trust.append(trust[keep])
                wanted_threshold.append(
                    np.array(
                        [self._threshold[o] for o, k in zip(origins, keep, strict=True) if k],
                        np.float32,
                    )
                )
            keys = np.concatenate(wanted_keys) if wanted_keys else np.zeros(0, np.uint64)
            trust = np.concatenate(wanted_trust) if wanted_trust else np.zeros(0, np.uint8)
            threshold = (
                np.concatenate(wanted_threshold) if wanted_threshold else np.zeros(0, np.float32)
            )
            present = self.index.keys()
            to_add = np.setdiff1d(keys, present, assume_unique=True)
            to_remove = np.setdiff1d(present, keys, assume_unique=True)
            index = self.index
            if len(to_add) + len(to_remove) > max(_REBUILD_MIN, _REBUILD_SHARE * len(present)):
                # Rebuilt beside the one answering now: lookups never wait for it.
                index = self._new_index()
                to_add, to_remove = keys, np.zeros(0, np.uint64)
            # An index built beside the live one is sealed once, after all its rows are in.
            await self._add(index, to_add, seal=index is self._index)
            loop = asyncio.get_running_loop()
            await loop.run_in_executor(self._executor, index.seal)
            await loop.run_in_executor(self._executor, index.remove, to_remove)
            # Rows gone from the store between listing and fetching are not in the graph.
            held = await loop.run_in_executor(self._executor, index.contains, keys)
            index.set_meta(keys[held], trust[held], threshold[held])
            await self._suppress_allowed(index)
            index.generation = generation
            self._index = index
            saved_file = "current.json" if isinstance(index, LshIndex) else "meta.json"
            if len(to_add) or len(to_remove) or not (self._index_dir / saved_file).exists():
                await loop.run_in_executor(self._executor, index.save, self._index_dir)
            self.last_sync_s = time.monotonic() - started
            stated = self.describe_index()
            if self._stated and stated != self._stated:  # a rebuild's new mean
                self._stated = stated
                log.info("embedding index: %s", stated)
            if len(to_add) or len(to_remove):
                log.info(
                    "embedding index: %d entries (+%d, -%d, %.0f MB) in %.2f s",
                    len(index),
                    len(to_add),
                    len(to_remove),
                    index.nbytes / 1e6,
                    self.last_sync_s,
                )

    async def _add(self, index: AnyIndex, keys: np.ndarray, *, seal: bool = True) -> None:
        loop = asyncio.get_running_loop()
        for start in range(0, len(keys), _VECTORS_PER_FETCH):
            chunk = keys[start : start + _VECTORS_PER_FETCH]
            for parity, kind in ((0, "entry"), (OWN, "own")):
                part = chunk[(chunk % np.uint64(2)) == parity]
                if not len(part):
                    continue
                ids = (part // np.uint64(2)).tolist()
                rows = await self.store.embedding_vectors(kind, ids)
                if not rows:
                    continue
                found = np.array([2 * i + parity for i, _ in rows], np.uint64)
                vectors = np.stack([from_blob(v) for _, v in rows])
                add = functools.partial(index.add, found, vectors, seal=seal)
                await loop.run_in_executor(self._executor, add)

    async def _suppress_allowed(self, index: AnyIndex) -> None:
        allowed = await self.store.allowed_embeddings(self.model.model)
        if not allowed:
            return
        loop = asyncio.get_running_loop()

        def near() -> np.ndarray:
            keys: list[int] = []
            for blob in allowed:
                # Allowed images are few; a generous search finds every entry they override.
                hits = index.search(from_blob(blob), 0.0, count=64)
                keys += [h.key for h in hits if h.similarity >= h.threshold - 0.01]
            return np.array(keys, np.uint64)

        index.suppress(await loop.run_in_executor(self._executor, near))

    async def note_verdict(self, sha256: str, verdict: Verdict) -> bool:
        """A backend found a positive: its embedding joins the index now. True if it did."""
        if not self.enabled or verdict.label is not Label.CSAM:
            return False
        if verdict.route is VerdictRoute.MATCH:
            return False
        found = await self.store.embedding_of(sha256, self.model.model)
        if found is None:
            return False
        row_id, blob = found
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(
            self._executor,
            self.index.add_one,
            own_key(row_id),
            from_blob(blob),
            DENY,
            self.settings.threshold,
        )
        return True

    # -- encoding and matching -----------------------------------------------------------------

    async def embed(self, image: Image.Image) -> np.ndarray | None:
        """The image's embedding, or None (feature off, or the encoder's queue full)."""
        if self.pool is None:
            return None
        try:
            return await self.pool.encode(image)
        except Exception:  # a model that fails on one image must not fail the judgement
            log.exception("embedding failed")
            return None

    async def embed_frames(
        self, image: Image.Image, frames: Sequence[tuple[int, Image.Image]]
    ) -> list[tuple[int, np.ndarray | None]]:
        """The image's embedding (frame 0: the first frame), and, of an animation or video,
        those of up to embeddings.max_frames - 1 more of its sampled frames (the frames PDQ
        hashed), encoded at once in the pool; each may be None (queue full, encoder failed)."""
        chosen = [(0, image)] + [(i, f) for i, f in frames if i != 0][
            : self.settings.max_frames - 1
        ]
        vectors = await asyncio.gather(*(self.embed(f) for _, f in chosen))
        return [(i, v) for (i, _), v in zip(chosen, vectors, strict=True)]

    def from_signals(self, signals: Signals) -> np.ndarray | None:
        """An embedding a backend sent with its signals (local GPU, remote worker), when it
        names this instance's model: `extra.embedding = {model, preprocess, vector}`."""
        sent = signals.extra.get("embedding") if signals.extra else None
        if not isinstance(sent, dict):
            return None
        if (
            sent.get("model") != self.model.model
            or sent.get("preprocess", self.model.preprocess) != self.model.preprocess
        ):
            return None
        try:
            return from_hex(sent.get("vector", ""), self.model.dim)
        except BadVector as exc:
            log.warning("%s sent an unusable embedding: %s", signals.backend, exc)
            return None

    async def keep(self, sha256: str, vector: np.ndarray) -> None:
        await self.store.save_embedding(sha256, self.model.model, to_blob(vector))

    def search(self, vector: np.ndarray) -> list[Hit]:
        """Index hits (blocking, about a millisecond)."""
        return self.index.search(vector, min(self._threshold.values()))

    async def match(self, vector: np.ndarray) -> EmbeddingMatch | None:
        """The best match: the most similar deny entry, else the most similar review entry."""
        vector = checked(vector, self.model.dim)
        loop = asyncio.get_running_loop()
        hits = await loop.run_in_executor(self._executor, self.search, vector)
        best: dict[int, EmbeddingMatch] = {}
        for hit in sorted(hits, key=lambda h: -h.similarity):
            if hit.trust in best:
                continue
            entry = await self._describe(hit.key)
            if entry is None:
                continue
            # The exact similarity, from the stored float32 vector.
            similarity = float(np.dot(from_blob(entry.vector), vector))
            if similarity < hit.threshold:
                continue
            best[hit.trust] = EmbeddingMatch(
                similarity, hit.threshold, _TRUST_NAME[hit.trust], entry, self.model.model, hit.key
            )
        return best.get(DENY) or best.get(REVIEW)

    async def _describe(self, key: int) -> EmbeddingRow | None:
        if key % 2 == OWN:
            return await self.store.own_embedding(key // 2)
        entry = await self.store.embedding_entry(key // 2)
        if entry is not None and self._trust.get(entry.origin) is None:
            return None
        return entry

    async def recheck(self, sha256: str) -> EmbeddingMatch | None:
        """A verdict that rested on an embedding match, against today's index."""
        if not self.enabled:
            return None
        found = await self.store.embedding_of(sha256, self.model.model)
        if found is None:
            return None
        match = await self.match(from_blob(found[1]))
        return match if match is not None and match.rejects else None

    async def flag(self, sha256: str, match: EmbeddingMatch, source: str | None) -> None:
        """A review source matched: note it for an admin, once per image and entry."""
        distance = round((1.0 - match.similarity) * 1000)  # in thousandths of cosine
        new = await self.store.flag_hash(
            sha256, match.entry.origin, "embedding", match.value, distance, source
        )
        if new:
            log.warning("review: %s matches %s", sha256[:12], match.reason())
            await self.store.audit(
                "hash_review",
                sha256=sha256,
                label=match.label.value,
                action="flag",
                source=source,
                detail={
                    "origin": match.entry.origin,
                    "signal": "embedding",
                    "value": match.value,
                    "similarity": round(match.similarity, 4),
                    "reason": match.reason(),
                },
            )


def index_shape(settings: EmbeddingsSettings) -> IndexShape | LshShape:
    """What the index is built with (a saved one built otherwise is rebuilt)."""
    s = settings
    if s.index_kind == "lsh":
        return LshShape(s.model_id, s.dim, s.index_dtype, s.index_bits, s.index_tables)
    return IndexShape(s.model_id, s.dim, s.index_dtype, s.index_connectivity, s.index_expansion_add)


def new_index(settings: EmbeddingsSettings, shape: IndexShape | LshShape) -> AnyIndex:
    if isinstance(shape, LshShape):
        return LshIndex(shape, settings.index_probe_radius)
    return EmbeddingIndex(shape, settings.index_expansion_search)


def load_index(
    directory: Path, settings: EmbeddingsSettings, shape: IndexShape | LshShape
) -> AnyIndex | None:
    """The index saved in `directory` if built with `shape`, else None."""
    if isinstance(shape, LshShape):
        return LshIndex.load(directory, shape, settings.index_probe_radius)
    return EmbeddingIndex.load(directory, shape, settings.index_expansion_search)


def describe_index(
    settings: EmbeddingsSettings, thresholds: Iterable[float] = (), mean_sq: float | None = None
) -> str:
    """One line: the index's kind and, for LSH, the recall its settings guarantee at the
    usual cosines and at each configured threshold, for an index hashed about its entries'
    mean of squared length `mean_sq` (None: not centred, too few entries yet)."""
    s = settings
    if s.index_kind == "hnsw":
        return (
            f"HNSW graph (usearch, {s.index_dtype}, {s.index_connectivity} links, search"
            f" list {s.index_expansion_search}): recall measured, not guaranteed"
        )
    m = mean_sq or 0.0
    stated = ", ".join(
        f"cos {c:.2f}: {recall_at(c, s.index_bits, s.index_tables, s.index_probe_radius, m):.4f}"
        for c in sorted({*_STATED_COSINES, *thresholds}, reverse=True)
    )
    centring = (
        "not centred (too few entries)"
        if mean_sq is None
        else f"hashed about the entries' mean, |mean|^2 {mean_sq:.3f}"
    )
    return (
        f"LSH ({s.index_bits} bits x {s.index_tables} tables, probe radius"
        f" {s.index_probe_radius}, {s.index_dtype}), {centring}; chance a stored vector is"
        f" found: {stated}"
    )


def is_embedding_match(verdict: Verdict) -> bool:
    return verdict.route is VerdictRoute.MATCH and verdict.backend == EMBEDDING_BACKEND
