"""Provenance of stored positives (who uploaded them, where Lemmy uses them) and the admin
actions taken through Lemmy's API about them (moderation/).

Data lifecycle:
- `provenance`: one row per positive image. Added `pending` when a positive is stored (late
  positive, sweep positive, list match, admin deny); the resolver (moderation/provenance.py)
  turns it `resolved` (record = what Lemmy's database said, JSON), `no_alias` (pict-rs knows no
  alias of the bytes, so nothing can be matched), or leaves it `pending` with `error` and a
  later `next_try` while Lemmy's database cannot be asked. A resolved row is resolved again
  on an admin's request (`refresh`). Rows are kept while the verdict is.
- `lemmy_actions`: one row per call made (or refused) for an admin, never deleted: who asked,
  when, the request (method, path, body with no secrets), and what Lemmy answered. `failed`
  rows can be retried, which updates the same row (attempts, answer); only an answer Lemmy
  accepted makes a row `done`.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from horde_scanner.store.metadata import Int, Real, Text, metadata
from horde_scanner.store.tables import SchemaStep, Tables, rows_in

PENDING, RESOLVED, NO_ALIAS = "pending", "resolved", "no_alias"
DONE, FAILED = "done", "failed"

provenance = sa.Table(
    "provenance",
    metadata,
    sa.Column("sha256", Text, primary_key=True),
    sa.Column("state", Text, nullable=False),
    sa.Column("why", Text, nullable=False),
    sa.Column("aliases", Text, nullable=False, server_default="[]"),
    sa.Column("seen_at", Real),
    sa.Column("record", Text),
    sa.Column("error", Text),
    sa.Column("tries", Int, nullable=False, server_default=sa.text("0")),
    sa.Column("next_try", Real, nullable=False),
    sa.Column("created_at", Real, nullable=False),
    sa.Column("updated_at", Real, nullable=False),
    sa.CheckConstraint("state IN ('pending', 'resolved', 'no_alias')", name="state"),
    sa.Index("provenance_due", "state", "next_try"),
)

lemmy_actions = sa.Table(
    "lemmy_actions",
    metadata,
    sa.Column("id", Int, sa.Identity(), primary_key=True),
    sa.Column("sha256", Text, nullable=False),
    sa.Column("action", Text, nullable=False),
    sa.Column("target", Text, nullable=False),
    sa.Column("request", Text, nullable=False),
    sa.Column("state", Text, nullable=False),
    sa.Column("status", Int),
    sa.Column("answer", Text),
    sa.Column("requested_by", Text, nullable=False),
    sa.Column("requested_at", Real, nullable=False),
    sa.Column("attempts", Int, nullable=False, server_default=sa.text("1")),
    sa.Column("updated_at", Real, nullable=False),
    sa.CheckConstraint("state IN ('done', 'failed')", name="state"),
    sa.Index("lemmy_actions_sha", "sha256", "id"),
    sqlite_autoincrement=True,
)

STEPS = [
    SchemaStep(
        "2300-provenance",
        """
    CREATE TABLE provenance (
        sha256 TEXT PRIMARY KEY,
        state TEXT NOT NULL CHECK (state IN ('pending', 'resolved', 'no_alias')),
        why TEXT NOT NULL,
        aliases TEXT NOT NULL DEFAULT '[]',
        seen_at REAL,
        record TEXT,
        error TEXT,
        tries INTEGER NOT NULL DEFAULT 0,
        next_try REAL NOT NULL,
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL
    );
    CREATE INDEX provenance_due ON provenance(state, next_try);
    CREATE TABLE lemmy_actions (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        sha256 TEXT NOT NULL,
        action TEXT NOT NULL,
        target TEXT NOT NULL,
        request TEXT NOT NULL,
        state TEXT NOT NULL CHECK (state IN ('done', 'failed')),
        status INTEGER,
        answer TEXT,
        requested_by TEXT NOT NULL,
        requested_at REAL NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 1,
        updated_at REAL NOT NULL
    );
    CREATE INDEX lemmy_actions_sha ON lemmy_actions(sha256, id);
    """,
    ),
]


@dataclass(frozen=True, slots=True)
class Provenance:
    sha256: str
    state: str  # pending | resolved | no_alias
    why: str  # what made it wanted: late_positive | sweep | deny | list | ...
    aliases: list[str]
    seen_at: float | None
    record: dict[str, Any] | None
    error: str | None
    tries: int
    next_try: float
    created_at: float
    updated_at: float


@dataclass(frozen=True, slots=True)
class RejectedUpload:
    """An upload refused at validation, as the audit trail recorded it."""

    received_at: float  # when its request began (answered_at less the time it took)
    answered_at: float
    sha256: str
    client: str | None  # which pict-rs (the configured client's name)
    label: str | None
    size: int | None
    media_type: str | None


@dataclass(frozen=True, slots=True)
class LemmyActionRow:
    id: int
    sha256: str
    action: str
    target: str
    request: dict[str, Any]
    state: str  # done | failed
    status: int | None
    answer: Any
    requested_by: str
    requested_at: float
    attempts: int
    updated_at: float


_P_COLUMNS = (
    "sha256, state, why, aliases, seen_at, record, error, tries, next_try, created_at, updated_at"
)
_A_COLUMNS = (
    "id, sha256, action, target, request, state, status, answer, requested_by, requested_at,"
    " attempts, updated_at"
)


class ProvenanceTables(Tables):
    async def want_provenance(
        self, sha256: str, why: str, *, aliases: list[str] | None = None, seen_at: float | None
    ) -> None:
        """Ask for this image's provenance (resolved in the background). Aliases already known
        (a purge's answer) are kept with it: once purged, pict-rs cannot name them again. An
        image already asked for keeps its row; new aliases are added and it is asked again."""
        now = time.time()
        known = await self.provenance(sha256)
        if known is None:
            await self._db.execute(
                "INSERT INTO provenance (sha256, state, why, aliases, seen_at, tries, next_try,"
                " created_at, updated_at) VALUES (?,?,?,?,?,0,?,?,?)"
                " ON CONFLICT(sha256) DO NOTHING",
                (sha256, PENDING, why, json.dumps(aliases or []), seen_at, now, now, now),
            )
            return
        merged = list(dict.fromkeys([*known.aliases, *(aliases or [])]))
        if merged != known.aliases:
            await self._db.execute(
                "UPDATE provenance SET aliases=?, state=?, next_try=?, updated_at=? WHERE sha256=?",
                (json.dumps(merged), PENDING, now, now, sha256),
            )

    async def hold_provenance_turn(self, period_s: float) -> bool:
        """Whether this process resolves provenance now: one process of those sharing the
        store holds the turn (cluster_turns, store/cluster.py) and renews it while it lives;
        another takes it over once it lapses. Keeps replicas and server.processes from each
        notifying, and each running auto_actions, for the same image."""
        now = time.time()
        cur = await self._db.execute(
            "INSERT INTO cluster_turns (name, holder, taken_at, until) VALUES (?,?,?,?)"
            " ON CONFLICT(name) DO UPDATE SET holder=excluded.holder,"
            " taken_at=excluded.taken_at, until=excluded.until"
            " WHERE cluster_turns.until <= ? OR cluster_turns.holder = excluded.holder",
            ("provenance", self.holder, now, now + period_s, now),
        )
        return bool(cur.rowcount)

    async def positives_without_provenance(
        self, limit: int, *, verdicts_since: float = 0.0, lists_since: float = 0.0
    ) -> list[tuple[str, float, str, float]]:
        """Stored positives (a positive verdict, or a deny-list entry) not yet asked about and
        not allowed since, judged (listed) at or after the marks, oldest first:
        (sha256, first seen, why, mark). The caller keeps the last mark of each kind, so a pass
        reads only what is new (on the verdicts_label and lists' own order), not every
        positive ever stored."""
        async with self._db.execute(
            "SELECT v.sha256, v.first_seen, v.judged_at FROM verdicts v"
            " WHERE v.label IN ('csam', 'nsfw') AND v.judged_at >= ?"
            " AND NOT EXISTS (SELECT 1 FROM provenance p WHERE p.sha256 = v.sha256)"
            " AND NOT EXISTS (SELECT 1 FROM lists l WHERE l.sha256 = v.sha256"
            " AND l.kind = 'allow')"
            " ORDER BY v.judged_at LIMIT ?",
            (verdicts_since, limit),
        ) as cur:
            found = [(r[0], float(r[1]), "verdict", float(r[2])) for r in await cur.fetchall()]
        async with self._db.execute(
            "SELECT l.sha256, l.added_at FROM lists l WHERE l.kind = 'deny' AND l.added_at >= ?"
            " AND NOT EXISTS (SELECT 1 FROM provenance p WHERE p.sha256 = l.sha256)"
            " ORDER BY l.added_at LIMIT ?",
            (lists_since, limit),
        ) as cur:
            seen = {f[0] for f in found}
            found += [
                (r[0], float(r[1]), "deny", float(r[1]))
                for r in await cur.fetchall()
                if r[0] not in seen
            ]
        return found

    async def provenance(self, sha256: str) -> Provenance | None:
        async with self._db.execute(
            f"SELECT {_P_COLUMNS} FROM provenance WHERE sha256=?", (sha256,)
        ) as cur:
            row = await cur.fetchone()
        return _provenance(row) if row else None

    async def provenance_of(self, hashes: list[str]) -> dict[str, Provenance]:
        """The rows of these images (one query per chunk), for exports and lists."""
        rows = await rows_in(
            self._db, f"SELECT {_P_COLUMNS} FROM provenance WHERE sha256 IN ({{in}})", hashes
        )
        return {r[0]: _provenance(r) for r in rows}

    async def due_provenance(self, now: float, limit: int) -> list[Provenance]:
        """Pending rows whose next try has come, oldest first."""
        async with self._db.execute(
            f"SELECT {_P_COLUMNS} FROM provenance WHERE state=? AND next_try<=?"
            " ORDER BY next_try LIMIT ?",
            (PENDING, now, limit),
        ) as cur:
            return [_provenance(r) for r in await cur.fetchall()]

    async def count_provenance(self) -> dict[str, int]:
        async with self._db.execute("SELECT state, COUNT(*) FROM provenance GROUP BY state") as cur:
            return {s: n for s, n in await cur.fetchall()}

    async def settle_provenance(
        self,
        sha256: str,
        state: str,
        *,
        aliases: list[str],
        record: dict[str, Any] | None,
        error: str | None,
        next_try: float,
    ) -> None:
        """What a try found: resolved (record), no_alias, or still pending (error, next try)."""
        await self._db.execute(
            "UPDATE provenance SET state=?, aliases=?, record=?, error=?, tries=tries+1,"
            " next_try=?, updated_at=? WHERE sha256=?",
            (
                state,
                json.dumps(aliases),
                json.dumps(record) if record is not None else None,
                error,
                next_try,
                time.time(),
                sha256,
            ),
        )

    async def refresh_provenance(self, sha256: str) -> bool:
        """Ask again now (an admin's request); False when the image was never asked for."""
        now = time.time()
        cur = await self._db.execute(
            "UPDATE provenance SET state=?, next_try=?, updated_at=? WHERE sha256=?",
            (PENDING, now, now, sha256),
        )
        return bool(cur.rowcount)

    async def resolved_provenance(self) -> list[Provenance]:
        """Every resolved row (for the record an origin instance's admins get)."""
        async with self._db.execute(
            f"SELECT {_P_COLUMNS} FROM provenance WHERE state=? ORDER BY created_at", (RESOLVED,)
        ) as cur:
            return [_provenance(r) for r in await cur.fetchall()]

    async def rejected_uploads(
        self, since: float | None, until: float | None, limit: int
    ) -> list[RejectedUpload]:
        """Uploads answered "reject" at validation (audit `answered`/`reject`), oldest first,
        with what was stored of their bytes: pict-rs deletes them, Lemmy records nothing."""
        async with self._db.execute(
            "SELECT a.ts, a.sha256, a.source, a.label, a.detail, v.size, v.media_type"
            " FROM audit a LEFT JOIN verdicts v ON v.sha256 = a.sha256"
            " WHERE a.event = 'answered' AND a.action = 'reject' AND a.ts >= ? AND a.ts <= ?"
            " ORDER BY a.ts LIMIT ?",
            (since or 0.0, until if until is not None else 1e18, limit),
        ) as cur:
            rows = await cur.fetchall()
        out = []
        for ts, sha, source, label, detail, size, media_type in rows:
            info = json.loads(detail or "{}")
            elapsed = float(info.get("elapsed_ms") or 0.0) / 1000
            out.append(RejectedUpload(ts - elapsed, ts, sha, source, label, size, media_type))
        return out

    # -- actions -------------------------------------------------------------------------------

    async def add_lemmy_action(
        self,
        sha256: str,
        action: str,
        target: str,
        request: dict[str, Any],
        *,
        state: str,
        status: int | None,
        answer: Any,
        by: str,
    ) -> LemmyActionRow:
        now = time.time()
        async with self._db.execute(
            "INSERT INTO lemmy_actions (sha256, action, target, request, state, status, answer,"
            " requested_by, requested_at, attempts, updated_at) VALUES (?,?,?,?,?,?,?,?,?,1,?)"
            f" RETURNING {_A_COLUMNS}",
            (
                sha256,
                action,
                target,
                json.dumps(request),
                state,
                status,
                json.dumps(answer),
                by,
                now,
                now,
            ),
        ) as cur:
            row = await cur.fetchone()
        assert row is not None
        return _action(row)

    async def update_lemmy_action(
        self, action_id: int, *, state: str, status: int | None, answer: Any
    ) -> None:
        """A retry's outcome, on the same row."""
        await self._db.execute(
            "UPDATE lemmy_actions SET state=?, status=?, answer=?, attempts=attempts+1,"
            " updated_at=? WHERE id=?",
            (state, status, json.dumps(answer), time.time(), action_id),
        )

    async def lemmy_action(self, action_id: int) -> LemmyActionRow | None:
        async with self._db.execute(
            f"SELECT {_A_COLUMNS} FROM lemmy_actions WHERE id=?", (action_id,)
        ) as cur:
            row = await cur.fetchone()
        return _action(row) if row else None

    async def lemmy_actions(self, sha256: str) -> list[LemmyActionRow]:
        """Every call made about this image, oldest first."""
        async with self._db.execute(
            f"SELECT {_A_COLUMNS} FROM lemmy_actions WHERE sha256=? ORDER BY id", (sha256,)
        ) as cur:
            return [_action(r) for r in await cur.fetchall()]


def _provenance(row: Any) -> Provenance:
    return Provenance(
        row[0],
        row[1],
        row[2],
        json.loads(row[3] or "[]"),
        row[4],
        json.loads(row[5]) if row[5] else None,
        row[6],
        row[7],
        row[8],
        row[9],
        row[10],
    )


def _action(row: Any) -> LemmyActionRow:
    return LemmyActionRow(
        row[0],
        row[1],
        row[2],
        row[3],
        json.loads(row[4]),
        row[5],
        row[6],
        json.loads(row[7]) if row[7] else None,
        row[8],
        row[9],
        row[10],
        row[11],
    )
