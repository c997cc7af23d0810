"""Admin review: quarantined copies and what became of them."""

from __future__ import annotations

from horde_scanner.store.tables import SchemaStep, Tables

STEPS = [
    SchemaStep(
        "0700-admin",
        """
    CREATE INDEX verdicts_judged ON verdicts(judged_at);
    CREATE TABLE quarantine (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        sha256 TEXT NOT NULL,
        origin TEXT NOT NULL,
        identifier TEXT NOT NULL,
        path TEXT NOT NULL,
        size INTEGER,
        state TEXT NOT NULL DEFAULT 'held' CHECK (state IN ('held', 'released', 'deleted')),
        quarantined_at REAL NOT NULL,
        updated_at REAL NOT NULL,
        updated_by TEXT,
        detail TEXT
    );
    CREATE INDEX quarantine_sha ON quarantine(sha256, state);
    """,
    ),
]


class ReviewTables(Tables):
    pass
