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

from horde_scanner.store.audit import audit as _audit
from horde_scanner.store.cluster import cluster_turns as _cluster_turns
from horde_scanner.store.metadata import Int, Real, Text, metadata
from horde_scanner.store.tables import IN_CHUNK, Tables, row_limit, upsert
from horde_scanner.store.verdicts import lists as _lists
from horde_scanner.store.verdicts import verdicts as _verdicts

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
    provenance.c.sha256,
    provenance.c.state,
    provenance.c.why,
    provenance.c.aliases,
    provenance.c.seen_at,
    provenance.c.record,
    provenance.c.error,
    provenance.c.tries,
    provenance.c.next_try,
    provenance.c.created_at,
    provenance.c.updated_at,
)
_A_COLUMNS = (
    lemmy_actions.c.id,
    lemmy_actions.c.sha256,
    lemmy_actions.c.action,
    lemmy_actions.c.target,
    lemmy_actions.c.request,
    lemmy_actions.c.state,
    lemmy_actions.c.status,
    lemmy_actions.c.answer,
    lemmy_actions.c.requested_by,
    lemmy_actions.c.requested_at,
    lemmy_actions.c.attempts,
    lemmy_actions.c.updated_at,
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
            stmt = (
                upsert(self._db.dialect, provenance)[0]
                .values(
                    sha256=sha256,
                    state=PENDING,
                    why=why,
                    aliases=json.dumps(aliases or []),
                    seen_at=seen_at,
                    tries=0,
                    next_try=now,
                    created_at=now,
                    updated_at=now,
                )
                .on_conflict_do_nothing(index_elements=[provenance.c.sha256])
            )
            await self._db.execute(stmt)
            return
        merged = list(dict.fromkeys([*known.aliases, *(aliases or [])]))
        if merged != known.aliases:
            await self._db.execute(
                sa.update(provenance)
                .where(provenance.c.sha256 == sha256)
                .values(aliases=json.dumps(merged), state=PENDING, next_try=now, updated_at=now),
            )

    async def hold_provenance_turn(self, period_s: float) -> bool:
        """Whether this process resolves provenance now: one process of those sharing the
        store holds the turn (cluster_turns, store/cluster.py) and renews it while it lives;
        another takes it over once it lapses. Keeps replicas and server.processes from each
        notifying, and each running auto_actions, for the same image."""
        now = time.time()
        stmt = upsert(self._db.dialect, _cluster_turns)[0].values(
            name="provenance", holder=self.holder, taken_at=now, until=now + period_s
        )
        stmt = stmt.on_conflict_do_update(
            index_elements=[_cluster_turns.c.name],
            set_={
                "holder": stmt.excluded.holder,
                "taken_at": stmt.excluded.taken_at,
                "until": stmt.excluded.until,
            },
            where=(_cluster_turns.c.until <= now)
            | (_cluster_turns.c.holder == stmt.excluded.holder),
        )
        return bool((await self._db.execute(stmt)).rowcount)

    async def positives_without_provenance(
        self, limit: int, *, verdicts_since: float = 0.0, lists_since: float = 0.0
    ) -> list[tuple[str, float, str, float]]:
        """Stored positives (a positive verdict, or a deny-list entry) not yet asked about and
        not allowed since, judged (listed) at or after the marks, oldest first:
        (sha256, first seen, why, mark). The caller keeps the last mark of each kind, so a pass
        reads only what is new (on the verdicts_label and lists' own order), not every
        positive ever stored."""
        v, lists, p = _verdicts, _lists, provenance
        asked = sa.exists().where(p.c.sha256 == v.c.sha256)
        allowed = sa.exists().where(lists.c.sha256 == v.c.sha256, lists.c.kind == "allow")
        stmt = (
            sa.select(v.c.sha256, v.c.first_seen, v.c.judged_at)
            .where(
                v.c.label.in_(["csam", "nsfw"]), v.c.judged_at >= verdicts_since, ~asked, ~allowed
            )
            .order_by(v.c.judged_at)
            .limit(row_limit(limit))
        )
        found = [
            (r[0], float(r[1]), "verdict", float(r[2]))
            for r in (await self._db.execute(stmt)).all()
        ]
        stmt = (
            sa.select(lists.c.sha256, lists.c.added_at)
            .where(
                lists.c.kind == "deny",
                lists.c.added_at >= lists_since,
                ~sa.exists().where(p.c.sha256 == lists.c.sha256),
            )
            .order_by(lists.c.added_at)
            .limit(row_limit(limit))
        )
        rows = (await self._db.execute(stmt)).all()
        seen = {f[0] for f in found}
        found += [(r[0], float(r[1]), "deny", float(r[1])) for r in rows if r[0] not in seen]
        return found

    async def provenance(self, sha256: str) -> Provenance | None:
        stmt = sa.select(*_P_COLUMNS).where(provenance.c.sha256 == sha256)
        row = (await self._db.execute(stmt)).first()
        return _provenance(row) if row else None

    async def provenance_of(self, hashes: list[str]) -> dict[str, Provenance]:
        """The rows of these images (one query per chunk), for exports and lists."""
        found: dict[str, Provenance] = {}
        for start in range(0, len(hashes), IN_CHUNK):
            stmt = sa.select(*_P_COLUMNS).where(
                provenance.c.sha256.in_(hashes[start : start + IN_CHUNK])
            )
            found.update((r[0], _provenance(r)) for r in (await self._db.execute(stmt)).all())
        return found

    async def due_provenance(self, now: float, limit: int) -> list[Provenance]:
        """Pending rows whose next try has come, oldest first."""
        stmt = (
            sa.select(*_P_COLUMNS)
            .where(provenance.c.state == PENDING, provenance.c.next_try <= now)
            .order_by(provenance.c.next_try)
            .limit(row_limit(limit))
        )
        return [_provenance(r) for r in (await self._db.execute(stmt)).all()]

    async def count_provenance(self) -> dict[str, int]:
        stmt = sa.select(provenance.c.state, sa.func.count()).group_by(provenance.c.state)
        return {s: n for s, n in (await self._db.execute(stmt)).all()}

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
            sa.update(provenance)
            .where(provenance.c.sha256 == sha256)
            .values(
                state=state,
                aliases=json.dumps(aliases),
                record=json.dumps(record) if record is not None else None,
                error=error,
                tries=provenance.c.tries + 1,
                next_try=next_try,
                updated_at=time.time(),
            ),
        )

    async def refresh_provenance(self, sha256: str) -> bool:
        """Ask again now (an admin's request); False when the image was never asked for."""
        now = time.time()
        cur = await self._db.execute(
            sa.update(provenance)
            .where(provenance.c.sha256 == sha256)
            .values(state=PENDING, next_try=now, updated_at=now),
        )
        return bool(cur.rowcount)

    async def resolved_provenance(self) -> list[Provenance]:
        """Every resolved row (for the record an origin instance's admins get)."""
        stmt = (
            sa.select(*_P_COLUMNS)
            .where(provenance.c.state == RESOLVED)
            .order_by(provenance.c.created_at)
        )
        return [_provenance(r) for r in (await self._db.execute(stmt)).all()]

    async def rejected_uploads(
        self, since: float | None, until: float | None, limit: int
    ) -> list[RejectedUpload]:
        """Uploads answered "reject" at validation (audit `answered`/`reject`), oldest first,
        with what was stored of their bytes: pict-rs deletes them, Lemmy records nothing."""
        a, v = _audit, _verdicts
        stmt = (
            sa.select(
                a.c.ts, a.c.sha256, a.c.source, a.c.label, a.c.detail, v.c.size, v.c.media_type
            )
            .select_from(a.outerjoin(v, v.c.sha256 == a.c.sha256))
            .where(
                a.c.event == "answered",
                a.c.action == "reject",
                a.c.ts >= (since or 0.0),
                a.c.ts <= (until if until is not None else 1e18),
            )
            .order_by(a.c.ts)
            .limit(row_limit(limit))
        )
        rows = (await self._db.execute(stmt)).all()
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
        stmt = (
            sa.insert(lemmy_actions)
            .values(
                sha256=sha256,
                action=action,
                target=target,
                request=json.dumps(request),
                state=state,
                status=status,
                answer=json.dumps(answer),
                requested_by=by,
                requested_at=now,
                attempts=1,
                updated_at=now,
            )
            .returning(*_A_COLUMNS)
        )
        row = (await self._db.execute(stmt)).first()
        assert row is not None
        return _action(row)

    async def update_lemmy_action(
        self, action_id: int, *, state: str, status: int | None, answer: Any
    ) -> None:
        """A retry's outcome, on the same row."""
        await self._db.execute(
            sa.update(lemmy_actions)
            .where(lemmy_actions.c.id == action_id)
            .values(
                state=state,
                status=status,
                answer=json.dumps(answer),
                attempts=lemmy_actions.c.attempts + 1,
                updated_at=time.time(),
            ),
        )

    async def lemmy_action(self, action_id: int) -> LemmyActionRow | None:
        stmt = sa.select(*_A_COLUMNS).where(lemmy_actions.c.id == action_id)
        row = (await self._db.execute(stmt)).first()
        return _action(row) if row else None

    async def lemmy_actions(self, sha256: str) -> list[LemmyActionRow]:
        """Every call made about this image, oldest first."""
        stmt = (
            sa.select(*_A_COLUMNS)
            .where(lemmy_actions.c.sha256 == sha256)
            .order_by(lemmy_actions.c.id)
        )
        return [_action(r) for r in (await self._db.execute(stmt)).all()]


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
