"""What the rest of the code may ask of the store: one narrow interface per concern.

The store is one object (`store.sqlite.Store` on a SQLite file, `store.postgres.PgStore` on
PostgreSQL, `store.memory.MemoryStore` in unit tests) that implements every interface here.
A caller declares only the concern(s) it uses: a module that records verdicts takes a
`VerdictStore`, one that also books jobs takes a Protocol that inherits both. Only the
composition root (runtime.py, the CLI's opening code) names a concrete store class.

Each interface's docstring is its contract: what it promises about idempotence, ordering,
what survives a restart, what another process sharing the store sees, and the errors a caller
can meet. tests/integration/store/test_contract.py holds every implementation to it, clause by
clause (the in-memory double's part in tests/unit/store/).

Common to every interface:
- Every method is a coroutine (or an async iterator) and may be awaited from any task of the
  event loop the store was opened on; none holds a transaction across an `await` of the
  caller's.
- Everything written is durable once the awaited call returns (the audit log excepted: see
  `AuditStore`), survives a restart of the process, and is seen by every other process
  sharing the store (SQLite: processes on one host; PostgreSQL: replicas) from then on.
  The in-memory double keeps nothing past its process and shares nothing.
- Errors: when the database is away (restarted, unreachable, disk full, locked for longer
  than the busy timeout) a call raises the driver's own error, which
  `store.outage.is_outage(exc)` recognises, and the store's `health` turns away until a probe
  works again; nothing is half-written (each method is one atomic statement or transaction
  unless its docstring says otherwise). Any other exception is a bug.
- Times are epoch seconds (`time.time()`), hashes are lower-case hex sha256 strings.
- A `limit` (or `offset`) of 0 gives nothing; one below 0 raises ValueError on every store
  (SQLite would read it as "no limit", PostgreSQL refuses it), except `claim_jobs`, which
  claims nothing.
- Text holding a NUL character (a list entry's note, source or label, who added it; an
  allow/deny note) raises ValueError on every store before anything is written: PostgreSQL's
  text cannot hold one, SQLite's could.

`Protocol`s here describe the methods `Store` has, with the same names and signatures;
`store/conformance.py` makes mypy prove that every store implements every one.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncGenerator, AsyncIterator, Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    from horde_scanner.media.hashing import PdqHash
    from horde_scanner.store.audit import AuditRecord
    from horde_scanner.store.embeddings import EmbeddingRow, NewEmbedding
    from horde_scanner.store.hashes import HashFlag, HashRow, NewHash, SubscriptionState
    from horde_scanner.store.jobs import Job
    from horde_scanner.store.outage import StoreHealth
    from horde_scanner.store.provenance import LemmyActionRow, Provenance, RejectedUpload
    from horde_scanner.store.review import QuarantineItem
    from horde_scanner.store.sweeps import ScanAction, ScanFile, ScanRun
    from horde_scanner.store.tables import ChangeListener
    from horde_scanner.store.verdicts import LatePositive, SignalsRow, StoredVerdict, VerdictFilter
    from horde_scanner.verdict import Label, Verdict


class StoreLifecycle(Protocol):
    """The store as a whole: opened once, shared by the process, closed last.

    Lifecycle: `Store.open(target)` (a classmethod of the concrete class, called only by the
    composition root) creates the database if need be, applies every migration and hands back
    an open store; `close()` writes what is buffered (the audit log) and closes it, and is
    also what leaving `async with store` does. A store must not be used after `close()`.
    Opening a store written by a newer horde-scanner, or a target that is not a store, raises
    `StoreError` naming it; nothing else is raised by opening an unreachable store but
    `StoreError` either.

    Health: `health` is told of every statement that fails for want of the database and of
    the first that works again (`store.outage`); `ping()` raises while the database cannot be
    read, `probe()` while it cannot be written.

    Changes: `subscribe(listener)` calls `listener(kind, key)` in this process for each change
    another process commits, where the store has such a channel (`shared`: PostgreSQL's
    LISTEN/NOTIFY): ("verdict" | "list" | "job", sha256), ("hashes", "") and ("reset", "")
    when changes may have been missed (a lost connection); the store's own changes are not
    reported to it. A listener that raises is logged and kept. Where there is no channel
    (SQLite) callers poll `data_version()`, which changes whenever another connection commits
    and stays put for the store's own writes; on PostgreSQL it changes with each "reset".
    """

    @property
    def dialect(self) -> str:
        """One of "sqlite", "postgresql", "memory"."""
        ...

    @property
    def shared(self) -> bool:
        """Whether several replicas may share this store (jobs leased, changes notified)."""
        ...

    @property
    def where(self) -> str:
        """The store for messages and /readyz: a path, or a URL without its password."""
        ...

    @property
    def holder(self) -> str:
        """Names this process (host:pid) in rows other processes read (turns, leases)."""
        ...

    @property
    def health(self) -> StoreHealth: ...

    async def close(self) -> None: ...

    async def __aenter__(self) -> StoreLifecycle: ...

    async def __aexit__(self, *exc: object) -> None: ...

    async def ping(self) -> None: ...

    async def probe(self) -> None: ...

    def subscribe(self, listener: ChangeListener) -> None: ...

    async def data_version(self) -> int: ...


class VerdictStore(Protocol):
    """Verdicts by sha256: what a judgement found, kept for every later look-up.

    - `put_verdict` is an upsert keyed by sha256, so writing the same verdict twice is
      harmless: the latest label, reasons, backend, route, policy version and judged_at win;
      signals, media type and size given as None keep what was stored; `source` and
      `first_seen` are those of the first write and never change.
    - `get_verdict` / `get_verdicts` see every completed `put_verdict` (any process);
      `get_verdicts` leaves out hashes without a verdict.
    - Order: `iter_verdicts` and `search_verdicts` give newest `judged_at` first;
      `iter_verdicts` filters by labels, `since` (inclusive) and `limit`; `search_verdicts`
      pages with `VerdictFilter` (`source` is a prefix, ASCII case ignored, `%` and `_` taken
      literally;
      `undecided`: only hashes on neither list). `signal_batches` gives every verdict with its
      list entry, newest first, in batches of at most `batch_rows`, on a connection of its own
      (close it with `contextlib.aclosing`).
    - `count_verdicts` gives {label: n} (judged since `since`, when given).
    - `sha256_by_prefix` gives known hashes (verdicts, lists, audit) starting with a hex
      prefix, sorted, at most `limit`.
    Verdicts are never deleted.
    """

    async def get_verdict(self, sha256: str) -> StoredVerdict | None: ...

    async def get_verdicts(self, sha256s: Iterable[str]) -> dict[str, StoredVerdict]: ...

    async def put_verdict(
        self,
        sha256: str,
        verdict: Verdict,
        *,
        media_type: str | None = ...,
        size: int | None = ...,
        source: str | None = ...,
    ) -> None: ...

    def iter_verdicts(
        self,
        *,
        labels: Iterable[Label] | None = ...,
        since: float | None = ...,
        limit: int | None = ...,
    ) -> AsyncIterator[StoredVerdict]: ...

    async def count_verdicts(self, *, since: float | None = ...) -> dict[str, int]: ...

    async def search_verdicts(self, f: VerdictFilter) -> list[StoredVerdict]: ...

    def signal_batches(
        self, *, since: float | None = ..., batch_rows: int
    ) -> AsyncGenerator[list[SignalsRow]]: ...

    async def sha256_by_prefix(self, prefix: str, limit: int = ...) -> list[str]: ...


class ListStore(Protocol):
    """The admin's allow and deny lists: one entry per sha256, of kind "allow" or "deny".

    - `set_list` is an upsert: the latest kind, note, by and time win (an allow becomes a deny
      and back); calling it twice with the same arguments leaves one entry.
    - `remove_list` is True when an entry was there, False otherwise (a second removal).
    - `iter_list(kind)` gives (sha256, note, added_by, added_at) oldest `added_at` first, note
      and added_by "" when not given. `count_lists` gives {kind: n}.
    An entry lasts until an admin removes it; other processes see it once the call returns.
    """

    async def list_kind(self, sha256: str) -> str | None: ...

    async def set_list(self, sha256: str, kind: str, *, note: str = ..., by: str = ...) -> None: ...

    async def remove_list(self, sha256: str) -> bool: ...

    def iter_list(self, kind: str) -> AsyncIterator[tuple[str, str, str, float]]: ...

    async def count_lists(self) -> dict[str, int]: ...


class LatePositiveStore(Protocol):
    """Positives found after their upload was accepted, and what was done about them.

    - `record_late_positive` is an upsert by sha256: the first `found_at` and label stay, the
      latest enforcement and detail win (recording the same twice is harmless).
    - `late_positives` gives newest `found_at` first, at most `limit`; `undecided`: only those
      whose hash is on neither list (a list entry made later takes it off this view).
    - `count_late_positives` gives {enforcement: n}.
    Rows are never deleted.
    """

    async def record_late_positive(
        self, sha256: str, label: Label, enforcement: str, detail: dict[str, Any]
    ) -> None: ...

    async def late_positives(
        self, *, undecided: bool = ..., limit: int | None = ...
    ) -> list[LatePositive]: ...

    async def late_positive(self, sha256: str) -> LatePositive | None: ...

    async def count_late_positives(self) -> dict[str, int]: ...


class JobStore(Protocol):
    """Judgements still to do, each with everything needed to judge it again.

        add_job ──► pending ──claim_jobs──► running ──finish_job──► gone
                       ▲                       │
                       └──retry_job (backoff)──┘ (release_jobs: back at once)

    - `add_job` is idempotent per sha256: False (and nothing changed) while a job for the hash
      exists in any state.
    - `claim_jobs(limit)` takes up to `limit` pending jobs whose time has come, the oldest
      `add_job`s first (the list itself in no particular order), and marks them running in
      one statement: two processes (or replicas)
      claiming at once never get the same job. A running job is not claimed again until it is
      retried or released; where `job_lease_s` > 0 (replicas) also once its lease lapses, which
      `renew_jobs` extends (a no-op without leases).
    - `set_job_answers` records what validation answered meanwhile; an "accept" is never
      overwritten. `finish_job` deletes the job and returns that answer (None if none, or if
      there was no job: finishing twice is harmless).
    - `retry_job` sets it pending again, not before now + `delay_s`, attempts + 1, the error
      noted. `wake_jobs` makes every waiting pending job due now and returns how many waited.
    - `next_job_time` is the earliest `not_before` of pending jobs (None: none pending);
      `count_jobs` counts jobs in every state.
    Restart: jobs survive it; on SQLite, jobs left running by a dead process are pending again
    when the store opens; on PostgreSQL, once their lease lapses.
    """

    @property
    def job_lease_s(self) -> float:
        """How long a claimed job is held before another replica may take it (0: no lease)."""
        ...

    async def add_job(
        self,
        sha256: str,
        payload: bytes,
        *,
        media_type: str | None,
        size: int | None,
        source: str | None,
    ) -> bool: ...

    async def set_job_answers(self, answers: dict[str, str]) -> None: ...

    async def claim_jobs(self, limit: int) -> list[Job]: ...

    async def finish_job(self, sha256: str) -> str | None: ...

    async def retry_job(self, sha256: str, *, delay_s: float, error: str) -> None: ...

    async def wake_jobs(self) -> int: ...

    async def count_jobs(self) -> int: ...

    async def next_job_time(self) -> float | None: ...

    async def renew_jobs(self, sha256s: Iterable[str]) -> None: ...

    async def release_jobs(self, sha256s: Iterable[str]) -> None: ...


class AuditStore(Protocol):
    """The audit log: every decision and action, append-only.

    - `audit()` buffers the row in this process and never fails for an outage: rows are
      written by `flush_audit()` (every 500 rows, before every read here, and by `close()`);
      rows a failed flush could not write are kept (up to a bound, the oldest dropped and
      counted in `audit_dropped`) and written by a later flush. So a row is durable, and seen by
      other processes, only once a flush (or a read of this process) has returned.
    - Order: `audit_trail(sha256)` gives the hash's rows in the order they were recorded (ids
      increase); `last_events` gives, per hash, the latest of `events`.
    - `rename_sources({old: new})` rewrites a source wherever audit, verdicts or jobs recorded
      it (for sources that must not stay written); returns how many rows changed; renaming
      again changes nothing. Audit rows still buffered are flushed first, and renamed.
    Rows are never updated otherwise, nor deleted.
    """

    @property
    def audit_dropped(self) -> int:
        """Rows dropped while the store was away too long (each also logged)."""
        ...

    async def audit(
        self,
        event: str,
        *,
        sha256: str | None = ...,
        label: str | None = ...,
        action: str | None = ...,
        source: str | None = ...,
        detail: dict[str, Any] | None = ...,
    ) -> None: ...

    async def flush_audit(self) -> None: ...

    async def audit_trail(self, sha256: str) -> list[AuditRecord]: ...

    async def last_events(
        self, sha256s: list[str], events: tuple[str, ...]
    ) -> dict[str, tuple[str, str | None]]: ...

    async def rename_sources(self, renames: dict[str, str]) -> int: ...


@runtime_checkable
class KudosStore(Protocol):
    """The AI Horde's daily kudos budget: what was spent on each UTC day (YYYY-MM-DD).

    - `add_kudos_spent(day, charged)` adds to the day's total in one atomic statement and
      returns the new total as every process sharing the store booked it: concurrent bookings
      from several replicas all count (never lost, never overwritten). It is not idempotent:
      booking the same charge twice counts it twice.
    - `kudos_spent(day)` is None for a day with nothing booked.
    Totals survive a restart, so a restart does not hand out the day's budget again.
    """

    async def kudos_spent(self, day: str) -> float | None: ...

    async def add_kudos_spent(self, day: str, charged: float) -> float: ...


@runtime_checkable
class ClusterStore(Protocol):
    """What processes sharing the store coordinate through it.

    - `take_turn(name, period_s)` is True for exactly one caller (across every process sharing
      the store) per `period_s` for a given `name`: the holder's turn lasts `period_s`, during
      which every other `take_turn(name, ...)` is False, the holder's own included; after it,
      the next caller takes it.
    - `take_submit(limit, period_s, stale_s)` hands out at most `limit` submit slots at a time
      across every process (one statement: two never both take the last): (slot id, 0) or
      (None, seconds until one may free up). A slot counts until `period_s` after
      `finish_submit(slot)`, or `stale_s` after it was taken if never finished (a killed
      process). `finish_submit(None)` does nothing.
    Turns and slots survive a restart (a restarted process does not submit what the Horde
    still counts from the one before).
    """

    async def take_turn(self, name: str, period_s: float) -> bool: ...

    async def take_submit(
        self, limit: int, period_s: float, stale_s: float
    ) -> tuple[int | None, float]: ...

    async def finish_submit(self, slot: int | None) -> None: ...


@runtime_checkable
class HordeRequestStore(Protocol):
    """AI Horde requests still live on the Horde, by image key (a digest of what was sent), so
    that a process killed while it waited polls the same request after a restart instead of
    paying for a second.

    - `hold_horde_request` is an upsert by image key (the latest request wins).
    - `live_horde_request` gives (request id, submitted_at) while it may still be live on the
      Horde: rows older than 30 minutes are forgotten.
    - `drop_horde_request(key, id)` deletes the row only if it still holds that request id (a
      newer request for the same image is kept); dropping twice is harmless.
    A store may lack this concern (`isinstance(store, HordeRequestStore)` tells): requests
    are then not kept across a restart.
    """

    async def live_horde_request(self, image_key: str) -> tuple[str, float] | None: ...

    async def hold_horde_request(
        self, image_key: str, request_id: str, submitted_at: float
    ) -> None: ...

    async def drop_horde_request(self, image_key: str, request_id: str) -> None: ...


class ReviewStore(Protocol):
    """Quarantined copies of files (the admin's holder keeps the files; this keeps the rows).

        add_quarantined ──► held ──set_quarantine_state──► released | deleted

    - `add_quarantined` always adds a row (each admitted copy is its own, with a new id that
      is larger than every earlier one) and returns it, `held`.
    - `quarantine_items(sha256)` gives every copy of those bytes in any state, oldest first;
      `quarantine_held_among` which of the hashes have a copy held; `count_quarantine`
      {state: n}.
    - `set_quarantine_state` records the new state, who moved it and when; an unknown id
      changes nothing.
    Rows are never deleted.
    """

    async def add_quarantined(
        self,
        sha256: str,
        path: Path,
        size: int,
        *,
        origin: str,
        identifier: str,
        by: str,
        detail: dict[str, Any] | None,
    ) -> QuarantineItem: ...

    async def quarantine_items(self, sha256: str) -> list[QuarantineItem]: ...

    async def quarantine_held_among(self, hashes: list[str]) -> set[str]: ...

    async def count_quarantine(self) -> dict[str, int]: ...

    async def set_quarantine_state(self, item_id: int, state: str, by: str) -> None: ...


class HashBankStore(Protocol):
    """Perceptual hashes of judged images (PDQ) and the shared hash lists, by origin.

    - `hash_generation()` changes (only grows) with every write that can alter what the hash
      index must hold: the writes here, list entries, and verdicts that feed the index. A
      process reloads its index when it changes (other processes' writes included).
    - `save_pdq` upserts by (sha256, frame): a frame saved again is replaced, frames not
      given stay; `pdq_of` gives them by frame; `keep_frames` keeps only the listed frames.
    - `add_hash_entries(origin, ...)` upserts by (origin, signal, value), keeping the earliest
      first-seen; returns rows written. `replace_hash_origin` makes an origin's entries exactly
      these (a subscription refresh; unchanged entries are not rewritten) and returns how many
      rows changed. `remove_hash_entry` is True when one was there.
      `drop_hash_origins_except(keep)` forgets the entries and state of other origins
      (`local` always kept) and names them.
    - `hash_index_rows` gives every deny entry's PDQ (allowed images left out) in chunks,
      on a connection of its own.
    - `record_hash_fetch` notes a subscription refresh (counts and ETag only on a good copy);
      `flag_hash` is False when that match was flagged already (idempotent); `hash_flags`
      newest first.
    """

    async def hash_generation(self) -> int: ...

    async def bump_hash_generation(self) -> None: ...

    async def save_pdq(self, sha256: str, hashes: Sequence[PdqHash]) -> None: ...

    async def pdq_of(self, sha256: str) -> list[PdqHash]: ...

    async def keep_frames(self, sha256: str, frames: Sequence[int]) -> None: ...

    def hash_index_rows(self, min_quality: int) -> AsyncIterator[tuple[list[str], list[str]]]: ...

    async def allowed_pdq(self, min_quality: int) -> list[str]: ...

    async def sha256_entries(self, sha256: str) -> list[HashRow]: ...

    async def describe_pdq(self, value: str) -> list[HashRow]: ...

    async def hash_entries(self) -> list[HashRow]: ...

    async def own_hash_entries(
        self, source: str, min_quality: int, *, unreviewed: bool = ...
    ) -> list[HashRow]: ...

    async def add_hash_entries(
        self, origin: str, entries: Iterable[NewHash], *, by: str = ...
    ) -> int: ...

    async def replace_hash_origin(self, origin: str, entries: Iterable[NewHash]) -> int: ...

    async def remove_hash_entry(self, origin: str, signal: str, value: str) -> bool: ...

    async def drop_hash_origins_except(self, keep: Iterable[str]) -> list[str]: ...

    async def hash_subscription(self, name: str) -> SubscriptionState | None: ...

    async def hash_subscriptions(self) -> list[SubscriptionState]: ...

    async def record_hash_fetch(
        self,
        name: str,
        url: str,
        *,
        status: int | None,
        error: str | None,
        nbytes: int = ...,
        etag: str | None = ...,
        entries: int | None = ...,
        skipped: int | None = ...,
    ) -> None: ...

    async def flag_hash(
        self, sha256: str, origin: str, signal: str, value: str, distance: int, source: str | None
    ) -> bool: ...

    async def hash_flags(self, limit: int | None = ...) -> list[HashFlag]: ...


class EmbeddingStore(Protocol):
    """Image embeddings of judged images (by sha256 and model) and the embedding lists.

    - `save_embedding` is an upsert by (sha256, model) returning the row id, which stays the
      same when the image is saved again (the index key's base); `embedding_of` reads it back.
    - `add_embedding_entries` / `replace_embedding_origin` / `drop_embedding_origins_except`
      behave as the hash bank's entries do (`HashBankStore`), per model, keyed by (origin,
      model, digest), and every write bumps `hash_generation` so each process brings its
      index in step. Unlike hash entries, an entry given again unchanged is not written
      (adding included: the count says 0), and one written again takes the new label,
      source, note and first seen (its vector, id and who added it when stay).
    - `embedding_index_keys(model)` gives ("entry" | "own", row ids, origins) chunks of what
      the index should hold; `embedding_vectors` the vectors of such ids.
    """

    async def save_embedding(self, sha256: str, model: str, vector: bytes) -> int: ...

    async def embedding_of(self, sha256: str, model: str) -> tuple[int, bytes] | None: ...

    def embedding_index_keys(
        self, model: str
    ) -> AsyncIterator[tuple[str, list[int], list[str]]]: ...

    async def embedding_vectors(self, kind: str, ids: Sequence[int]) -> list[tuple[int, bytes]]: ...

    async def allowed_embeddings(self, model: str) -> list[bytes]: ...

    async def embedding_entry(self, entry_id: int) -> EmbeddingRow | None: ...

    async def own_embedding(self, row_id: int) -> EmbeddingRow | None: ...

    async def embedding_entry_count(self, model: str) -> int: ...

    async def own_embedding_entries(self, model: str, source: str) -> list[EmbeddingRow]: ...

    async def add_embedding_entries(
        self, origin: str, model: str, entries: Iterable[NewEmbedding], *, by: str = ...
    ) -> int: ...

    async def replace_embedding_origin(
        self, origin: str, model: str, entries: Iterable[NewEmbedding]
    ) -> int: ...

    async def drop_embedding_origins_except(self, keep: Iterable[str]) -> list[str]: ...


class SweepStore(Protocol):
    """Storage sweeps: every file seen per source, each run (resumable), the actions taken.

    - `put_scan_files` upserts by (source, identifier); `get_scan_files` reads them back.
    - Runs: `start_scan_run` abandons the source's other running run and starts one;
      `save_scan_run` checkpoints it (cursor: every file before it is recorded);
      `unfinished_scan_run` gives the running run to resume after a restart.
    - Actions are done at most once: `begin_scan_action` returns (row, fresh), unique per
      (source, identifier, sha256); not fresh when a row exists `done` (acted before: do
      nothing) or `started` (a run died mid-action: complete it); `failed` and `released`
      rows start again, fresh. `end_scan_action` settles it; `set_scan_action_location` is
      noted before a move so a killed run knows where the object went.
    - `scan_quarantined_among` / `scan_quarantine_counts`: sweep quarantines now held.
    """

    async def get_scan_files(
        self, source: str, identifiers: Sequence[str]
    ) -> dict[str, ScanFile]: ...

    async def put_scan_files(self, files: Iterable[ScanFile]) -> None: ...

    async def set_scan_file_action(
        self, source: str, identifier: str, action: str | None
    ) -> None: ...

    async def unacted_scan_positives(
        self, labels: Iterable[str], *, since: float | None, source: str | None
    ) -> list[ScanFile]: ...

    async def sweep_locations(self, sha256s: Sequence[str]) -> dict[str, list[dict[str, Any]]]: ...

    async def unfinished_scan_run(self, source: str) -> ScanRun | None: ...

    async def start_scan_run(self, source: str, action: str, follow: bool) -> ScanRun: ...

    async def save_scan_run(self, run: ScanRun, counts: dict[str, int] | None = ...) -> None: ...

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
    ) -> tuple[ScanAction, bool]: ...

    async def end_scan_action(
        self, action_id: int, state: str, *, location: str | None, detail: dict[str, Any]
    ) -> None: ...

    async def set_scan_action_location(self, action_id: int, location: str) -> None: ...

    async def set_scan_action_detail(self, action_id: int, detail: dict[str, Any]) -> None: ...

    async def started_scan_actions(self, source: str) -> list[ScanAction]: ...

    async def get_scan_action(self, action_id: int) -> ScanAction | None: ...

    async def scan_actions_for(
        self, sha256: str, *, state: str | None = ...
    ) -> list[ScanAction]: ...

    async def scan_quarantined_among(self, sha256s: Sequence[str]) -> set[str]: ...

    async def scan_quarantine_counts(self) -> dict[str, int]: ...


class ProvenanceStore(Protocol):
    """Provenance of stored positives (who uploaded them, where Lemmy uses them).

        want_provenance ──► pending ──settle_provenance──► resolved | no_alias
                               ▲  └── (error, next_try) ──┘      │
                               └──── refresh_provenance ─────────┘

    - `want_provenance` is idempotent per sha256: an image already asked for keeps its row;
      new aliases are added (never lost: once purged, pict-rs cannot name them again).
    - `due_provenance(now, limit)` gives pending rows whose next try has come, oldest first.
    - `hold_provenance_turn` is True for one process sharing the store at a time (renewed
      while it lives, taken over once it lapses).
    - `refresh_provenance` is False for an image never asked for.
    - `rejected_uploads` gives uploads answered "reject" (from the audit log), oldest first.
    """

    async def want_provenance(
        self, sha256: str, why: str, *, aliases: list[str] | None = ..., seen_at: float | None
    ) -> None: ...

    async def hold_provenance_turn(self, period_s: float) -> bool: ...

    async def positives_without_provenance(
        self, limit: int, *, verdicts_since: float = ..., lists_since: float = ...
    ) -> list[tuple[str, float, str, float]]: ...

    async def provenance(self, sha256: str) -> Provenance | None: ...

    async def provenance_of(self, hashes: list[str]) -> dict[str, Provenance]: ...

    async def due_provenance(self, now: float, limit: int) -> list[Provenance]: ...

    async def count_provenance(self) -> dict[str, int]: ...

    async def settle_provenance(
        self,
        sha256: str,
        state: str,
        *,
        aliases: list[str],
        record: dict[str, Any] | None,
        error: str | None,
        next_try: float,
    ) -> None: ...

    async def refresh_provenance(self, sha256: str) -> bool: ...

    async def resolved_provenance(self) -> list[Provenance]: ...

    async def rejected_uploads(
        self, since: float | None, until: float | None, limit: int
    ) -> list[RejectedUpload]: ...


class LemmyActionStore(Protocol):
    """Calls made (or refused) through Lemmy's API for an admin, one row per call, never
    deleted. `add_lemmy_action` always adds a row (a new, larger id); a retry's outcome goes
    on the same row (`update_lemmy_action`: attempts + 1). `lemmy_actions(sha256)` gives the
    image's rows oldest first."""

    async def add_lemmy_action(
        self,
        sha256: str,
        action: str,
        target: str,
        request: dict[str, Any],
        *,
        state: str,
        status: int | None,
        answer: Any,
        by: str,
    ) -> LemmyActionRow: ...

    async def update_lemmy_action(
        self, action_id: int, *, state: str, status: int | None, answer: Any
    ) -> None: ...

    async def lemmy_action(self, action_id: int) -> LemmyActionRow | None: ...

    async def lemmy_actions(self, sha256: str) -> list[LemmyActionRow]: ...


class UnifiedStore(
    StoreLifecycle,
    VerdictStore,
    ListStore,
    LatePositiveStore,
    JobStore,
    AuditStore,
    KudosStore,
    ClusterStore,
    HordeRequestStore,
    ReviewStore,
    HashBankStore,
    EmbeddingStore,
    SweepStore,
    ProvenanceStore,
    LemmyActionStore,
    Protocol,
):
    """Every concern and the lifecycle: what the composition root opens and hands out. Code
    that receives it passes each part the narrow interface that part asks for."""

    async def __aenter__(self) -> UnifiedStore: ...

    def aside(self) -> contextlib.AbstractAsyncContextManager[Any]:
        """A connection of its own (tests and bulk copies: `horde-scanner store copy`)."""
        ...
