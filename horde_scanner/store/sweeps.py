"""Storage sweeps: every file seen per source, each run (resumable), and the actions taken."""

from __future__ import annotations

from horde_scanner.store.tables import SchemaStep, Tables

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


class SweepTables(Tables):
    pass
