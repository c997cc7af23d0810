"""What processes sharing one store coordinate through it: job leases (store/jobs.py uses
them), turns for work done once per cluster, and the AI Horde submit budget of every process
behind one address (backends/shared_submits.py): replicas on PostgreSQL (store/postgres.py
takes slots under an advisory lock, by the database's clock), and on SQLite the processes of
one host (`server.processes`) and the process after a restart, which must not submit what the
Horde still counts from the one before.

Data lifecycle of `horde_submits`: a row per submit, deleted once it no longer counts
(`period_s` after its answer; an unanswered one of a killed process after `stale_s`), so the
table holds at most the window's `limit` rows."""

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

    # -- the AI Horde submit budget (backends/shared_submits.py) -------------------------------

    async def take_submit(
        self, limit: int, period_s: float, stale_s: float
    ) -> tuple[int | None, float]:
        """A slot id, or None and how long until one may free up. SQLite: the processes of
        one host share its clock; the slot is taken by one statement, so two processes never
        both take the last one."""
        now = time.time()
        await self._db.execute(
            "DELETE FROM horde_submits WHERE done_at <= ? OR (done_at IS NULL AND taken_at <= ?)",
            (now - period_s, now - stale_s),
        )
        rows = await self._db.execute_fetchall(
            "INSERT INTO horde_submits (holder, taken_at) SELECT ?, ?"
            " WHERE (SELECT COUNT(*) FROM horde_submits) < ? RETURNING id",
            (self.holder, now, limit),
        )
        taken = list(rows)
        if taken:
            return int(taken[0][0]), 0.0
        found = await self._db.execute_fetchall("SELECT done_at FROM horde_submits")
        done = sorted(float(r[0]) for r in found if r[0] is not None)
        used = len(list(found))
        if used - len(done) >= limit or not done:
            return None, 1.0  # all in flight: wait for an answer
        excess = max(0, used - limit)
        return None, max(0.0, done[min(excess, len(done) - 1)] + period_s - now)

    async def finish_submit(self, slot: int | None) -> None:
        if slot is not None:
            await self._db.execute(
                "UPDATE horde_submits SET done_at=? WHERE id=?", (time.time(), slot)
            )
