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

import logging
import time

import sqlalchemy as sa

from horde_scanner.store.metadata import Int, Real, Text, metadata
from horde_scanner.store.tables import Tables, upsert

log = logging.getLogger(__name__)

# Periodic work done once per cluster, not once per process: whoever takes the turn.
cluster_turns = sa.Table(
    "cluster_turns",
    metadata,
    sa.Column("name", Text, primary_key=True),
    sa.Column("holder", Text, nullable=False),
    sa.Column("taken_at", Real, nullable=False),
    sa.Column("until", Real, nullable=False),
)

# The AI Horde submit budget of all replicas behind one address (backends/shared_submits.py).
horde_submits = sa.Table(
    "horde_submits",
    metadata,
    sa.Column("id", Int, sa.Identity(), primary_key=True),
    sa.Column("holder", Text, nullable=False),
    sa.Column("taken_at", Real, nullable=False),
    sa.Column("done_at", Real),
    sqlite_autoincrement=True,
)
_s = horde_submits.c
# One clock for every replica: the database's (PostgreSQL).
_PG_NOW: sa.Cast[float] = sa.cast(sa.extract("epoch", sa.func.clock_timestamp()), sa.Double())


def _take_turn(dialect: str) -> sa.Executable:
    """The turn is taken when nobody holds it, or its holder's time is up."""
    insert, new = upsert(dialect, cluster_turns)
    return insert.on_conflict_do_update(
        index_elements=[cluster_turns.c.name],
        set_={"holder": new.holder, "taken_at": new.taken_at, "until": new.until},
        where=cluster_turns.c.until <= sa.bindparam("now"),
    )


class ClusterTables(Tables):
    async def take_turn(self, name: str, period_s: float) -> bool:
        """True for exactly one process sharing this store per `period_s` (for work such as
        a subscription refresh that every replica would otherwise repeat)."""
        now = time.time()
        insert, new = upsert(self._db.dialect, cluster_turns)
        done = await self._db.execute(
            insert.values(
                name=name, holder=self.holder, taken_at=now, until=now + period_s
            ).on_conflict_do_update(
                index_elements=[cluster_turns.c.name],
                set_={"holder": new.holder, "taken_at": new.taken_at, "until": new.until},
                where=cluster_turns.c.until <= now,
            )
        )
        return done.rowcount > 0

    # -- the AI Horde submit budget (backends/shared_submits.py) -------------------------------

    async def take_submit(
        self, limit: int, period_s: float, stale_s: float
    ) -> tuple[int | None, float]:
        """A slot id, or None and how long until one may free up.

        SQLite: the processes of one host share its clock; the slot is taken by one
        statement, so two processes never both take the last one. PostgreSQL: replicas take
        slots in turn under an advisory lock, by the database's clock."""
        if self._db.dialect == "postgresql":
            return await self._take_submit_pg(limit, period_s, stale_s)
        now = time.time()
        await self._db.execute(
            sa.delete(horde_submits).where(
                sa.or_(
                    _s.done_at <= now - period_s,
                    sa.and_(_s.done_at.is_(None), _s.taken_at <= now - stale_s),
                )
            )
        )
        used = sa.select(sa.func.count()).select_from(horde_submits).scalar_subquery()
        free = sa.select(sa.literal(self.holder), sa.literal(now)).where(used < limit)
        taken = await self._db.execute(
            sa.insert(horde_submits).from_select(["holder", "taken_at"], free).returning(_s.id)
        )
        if taken:
            return int(taken.scalar()), 0.0
        found = (await self._db.execute(sa.select(_s.done_at))).scalars()
        done = sorted(float(d) for d in found if d is not None)
        in_use = len(found)
        if in_use - len(done) >= limit or not done:
            return None, 1.0  # all in flight: wait for an answer
        excess = max(0, in_use - limit)
        return None, max(0.0, done[min(excess, len(done) - 1)] + period_s - now)

    async def _take_submit_pg(
        self, limit: int, period_s: float, stale_s: float
    ) -> tuple[int | None, float]:
        async with self._db.transaction() as tx:
            await tx.execute(
                sa.select(sa.func.pg_advisory_xact_lock(sa.func.hashtext("horde_scanner:submits")))
            )
            now = float((await tx.execute(sa.select(_PG_NOW))).scalar())
            await tx.execute(
                sa.delete(horde_submits).where(
                    sa.or_(
                        _s.done_at <= now - period_s,
                        sa.and_(_s.done_at.is_(None), _s.taken_at <= now - stale_s),
                    )
                )
            )
            found = (await tx.execute(sa.select(_s.done_at))).scalars()
            done = sorted(float(d) for d in found if d is not None)
            used = len(found)
            if used < limit:
                slot = await tx.execute(
                    sa.insert(horde_submits)
                    .values(holder=self.holder, taken_at=now)
                    .returning(_s.id)
                )
                return int(slot.scalar()), 0.0
            if used - len(done) >= limit:
                return None, 1.0  # all in flight: wait for an answer
            return None, done[used - limit] + period_s - now

    async def finish_submit(self, slot: int | None) -> None:
        if slot is None:
            return
        postgres = self._db.dialect == "postgresql"
        done_at = _PG_NOW if postgres else sa.literal(time.time())
        statement = sa.update(horde_submits).where(_s.id == slot).values(done_at=done_at)
        if not postgres:
            await self._db.execute(statement)
            return
        try:
            await self._db.execute(statement)
        except Exception as exc:
            # Called as the Horde's answer comes in: a store that is away must not take the
            # answer with it. The slot counts until it is stale (backends/shared_submits.py).
            if not self.health.failed(exc):
                raise
            log.warning("AI Horde submit slot %s left open (store unavailable)", slot)
