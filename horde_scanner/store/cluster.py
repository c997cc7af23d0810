"""What processes sharing one store coordinate through it: job leases (store/jobs.py uses
them), turns for work done once per cluster, and the AI Horde submit budget of all replicas
behind one address (backends/shared_submits.py; PostgreSQL only, see store/postgres.py)."""

from __future__ import annotations

import time

from horde_scanner.store.tables import SchemaStep, Tables

STEPS = [
    # Replicas on one PostgreSQL database: a claimed job is held until `lease_until`
    # (renewed while judged); a dead replica's jobs are taken over when it lapses.
    # PostgreSQL also gets change notifications here.
    SchemaStep(
        "1500-replicas",
        """
    ALTER TABLE jobs ADD COLUMN lease_until REAL NOT NULL DEFAULT 0;
    -- Periodic work done once per cluster, not once per process: whoever takes the turn.
    CREATE TABLE cluster_turns (
        name TEXT PRIMARY KEY,
        holder TEXT NOT NULL,
        taken_at REAL NOT NULL,
        until REAL NOT NULL
    );
    -- The AI Horde submit budget of all replicas behind one address (backends/shared_submits.py).
    CREATE TABLE horde_submits (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        holder TEXT NOT NULL,
        taken_at REAL NOT NULL,
        done_at REAL
    );
    """,
        postgres="""
    CREATE FUNCTION hs_notify_row() RETURNS trigger LANGUAGE plpgsql AS $$
    DECLARE sha TEXT;
    BEGIN
        IF TG_OP = 'DELETE' THEN sha := OLD.sha256; ELSE sha := NEW.sha256; END IF;
        PERFORM pg_notify('horde_scanner', TG_ARGV[0] || ':' || sha);
        RETURN NULL;
    END $$;
    CREATE TRIGGER notify_verdicts AFTER INSERT OR UPDATE OR DELETE ON verdicts
        FOR EACH ROW EXECUTE FUNCTION hs_notify_row('verdict');
    CREATE TRIGGER notify_lists AFTER INSERT OR UPDATE OR DELETE ON lists
        FOR EACH ROW EXECUTE FUNCTION hs_notify_row('list');
    CREATE TRIGGER notify_jobs AFTER INSERT ON jobs
        FOR EACH ROW EXECUTE FUNCTION hs_notify_row('job');
    """,
    ),
]


class ClusterTables(Tables):
    async def take_turn(self, name: str, period_s: float) -> bool:
        """True for exactly one process sharing this store per `period_s` (for work such as
        a subscription refresh that every replica would otherwise repeat)."""
        now = time.time()
        cur = await self._db.execute(
            "INSERT INTO cluster_turns (name, holder, taken_at, until) VALUES (?,?,?,?)"
            " ON CONFLICT(name) DO UPDATE SET holder=excluded.holder,"
            " taken_at=excluded.taken_at, until=excluded.until WHERE cluster_turns.until <= ?",
            (name, self.holder, now, now + period_s, now),
        )
        return cur.rowcount > 0
