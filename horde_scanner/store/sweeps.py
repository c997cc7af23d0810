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
from horde_scanner.store.tables import SchemaStep, Tables, rows_in

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

STEPS = [
    SchemaStep(
        "0300-scan",
        """
    CREATE TABLE scan_files (
        source TEXT NOT NULL,
        identifier TEXT NOT NULL,
        size INTEGER NOT NULL,
        mtime REAL NOT NULL,
        sha256 TEXT,
        media_type TEXT,
        status TEXT NOT NULL,
        label TEXT,
        reasons TEXT,
        seen_at REAL NOT NULL,
        judged_at REAL,
        action TEXT,
        PRIMARY KEY (source, identifier)
    ) WITHOUT ROWID;
    CREATE INDEX scan_files_sha ON scan_files(sha256);
    CREATE INDEX scan_files_label ON scan_files(label, judged_at);
    CREATE TABLE scan_runs (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        source TEXT NOT NULL,
        action TEXT NOT NULL,
        follow INTEGER NOT NULL DEFAULT 0,
        state TEXT NOT NULL,
        phase TEXT NOT NULL DEFAULT 'sweep',
        cursor TEXT,
        watermark REAL,
        time_ordered INTEGER NOT NULL DEFAULT 0,
        started_at REAL NOT NULL,
        updated_at REAL NOT NULL,
        counts TEXT
    );
    CREATE INDEX scan_runs_source ON scan_runs(source, state);
    CREATE TABLE scan_actions (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        source TEXT NOT NULL,
        identifier TEXT NOT NULL,
        sha256 TEXT NOT NULL,
        size INTEGER,
        mtime REAL,
        action TEXT NOT NULL,
        state TEXT NOT NULL,
        label TEXT,
        reasons TEXT,
        location TEXT,
        detail TEXT,
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL,
        UNIQUE (source, identifier, sha256)
    );
    CREATE INDEX scan_actions_state ON scan_actions(source, state);
    """,
    ),
]


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


_FILE_COLS = (
    "source, identifier, size, mtime, status, sha256, media_type, label, reasons, judged_at, action"
)
_RUN_COLS = "id, source, action, follow, state, phase, cursor, watermark, time_ordered"
_ACTION_COLS = (
    "id, source, identifier, sha256, size, mtime, action, state, label, reasons, location,"
    " detail, created_at, updated_at"
)


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
        query = f"SELECT {_FILE_COLS} FROM scan_files WHERE source=? AND identifier IN ({{in}})"
        rows = await rows_in(self._db, query, identifiers, before=[source])
        return {row[1]: _file(row) for row in rows}

    async def put_scan_files(self, files: Iterable[ScanFile]) -> None:
        now = time.time()
        rows = [
            (
                r.source, r.identifier, r.size, r.mtime, r.status, r.sha256, r.media_type,
                r.label, json.dumps(r.reasons) if r.reasons is not None else None,
                r.judged_at, r.action, now,
            )
            for r in files
        ]  # fmt: skip
        # One multi-row statement (atomic, one commit) rather than executemany, which the
        # sqlite3 module refuses to interleave with other cursors on the shared connection.
        for start in range(0, len(rows), _ROWS_PER_INSERT):
            batch = rows[start : start + _ROWS_PER_INSERT]
            await self._db.execute(
                f"INSERT INTO scan_files ({_FILE_COLS}, seen_at) VALUES "
                + ",".join(["(?,?,?,?,?,?,?,?,?,?,?,?)"] * len(batch))
                + " ON CONFLICT(source, identifier) DO UPDATE SET size=excluded.size,"
                " mtime=excluded.mtime, status=excluded.status, sha256=excluded.sha256,"
                " media_type=excluded.media_type, label=excluded.label, reasons=excluded.reasons,"
                " judged_at=excluded.judged_at, action=excluded.action, seen_at=excluded.seen_at",
                [value for row in batch for value in row],
            )

    async def set_scan_file_action(self, source: str, identifier: str, action: str | None) -> None:
        await self._db.execute(
            "UPDATE scan_files SET action=? WHERE source=? AND identifier=?",
            (action, source, identifier),
        )

    async def unacted_scan_positives(
        self, labels: Iterable[str], *, since: float | None, source: str | None
    ) -> list[ScanFile]:
        """Files judged with one of `labels` (judged at or after `since`, of `source`) that no
        action has touched yet: what `apply` acts on."""
        wanted = list(labels)
        if not wanted:
            return []
        query = (
            f"SELECT {_FILE_COLS} FROM scan_files WHERE action IS NULL"
            f" AND label IN ({','.join('?' * len(wanted))})"
        )
        params: list[Any] = list(wanted)
        if since is not None:
            query += " AND judged_at >= ?"
            params.append(since)
        if source is not None:
            query += " AND source = ?"
            params.append(source)
        query += " ORDER BY source, identifier"
        async with self._db.execute(query, params) as cur:
            return [_file(row) async for row in cur]

    async def sweep_locations(self, sha256s: Sequence[str]) -> dict[str, list[dict[str, Any]]]:
        """Where each hash was found by sweeps, with what was done there (for exports)."""
        found: dict[str, list[dict[str, Any]]] = {}
        rows = await rows_in(
            self._db,
            "SELECT f.sha256, f.source, f.identifier, f.size, f.mtime, f.judged_at,"
            " a.id, a.action, a.state, a.location, a.updated_at FROM scan_files f"
            " LEFT JOIN scan_actions a ON a.source=f.source AND a.identifier=f.identifier"
            " AND a.sha256=f.sha256 WHERE f.sha256 IN ({in})"
            " UNION ALL SELECT a.sha256, a.source, a.identifier, a.size, a.mtime, NULL,"
            " a.id, a.action, a.state, a.location, a.updated_at FROM scan_actions a"
            " WHERE a.sha256 IN ({in}) AND NOT EXISTS (SELECT 1 FROM scan_files f"
            " WHERE f.source=a.source AND f.identifier=a.identifier AND f.sha256=a.sha256)"
            " ORDER BY 2, 3",
            sha256s,
        )
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
        async with self._db.execute(
            f"SELECT {_RUN_COLS} FROM scan_runs WHERE source=? AND state='running'"
            " ORDER BY id DESC LIMIT 1",
            (source,),
        ) as cur:
            row = await cur.fetchone()
        return _run(row) if row else None

    async def start_scan_run(self, source: str, action: str, follow: bool) -> ScanRun:
        now = time.time()
        # Any other unfinished run of this source is superseded (its checkpoint no longer holds).
        await self._db.execute(
            "UPDATE scan_runs SET state='abandoned', updated_at=? WHERE source=?"
            " AND state='running'",
            (now, source),
        )
        async with self._db.execute(
            "INSERT INTO scan_runs (source, action, follow, state, started_at, updated_at)"
            f" VALUES (?,?,?,'running',?,?) RETURNING {_RUN_COLS}",
            (source, action, int(follow), now, now),
        ) as cur:
            row = await cur.fetchone()
        assert row is not None
        return _run(row)

    async def save_scan_run(self, run: ScanRun, counts: dict[str, int] | None = None) -> None:
        await self._db.execute(
            "UPDATE scan_runs SET state=?, phase=?, cursor=?, watermark=?, time_ordered=?,"
            " follow=?, updated_at=?, counts=COALESCE(?, counts) WHERE id=?",
            (
                run.state,
                run.phase,
                run.cursor,
                run.watermark,
                int(run.time_ordered),
                int(run.follow),
                time.time(),
                json.dumps(counts) if counts is not None else None,
                run.id,
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
        cur = await self._db.execute(
            "INSERT INTO scan_actions (source, identifier, sha256, size, mtime, action, state,"
            " label, reasons, created_at, updated_at) VALUES (?,?,?,?,?,?,'started',?,?,?,?)"
            " ON CONFLICT(source, identifier, sha256) DO UPDATE SET state='started',"
            " action=excluded.action, label=excluded.label, reasons=excluded.reasons,"
            " size=excluded.size, mtime=excluded.mtime, location=NULL, detail=NULL,"
            " updated_at=excluded.updated_at WHERE scan_actions.state IN ('failed', 'released')",
            (source, identifier, sha256, size, mtime, action, label, json.dumps(reasons), now, now),
        )
        fresh = cur.rowcount > 0
        async with self._db.execute(
            f"SELECT {_ACTION_COLS} FROM scan_actions WHERE source=? AND identifier=? AND sha256=?",
            (source, identifier, sha256),
        ) as cur:
            row = await cur.fetchone()
        assert row is not None
        return _action(row), fresh

    async def end_scan_action(
        self, action_id: int, state: str, *, location: str | None, detail: dict[str, Any]
    ) -> None:
        await self._db.execute(
            "UPDATE scan_actions SET state=?, location=COALESCE(?, location), detail=?,"
            " updated_at=? WHERE id=?",
            (state, location, json.dumps(detail), time.time(), action_id),
        )

    async def set_scan_action_location(self, action_id: int, location: str) -> None:
        """Noted before a move, so a run killed after it still knows where the object went."""
        await self._db.execute(
            "UPDATE scan_actions SET location=?, updated_at=? WHERE id=?",
            (location, time.time(), action_id),
        )

    async def set_scan_action_detail(self, action_id: int, detail: dict[str, Any]) -> None:
        """Replace an action's detail without changing its state (e.g. an admin's decision)."""
        await self._db.execute(
            "UPDATE scan_actions SET detail=?, updated_at=? WHERE id=?",
            (json.dumps(detail), time.time(), action_id),
        )

    async def started_scan_actions(self, source: str) -> list[ScanAction]:
        async with self._db.execute(
            f"SELECT {_ACTION_COLS} FROM scan_actions WHERE source=? AND state='started'"
            " ORDER BY id",
            (source,),
        ) as cur:
            return [_action(row) async for row in cur]

    async def get_scan_action(self, action_id: int) -> ScanAction | None:
        async with self._db.execute(
            f"SELECT {_ACTION_COLS} FROM scan_actions WHERE id=?", (action_id,)
        ) as cur:
            row = await cur.fetchone()
        return _action(row) if row else None

    async def scan_actions_for(self, sha256: str, *, state: str | None = None) -> list[ScanAction]:
        query = f"SELECT {_ACTION_COLS} FROM scan_actions WHERE sha256=?"
        params: list[Any] = [sha256]
        if state is not None:
            query += " AND state=?"
            params.append(state)
        async with self._db.execute(query + " ORDER BY id", params) as cur:
            return [_action(row) async for row in cur]

    async def scan_quarantined_among(self, sha256s: Sequence[str]) -> set[str]:
        """Which of `sha256s` have a sweep-quarantined object now (action done, not released)."""
        rows = await rows_in(
            self._db,
            "SELECT DISTINCT sha256 FROM scan_actions WHERE action='quarantine'"
            " AND state='done' AND sha256 IN ({in})",
            sha256s,
        )
        return {row[0] for row in rows}

    async def scan_quarantine_counts(self) -> dict[str, int]:
        """Sweep quarantines by the state of their action (`done` is held)."""
        async with self._db.execute(
            "SELECT state, COUNT(*) FROM scan_actions WHERE action='quarantine' GROUP BY state"
        ) as cur:
            return {state: n async for state, n in cur}
