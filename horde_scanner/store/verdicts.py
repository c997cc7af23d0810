"""Verdicts by sha256, the allow / deny lists, and late positives.

Data lifecycle:

    upload / file ──sha256──► lists (allow | deny) ──hit──► answer, audit
                                   │ miss
                                   ▼
                               verdicts (by sha256, with raw signals and policy version)
                                   │ miss
                                   ▼
                    jobs (store/jobs.py) ──judged──► verdicts
                                                 └─► late_positives (enforced or not)

A verdict is replaced when judged again (re-judging keeps first_seen and source); a list entry
lasts until an admin takes it off; a late positive is kept, its enforcement updated, and is
"undecided" while its hash is on neither list.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncGenerator, AsyncIterator, Iterable
from dataclasses import dataclass
from typing import Any, cast

from horde_scanner.store.tables import SchemaStep, Tables, rows_in
from horde_scanner.verdict import Label, Signals, Verdict, VerdictRoute

STEPS = [
    # The first release's tables: this part's, and those of store/jobs.py and store/audit.py.
    SchemaStep(
        "0001-core",
        """
    CREATE TABLE verdicts (
        sha256 TEXT PRIMARY KEY,
        label TEXT NOT NULL,
        reasons TEXT NOT NULL,
        signals TEXT,
        backend TEXT NOT NULL,
        policy_version TEXT NOT NULL,
        media_type TEXT,
        size INTEGER,
        source TEXT,
        first_seen REAL NOT NULL,
        judged_at REAL NOT NULL
    );
    CREATE INDEX verdicts_label ON verdicts(label, judged_at);
    CREATE TABLE lists (
        sha256 TEXT PRIMARY KEY,
        kind TEXT NOT NULL CHECK (kind IN ('allow', 'deny')),
        note TEXT,
        added_by TEXT,
        added_at REAL NOT NULL
    );
    CREATE TABLE audit (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        ts REAL NOT NULL,
        sha256 TEXT,
        event TEXT NOT NULL,
        label TEXT,
        action TEXT,
        source TEXT,
        detail TEXT
    );
    CREATE INDEX audit_sha ON audit(sha256);
    CREATE TABLE jobs (
        sha256 TEXT PRIMARY KEY,
        payload BLOB NOT NULL,
        media_type TEXT,
        size INTEGER,
        source TEXT,
        answered TEXT,
        state TEXT NOT NULL DEFAULT 'pending',
        attempts INTEGER NOT NULL DEFAULT 0,
        not_before REAL NOT NULL DEFAULT 0,
        last_error TEXT,
        created_at REAL NOT NULL
    );
    CREATE INDEX jobs_ready ON jobs(state, not_before, created_at);
    CREATE TABLE late_positives (
        sha256 TEXT PRIMARY KEY,
        label TEXT NOT NULL,
        found_at REAL NOT NULL,
        enforcement TEXT NOT NULL,
        detail TEXT,
        updated_at REAL NOT NULL
    );
    """,
    ),
]

# The columns verdict_from_row reads, in its order.
VERDICT_COLUMNS = (
    "sha256, label, reasons, signals, backend, policy_version, media_type, size,"
    " source, first_seen, judged_at, route"
)
# The same, of `verdicts v` in a join.
_V_COLUMNS = ", ".join(f"v.{c.strip()}" for c in VERDICT_COLUMNS.split(","))


@dataclass(frozen=True, slots=True)
class VerdictFilter:
    """Which verdicts a search returns (the admin's lists and queue)."""

    labels: tuple[str, ...] = ()
    source: str | None = None  # prefix, e.g. "upload:" or "local:/srv/pictrs"
    backend: str | None = None
    since: float | None = None
    until: float | None = None
    undecided: bool = False  # only hashes on neither list
    limit: int = 100
    offset: int = 0


@dataclass(frozen=True, slots=True)
class LatePositive:
    """A positive found after the upload was accepted, and what was done about it."""

    sha256: str
    label: str
    found_at: float
    enforcement: str
    detail: dict[str, Any]
    updated_at: float


# What a policy dry run reads of each verdict, undecoded (it parses them in a worker thread):
# (sha256, label, reasons JSON, signals JSON or None, route, policy_version,
#  list kind or None, list added_by or None).
SignalsRow = tuple[str, str, str, str | None, str, str, str | None, str | None]

_LATE_COLUMNS = "p.sha256, p.label, p.found_at, p.enforcement, p.detail, p.updated_at"


@dataclass(frozen=True, slots=True)
class StoredVerdict:
    sha256: str
    verdict: Verdict
    media_type: str | None
    size: int | None
    source: str | None
    first_seen: float


class VerdictTables(Tables):
    # -- verdicts --------------------------------------------------------------------------

    async def get_verdict(self, sha256: str) -> StoredVerdict | None:
        # execute_fetchall: one hop to the database thread instead of three (hot path).
        rows = await self._db.execute_fetchall(
            f"SELECT {VERDICT_COLUMNS} FROM verdicts WHERE sha256=?",
            (sha256,),
        )
        return verdict_from_row(next(iter(rows))) if rows else None

    async def get_verdicts(self, sha256s: Iterable[str]) -> dict[str, StoredVerdict]:
        """The stored verdicts among `sha256s`, by sha256; hashes without one are left out."""
        found: dict[str, StoredVerdict] = {}
        query = f"SELECT {VERDICT_COLUMNS} FROM verdicts WHERE sha256 IN ({{in}})"
        for row in await rows_in(self._db, query, list(sha256s)):
            stored = verdict_from_row(row)
            found[stored.sha256] = stored
        return found

    async def put_verdict(
        self,
        sha256: str,
        verdict: Verdict,
        *,
        media_type: str | None = None,
        size: int | None = None,
        source: str | None = None,
    ) -> None:
        now = time.time()
        signals = verdict.signals.model_dump_json() if verdict.signals else None
        await self._db.execute(
            "INSERT INTO verdicts (sha256, label, reasons, signals, backend, policy_version,"
            " media_type, size, source, first_seen, judged_at, route)"
            " VALUES (?,?,?,?,?,?,?,?,?,?,?,?)"
            " ON CONFLICT(sha256) DO UPDATE SET label=excluded.label, reasons=excluded.reasons,"
            " signals=COALESCE(excluded.signals, verdicts.signals), backend=excluded.backend,"
            " route=excluded.route,"
            " policy_version=excluded.policy_version,"
            " media_type=COALESCE(excluded.media_type, verdicts.media_type),"
            " size=COALESCE(excluded.size, verdicts.size),"
            " source=COALESCE(verdicts.source, excluded.source), judged_at=excluded.judged_at",
            (
                sha256,
                verdict.label.value,
                json.dumps(verdict.reasons),
                signals,
                verdict.backend,
                verdict.policy_version,
                media_type,
                size,
                source,
                now,
                verdict.judged_at,
                verdict.route.value,
            ),
        )

    async def iter_verdicts(
        self,
        *,
        labels: Iterable[Label] | None = None,
        since: float | None = None,
        limit: int | None = None,
    ) -> AsyncIterator[StoredVerdict]:
        query = f"SELECT {VERDICT_COLUMNS} FROM verdicts WHERE 1=1"
        params: list[Any] = []
        label_list = [label.value for label in labels] if labels else []
        if label_list:
            query += f" AND label IN ({','.join('?' * len(label_list))})"
            params += label_list
        if since is not None:
            query += " AND judged_at >= ?"
            params.append(since)
        query += " ORDER BY judged_at DESC"
        if limit is not None:
            query += " LIMIT ?"
            params.append(limit)
        async with self._db.execute(query, params) as cur:
            async for row in cur:
                yield verdict_from_row(row)

    async def count_verdicts(self, *, since: float | None = None) -> dict[str, int]:
        """{label: n}, of those judged since `since` when given."""
        query = "SELECT label, COUNT(*) FROM verdicts"
        params: list[Any] = []
        if since is not None:
            query += " WHERE judged_at >= ?"
            params.append(since)
        async with self._db.execute(query + " GROUP BY label", params) as cur:
            return {label: n async for label, n in cur}

    async def search_verdicts(self, f: VerdictFilter) -> list[StoredVerdict]:
        """Newest first. With labels, one index range per label (label, judged_at) merged by
        time: a LIMIT then stops after a page of rows instead of sorting every positive."""
        where: list[str] = []
        params: list[Any] = []
        join = ""
        if f.undecided:
            join = " LEFT JOIN lists l ON l.sha256 = v.sha256"
            where.append("l.sha256 IS NULL")
        if f.source:
            where.append("v.source LIKE ? ESCAPE '\\'")
            params.append(_like_prefix(f.source))
        if f.backend:
            where.append("v.backend = ?")
            params.append(f.backend)
        if f.since is not None:
            where.append("v.judged_at >= ?")
            params.append(f.since)
        if f.until is not None:
            where.append("v.judged_at < ?")
            params.append(f.until)
        page = f.limit + f.offset

        def select(extra: list[str]) -> str:
            conditions = where + extra
            clause = (" WHERE " + " AND ".join(conditions)) if conditions else ""
            return f"SELECT {_V_COLUMNS} FROM verdicts v{join}{clause}"

        if not f.labels:
            query = select([]) + " ORDER BY v.judged_at DESC LIMIT ? OFFSET ?"
            args = params + [f.limit, f.offset]
        else:
            parts = []
            args = []
            for label in f.labels:
                parts.append(
                    f"SELECT * FROM ({select(['v.label = ?'])} ORDER BY v.judged_at DESC LIMIT ?)"
                    " AS part"
                )
                args += params + [label, page]
            query = " UNION ALL ".join(parts) + " ORDER BY 11 DESC LIMIT ? OFFSET ?"
            args += [f.limit, f.offset]
        async with self._db.execute(query, args) as cur:
            return [verdict_from_row(r) for r in await cur.fetchall()]

    async def signal_batches(
        self, *, since: float | None = None, batch_rows: int
    ) -> AsyncGenerator[list[SignalsRow]]:
        """Every verdict (judged since `since`) with its list entry, newest first, in batches
        (for a policy dry run; close it with `contextlib.aclosing`)."""
        where, params = ("WHERE v.judged_at >= ?", [since]) if since is not None else ("", [])
        # A long read: on a connection of its own, streamed (the shared one fetches whole).
        async with (
            self.aside() as db,
            db.execute(
                "SELECT v.sha256, v.label, v.reasons, v.signals, v.route, v.policy_version,"
                " l.kind, l.added_by FROM verdicts v LEFT JOIN lists l ON l.sha256 = v.sha256"
                f" {where}"
                " ORDER BY v.judged_at DESC",
                params,
            ) as cur,
        ):
            while rows := await cur.fetchmany(batch_rows):
                yield cast(list[SignalsRow], [tuple(r) for r in rows])

    # -- allow / deny lists ----------------------------------------------------------------

    async def list_kind(self, sha256: str) -> str | None:
        rows = await self._db.execute_fetchall("SELECT kind FROM lists WHERE sha256=?", (sha256,))
        return str(next(iter(rows))[0]) if rows else None

    async def set_list(self, sha256: str, kind: str, *, note: str = "", by: str = "") -> None:
        await self._db.execute(
            "INSERT INTO lists (sha256, kind, note, added_by, added_at) VALUES (?,?,?,?,?)"
            " ON CONFLICT(sha256) DO UPDATE SET kind=excluded.kind, note=excluded.note,"
            " added_by=excluded.added_by, added_at=excluded.added_at",
            (sha256, kind, note, by, time.time()),
        )

    async def remove_list(self, sha256: str) -> bool:
        cur = await self._db.execute("DELETE FROM lists WHERE sha256=?", (sha256,))
        return cur.rowcount > 0

    async def iter_list(self, kind: str) -> AsyncIterator[tuple[str, str, str, float]]:
        async with self._db.execute(
            "SELECT sha256, note, added_by, added_at FROM lists WHERE kind=? ORDER BY added_at",
            (kind,),
        ) as cur:
            async for row in cur:
                yield row[0], row[1] or "", row[2] or "", row[3]

    async def count_lists(self) -> dict[str, int]:
        """{kind: n} of the allow and deny lists."""
        async with self._db.execute("SELECT kind, COUNT(*) FROM lists GROUP BY kind") as cur:
            return {kind: n for kind, n in await cur.fetchall()}

    async def sha256_by_prefix(self, prefix: str, limit: int = 2) -> list[str]:
        """Known sha256 values (verdicts, lists, audit) starting with a hex `prefix`."""
        bound = prefix + "g"  # just past every hex continuation: an index range scan
        found: set[str] = set()
        for table in ("verdicts", "lists", "audit"):
            async with self._db.execute(
                f"SELECT DISTINCT sha256 FROM {table} WHERE sha256 >= ? AND sha256 < ? LIMIT ?",
                (prefix, bound, limit),
            ) as cur:
                found.update([row[0] async for row in cur])
        return sorted(found)[:limit]

    # -- late positives --------------------------------------------------------------------

    async def record_late_positive(
        self, sha256: str, label: Label, enforcement: str, detail: dict[str, Any]
    ) -> None:
        now = time.time()
        await self._db.execute(
            "INSERT INTO late_positives (sha256, label, found_at, enforcement, detail, updated_at)"
            " VALUES (?,?,?,?,?,?) ON CONFLICT(sha256) DO UPDATE SET"
            " enforcement=excluded.enforcement, detail=excluded.detail,"
            " updated_at=excluded.updated_at",
            (sha256, label.value, now, enforcement, json.dumps(detail), now),
        )

    async def late_positives(
        self, *, undecided: bool = False, limit: int | None = None
    ) -> list[LatePositive]:
        """Newest first; `undecided`: only those whose hash is on neither list."""
        query = f"SELECT {_LATE_COLUMNS} FROM late_positives p"
        params: list[Any] = []
        if undecided:
            query += " LEFT JOIN lists l ON l.sha256 = p.sha256 WHERE l.sha256 IS NULL"
        query += " ORDER BY p.found_at DESC"
        if limit is not None:
            query += " LIMIT ?"
            params.append(limit)
        async with self._db.execute(query, params) as cur:
            return [_late_from_row(r) for r in await cur.fetchall()]

    async def late_positive(self, sha256: str) -> LatePositive | None:
        async with self._db.execute(
            f"SELECT {_LATE_COLUMNS} FROM late_positives p WHERE p.sha256=?", (sha256,)
        ) as cur:
            row = await cur.fetchone()
        return _late_from_row(row) if row else None

    async def count_late_positives(self) -> dict[str, int]:
        """{enforcement: n}."""
        async with self._db.execute(
            "SELECT enforcement, COUNT(*) FROM late_positives GROUP BY enforcement"
        ) as cur:
            return {k: n for k, n in await cur.fetchall()}


def _like_prefix(value: str) -> str:
    return value.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"


def _late_from_row(r: Any) -> LatePositive:
    return LatePositive(r[0], r[1], r[2], r[3], json.loads(r[4] or "{}"), r[5])


def verdict_from_row(row: Any) -> StoredVerdict:
    signals = Signals.model_validate_json(row[3]) if row[3] else None
    verdict = Verdict(
        label=Label(row[1]),
        reasons=json.loads(row[2]),
        signals=signals,
        backend=row[4],
        route=VerdictRoute(row[11]),
        policy_version=row[5],
        judged_at=row[10],
    )
    return StoredVerdict(row[0], verdict, row[6], row[7], row[8], row[9])
