"""The in-memory double's hash bank, embeddings, sweeps and provenance (store/memory.py composes
them with the rest): dictionaries that answer as the SQL of store/hashes.py, embeddings.py,
sweeps.py and provenance.py does, down to what they leave unordered and what they do not
bump. The contract suite (horde_scanner/testing/store_contract.py) holds it to the databases.

What the databases derive with joins is derived here from the same dictionaries the rest of
the double keeps (verdicts, lists, audit, cluster turns): which of our own images count as
positives follows `store.verdicts.own_positives` (`_own_positive`).
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from horde_scanner.media.hashing import PdqHash
from horde_scanner.store.audit import AuditRecord
from horde_scanner.store.embeddings import EmbeddingRow, NewEmbedding
from horde_scanner.store.hashes import (
    LOCAL,
    VERDICT,
    HashFlag,
    HashRow,
    NewHash,
    SubscriptionState,
    _is_evidence,
)
from horde_scanner.store.provenance import NO_ALIAS, PENDING, RESOLVED, Provenance, RejectedUpload
from horde_scanner.store.sweeps import ScanAction, ScanFile, ScanRun
from horde_scanner.store.tables import refuse_nul, row_limit
from horde_scanner.store.verdicts import StoredVerdict
from horde_scanner.verdict import VerdictRoute

# As the databases' streams (store/hashes.py, embeddings.py): chunks of at most this many.
_INDEX_ROWS_PER_CHUNK = 50_000
_PROVENANCE_STATES = (PENDING, RESOLVED, NO_ALIAS)


@dataclass
class _Entry:
    """A hash or embedding list entry as its table keeps it."""

    id: int  # embeddings only (hash entries are keyed by origin, signal and value)
    label: str
    source: str
    first_seen: float | None
    note: str
    added_by: str
    added_at: float
    vector: bytes = b""

    def fields(self) -> tuple[str, str, float | None, str]:
        return self.label, self.source, self.first_seen, self.note


@dataclass
class _ScanRunRow:
    run: ScanRun
    started_at: float
    updated_at: float
    counts: dict[str, int] | None = None


@dataclass
class BankTables:
    hash_generation: int = 0
    pdq: dict[tuple[str, int], tuple[str, int]] = field(default_factory=dict)  # hex, quality
    hash_entries: dict[tuple[str, str, str], _Entry] = field(default_factory=dict)
    subscriptions: dict[str, SubscriptionState] = field(default_factory=dict)
    flags: dict[tuple[str, str, str, str], HashFlag] = field(default_factory=dict)
    # (sha256, model): (row id, vector)
    embeddings: dict[tuple[str, str], tuple[int, bytes]] = field(default_factory=dict)
    embedding_entries: dict[tuple[str, str, str], _Entry] = field(default_factory=dict)
    scan_files: dict[tuple[str, str], ScanFile] = field(default_factory=dict)
    scan_runs: dict[int, _ScanRunRow] = field(default_factory=dict)
    scan_actions: dict[int, ScanAction] = field(default_factory=dict)
    provenance: dict[str, Provenance] = field(default_factory=dict)


class MemoryBanks:
    """The concerns HashBankStore, EmbeddingStore, SweepStore and ProvenanceStore, for
    MemoryStore: it provides the tables below and the core dictionaries they read."""

    holder: str
    _banks: BankTables

    def _open(self) -> None:
        raise NotImplementedError

    def _next_id(self) -> int:
        raise NotImplementedError

    # What the rest of the double keeps (store/memory.py), read here as the joins read them.
    def _verdict_rows(self) -> dict[str, StoredVerdict]:
        raise NotImplementedError

    def _list_rows(self) -> dict[str, tuple[str, str, float]]:
        """{sha256: (kind, added_by, added_at)}."""
        raise NotImplementedError

    def _audit_rows(self) -> list[AuditRecord]:
        raise NotImplementedError

    def _turns(self) -> dict[str, tuple[str, float]]:
        raise NotImplementedError

    def _bump(self) -> None:
        self._banks.hash_generation += 1

    def _machine_positive(self, sha256: str) -> bool:
        """A `csam` verdict a backend gave (not a hash-list match)."""
        v = self._verdict_rows().get(sha256)
        return (
            v is not None
            and v.verdict.label.value == "csam"
            and v.verdict.route != VerdictRoute.MATCH
        )

    def _own_positive(self, sha256: str) -> tuple[float | None, str] | None:
        """(first seen, note) of one of our own images that counts as a positive, or None:
        deny-listed, or a machine positive not allowed (store.verdicts.own_positives)."""
        entry = self._list_rows().get(sha256)
        kind = entry[0] if entry else None
        if kind == "allow" or not (kind == "deny" or self._machine_positive(sha256)):
            return None
        v = self._verdict_rows().get(sha256)
        first_seen = v.first_seen if v is not None else (entry[2] if entry else None)
        return first_seen, "deny list" if kind == "deny" else "confirmed positive"

    def _indexed(self, sha256: str) -> bool:
        """Whether the index holds this image of ours (hashes._own_pdq, embeddings._own)."""
        kind = (self._list_rows().get(sha256) or ("",))[0]
        return kind != "allow" and (kind == "deny" or self._machine_positive(sha256))

    # -- HashBankStore: generation and PDQ of judged images --------------------------------

    async def hash_generation(self) -> int:
        self._open()
        return self._banks.hash_generation

    async def bump_hash_generation(self) -> None:
        self._open()
        self._bump()

    async def save_pdq(self, sha256: str, hashes: Sequence[PdqHash]) -> None:
        self._open()
        for h in hashes:
            self._banks.pdq[(sha256, h.frame)] = (h.hex, h.quality)

    async def pdq_of(self, sha256: str) -> list[PdqHash]:
        self._open()
        found = [(frame, v) for (s, frame), v in self._banks.pdq.items() if s == sha256]
        return [PdqHash(hex_, quality, frame) for frame, (hex_, quality) in sorted(found)]

    async def keep_frames(self, sha256: str, frames: Sequence[int]) -> None:
        self._open()
        kept = set(frames)
        for key in [k for k in self._banks.pdq if k[0] == sha256 and k[1] not in kept]:
            del self._banks.pdq[key]

    # -- HashBankStore: what the index holds -------------------------------------------------

    async def hash_index_rows(self, min_quality: int) -> AsyncIterator[tuple[list[str], list[str]]]:
        self._open()
        pdq_listed = [
            (k[2], k[0]) for k in sorted(self._banks.hash_entries, key=_by_key) if k[1] == "pdq"
        ]
        for start in range(0, len(pdq_listed), _INDEX_ROWS_PER_CHUNK):
            chunk = pdq_listed[start : start + _INDEX_ROWS_PER_CHUNK]
            yield [c[0] for c in chunk], [c[1] for c in chunk]
        own = [
            hex_
            for (sha256, _), (hex_, quality) in self._banks.pdq.items()
            if quality >= min_quality and self._indexed(sha256)
        ]
        for start in range(0, len(own), _INDEX_ROWS_PER_CHUNK):
            values = own[start : start + _INDEX_ROWS_PER_CHUNK]
            yield values, [VERDICT] * len(values)

    async def allowed_pdq(self, min_quality: int) -> list[str]:
        self._open()
        lists = self._list_rows()
        return [
            hex_
            for (sha256, _), (hex_, quality) in self._banks.pdq.items()
            if quality >= min_quality and (lists.get(sha256) or ("",))[0] == "allow"
        ]

    def _entries_of(self, signal: str, value: str) -> list[HashRow]:
        return [
            _hash_row(k, e)
            for k, e in sorted(self._banks.hash_entries.items(), key=lambda kv: _by_key(kv[0]))
            if k[1] == signal and k[2] == value
        ]

    async def sha256_entries(self, sha256: str) -> list[HashRow]:
        self._open()
        return self._entries_of("sha256", sha256)

    async def describe_pdq(self, value: str) -> list[HashRow]:
        self._open()
        found = self._entries_of("pdq", value)
        for (sha256, _), (hex_, _q) in self._banks.pdq.items():
            own = self._own_positive(sha256) if hex_ == value else None
            if own is not None:
                found.append(
                    HashRow(VERDICT, "pdq", value, first_seen=own[0], note=own[1], sha256=sha256)
                )
        return found

    async def hash_entries(self) -> list[HashRow]:
        self._open()
        return [_hash_row(k, e) for k, e in sorted(self._banks.hash_entries.items())]

    # -- HashBankStore: what this instance publishes -----------------------------------------

    async def own_hash_entries(
        self, source: str, min_quality: int, *, unreviewed: bool = False
    ) -> list[HashRow]:
        self._open()
        verdicts, lists = self._verdict_rows(), self._list_rows()

        def first_seen(sha256: str) -> float | None:
            v = verdicts.get(sha256)
            return v.first_seen if v is not None else lists[sha256][2]

        denied = [(s, e) for s, e in lists.items() if e[0] == "deny"]
        entries = [
            HashRow(VERDICT, "sha256", s, "csam", source, first_seen(s), "", e[1], e[2])
            for s, e in denied
        ]
        # Per PDQ value of deny-listed images: the earliest first-seen, and who confirmed
        # first (by added_at, then sha256), as hashes._denied_pdq's window functions.
        firsts: dict[str, tuple[float | None, tuple[float, str], str, float]] = {}
        for (sha256, _), (hex_, quality) in self._banks.pdq.items():
            entry = lists.get(sha256)
            if quality < min_quality or entry is None or entry[0] != "deny":
                continue
            seen, order = first_seen(sha256), (entry[2], sha256)
            held = firsts.get(hex_)
            if held is None:
                firsts[hex_] = (seen, order, entry[1], entry[2])
                continue
            earliest = _min_or_none(held[0], seen)
            if order < held[1]:
                firsts[hex_] = (earliest, order, entry[1], entry[2])
            else:
                firsts[hex_] = (earliest, *held[1:])
        entries += [
            HashRow(VERDICT, "pdq", hex_, "csam", source, f[0], "", f[2], f[3])
            for hex_, f in firsts.items()
        ]
        allowed = {s for s, e in lists.items() if e[0] == "allow"}
        entries += [
            _hash_row(k, e, with_added=True)
            for k, e in self._banks.hash_entries.items()
            if k[0] == LOCAL and not (k[1] == "sha256" and k[2] in allowed)
        ]
        if not unreviewed:
            return entries
        note = "unreviewed machine verdict"
        for sha256, stored in verdicts.items():
            if self._machine_positive(sha256) and sha256 not in lists and _evidence(stored):
                entries.append(
                    HashRow(
                        VERDICT, "sha256", sha256, "csam", source, stored.first_seen,
                        f"{note} ({stored.verdict.backend})",
                    )
                )  # fmt: skip
        unreviewed_first: dict[str, float] = {}
        for (sha256, _), (hex_, quality) in self._banks.pdq.items():
            judged = verdicts.get(sha256)
            if (
                judged is not None
                and quality >= min_quality
                and self._machine_positive(sha256)
                and sha256 not in lists
                and _evidence(judged)
            ):
                seen = judged.first_seen
                unreviewed_first[hex_] = min(seen, unreviewed_first.get(hex_, seen))
        entries.extend(
            HashRow(VERDICT, "pdq", hex_, "csam", source, t, note)
            for hex_, t in unreviewed_first.items()
        )
        return entries

    # -- HashBankStore: changing entries -------------------------------------------------------

    async def add_hash_entries(
        self, origin: str, entries: Iterable[NewHash], *, by: str = ""
    ) -> int:
        self._open()
        return self._write_hashes(origin, entries, replace=False, by=by)

    async def replace_hash_origin(self, origin: str, entries: Iterable[NewHash]) -> int:
        self._open()
        return self._write_hashes(origin, entries, replace=True)

    def _write_hashes(
        self, origin: str, entries: Iterable[NewHash], *, replace: bool, by: str = ""
    ) -> int:
        """As HashTables._bulk: a replacement writes only what differs from the origin's."""
        new = {(e.signal, e.value): (e.label, e.source, e.first_seen, e.note) for e in entries}
        refuse_nul(by)
        for (signal, value), (label, source, _, note) in new.items():
            if signal not in ("sha256", "pdq"):  # the table's CHECK constraint
                raise ValueError(f"a hash entry's signal is sha256 or pdq, not {signal!r}")
            refuse_nul(signal, value, label, source, note)
        table, stale = self._banks.hash_entries, []
        if replace:
            for key, held in table.items():
                if key[0] != origin:
                    continue
                if (key[1], key[2]) not in new:
                    stale.append(key)
                elif new[(key[1], key[2])] == held.fields():
                    del new[(key[1], key[2])]  # unchanged: nothing to write
        now = time.time()
        for key in stale:
            del table[key]
        for (signal, value), (label, source, first_seen, note) in new.items():
            old = table.get((origin, signal, value))
            if old is None:
                table[(origin, signal, value)] = _Entry(0, label, source, first_seen, note, by, now)
            else:  # who added it and when stay those of the first write
                old.label, old.source, old.note = label, source, note
                old.first_seen = _earliest_first_seen(old.first_seen, first_seen)
        if stale or new:
            self._bump()
        return len(new) + len(stale)

    async def remove_hash_entry(self, origin: str, signal: str, value: str) -> bool:
        self._open()
        if self._banks.hash_entries.pop((origin, signal, value), None) is None:
            return False
        self._bump()
        return True

    async def drop_hash_origins_except(self, keep: Iterable[str]) -> list[str]:
        self._open()
        kept = {LOCAL, *keep}
        stale = sorted({k[0] for k in self._banks.hash_entries} - kept)
        self._drop_origins(self._banks.hash_entries, stale)
        return stale

    def _drop_origins(self, table: dict[tuple[str, str, str], _Entry], stale: list[str]) -> None:
        gone = set(stale)
        for key in [k for k in table if k[0] in gone]:
            del table[key]
        for name in stale:
            self._banks.subscriptions.pop(name, None)
        if stale:
            self._bump()

    # -- HashBankStore: subscriptions and flags ------------------------------------------------

    async def hash_subscription(self, name: str) -> SubscriptionState | None:
        self._open()
        return self._banks.subscriptions.get(name)

    async def hash_subscriptions(self) -> list[SubscriptionState]:
        self._open()
        return [self._banks.subscriptions[n] for n in sorted(self._banks.subscriptions)]

    async def record_hash_fetch(
        self,
        name: str,
        url: str,
        *,
        status: int | None,
        error: str | None,
        nbytes: int = 0,
        etag: str | None = None,
        entries: int | None = None,
        skipped: int | None = None,
    ) -> None:
        self._open()
        now = time.time()
        last_ok = now if error is None else None
        old = self._banks.subscriptions.get(name)
        if old is None:
            self._banks.subscriptions[name] = SubscriptionState(
                name, url, etag, entries or 0, skipped or 0, last_ok, now, status, error, nbytes
            )
            return
        good = entries is not None  # a failed refresh keeps the last good copy's counts
        self._banks.subscriptions[name] = replace(
            old,
            url=url,
            etag=etag if good else old.etag,
            entries=(entries or 0) if good else old.entries,
            skipped=(skipped or 0) if good else old.skipped,
            last_ok=last_ok if last_ok is not None else old.last_ok,
            last_checked=now,
            last_status=status,
            last_error=error,
            bytes_fetched=old.bytes_fetched + nbytes,
        )

    async def flag_hash(
        self, sha256: str, origin: str, signal: str, value: str, distance: int, source: str | None
    ) -> bool:
        self._open()
        key = (sha256, origin, signal, value)
        if key in self._banks.flags:
            return False
        self._banks.flags[key] = HashFlag(
            sha256, origin, signal, value, distance, source, time.time()
        )
        return True

    async def hash_flags(self, limit: int | None = None) -> list[HashFlag]:
        self._open()
        flags = sorted(self._banks.flags.values(), key=lambda f: f.flagged_at, reverse=True)
        return flags[: row_limit(limit)] if limit is not None else flags

    # -- EmbeddingStore ------------------------------------------------------------------------

    async def save_embedding(self, sha256: str, model: str, vector: bytes) -> int:
        self._open()
        held = self._banks.embeddings.get((sha256, model))
        row_id = held[0] if held is not None else self._next_id()
        self._banks.embeddings[(sha256, model)] = (row_id, bytes(vector))
        return row_id

    async def embedding_of(self, sha256: str, model: str) -> tuple[int, bytes] | None:
        self._open()
        return self._banks.embeddings.get((sha256, model))

    async def embedding_index_keys(
        self, model: str
    ) -> AsyncIterator[tuple[str, list[int], list[str]]]:
        self._open()
        listed = sorted(
            (e.id, k[0]) for k, e in self._banks.embedding_entries.items() if k[1] == model
        )
        for start in range(0, len(listed), _INDEX_ROWS_PER_CHUNK):
            chunk = listed[start : start + _INDEX_ROWS_PER_CHUNK]
            yield "entry", [c[0] for c in chunk], [c[1] for c in chunk]
        own = sorted(
            row_id
            for (sha256, m), (row_id, _) in self._banks.embeddings.items()
            if m == model and self._indexed(sha256)
        )
        for start in range(0, len(own), _INDEX_ROWS_PER_CHUNK):
            ids = own[start : start + _INDEX_ROWS_PER_CHUNK]
            yield "own", ids, [VERDICT] * len(ids)

    async def embedding_vectors(self, kind: str, ids: Sequence[int]) -> list[tuple[int, bytes]]:
        self._open()
        if kind == "entry":
            by_id = {e.id: e.vector for e in self._banks.embedding_entries.values()}
        else:
            by_id = dict(self._banks.embeddings.values())
        return [(i, by_id[i]) for i in dict.fromkeys(ids) if i in by_id]

    async def allowed_embeddings(self, model: str) -> list[bytes]:
        self._open()
        lists = self._list_rows()
        return [
            vector
            for (sha256, m), (_, vector) in self._banks.embeddings.items()
            if m == model and (lists.get(sha256) or ("",))[0] == "allow"
        ]

    async def embedding_entry(self, entry_id: int) -> EmbeddingRow | None:
        self._open()
        for key, e in self._banks.embedding_entries.items():
            if e.id == entry_id:
                return _embedding_row(key, e)
        return None

    async def own_embedding(self, row_id: int) -> EmbeddingRow | None:
        self._open()
        for (sha256, _), (i, vector) in self._banks.embeddings.items():
            if i == row_id:
                own = self._own_positive(sha256)
                if own is None:
                    return None
                return EmbeddingRow(VERDICT, vector, first_seen=own[0], note=own[1], sha256=sha256)
        return None

    async def embedding_entry_count(self, model: str) -> int:
        self._open()
        return sum(1 for k in self._banks.embedding_entries if k[1] == model)

    async def own_embedding_entries(self, model: str, source: str) -> list[EmbeddingRow]:
        self._open()
        verdicts, lists = self._verdict_rows(), self._list_rows()
        denied = sorted(
            (row_id, sha256, vector)
            for (sha256, m), (row_id, vector) in self._banks.embeddings.items()
            if m == model and (lists.get(sha256) or ("",))[0] == "deny"
        )
        entries = []
        for _, sha256, vector in denied:
            v, (_, by, at) = verdicts.get(sha256), lists[sha256]
            seen = v.first_seen if v is not None else at
            entries.append(
                EmbeddingRow(VERDICT, vector, "csam", source, seen, "", by, at, sha256=sha256)
            )
        local = sorted(
            ((k, e) for k, e in self._banks.embedding_entries.items() if k[:2] == (LOCAL, model)),
            key=lambda ke: ke[1].id,
        )
        entries += [_embedding_row(k, e) for k, e in local]
        return entries

    async def add_embedding_entries(
        self, origin: str, model: str, entries: Iterable[NewEmbedding], *, by: str = ""
    ) -> int:
        self._open()
        return self._write_embeddings(origin, model, entries, replace=False, by=by)

    async def replace_embedding_origin(
        self, origin: str, model: str, entries: Iterable[NewEmbedding]
    ) -> int:
        self._open()
        return self._write_embeddings(origin, model, entries, replace=True)

    def _write_embeddings(
        self,
        origin: str,
        model: str,
        entries: Iterable[NewEmbedding],
        *,
        replace: bool,
        by: str = "",
    ) -> int:
        """As EmbeddingTables._bulk_embeddings: unchanged entries are not written (adding
        too), an entry written again keeps its vector (the digest names it), its id, and who
        added it when."""
        new = {e.digest: e for e in entries}
        refuse_nul(by)
        for given in new.values():
            refuse_nul(given.label, given.source, given.note)
        table = self._banks.embedding_entries
        stale: list[tuple[str, str, str]] = []
        for key, held in table.items():
            if key[:2] != (origin, model):
                continue
            entry = new.get(key[2])
            if entry is None:
                if replace:
                    stale.append(key)
            elif (entry.label, entry.source, entry.first_seen, entry.note) == held.fields():
                del new[key[2]]
        now = time.time()
        for key in stale:
            del table[key]
        for digest, e in sorted(new.items()):
            old = table.get((origin, model, digest))
            if old is None:
                table[(origin, model, digest)] = _Entry(
                    self._next_id(), e.label, e.source, e.first_seen, e.note, by, now, e.blob
                )
            else:
                old.label, old.source, old.first_seen, old.note = (
                    e.label,
                    e.source,
                    e.first_seen,
                    e.note,
                )
        if stale or new:
            self._bump()
        return len(new) + len(stale)

    async def drop_embedding_origins_except(self, keep: Iterable[str]) -> list[str]:
        self._open()
        kept = {LOCAL, *keep}
        stale = sorted({k[0] for k in self._banks.embedding_entries} - kept)
        self._drop_origins(self._banks.embedding_entries, stale)
        return stale

    # -- SweepStore: files ---------------------------------------------------------------------

    async def get_scan_files(self, source: str, identifiers: Sequence[str]) -> dict[str, ScanFile]:
        self._open()
        files = self._banks.scan_files
        return {i: _read_file(files[(source, i)]) for i in identifiers if (source, i) in files}

    async def put_scan_files(self, files: Iterable[ScanFile]) -> None:
        self._open()
        for f in files:
            reasons = list(f.reasons) if f.reasons is not None else None
            self._banks.scan_files[(f.source, f.identifier)] = replace(f, reasons=reasons)

    async def set_scan_file_action(self, source: str, identifier: str, action: str | None) -> None:
        self._open()
        held = self._banks.scan_files.get((source, identifier))
        if held is not None:
            self._banks.scan_files[(source, identifier)] = replace(held, action=action)

    async def unacted_scan_positives(
        self, labels: Iterable[str], *, since: float | None, source: str | None
    ) -> list[ScanFile]:
        self._open()
        wanted = set(labels)
        return [
            _read_file(f)
            for key, f in sorted(self._banks.scan_files.items())
            if f.action is None
            and f.label in wanted
            and (since is None or (f.judged_at is not None and f.judged_at >= since))
            and (source is None or f.source == source)
        ]

    async def sweep_locations(self, sha256s: Sequence[str]) -> dict[str, list[dict[str, Any]]]:
        self._open()
        wanted = set(sha256s)
        actions = {(a.source, a.identifier, a.sha256): a for a in self._banks.scan_actions.values()}
        rows: list[tuple[str, str, str, dict[str, Any]]] = []
        for f in self._banks.scan_files.values():
            if f.sha256 in wanted:
                a = actions.get((f.source, f.identifier, f.sha256))
                rows.append((f.source, f.identifier, f.sha256, _location(f, a)))
        files = {(f.source, f.identifier, f.sha256) for f in self._banks.scan_files.values()}
        for key, a in actions.items():
            if a.sha256 in wanted and key not in files:  # the file's row replaced since
                rows.append((a.source, a.identifier, a.sha256, _location(None, a)))
        found: dict[str, list[dict[str, Any]]] = {}
        for _, _, sha256, where in sorted(rows, key=lambda r: (r[0], r[1])):
            found.setdefault(sha256, []).append(where)
        return found

    # -- SweepStore: runs ------------------------------------------------------------------------

    async def unfinished_scan_run(self, source: str) -> ScanRun | None:
        self._open()
        running = [
            i
            for i, r in self._banks.scan_runs.items()
            if r.run.source == source and r.run.state == "running"
        ]
        return replace(self._banks.scan_runs[max(running)].run) if running else None

    async def start_scan_run(self, source: str, action: str, follow: bool) -> ScanRun:
        self._open()
        now = time.time()
        for row in self._banks.scan_runs.values():
            if row.run.source == source and row.run.state == "running":
                row.run.state, row.updated_at = "abandoned", now
        run = ScanRun(
            self._next_id(), source, action, follow, "running", "sweep", None, None, False
        )
        self._banks.scan_runs[run.id] = _ScanRunRow(run, now, now)
        return replace(run)

    async def save_scan_run(self, run: ScanRun, counts: dict[str, int] | None = None) -> None:
        self._open()
        row = self._banks.scan_runs.get(run.id)
        if row is None:
            return
        # Its id, source, action and start stay; what the sweep moves forward is saved.
        row.run = replace(row.run, state=run.state, phase=run.phase, cursor=run.cursor,
                          watermark=run.watermark, time_ordered=run.time_ordered,
                          follow=run.follow)  # fmt: skip
        row.updated_at = time.time()
        if counts is not None:
            row.counts = _copy(counts)

    # -- SweepStore: actions ---------------------------------------------------------------------

    async def begin_scan_action(
        self,
        *,
        source: str,
        identifier: str,
        sha256: str,
        size: int | None,
        mtime: float | None,
        action: str,
        label: str | None,
        reasons: list[str],
    ) -> tuple[ScanAction, bool]:
        self._open()
        now = time.time()
        held = next(
            (
                a
                for a in self._banks.scan_actions.values()
                if (a.source, a.identifier, a.sha256) == (source, identifier, sha256)
            ),
            None,
        )
        if held is not None and held.state not in ("failed", "released"):
            return _copied_action(held), False
        if held is None:
            row = ScanAction(self._next_id(), source, identifier, sha256, size, mtime, action,
                             "started", label, list(reasons), None, {}, now, now)  # fmt: skip
        else:  # started again: its id and creation stay
            row = replace(held, size=size, mtime=mtime, action=action, state="started",
                          label=label, reasons=list(reasons), location=None, detail={},
                          updated_at=now)  # fmt: skip
        self._banks.scan_actions[row.id] = row
        return _copied_action(row), True

    def _update_action(self, action_id: int, **changes: Any) -> None:
        held = self._banks.scan_actions.get(action_id)
        if held is not None:
            self._banks.scan_actions[action_id] = replace(held, updated_at=time.time(), **changes)

    async def end_scan_action(
        self, action_id: int, state: str, *, location: str | None, detail: dict[str, Any]
    ) -> None:
        self._open()
        held = self._banks.scan_actions.get(action_id)
        kept = held.location if held is not None and location is None else location
        self._update_action(action_id, state=state, location=kept, detail=_copy(detail))

    async def set_scan_action_location(self, action_id: int, location: str) -> None:
        self._open()
        self._update_action(action_id, location=location)

    async def set_scan_action_detail(self, action_id: int, detail: dict[str, Any]) -> None:
        self._open()
        self._update_action(action_id, detail=_copy(detail))

    async def started_scan_actions(self, source: str) -> list[ScanAction]:
        self._open()
        return [
            _copied_action(a)
            for _, a in sorted(self._banks.scan_actions.items())
            if a.source == source and a.state == "started"
        ]

    async def get_scan_action(self, action_id: int) -> ScanAction | None:
        self._open()
        held = self._banks.scan_actions.get(action_id)
        return _copied_action(held) if held is not None else None

    async def scan_actions_for(self, sha256: str, *, state: str | None = None) -> list[ScanAction]:
        self._open()
        return [
            _copied_action(a)
            for _, a in sorted(self._banks.scan_actions.items())
            if a.sha256 == sha256 and (state is None or a.state == state)
        ]

    async def scan_quarantined_among(self, sha256s: Sequence[str]) -> set[str]:
        self._open()
        wanted = set(sha256s)
        return {
            a.sha256
            for a in self._banks.scan_actions.values()
            if a.action == "quarantine" and a.state == "done" and a.sha256 in wanted
        }

    async def scan_quarantine_counts(self) -> dict[str, int]:
        self._open()
        counts: dict[str, int] = {}
        for a in self._banks.scan_actions.values():
            if a.action == "quarantine":
                counts[a.state] = counts.get(a.state, 0) + 1
        return counts

    # -- ProvenanceStore -------------------------------------------------------------------------

    async def want_provenance(
        self, sha256: str, why: str, *, aliases: list[str] | None = None, seen_at: float | None
    ) -> None:
        self._open()
        now = time.time()
        known = self._banks.provenance.get(sha256)
        if known is None:
            self._banks.provenance[sha256] = Provenance(
                sha256, PENDING, why, list(aliases or []), seen_at, None, None, 0, now, now, now
            )
            return
        merged = list(dict.fromkeys([*known.aliases, *(aliases or [])]))
        if merged != known.aliases:  # new aliases: asked again
            self._banks.provenance[sha256] = replace(
                known, aliases=merged, state=PENDING, next_try=now, updated_at=now
            )

    async def hold_provenance_turn(self, period_s: float) -> bool:
        self._open()
        now = time.time()
        turns = self._turns()
        held = turns.get("provenance")
        if held is not None and held[1] > now and held[0] != self.holder:
            return False
        turns["provenance"] = (self.holder, now + period_s)
        return True

    async def positives_without_provenance(
        self, limit: int, *, verdicts_since: float = 0.0, lists_since: float = 0.0
    ) -> list[tuple[str, float, str, float]]:
        self._open()
        asked, lists = self._banks.provenance, self._list_rows()
        stored = sorted(
            (
                v
                for v in self._verdict_rows().values()
                if v.verdict.label.value in ("csam", "nsfw")
                and v.verdict.judged_at >= verdicts_since
                and v.sha256 not in asked
                and (lists.get(v.sha256) or ("",))[0] != "allow"
            ),
            key=lambda v: v.verdict.judged_at,
        )[: row_limit(limit)]
        found = [(v.sha256, v.first_seen, "verdict", v.verdict.judged_at) for v in stored]
        denied = sorted(
            (e[2], s)
            for s, e in lists.items()
            if e[0] == "deny" and e[2] >= lists_since and s not in asked
        )[: row_limit(limit)]
        seen = {f[0] for f in found}
        found += [(s, at, "deny", at) for at, s in denied if s not in seen]
        return found

    async def provenance(self, sha256: str) -> Provenance | None:
        self._open()
        return _copied(self._banks.provenance.get(sha256))

    async def provenance_of(self, hashes: list[str]) -> dict[str, Provenance]:
        self._open()
        rows = self._banks.provenance
        return {s: p for s in hashes if (p := _copied(rows.get(s))) is not None}

    async def due_provenance(self, now: float, limit: int) -> list[Provenance]:
        self._open()
        due = sorted(
            (
                p
                for p in self._banks.provenance.values()
                if p.state == PENDING and p.next_try <= now
            ),
            key=lambda p: p.next_try,
        )
        return [_copied_row(p) for p in due[: row_limit(limit)]]

    async def count_provenance(self) -> dict[str, int]:
        self._open()
        counts: dict[str, int] = {}
        for p in self._banks.provenance.values():
            counts[p.state] = counts.get(p.state, 0) + 1
        return counts

    async def settle_provenance(
        self,
        sha256: str,
        state: str,
        *,
        aliases: list[str],
        record: dict[str, Any] | None,
        error: str | None,
        next_try: float,
    ) -> None:
        self._open()
        if state not in _PROVENANCE_STATES:  # the table's CHECK constraint
            raise ValueError(f"a provenance state is one of {_PROVENANCE_STATES}, not {state!r}")
        held = self._banks.provenance.get(sha256)
        if held is not None:
            self._banks.provenance[sha256] = replace(
                held, state=state, aliases=list(aliases), record=_copy(record), error=error,
                tries=held.tries + 1, next_try=next_try, updated_at=time.time(),
            )  # fmt: skip

    async def refresh_provenance(self, sha256: str) -> bool:
        self._open()
        held = self._banks.provenance.get(sha256)
        if held is None:
            return False
        now = time.time()
        self._banks.provenance[sha256] = replace(held, state=PENDING, next_try=now, updated_at=now)
        return True

    async def resolved_provenance(self) -> list[Provenance]:
        self._open()
        rows = [p for p in self._banks.provenance.values() if p.state == RESOLVED]
        return [_copied_row(p) for p in sorted(rows, key=lambda p: p.created_at)]

    async def rejected_uploads(
        self, since: float | None, until: float | None, limit: int
    ) -> list[RejectedUpload]:
        """As the databases: written audit rows only (this read does not flush the buffer)."""
        self._open()
        low, high = since or 0.0, until if until is not None else 1e18
        rows = sorted(
            (
                r
                for r in self._audit_rows()
                if r.event == "answered" and r.action == "reject" and low <= r.ts <= high
            ),
            key=lambda r: r.ts,
        )[: row_limit(limit)]
        verdicts = self._verdict_rows()
        out = []
        for r in rows:
            v = verdicts.get(r.sha256 or "")
            elapsed = float(r.detail.get("elapsed_ms") or 0.0) / 1000
            size, media_type = (v.size, v.media_type) if v is not None else (None, None)
            out.append(
                RejectedUpload(r.ts - elapsed, r.ts, r.sha256 or "", r.source, r.label, size,
                               media_type)
            )  # fmt: skip
        return out


def _by_key(key: tuple[str, str, str]) -> tuple[str, str, str]:
    """hash_entries' primary key order (signal, value, origin): the order SQLite reads it in."""
    return key[1], key[2], key[0]


def _hash_row(key: tuple[str, str, str], e: _Entry, *, with_added: bool = False) -> HashRow:
    """As hashes._entry: who added it and when only where the query reads them."""
    origin, signal, value = key
    if not with_added:
        return HashRow(origin, signal, value, e.label, e.source, e.first_seen, e.note)
    return HashRow(
        origin, signal, value, e.label, e.source, e.first_seen, e.note, e.added_by, e.added_at
    )


def _embedding_row(key: tuple[str, str, str], e: _Entry) -> EmbeddingRow:
    return EmbeddingRow(key[0], e.vector, e.label, e.source, e.first_seen, e.note, e.added_by,
                        e.added_at, digest=key[2])  # fmt: skip


def _earliest_first_seen(old: float | None, new: float | None) -> float | None:
    """hashes._upsert_entries: the new first-seen where it is earlier, else the old one's
    (the new where there was none)."""
    if old is not None and new is not None and new < old:
        return new
    return old if old is not None else new


def _min_or_none(a: float | None, b: float | None) -> float | None:
    """SQL's MIN: NULLs left out."""
    values = [x for x in (a, b) if x is not None]
    return min(values) if values else None


def _evidence(v: StoredVerdict) -> bool:
    signals = v.verdict.signals
    return _is_evidence(signals.model_dump_json() if signals is not None else None)


def _read_file(f: ScanFile) -> ScanFile:
    """As sweeps._file: reasons read back only for positives (`[]` when none were given)."""
    keep = f.reasons is not None and f.label not in (None, "clean")
    return replace(f, reasons=list(f.reasons or []) if keep else None)


def _location(f: ScanFile | None, a: ScanAction | None) -> dict[str, Any]:
    assert f is not None or a is not None
    return {
        "source": f.source if f is not None else a.source,  # type: ignore[union-attr]
        "identifier": f.identifier if f is not None else a.identifier,  # type: ignore[union-attr]
        "size": f.size if f is not None else a.size,  # type: ignore[union-attr]
        "mtime": f.mtime if f is not None else a.mtime,  # type: ignore[union-attr]
        "judged_at": f.judged_at if f is not None else None,
        "action_id": a.id if a is not None else None,
        "action": a.action if a is not None else None,
        "action_state": a.state if a is not None else None,
        "location": a.location if a is not None else None,
        "acted_at": a.updated_at if a is not None else None,
    }


def _copied_action(a: ScanAction) -> ScanAction:
    return replace(a, reasons=list(a.reasons), detail=_copy(a.detail))


def _copied(p: Provenance | None) -> Provenance | None:
    return _copied_row(p) if p is not None else None


def _copied_row(p: Provenance) -> Provenance:
    return replace(p, aliases=list(p.aliases), record=_copy(p.record))


def _copy(value: Any) -> Any:
    """A JSON round trip, as the database gives back what it stored (and nothing shared)."""
    return json.loads(json.dumps(value))
