"""Matching images against the deny lists by hash, before any backend is asked.

`HashMatcher` keeps the in-memory PDQ index (signals/hash_index.py) of every deny entry:
this instance's confirmed positives and deny list, imported entries, and subscribed lists. It
is loaded at start-up and kept in step with the store: hashes of new positives are added at
once, and any other change (an import, an allow from the CLI, a subscription refresh) bumps the
store's hash generation, which makes the index rebuild in the background while the old one
keeps answering.

Rules: a PDQ match needs distance <= `pdq_max_distance` and quality >= `pdq_min_quality` on the
image's side (entries of our own below that quality are never indexed). An entry from a
`review` source never rejects: the match is flagged for an admin and the image is judged as
usual. An admin allow removes the allowed image's own entries and every deny entry within the
match distance of its PDQ. A near match only ever makes a verdict worse: clean verdicts are
reused for exact sha256 matches only.
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import time
from collections.abc import Sequence
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from horde_scanner.config import HashesSettings, HashTrust
from horde_scanner.media.hashing import PdqHash
from horde_scanner.signals.hash_index import DENY, REVIEW, ExtraHashes, Hit, PdqIndex, hex_to_words
from horde_scanner.signals.hash_sync import IndexSync
from horde_scanner.store.hashes import LOCAL, VERDICT, HashRow
from horde_scanner.store.interfaces import AuditStore, ClusterStore, HashBankStore, StoreLifecycle
from horde_scanner.timefmt import iso
from horde_scanner.verdict import Label, Verdict, VerdictRoute


class HashMatchStore(HashBankStore, ClusterStore, AuditStore, StoreLifecycle, Protocol):
    """What the hash matcher (and its subscriptions) read and record."""


log = logging.getLogger(__name__)

_TRUST_CODE = {HashTrust.DENY: DENY, HashTrust.REVIEW: REVIEW}
_TRUST_NAME = {DENY: HashTrust.DENY, REVIEW: HashTrust.REVIEW}
# The backend name a hash-match verdict shows (what it rests on is its route, VerdictRoute.MATCH).
MATCH_BACKEND = "hashlist"


@dataclass(frozen=True, slots=True)
class Match:
    signal: str  # sha256 | pdq
    value: str
    distance: int
    trust: HashTrust
    origin: str
    label: Label
    source: str
    first_seen: float | None
    note: str
    sha256: str | None = None  # our own image the entry came from, if any

    @property
    def rejects(self) -> bool:
        return self.trust is HashTrust.DENY

    def reason(self) -> str:
        parts = [f"{self.label.value} by {self.signal} match"]
        if self.signal == "pdq":
            parts[0] += f" (distance {self.distance})"
        parts.append(
            f"entry {self.signal}:{self.value} from {list_of_origin(self.origin, self.note)}"
        )
        if self.sha256:
            parts.append(f"image {self.sha256}")
        parts += entry_facts(self.origin, self.source, self.first_seen, self.note)
        return "; ".join(parts)

    def verdict(self, policy_version: str) -> Verdict:
        return match_verdict(self.label, self.reason(), MATCH_BACKEND, policy_version)


@dataclass(frozen=True, slots=True)
class Recheck:
    """What the lists say now about a verdict stored earlier."""

    # A deny entry matches the image now: this verdict replaces the stored one.
    verdict: Verdict | None = None
    # The stored verdict rested on a hash entry that is gone: judge the image afresh.
    stale: bool = False


@dataclass(frozen=True, slots=True)
class _Snapshot:
    """What worker threads search; replaced whole, never changed in place."""

    index: PdqIndex
    extra: ExtraHashes
    generation: int


class HashMatcher:
    def __init__(self, store: HashMatchStore, settings: HashesSettings, executor: Executor) -> None:
        self._store = store
        self.store = store
        self.settings = settings
        self._executor = executor
        self._trust = {LOCAL: DENY, VERDICT: DENY}
        self._trust.update({sub.name: _TRUST_CODE[sub.trust] for sub in settings.subscriptions})
        self._snapshot = _Snapshot(PdqIndex(np.zeros((0, 4), dtype=np.uint64)), ExtraHashes(), -1)
        self._reload_lock = asyncio.Lock()
        self.last_load_s = 0.0
        self._index_sync = IndexSync(
            store,
            "hash index",
            interval_s=settings.sync_interval_s,
            generation=lambda: self._snapshot.generation,
            reload=self.reload,
            last_load_s=lambda: self.last_load_s,
        )

    @property
    def max_distance(self) -> int:
        return self.settings.pdq_max_distance

    @property
    def size(self) -> int:
        snap = self._snapshot
        return len(snap.index) + len(snap.extra)

    @property
    def index_bytes(self) -> int:
        snap = self._snapshot
        return snap.index.nbytes + snap.extra.words.nbytes + snap.extra.trust.nbytes

    async def start(self) -> None:
        stale = await self._store.drop_hash_origins_except(self._trust)
        if stale:
            log.info("dropped entries of subscriptions no longer configured: %s", stale)
        await self._index_sync.start()

    async def stop(self) -> None:
        await self._index_sync.stop()

    async def reload(self) -> None:
        """Rebuild the index from the store (the old one answers until the new one is ready)."""
        async with self._reload_lock:
            started = time.monotonic()
            generation = await self._store.hash_generation()
            # Positives noted from now on may be missing from what is read next: keep them.
            kept_from = len(self._snapshot.extra)
            loop = asyncio.get_running_loop()
            words: list[np.ndarray] = []
            trust: list[np.ndarray] = []
            async for values, origins in self._store.hash_index_rows(self.settings.pdq_min_quality):
                w, t = await loop.run_in_executor(self._executor, self._convert, values, origins)
                words.append(w)
                trust.append(t)
            allowed = await self._store.allowed_pdq(self.settings.pdq_min_quality)
            index = await loop.run_in_executor(self._executor, self._build, words, trust, allowed)
            extra = self._snapshot.extra
            kept = ExtraHashes(extra.words[kept_from:], extra.trust[kept_from:])
            self._snapshot = _Snapshot(index, kept, generation)
            self.last_load_s = time.monotonic() - started
            log.info(
                "hash index: %d PDQ hashes (%.1f MB) loaded in %.2f s",
                len(index),
                index.nbytes / 1e6,
                self.last_load_s,
            )

    def _convert(self, values: list[str], origins: list[str]) -> tuple[np.ndarray, np.ndarray]:
        # Origins not configured (a subscription just removed) hold nothing any more.
        trust = np.array([self._trust.get(o, 255) for o in origins], dtype=np.uint8)
        keep = trust != 255
        words = hex_to_words(values)
        return (words, trust) if keep.all() else (words[keep], trust[keep])

    def _build(
        self, words: list[np.ndarray], trust: list[np.ndarray], allowed: list[str]
    ) -> PdqIndex:
        index = PdqIndex.from_chunks(
            words, np.concatenate(trust) if trust else np.zeros(0, dtype=np.uint8)
        )
        for value in allowed:
            hits = index.search(value, self.max_distance)
            index.suppress(np.array([hit.row for hit in hits], dtype=np.int64))
        _release_free_memory()
        return index

    # -- matching ------------------------------------------------------------------------------

    def search(self, hashes: Sequence[PdqHash]) -> list[Hit]:
        """Index hits for an image's hashes. Blocking (about a millisecond): call it from the
        worker thread that decoded the image."""
        snap = self._snapshot
        hits: list[Hit] = []
        for h in hashes:
            if h.quality < self.settings.pdq_min_quality:
                continue
            hits += snap.index.search(h.hex, self.max_distance)
            hits += snap.extra.search(h.hex, self.max_distance)
        return hits

    async def resolve(self, hits: Sequence[Hit]) -> Match | None:
        """The best hit as a Match: the nearest deny entry, else the nearest review entry."""
        for trust in (DENY, REVIEW):
            for hit in sorted((h for h in hits if h.trust == trust), key=lambda h: h.distance):
                entries = await self._store.describe_pdq(hit.value)
                entry = self._pick(entries, trust)
                if entry is not None:
                    return _match(entry, hit.distance, _TRUST_NAME[trust])
        return None

    async def match_image(self, hashes: Sequence[PdqHash]) -> Match | None:
        if not any(h.quality >= self.settings.pdq_min_quality for h in hashes):
            return None
        loop = asyncio.get_running_loop()
        hits = await loop.run_in_executor(self._executor, self.search, hashes)
        return await self.resolve(hits)

    async def match_sha256(self, sha256: str) -> Match | None:
        """An exact sha256 entry of an imported or subscribed list (the admin's own deny list
        is the `lists` table, answered by the Judge itself)."""
        entries = await self._store.sha256_entries(sha256)
        for trust in (DENY, REVIEW):
            entry = self._pick(entries, trust)
            if entry is not None:
                return _match(entry, 0, _TRUST_NAME[trust])
        return None

    async def match_stored(self, sha256: str) -> Match | None:
        """Match an image judged before by the PDQ kept with its verdict (no decoding)."""
        return await self.match_image(await self._store.pdq_of(sha256))

    async def recheck(self, sha256: str, verdict: Verdict, policy_version: str) -> Recheck:
        """A stored verdict against today's lists. A deny entry may have arrived since the
        image was judged (its PDQ is kept); a verdict that rested on a hash entry lasts only
        as long as the entry (an admin allow, or a source that dropped it). A csam verdict a
        backend gave needs no look."""
        from_list = is_match(verdict)
        if verdict.label is Label.CSAM and not from_list:
            return Recheck()
        match = await self.match_stored(sha256)
        if match is not None and match.rejects:
            return Recheck(verdict=match.verdict(policy_version))
        return Recheck(stale=from_list)

    async def judge_hashes(
        self,
        sha256: str,
        hashes: Sequence[PdqHash],
        hits: Sequence[Hit],
        source: str | None,
        policy_version: str,
    ) -> Verdict | None:
        """A newly decoded image: keep its PDQ, then the verdict a deny entry (exact sha256 or
        PDQ hit) gives it, or None to judge it as usual (a review source's match is flagged)."""
        await self.save(sha256, hashes)
        matches = [await self.match_sha256(sha256), await self.resolve(hits)]
        for match in matches:
            if match is not None and match.rejects:
                return match.verdict(policy_version)
        for match in matches:
            if match is not None:
                await self.flag(sha256, match, source)
        return None

    def _pick(self, entries: Sequence[HashRow], trust: int) -> HashRow | None:
        for entry in entries:
            if self._trust.get(entry.origin) == trust:
                return entry
        return None

    # -- keeping in step -----------------------------------------------------------------------

    async def save(self, sha256: str, hashes: Sequence[PdqHash]) -> None:
        await self._store.save_pdq(sha256, hashes)

    async def note_verdict(self, sha256: str, verdict: Verdict) -> bool:
        """A backend found a positive: its PDQ joins the index now, not at the next reload.
        True when the index changed."""
        if verdict.label is not Label.CSAM or is_match(verdict):
            return False
        # Of an animation or video, only the frames that carried the finding.
        frames = set(verdict.frames) if verdict.frames else None
        if frames is not None:
            await self._store.keep_frames(sha256, sorted(frames))
        good = [
            h.hex
            for h in await self._store.pdq_of(sha256)
            if h.quality >= self.settings.pdq_min_quality and (frames is None or h.frame in frames)
        ]
        if not good:
            return False
        snap = self._snapshot
        self._snapshot = _Snapshot(snap.index, snap.extra.plus(good, DENY), snap.generation)
        return True

    async def flag(self, sha256: str, match: Match, source: str | None) -> None:
        """A review source matched: note it for an admin, once per image and entry."""
        new = await self._store.flag_hash(
            sha256, match.origin, match.signal, match.value, match.distance, source
        )
        if new:
            log.warning("review: %s matches %s", sha256[:12], match.reason())
            await self._store.audit(
                "hash_review",
                sha256=sha256,
                label=match.label.value,
                action="flag",
                source=source,
                detail={
                    "origin": match.origin,
                    "signal": match.signal,
                    "value": match.value,
                    "distance": match.distance,
                    "reason": match.reason(),
                },
            )


def list_of_origin(origin: str, note: str) -> str:
    """The list an entry of `origin` is on, as a match's reason names it."""
    return {
        VERDICT: "this instance's " + (note or "confirmed positive"),
        LOCAL: "imported list",
    }.get(origin, f"subscribed list {origin!r}")


def entry_facts(origin: str, source: str, first_seen: float | None, note: str) -> list[str]:
    """What a match's reason tells of the entry: its source, first sighting and note."""
    facts = []
    if source:
        facts.append(f"source {source}")
    if first_seen is not None:
        facts.append(f"first seen {iso(first_seen)}")
    if note and origin != VERDICT:
        facts.append(f"note: {note}")
    return facts


def match_verdict(label: Label, reason: str, backend: str, policy_version: str) -> Verdict:
    """The verdict a list entry's match gives (a PDQ or an embedding match, named by
    `backend`): the entry's label, on the match route, which `is_match` recognises."""
    return Verdict(
        label=label,
        reasons=[reason],
        backend=backend,
        route=VerdictRoute.MATCH,
        policy_version=policy_version,
    )


def is_match(verdict: Verdict) -> bool:
    """The verdict rests on a hash-list entry, not on a judgement."""
    return verdict.route is VerdictRoute.MATCH


def denies(hits: Sequence[Hit]) -> bool:
    """A hit of a deny entry among `hits`: the image needs no backend (nor its encoding)."""
    return any(hit.trust == DENY for hit in hits)


def _release_free_memory() -> None:
    """Hand the building's temporary arrays back to the OS (glibc keeps freed heap memory,
    and a million-hash load frees about as much as the index itself)."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass  # not glibc: the memory is reused by the next load instead


def _match(entry: HashRow, distance: int, trust: HashTrust) -> Match:
    return Match(
        signal=entry.signal,
        value=entry.value,
        distance=distance,
        trust=trust,
        origin=entry.origin,
        label=Label(entry.label),
        source=entry.source,
        first_seen=entry.first_seen,
        note=entry.note,
        sha256=entry.sha256,
    )
