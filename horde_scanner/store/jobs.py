"""Judgements still to do. A job row holds everything needed to judge again, so a restart
loses no work: rows left `running` by a dead process are set back to `pending` when the store
opens (SQLite), or are claimed again once their lease lapses (PostgreSQL, where other
replicas may be running them; the lease column is step 1500-replicas in store/cluster.py).

    validation miss / sweep ──add_job──► pending ──claim_jobs──► running ──finish_job──► gone
                                           ▲                        │
                                           └───retry_job (backoff)──┘
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass

from horde_scanner.store.tables import Tables

# The table itself came with step 0001-core (store/verdicts.py).
STEPS: list = []


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
        cur = await self._db.execute(
            "INSERT INTO jobs (sha256, payload, media_type, size, source, created_at)"
            " VALUES (?,?,?,?,?,?) ON CONFLICT DO NOTHING",
            (sha256, payload, media_type, size, source, time.time()),
        )
        return cur.rowcount > 0

    async def set_job_answers(self, answers: dict[str, str]) -> None:
        """Record what was answered for jobs still running ('accept' is never overwritten)."""
        await self._db.executemany(
            "UPDATE jobs SET answered=? WHERE sha256=?"
            " AND (answered IS NULL OR answered != 'accept')",
            [(answer, sha) for sha, answer in answers.items()],
        )

    async def claim_jobs(self, limit: int) -> list[Job]:
        """Take up to `limit` ready jobs (oldest first), marking them running in one statement
        so that two processes sharing the file never take the same job."""
        async with self._db.execute(
            "UPDATE jobs SET state='running' WHERE sha256 IN (SELECT sha256 FROM jobs"
            " WHERE state='pending' AND not_before <= ? ORDER BY created_at LIMIT ?)"
            " RETURNING sha256, payload, media_type, size, source, answered, attempts",
            (time.time(), limit),
        ) as cur:
            rows = await cur.fetchall()
        return [Job(r[0], r[1], r[2], r[3], r[4], r[5], r[6]) for r in rows]

    async def finish_job(self, sha256: str) -> str | None:
        """Remove a judged job; returns what the validation endpoint answered meanwhile."""
        async with self._db.execute("SELECT answered FROM jobs WHERE sha256=?", (sha256,)) as cur:
            row = await cur.fetchone()
        await self._db.execute("DELETE FROM jobs WHERE sha256=?", (sha256,))
        return row[0] if row else None

    async def retry_job(self, sha256: str, *, delay_s: float, error: str) -> None:
        await self._db.execute(
            "UPDATE jobs SET state='pending', attempts=attempts+1, not_before=?, last_error=?"
            " WHERE sha256=?",
            (time.time() + delay_s, error, sha256),
        )

    async def wake_jobs(self) -> int:
        """Make every pending job due now; returns how many were waiting for later."""
        cur = await self._db.execute(
            "UPDATE jobs SET not_before=0 WHERE state='pending' AND not_before > ?",
            (time.time(),),
        )
        return max(0, cur.rowcount)

    async def count_jobs(self) -> int:
        async with self._db.execute("SELECT COUNT(*) FROM jobs") as cur:
            row = await cur.fetchone()
        return int(row[0]) if row else 0

    async def next_job_time(self) -> float | None:
        async with self._db.execute(
            "SELECT MIN(not_before) FROM jobs WHERE state='pending'"
        ) as cur:
            row = await cur.fetchone()
        return float(row[0]) if row and row[0] is not None else None

    async def renew_jobs(self, sha256s: Iterable[str]) -> None:
        """Extend the lease of jobs this process is judging (only replicas need leases)."""

    async def release_jobs(self, sha256s: Iterable[str]) -> None:
        """Hand back jobs claimed but not judged (a stopping process), for anyone to take."""
        held = list(sha256s)
        for start in range(0, len(held), 500):
            chunk = held[start : start + 500]
            await self._db.execute(
                "UPDATE jobs SET state='pending', lease_until=0 WHERE state='running'"
                f" AND sha256 IN ({','.join('?' * len(chunk))})",
                chunk,
            )
