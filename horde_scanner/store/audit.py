"""The audit log: every decision and action, append-only, buffered and written in batches
(one commit per validation answer would cost more than the answer itself).

Data lifecycle: `audit()` buffers a row -> `flush_audit()` (every 500 rows, before every read,
and on close) writes it -> it stays for good; rows are never updated or deleted.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from typing import Any

from horde_scanner.store.tables import Tables

log = logging.getLogger(__name__)

# The table itself came with step 0001-core (store/verdicts.py).
STEPS: list = []
# 7 columns x 500 rows stays under SQLite's 32766 bound variables.
_AUDIT_ROWS_PER_INSERT = 500
# Rows kept while the store is away (store/outage.py); past this the oldest are dropped, and
# counted (`audit_dropped`), each drop also a log line: the trace of last resort.
AUDIT_KEPT_ROWS = 100_000


@dataclass(frozen=True, slots=True)
class AuditRecord:
    id: int
    ts: float
    sha256: str | None
    event: str
    label: str | None
    action: str | None
    source: str | None
    detail: dict[str, Any]


class AuditTables(Tables):
    _audit_buffer: list[tuple[Any, ...]]
    audit_dropped: int = 0

    # -- audit -----------------------------------------------------------------------------

    async def audit(
        self,
        event: str,
        *,
        sha256: str | None = None,
        label: str | None = None,
        action: str | None = None,
        source: str | None = None,
        detail: dict[str, Any] | None = None,
    ) -> None:
        self._audit_buffer.append(
            (time.time(), sha256, event, label, action, source, json.dumps(detail or {}))
        )
        if len(self._audit_buffer) >= 500 and self.health.available:
            try:
                await self.flush_audit()
            except Exception as exc:
                # Away (a restart, a full disk): the rows stay buffered and are written when it
                # is back; the event being recorded never fails for it.
                if not self.health.failed(exc):
                    raise

    async def flush_audit(self) -> None:
        if not self._audit_buffer:
            return
        rows, self._audit_buffer = self._audit_buffer, []
        # One multi-row INSERT is one atomic statement: no BEGIN/COMMIT pair that other
        # coroutines' statements could slip into while we await.
        for start in range(0, len(rows), _AUDIT_ROWS_PER_INSERT):
            batch = rows[start : start + _AUDIT_ROWS_PER_INSERT]
            try:
                await self._db.execute(
                    "INSERT INTO audit (ts, sha256, event, label, action, source, detail)"
                    " VALUES " + ",".join(["(?,?,?,?,?,?,?)"] * len(batch)),
                    [value for row in batch for value in row],
                )
            except BaseException:
                self._keep_audit(rows[start:])
                raise

    def _keep_audit(self, rows: list[tuple[Any, ...]]) -> None:
        """Put back rows a flush could not write, before those buffered since (bounded)."""
        kept = rows + self._audit_buffer
        over = len(kept) - AUDIT_KEPT_ROWS
        if over > 0:
            self.audit_dropped += over
            for row in kept[:over]:
                log.error("audit row dropped (store away too long): %s %s", row[2], row[1])
            kept = kept[over:]
        self._audit_buffer = kept

    async def audit_trail(self, sha256: str) -> list[AuditRecord]:
        await self.flush_audit()
        async with self._db.execute(
            "SELECT id, ts, sha256, event, label, action, source, detail FROM audit"
            " WHERE sha256=? ORDER BY id",
            (sha256,),
        ) as cur:
            rows = await cur.fetchall()
        return [
            AuditRecord(r[0], r[1], r[2], r[3], r[4], r[5], r[6], json.loads(r[7] or "{}"))
            for r in rows
        ]

    async def last_events(
        self, sha256s: list[str], events: tuple[str, ...]
    ) -> dict[str, tuple[str, str | None]]:
        """{sha256: (event, source)} of the latest of `events` recorded for each hash."""
        await self.flush_audit()
        latest: dict[str, tuple[str, str | None]] = {}
        marks = ",".join("?" * len(events))
        for start in range(0, len(sha256s), 500):
            chunk = sha256s[start : start + 500]
            async with self._db.execute(
                f"SELECT sha256, event, source FROM audit WHERE event IN ({marks})"
                f" AND sha256 IN ({','.join('?' * len(chunk))}) ORDER BY id",
                [*events, *chunk],
            ) as cur:
                async for sha, event, source in cur:
                    latest[sha] = (event, source)
        return latest

    async def rename_sources(self, renames: dict[str, str]) -> int:
        """Record the new source wherever rows (audit, verdicts, jobs) recorded an old one
        (`{old: new}`), one pass over each table; how many rows changed. For sources that
        must not stay written (a client's secret id)."""
        if not renames:
            return 0
        cases = " ".join("WHEN ? THEN ?" for _ in renames)
        marks = ",".join("?" * len(renames))
        params = [v for pair in renames.items() for v in pair] + list(renames)
        changed = 0
        for table in ("audit", "verdicts", "jobs"):
            cur = await self._db.execute(
                f"UPDATE {table} SET source = CASE source {cases} END WHERE source IN ({marks})",
                params,
            )
            changed += max(0, cur.rowcount)
        return changed
