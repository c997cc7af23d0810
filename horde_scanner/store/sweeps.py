"""Storage sweeps: every file seen per source, each run (resumable), and the actions taken.

A file, one `scan_files` row per (source, identifier):

    listed ──same size + mtime, final status──► seen: no byte read
       │ new or changed
       ▼
    read, sniffed, hashed, judged ──put_scan_files──► status judged | not_media | unreadable
       │                      (batched; always before the    (final) | error (read again)
       │                       checkpoint that covers it)
       │ positive: now (the sweep's --action), or later (`apply`, a run with --action)
       ▼
    begin_scan_action ──► `scan_actions` row `started` (unique per source, identifier,
       │                  sha256; a move notes its location first) ──end_scan_action──►
       │                  `done` (scan_files.action = quarantined | purged | deleted) | `failed`
       ├─ the row exists: `done` = acted before (nothing to do); `started` = a run died
       │  mid-action (completed, never done twice); `failed` / `released` start again
       └─ a `done` quarantine released: `released`, and scan_files.action forgets it

A run, one `scan_runs` row per sweep of a source:

    start_scan_run (the source's other `running` run: `abandoned`; its checkpoint no
       │            longer holds)
       ▼
    running, phase `sweep` ──save_scan_run every few seconds──► cursor = the last identifier,
       │  in listing order, before which every file is recorded; watermark = the newest mtime
       │  seen; time_ordered once a UUIDv7 name is seen. Killed: the next run with the same
       │  action and follow resumes from the cursor
       │ listing done
       ├── without follow ──► `done`
       └── with follow ──► phase `follow` (cursor cleared): lists what is newer than the
                           watermark, until stopped

Every query runs on the shared connection without BEGIN / COMMIT around it (other
coroutines' statements could slip in between): batches are multi-row INSERTs, never
executemany, which the sqlite3 module will not interleave with other cursors.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from horde_scanner.store.metadata import Int, Real, Text, metadata
from horde_scanner.store.tables import IN_CHUNK, Tables, upsert

scan_files = sa.Table(
    "scan_files",
    metadata,
    sa.Column("source", Text, nullable=False),
    sa.Column("identifier", Text, nullable=False),
    sa.Column("size", Int, nullable=False),
    sa.Column("mtime", Real, nullable=False),
    sa.Column("sha256", Text),
    sa.Column("media_type", Text),
    sa.Column("status", Text, nullable=False),
    sa.Column("label", Text),
    sa.Column("reasons", Text),
    sa.Column("seen_at", Real, nullable=False),
    sa.Column("judged_at", Real),
    sa.Column("action", Text),
    sa.PrimaryKeyConstraint("source", "identifier"),
    sa.Index("scan_files_sha", "sha256"),
    sa.Index("scan_files_label", "label", "judged_at"),
    sqlite_with_rowid=False,
)

scan_runs = sa.Table(
    "scan_runs",
    metadata,
    sa.Column("id", Int, sa.Identity(), primary_key=True),
    sa.Column("source", Text, nullable=False),
    sa.Column("action", Text, nullable=False),
    sa.Column("follow", Int, nullable=False, server_default=sa.text("0")),
    sa.Column("state", Text, nullable=False),
    sa.Column("phase", Text, nullable=False, server_default="sweep"),
    sa.Column("cursor", Text),
    sa.Column("watermark", Real),
    sa.Column("time_ordered", Int, nullable=False, server_default=sa.text("0")),
    sa.Column("started_at", Real, nullable=False),
    sa.Column("updated_at", Real, nullable=False),
    sa.Column("counts", Text),
    sa.Index("scan_runs_source", "source", "state"),
    sqlite_autoincrement=True,
)

scan_actions = sa.Table(
    "scan_actions",
    metadata,
    sa.Column("id", Int, sa.Identity(), primary_key=True),
    sa.Column("source", Text, nullable=False),
    sa.Column("identifier", Text, nullable=False),
    sa.Column("sha256", Text, nullable=False),
    sa.Column("size", Int),
    sa.Column("mtime", Real),
    sa.Column("action", Text, nullable=False),
    sa.Column("state", Text, nullable=False),
    sa.Column("label", Text),
    sa.Column("reasons", Text),
    sa.Column("location", Text),
    sa.Column("detail", Text),
    sa.Column("created_at", Real, nullable=False),
    sa.Column("updated_at", Real, nullable=False),
    sa.UniqueConstraint("source", "identifier", "sha256"),
    sa.Index("scan_actions_state", "source", "state"),
    sqlite_autoincrement=True,
)


# Statuses a file keeps until it changes: it is not read again.
FINAL_STATUSES = frozenset({"judged", "not_media", "unreadable"})
# 12 columns x 200 rows, well under SQLite's bound-variable limit.
_ROWS_PER_INSERT = 200


@dataclass(frozen=True, slots=True)
class ScanFile:
    source: str
    identifier: str
    size: int
    mtime: float
    status: str  # judged | not_media | unreadable | error
    sha256: str | None = None
    media_type: str | None = None
    label: str | None = None
    reasons: list[str] | None = None
    judged_at: float | None = None
    action: str | None = None


@dataclass(slots=True)
class ScanRun:
    """Not frozen: the sweep moves its checkpoint forward in place and saves it
    (`save_scan_run`) every few seconds."""

    id: int
    source: str
    action: str
    follow: bool
    state: str
    phase: str
    cursor: str | None
    watermark: float | None
    time_ordered: bool


@dataclass(frozen=True, slots=True)
class ScanAction:
    id: int
    source: str
    identifier: str
    sha256: str
    size: int | None
    mtime: float | None
    action: str
    state: str
    label: str | None
    reasons: list[str]
    location: str | None
    detail: dict[str, Any]
    created_at: float
    updated_at: float


_FILE_COLS = tuple(
    scan_files.c[name]
    for name in (
        "source", "identifier", "size", "mtime", "status", "sha256", "media_type", "label",
        "reasons", "judged_at", "action",
    )
)  # fmt: skip
_RUN_COLS = tuple(
    scan_runs.c[name]
    for name in (
        "id", "source", "action", "follow", "state", "phase", "cursor", "watermark",
        "time_ordered",
    )
)  # fmt: skip
_ACTION_COLS = tuple(
    scan_actions.c[name]
    for name in (
        "id", "source", "identifier", "sha256", "size", "mtime", "action", "state", "label",
        "reasons", "location", "detail", "created_at", "updated_at",
    )
)  # fmt: skip
# What a file's row takes from a newer sighting (all but its key).
_FILE_UPDATE = (
    "size", "mtime", "status", "sha256", "media_type", "label", "reasons", "judged_at", "action",
    "seen_at",
)  # fmt: skip


def _file(row: Sequence[Any]) -> ScanFile:
    # Reasons are parsed only for positives: a warm rescan reads thousands of clean rows.
    reasons = json.loads(row[8]) if row[8] and row[7] not in (None, "clean") else None
    return ScanFile(
        row[0], row[1], row[2], row[3], row[4], row[5], row[6], row[7],
        reasons, row[9], row[10],
    )  # fmt: skip


def _run(row: Sequence[Any]) -> ScanRun:
    return ScanRun(
        row[0], row[1], row[2], bool(row[3]), row[4], row[5], row[6], row[7], bool(row[8])
    )


def _action(row: Sequence[Any]) -> ScanAction:
    return ScanAction(
        row[0], row[1], row[2], row[3], row[4], row[5], row[6], row[7], row[8],
        json.loads(row[9] or "[]"), row[10], json.loads(row[11] or "{}"), row[12], row[13],
    )  # fmt: skip


class SweepTables(Tables):
    # -- files ---------------------------------------------------------------------------------

    async def get_scan_files(self, source: str, identifiers: Sequence[str]) -> dict[str, ScanFile]:
        found: dict[str, ScanFile] = {}
        for start in range(0, len(identifiers), IN_CHUNK):
            stmt = sa.select(*_FILE_COLS).where(
                scan_files.c.source == source,
                scan_files.c.identifier.in_(identifiers[start : start + IN_CHUNK]),
            )
            for row in (await self._db.execute(stmt)).all():
                found[row[1]] = _file(row)
        return found

    async def put_scan_files(self, files: Iterable[ScanFile]) -> None:
        now = time.time()
        rows = [
            {
                "source": r.source, "identifier": r.identifier, "size": r.size, "mtime": r.mtime,
                "status": r.status, "sha256": r.sha256, "media_type": r.media_type,
                "label": r.label,
                "reasons": json.dumps(r.reasons) if r.reasons is not None else None,
                "judged_at": r.judged_at, "action": r.action, "seen_at": now,
            }
            for r in files
        ]  # fmt: skip
        # One multi-row statement (atomic, one commit) rather than executemany, which the
        # sqlite3 module refuses to interleave with other cursors on the shared connection.
        for start in range(0, len(rows), _ROWS_PER_INSERT):
            stmt = upsert(self._db.dialect, scan_files)[0].values(
                rows[start : start + _ROWS_PER_INSERT]
            )
            stmt = stmt.on_conflict_do_update(
                index_elements=[scan_files.c.source, scan_files.c.identifier],
                set_={name: stmt.excluded[name] for name in _FILE_UPDATE},
            )
            await self._db.execute(stmt)

    async def set_scan_file_action(self, source: str, identifier: str, action: str | None) -> None:
        await self._db.execute(
            sa.update(scan_files)
            .where(scan_files.c.source == source, scan_files.c.identifier == identifier)
            .values(action=action),
        )

    async def unacted_scan_positives(
        self, labels: Iterable[str], *, since: float | None, source: str | None
    ) -> list[ScanFile]:
        """Files judged with one of `labels` (judged at or after `since`, of `source`) that no
        action has touched yet: what `apply` acts on."""
        wanted = list(labels)
        if not wanted:
            return []
        stmt = sa.select(*_FILE_COLS).where(
            scan_files.c.action.is_(None), scan_files.c.label.in_(wanted)
        )
        if since is not None:
            stmt = stmt.where(scan_files.c.judged_at >= since)
        if source is not None:
            stmt = stmt.where(scan_files.c.source == source)
        stmt = stmt.order_by(scan_files.c.source, scan_files.c.identifier)
        return [_file(row) for row in (await self._db.execute(stmt)).all()]

    async def sweep_locations(self, sha256s: Sequence[str]) -> dict[str, list[dict[str, Any]]]:
        """Where each hash was found by sweeps, with what was done there (for exports)."""
        found: dict[str, list[dict[str, Any]]] = {}
        f, a = scan_files, scan_actions
        rows: list[Any] = []
        for start in range(0, len(sha256s), IN_CHUNK):
            chunk = list(sha256s[start : start + IN_CHUNK])
            same_file = sa.and_(
                a.c.source == f.c.source, a.c.identifier == f.c.identifier, a.c.sha256 == f.c.sha256
            )
            files = (
                sa.select(
                    f.c.sha256, f.c.source, f.c.identifier, f.c.size, f.c.mtime, f.c.judged_at,
                    a.c.id, a.c.action, a.c.state, a.c.location, a.c.updated_at,
                )
                .select_from(f.outerjoin(a, same_file))
                .where(f.c.sha256.in_(chunk))
            )  # fmt: skip
            # Actions on files the sweeps no longer list (a row of scan_files replaced).
            gone = sa.select(
                a.c.sha256, a.c.source, a.c.identifier, a.c.size, a.c.mtime,
                sa.null().label("judged_at"), a.c.id, a.c.action, a.c.state, a.c.location,
                a.c.updated_at,
            ).where(a.c.sha256.in_(chunk), ~sa.exists().where(same_file))  # fmt: skip
            both = sa.union_all(files, gone)
            stmt = both.order_by(both.selected_columns.source, both.selected_columns.identifier)
            rows += (await self._db.execute(stmt)).all()
        for row in rows:
            found.setdefault(row[0], []).append(
                {
                    "source": row[1],
                    "identifier": row[2],
                    "size": row[3],
                    "mtime": row[4],
                    "judged_at": row[5],
                    "action_id": row[6],
                    "action": row[7],
                    "action_state": row[8],
                    "location": row[9],
                    "acted_at": row[10],
                }
            )
        return found

    # -- runs ----------------------------------------------------------------------------------

    async def unfinished_scan_run(self, source: str) -> ScanRun | None:
        stmt = (
            sa.select(*_RUN_COLS)
            .where(scan_runs.c.source == source, scan_runs.c.state == "running")
            .order_by(scan_runs.c.id.desc())
            .limit(1)
        )
        row = (await self._db.execute(stmt)).first()
        return _run(row) if row else None

    async def start_scan_run(self, source: str, action: str, follow: bool) -> ScanRun:
        now = time.time()
        # Any other unfinished run of this source is superseded (its checkpoint no longer holds).
        await self._db.execute(
            sa.update(scan_runs)
            .where(scan_runs.c.source == source, scan_runs.c.state == "running")
            .values(state="abandoned", updated_at=now),
        )
        stmt = (
            sa.insert(scan_runs)
            .values(
                source=source,
                action=action,
                follow=int(follow),
                state="running",
                started_at=now,
                updated_at=now,
            )
            .returning(*_RUN_COLS)
        )
        row = (await self._db.execute(stmt)).first()
        assert row is not None
        return _run(row)

    async def save_scan_run(self, run: ScanRun, counts: dict[str, int] | None = None) -> None:
        await self._db.execute(
            sa.update(scan_runs)
            .where(scan_runs.c.id == run.id)
            .values(
                state=run.state,
                phase=run.phase,
                cursor=run.cursor,
                watermark=run.watermark,
                time_ordered=int(run.time_ordered),
                follow=int(run.follow),
                updated_at=time.time(),
                counts=json.dumps(counts) if counts is not None else scan_runs.c.counts,
            ),
        )

    # -- actions -------------------------------------------------------------------------------

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
        """Record the intent to act: (row, fresh). `fresh` is False when a row existed already:
        `done` (acted before: do nothing) or `started` (a run died mid-action: complete it).
        `failed` and `released` rows start again and count as fresh.
        """
        now = time.time()
        stmt = upsert(self._db.dialect, scan_actions)[0].values(
            source=source, identifier=identifier, sha256=sha256, size=size, mtime=mtime,
            action=action, state="started", label=label, reasons=json.dumps(reasons),
            created_at=now, updated_at=now,
        )  # fmt: skip
        new = stmt.excluded
        stmt = stmt.on_conflict_do_update(
            index_elements=[
                scan_actions.c.source, scan_actions.c.identifier, scan_actions.c.sha256
            ],
            set_={
                "state": "started", "action": new.action, "label": new.label,
                "reasons": new.reasons, "size": new.size, "mtime": new.mtime, "location": None,
                "detail": None, "updated_at": new.updated_at,
            },
            where=scan_actions.c.state.in_(["failed", "released"]),
        )  # fmt: skip
        # Whether a row was written: RETURNING says so on both databases (a row count is not
        # reliable for a single-row INSERT whose key PostgreSQL's driver returns implicitly).
        fresh = bool((await self._db.execute(stmt.returning(scan_actions.c.id))).all())
        select = sa.select(*_ACTION_COLS).where(
            scan_actions.c.source == source,
            scan_actions.c.identifier == identifier,
            scan_actions.c.sha256 == sha256,
        )
        row = (await self._db.execute(select)).first()
        assert row is not None
        return _action(row), fresh

    async def end_scan_action(
        self, action_id: int, state: str, *, location: str | None, detail: dict[str, Any]
    ) -> None:
        await self._db.execute(
            sa.update(scan_actions)
            .where(scan_actions.c.id == action_id)
            .values(
                state=state,
                location=sa.func.coalesce(location, scan_actions.c.location),
                detail=json.dumps(detail),
                updated_at=time.time(),
            ),
        )

    async def set_scan_action_location(self, action_id: int, location: str) -> None:
        """Noted before a move, so a run killed after it still knows where the object went."""
        await self._db.execute(
            sa.update(scan_actions)
            .where(scan_actions.c.id == action_id)
            .values(location=location, updated_at=time.time()),
        )

    async def set_scan_action_detail(self, action_id: int, detail: dict[str, Any]) -> None:
        """Replace an action's detail without changing its state (e.g. an admin's decision)."""
        await self._db.execute(
            sa.update(scan_actions)
            .where(scan_actions.c.id == action_id)
            .values(detail=json.dumps(detail), updated_at=time.time()),
        )

    async def started_scan_actions(self, source: str) -> list[ScanAction]:
        stmt = (
            sa.select(*_ACTION_COLS)
            .where(scan_actions.c.source == source, scan_actions.c.state == "started")
            .order_by(scan_actions.c.id)
        )
        return [_action(row) for row in (await self._db.execute(stmt)).all()]

    async def get_scan_action(self, action_id: int) -> ScanAction | None:
        stmt = sa.select(*_ACTION_COLS).where(scan_actions.c.id == action_id)
        row = (await self._db.execute(stmt)).first()
        return _action(row) if row else None

    async def scan_actions_for(self, sha256: str, *, state: str | None = None) -> list[ScanAction]:
        stmt = sa.select(*_ACTION_COLS).where(scan_actions.c.sha256 == sha256)
        if state is not None:
            stmt = stmt.where(scan_actions.c.state == state)
        stmt = stmt.order_by(scan_actions.c.id)
        return [_action(row) for row in (await self._db.execute(stmt)).all()]

    async def scan_quarantined_among(self, sha256s: Sequence[str]) -> set[str]:
        """Which of `sha256s` have a sweep-quarantined object now (action done, not released)."""
        found: set[str] = set()
        for start in range(0, len(sha256s), IN_CHUNK):
            stmt = (
                sa.select(scan_actions.c.sha256)
                .distinct()
                .where(
                    scan_actions.c.action == "quarantine",
                    scan_actions.c.state == "done",
                    scan_actions.c.sha256.in_(sha256s[start : start + IN_CHUNK]),
                )
            )
            found.update(row[0] for row in (await self._db.execute(stmt)).all())
        return found

    async def scan_quarantine_counts(self) -> dict[str, int]:
        """Sweep quarantines by the state of their action (`done` is held)."""
        stmt = (
            sa.select(scan_actions.c.state, sa.func.count())
            .where(scan_actions.c.action == "quarantine")
            .group_by(scan_actions.c.state)
        )
        return {state: n for state, n in (await self._db.execute(stmt)).all()}
