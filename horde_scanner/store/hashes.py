"""Perceptual hashes of judged images and the shared hash lists: entries by origin (our own
confirmed verdicts, imports, subscriptions), subscription state, and near-match flags.

`hash_generation` is bumped by every change that can alter the set of hashes to match
against (triggers on lists and verdicts), so each process can tell cheaply when to reload its
in-memory index (hashlists/index.py).
"""

from __future__ import annotations

from horde_scanner.store.tables import SchemaStep, Tables


def _index_triggers(column: str, match: str, *, postgres: bool) -> str:
    """Triggers that bump hash_generation when a verdict that feeds the index (csam, and not
    itself from a hash-list match) comes, changes or goes. `column` = `match` marks a verdict
    from a match (step 0500 read the backend's name; 1300 gave it a column of its own)."""

    def feeds(row: str) -> str:
        return f"{row}.label = 'csam' AND {row}.{column} != '{match}'"

    events = {
        "insert": ("INSERT", feeds("NEW")),
        "update": (f"UPDATE OF label, {column}", f"({feeds('OLD')}) OR ({feeds('NEW')})"),
        "delete": ("DELETE", feeds("OLD")),
    }
    out = []
    for name, (event, when) in events.items():
        if postgres:
            out.append(
                f"CREATE TRIGGER hashgen_verdicts_{name} AFTER {event} ON verdicts FOR EACH ROW"
                f" WHEN ({when}) EXECUTE FUNCTION hs_hashgen_bump();"
            )
        else:
            out.append(
                f"CREATE TRIGGER hashgen_verdicts_{name} AFTER {event} ON verdicts WHEN {when}"
                " BEGIN UPDATE hash_generation SET n = n + 1; END;"
            )
    return "\n".join(out)


def _drop_index_triggers(*, postgres: bool) -> str:
    on = " ON verdicts" if postgres else ""
    return "".join(
        f"DROP TRIGGER hashgen_verdicts_{name}{on};" for name in ("insert", "update", "delete")
    )


STEPS = [
    SchemaStep(
        "0500-hashes",
        """
    CREATE TABLE verdict_pdq (
        sha256 TEXT NOT NULL,
        frame INTEGER NOT NULL DEFAULT 0,
        pdq TEXT NOT NULL,
        quality INTEGER NOT NULL,
        PRIMARY KEY (sha256, frame)
    );
    CREATE INDEX verdict_pdq_value ON verdict_pdq(pdq);
    CREATE TABLE hash_entries (
        origin TEXT NOT NULL,
        signal TEXT NOT NULL CHECK (signal IN ('sha256', 'pdq')),
        value TEXT NOT NULL,
        label TEXT NOT NULL,
        source TEXT NOT NULL DEFAULT '',
        first_seen REAL,
        note TEXT NOT NULL DEFAULT '',
        -- In (signal, value) order: loading the index and matching read along the key.
        PRIMARY KEY (signal, value, origin)
    ) WITHOUT ROWID;
    CREATE INDEX hash_entries_origin ON hash_entries(origin);
    CREATE TABLE hash_subscriptions (
        name TEXT PRIMARY KEY,
        url TEXT NOT NULL,
        etag TEXT,
        entries INTEGER NOT NULL DEFAULT 0,
        skipped INTEGER NOT NULL DEFAULT 0,
        last_ok REAL,
        last_checked REAL,
        last_status INTEGER,
        last_error TEXT,
        bytes_fetched INTEGER NOT NULL DEFAULT 0
    );
    CREATE TABLE hash_flags (
        sha256 TEXT NOT NULL,
        origin TEXT NOT NULL,
        signal TEXT NOT NULL,
        value TEXT NOT NULL,
        distance INTEGER NOT NULL,
        source TEXT,
        flagged_at REAL NOT NULL,
        PRIMARY KEY (sha256, origin, signal, value)
    );
    -- Bumped by every change that can alter the set of hashes to match against, so that
    -- each process can tell cheaply when to reload its in-memory index.
    CREATE TABLE hash_generation (id INTEGER PRIMARY KEY CHECK (id = 1), n INTEGER NOT NULL);
    INSERT INTO hash_generation VALUES (1, 0);
    CREATE TRIGGER hashgen_lists_insert AFTER INSERT ON lists
        BEGIN UPDATE hash_generation SET n = n + 1; END;
    CREATE TRIGGER hashgen_lists_update AFTER UPDATE ON lists
        BEGIN UPDATE hash_generation SET n = n + 1; END;
    CREATE TRIGGER hashgen_lists_delete AFTER DELETE ON lists
        BEGIN UPDATE hash_generation SET n = n + 1; END;
"""
        + _index_triggers("backend", "hashlist", postgres=False),
        postgres="""
    CREATE FUNCTION hs_hashgen_bump() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN UPDATE hash_generation SET n = n + 1; RETURN NULL; END $$;
    CREATE FUNCTION hs_hashgen_notify() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN PERFORM pg_notify('horde_scanner', 'hashes:'); RETURN NULL; END $$;
    CREATE TRIGGER hashgen_notify AFTER UPDATE ON hash_generation
        FOR EACH STATEMENT EXECUTE FUNCTION hs_hashgen_notify();
    CREATE TRIGGER hashgen_lists AFTER INSERT OR UPDATE OR DELETE ON lists
        FOR EACH ROW EXECUTE FUNCTION hs_hashgen_bump();
"""
        + _index_triggers("backend", "hashlist", postgres=True),
    ),
    # Who put an entry on the list and when: an imported entry is published with them.
    SchemaStep(
        "0710-hash-entries-added",
        """
    ALTER TABLE hash_entries ADD COLUMN added_by TEXT NOT NULL DEFAULT '';
    ALTER TABLE hash_entries ADD COLUMN added_at REAL;
    """,
    ),
    # What a verdict rests on (verdict.VerdictRoute) gets a column of its own: hash-list
    # matches were told apart by their backend name. Rows from a match are marked, and the
    # index triggers read the column.
    SchemaStep(
        "1300-verdict-route",
        """
    ALTER TABLE verdicts ADD COLUMN route TEXT NOT NULL DEFAULT 'judged';
    UPDATE verdicts SET route = 'match' WHERE backend = 'hashlist';
    """
        + _drop_index_triggers(postgres=False)
        + _index_triggers("route", "match", postgres=False),
        postgres=_drop_index_triggers(postgres=True)
        + _index_triggers("route", "match", postgres=True),
    ),
]


class HashTables(Tables):
    pass
