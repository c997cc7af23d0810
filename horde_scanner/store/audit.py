"""The audit log: every decision and action, append-only, buffered and written in batches
(one commit per validation answer would cost more than the answer itself).

Data lifecycle: `audit()` buffers a row -> `flush_audit()` (every 500 rows, before every read,
and on close) writes it -> it stays for good; rows are never updated or deleted.
"""

from __future__ import annotations

import functools
import json
import logging
import time
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from horde_scanner.store.database import Prepared
from horde_scanner.store.metadata import Int, Real, Text, metadata
from horde_scanner.store.tables import Tables, chunks

log = logging.getLogger(__name__)

audit = sa.Table(
    "audit",
    metadata,
    sa.Column("id", Int, sa.Identity(), primary_key=True),
    sa.Column("ts", Real, nullable=False),
    sa.Column("sha256", Text),
    sa.Column("event", Text, nullable=False),
    sa.Column("label", Text),
    sa.Column("action", Text),
    sa.Column("source", Text),
    sa.Column("detail", Text),  # JSON
    sa.Index("audit_sha", "sha256"),
    sqlite_autoincrement=True,
)
_AUDIT_FIELDS = ("ts", "sha256", "event", "label", "action", "source", "detail")
# 7 columns x 500 rows stays under SQLite's 32766 bound variables.
_AUDIT_ROWS_PER_INSERT = 500
# Rows kept while the store is away (store/outage.py); past this the oldest are dropped, and
# counted (`audit_dropped`), each drop also a log line: the trace of last resort.
AUDIT_KEPT_ROWS = 100_000


@functools.lru_cache(maxsize=8)
def _insert_rows(n: int) -> Prepared:
    """The INSERT of `n` audit rows (values `ts_0`, `sha256_0`, ... `detail_{n-1}`), built
    once per row count: SQLAlchemy compiled a 500-row INSERT anew on every flush (tens of
    milliseconds with the event loop held, every in-flight request waiting: the store work's
    p99, bench/store_work.py); a full batch is the common size, a short one the last."""
    return Prepared(
        sa.insert(audit).values(
            [{f: sa.bindparam(f"{f}_{i}") for f in _AUDIT_FIELDS} for i in range(n)]
        )
    )


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

    def prepare_audit(self) -> None:
        """Compile a full batch's INSERT at start-up (once per process): tens of milliseconds
        that the first flush would otherwise hold every in-flight request for."""
        self._db.prepare(_insert_rows(_AUDIT_ROWS_PER_INSERT))

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
                    _insert_rows(len(batch)),
                    {
                        f"{field}_{i}": value
                        for i, row in enumerate(batch)
                        for field, value in zip(_AUDIT_FIELDS, row, strict=True)
                    },
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
        rows = await self._db.execute(
            sa.select(audit).where(audit.c.sha256 == sha256).order_by(audit.c.id)
        )
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
        for chunk in chunks(sha256s):
            query = (
                sa.select(audit.c.sha256, audit.c.event, audit.c.source)
                .where(audit.c.event.in_(events), audit.c.sha256.in_(chunk))
                .order_by(audit.c.id)
            )
            for sha, event, source in await self._db.execute(query):
                latest[sha] = (event, source)
        return latest

    async def rename_sources(self, renames: dict[str, str]) -> int:
        """Record the new source wherever rows (audit, verdicts, jobs) recorded an old one
        (`{old: new}`), one pass over each table, audit rows still buffered included (flushed
        first); how many rows changed. For sources that must not stay written (a client's
        secret id)."""
        if not renames:
            return 0
        # Rows still buffered hold the old source too: written first, they are renamed with
        # the rest (a secret must not reach the table after its rename).
        await self.flush_audit()
        changed = 0
        # The verdicts' and jobs' tables (store/verdicts.py, store/jobs.py): every part is
        # declared on the one metadata by the time the composed store runs this.
        for table in (audit, metadata.tables["verdicts"], metadata.tables["jobs"]):
            renamed = sa.case(renames, value=table.c.source)
            done = await self._db.execute(
                sa.update(table).where(table.c.source.in_(list(renames))).values(source=renamed)
            )
            changed += max(0, done.rowcount)
        return changed
