"""Judgements still to do. A job row holds everything needed to judge again, so a restart
loses no work: rows left `running` by a dead process are set back to `pending` when the store
opens (SQLite), or are claimed again once their lease lapses (PostgreSQL, where other
replicas may be running them: `lease_until`, renewed while judged).

    validation miss / sweep ──add_job──► pending ──claim_jobs──► running ──finish_job──► gone
                                           ▲                        │
                                           └───retry_job (backoff)──┘
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass

import sqlalchemy as sa

from horde_scanner.store.database import Prepared
from horde_scanner.store.metadata import Blob, Int, Real, Text, metadata
from horde_scanner.store.tables import Tables, chunks, compiled_once, upsert

jobs = sa.Table(
    "jobs",
    metadata,
    sa.Column("sha256", Text, primary_key=True),
    sa.Column("payload", Blob, nullable=False),  # the bytes to judge
    sa.Column("media_type", Text),
    sa.Column("size", Int),
    sa.Column("source", Text),
    sa.Column("answered", Text),  # what the validation endpoint answered meanwhile
    sa.Column("state", Text, nullable=False, server_default="pending"),
    sa.Column("attempts", Int, nullable=False, server_default="0"),
    sa.Column("not_before", Real, nullable=False, server_default="0"),
    sa.Column("last_error", Text),
    sa.Column("created_at", Real, nullable=False),
    # Replicas: a claimed job is held until then (0: not held).
    sa.Column("lease_until", Real, nullable=False, server_default="0"),
    sa.Index("jobs_ready", "state", "not_before", "created_at"),
)
_JOB_COLUMNS = (
    jobs.c.sha256,
    jobs.c.payload,
    jobs.c.media_type,
    jobs.c.size,
    jobs.c.source,
    jobs.c.answered,
    jobs.c.attempts,
)
# The hot path's statements (a validation miss): built once.
_ANSWERED = Prepared(sa.select(jobs.c.answered).where(jobs.c.sha256 == sa.bindparam("sha256")))
_DELETE = Prepared(sa.delete(jobs).where(jobs.c.sha256 == sa.bindparam("sha256")))


def _claim(postgres: bool) -> Prepared:
    """Mark up to `limit` ready jobs running, oldest first, in one statement; on PostgreSQL
    also those whose lease lapsed, skipping rows another replica is claiming."""
    now: sa.BindParameter[float] = sa.bindparam("now")
    ready = sa.and_(jobs.c.state == "pending", jobs.c.not_before <= now)
    due = sa.select(jobs.c.sha256).order_by(jobs.c.created_at).limit(sa.bindparam("limit"))
    if postgres:
        lapsed = sa.and_(jobs.c.state == "running", jobs.c.lease_until < now)
        due = due.where(sa.or_(ready, lapsed)).with_for_update(skip_locked=True)
        values = {"state": "running", "lease_until": sa.bindparam("until")}
    else:
        due = due.where(ready)
        values = {"state": "running"}
    return Prepared(
        sa.update(jobs)
        .where(jobs.c.sha256.in_(due.scalar_subquery()))
        .values(values)
        .returning(*_JOB_COLUMNS)
    )


_CLAIM = {"sqlite": _claim(False), "postgresql": _claim(True)}
_ADD_KEYS = ("sha256", "payload", "media_type", "size", "source", "created_at")


def _add_job(dialect: str) -> sa.Executable:
    return upsert(dialect, jobs)[0].on_conflict_do_nothing()


@dataclass(frozen=True, slots=True)
class Job:
    sha256: str
    payload: bytes
    media_type: str | None
    size: int | None
    source: str | None
    answered: str | None
    attempts: int


class JobTables(Tables):
    job_lease_s: float  # 0 on SQLite: nobody else to take a job over

    # -- pending jobs ----------------------------------------------------------------------

    async def add_job(
        self,
        sha256: str,
        payload: bytes,
        *,
        media_type: str | None,
        size: int | None,
        source: str | None,
    ) -> bool:
        """Persist a judgement to do; False when one for this hash is already pending."""
        done = await self._db.execute(
            compiled_once(_add_job, self._db.dialect, _ADD_KEYS),
            {
                "sha256": sha256,
                "payload": payload,
                "media_type": media_type,
                "size": size,
                "source": source,
                "created_at": time.time(),
            },
        )
        return done.rowcount > 0

    async def set_job_answers(self, answers: dict[str, str]) -> None:
        """Record what was answered for jobs still running ('accept' is never overwritten)."""
        statement = (
            sa.update(jobs)
            .where(
                jobs.c.sha256 == sa.bindparam("b_sha256"),
                sa.or_(jobs.c.answered.is_(None), jobs.c.answered != "accept"),
            )
            .values(answered=sa.bindparam("b_answer"))
        )
        await self._db.executemany(
            statement, [{"b_answer": answer, "b_sha256": sha} for sha, answer in answers.items()]
        )

    async def claim_jobs(self, limit: int) -> list[Job]:
        """Take up to `limit` ready jobs (oldest first), marking them running in one statement
        so that two processes sharing the store never take the same job. On PostgreSQL also
        jobs whose holder's lease lapsed (a replica that died); rows another replica is
        claiming at this moment are skipped, not waited for (`FOR UPDATE SKIP LOCKED`)."""
        if limit <= 0:
            return []
        now = time.time()
        params = {"now": now, "limit": limit, "until": now + self.job_lease_s}
        rows = await self._db.execute(_CLAIM[self._db.dialect], params)
        return [Job(r[0], r[1], r[2], r[3], r[4], r[5], r[6]) for r in rows]

    async def finish_job(self, sha256: str) -> str | None:
        """Remove a judged job; returns what the validation endpoint answered meanwhile."""
        answered = await self._db.execute(_ANSWERED, {"sha256": sha256})
        await self._db.execute(_DELETE, {"sha256": sha256})
        return answered.scalar()

    async def retry_job(self, sha256: str, *, delay_s: float, error: str) -> None:
        await self._db.execute(
            sa.update(jobs)
            .where(jobs.c.sha256 == sha256)
            .values(
                state="pending",
                attempts=jobs.c.attempts + 1,
                not_before=time.time() + delay_s,
                last_error=error,
            )
        )

    async def wake_jobs(self) -> int:
        """Make every pending job due now; returns how many were waiting for later."""
        done = await self._db.execute(
            sa.update(jobs)
            .where(jobs.c.state == "pending", jobs.c.not_before > time.time())
            .values(not_before=0)
        )
        return max(0, done.rowcount)

    async def count_jobs(self) -> int:
        n = (await self._db.execute(sa.select(sa.func.count()).select_from(jobs))).scalar()
        return int(n or 0)

    async def next_job_time(self) -> float | None:
        """When the next job is due: a pending one's `not_before`, or on PostgreSQL also the
        end of a running one's lease (it may be taken over then)."""
        if self._db.dialect == "postgresql":
            when = sa.case((jobs.c.state == "pending", jobs.c.not_before), else_=jobs.c.lease_until)
            query = sa.select(sa.func.min(when))
        else:
            query = sa.select(sa.func.min(jobs.c.not_before)).where(jobs.c.state == "pending")
        value = (await self._db.execute(query)).scalar()
        return float(value) if value is not None else None

    async def renew_jobs(self, sha256s: Iterable[str]) -> None:
        """Extend the lease of jobs this process is judging (only replicas need leases)."""
        if self._db.dialect != "postgresql":
            return
        until = time.time() + self.job_lease_s
        for chunk in chunks(list(sha256s)):
            await self._db.execute(
                sa.update(jobs)
                .where(jobs.c.state == "running", jobs.c.sha256.in_(chunk))
                .values(lease_until=until)
            )

    async def release_jobs(self, sha256s: Iterable[str]) -> None:
        """Hand back jobs claimed but not judged (a stopping process), for anyone to take."""
        for chunk in chunks(list(sha256s)):
            await self._db.execute(
                sa.update(jobs)
                .where(jobs.c.state == "running", jobs.c.sha256.in_(chunk))
                .values(state="pending", lease_until=0)
            )
