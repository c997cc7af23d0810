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

import sqlalchemy as sa

from horde_scanner.store.database import Prepared
from horde_scanner.store.metadata import Int, Real, Text, metadata
from horde_scanner.store.tables import (
    Tables,
    chunks,
    compiled_once,
    refuse_nul,
    row_limit,
    upsert,
)
from horde_scanner.verdict import Label, Signals, Verdict, VerdictRoute

# One row per judged image, replaced when judged again (re-judging keeps first_seen, source).
verdicts = sa.Table(
    "verdicts",
    metadata,
    sa.Column("sha256", Text, primary_key=True),
    sa.Column("label", Text, nullable=False),
    sa.Column("reasons", Text, nullable=False),  # JSON list
    sa.Column("signals", Text),  # JSON (verdict.Signals), raw: a new policy re-judges from it
    sa.Column("backend", Text, nullable=False),
    sa.Column("policy_version", Text, nullable=False),
    sa.Column("media_type", Text),
    sa.Column("size", Int),
    sa.Column("source", Text),
    sa.Column("first_seen", Real, nullable=False),
    sa.Column("judged_at", Real, nullable=False),
    sa.Column("route", Text, nullable=False, server_default="judged"),
    sa.Index("verdicts_label", "label", "judged_at"),
    sa.Index("verdicts_judged", "judged_at"),
)

# The admin's allow and deny lists, by sha256.
lists = sa.Table(
    "lists",
    metadata,
    sa.Column("sha256", Text, primary_key=True),
    sa.Column("kind", Text, nullable=False),
    sa.CheckConstraint("kind IN ('allow', 'deny')", name="kind"),
    sa.Column("note", Text),
    sa.Column("added_by", Text),
    sa.Column("added_at", Real, nullable=False),
)

# Positives found after the upload was accepted, and how they were enforced.
late_positives = sa.Table(
    "late_positives",
    metadata,
    sa.Column("sha256", Text, primary_key=True),
    sa.Column("label", Text, nullable=False),
    sa.Column("found_at", Real, nullable=False),
    sa.Column("enforcement", Text, nullable=False),
    sa.Column("detail", Text),  # JSON
    sa.Column("updated_at", Real, nullable=False),
)

# The columns verdict_from_row reads, in its order.
VERDICT_COLUMNS = (
    verdicts.c.sha256,
    verdicts.c.label,
    verdicts.c.reasons,
    verdicts.c.signals,
    verdicts.c.backend,
    verdicts.c.policy_version,
    verdicts.c.media_type,
    verdicts.c.size,
    verdicts.c.source,
    verdicts.c.first_seen,
    verdicts.c.judged_at,
    verdicts.c.route,
)
_LATE_COLUMNS = (
    late_positives.c.sha256,
    late_positives.c.label,
    late_positives.c.found_at,
    late_positives.c.enforcement,
    late_positives.c.detail,
    late_positives.c.updated_at,
)
# The hot path's reads (every upload that is not in memory): built once.
_GET_VERDICT = Prepared(
    sa.select(*VERDICT_COLUMNS).where(verdicts.c.sha256 == sa.bindparam("sha256"))
)
_LIST_KIND = Prepared(sa.select(lists.c.kind).where(lists.c.sha256 == sa.bindparam("sha256")))


_VERDICT_KEYS = tuple(c.name for c in VERDICT_COLUMNS)
_LIST_KEYS = ("sha256", "kind", "note", "added_by", "added_at")
_LATE_KEYS = tuple(c.name for c in _LATE_COLUMNS)


@dataclass(frozen=True, slots=True)
class OwnPositives:
    """Which of our own images count as positives for the signal tables keyed by sha256
    (verdict_pdq, verdict_embeddings): a deny-list entry, or a csam verdict that was not itself
    reached by a match (a match's copies would match each other), and never one an admin
    allowed. `source` joins the verdict and the list; select `first_seen` and `note` from it
    and filter by `counts`."""

    source: sa.FromClause
    counts: sa.ColumnElement[bool]
    first_seen: sa.ColumnElement[Any]
    note: sa.ColumnElement[Any]


def own_positives(signal: sa.Table) -> OwnPositives:
    v = verdicts
    key = signal.c.sha256
    return OwnPositives(
        source=signal.outerjoin(v, v.c.sha256 == key).outerjoin(lists, lists.c.sha256 == key),
        counts=sa.and_(
            (lists.c.kind == "deny")
            | ((v.c.label == "csam") & (v.c.route != VerdictRoute.MATCH.value)),
            sa.func.coalesce(lists.c.kind, "") != "allow",
        ),
        first_seen=sa.func.coalesce(v.c.first_seen, lists.c.added_at),
        note=sa.case((lists.c.kind == "deny", "deny list"), else_="confirmed positive"),
    )


def _put_verdict(dialect: str) -> sa.Executable:
    """A verdict replaces the one before; what the new one does not know is kept, and the
    first place it was seen stays its source."""
    insert, new = upsert(dialect, verdicts)
    old = verdicts.c
    return insert.on_conflict_do_update(
        index_elements=[old.sha256],
        set_={
            "label": new.label,
            "reasons": new.reasons,
            "signals": sa.func.coalesce(new.signals, old.signals),
            "backend": new.backend,
            "route": new.route,
            "policy_version": new.policy_version,
            "media_type": sa.func.coalesce(new.media_type, old.media_type),
            "size": sa.func.coalesce(new.size, old.size),
            "source": sa.func.coalesce(old.source, new.source),
            "judged_at": new.judged_at,
        },
    )


def _set_list(dialect: str) -> sa.Executable:
    insert, new = upsert(dialect, lists)
    return insert.on_conflict_do_update(
        index_elements=[lists.c.sha256],
        set_={name: new[name] for name in ("kind", "note", "added_by", "added_at")},
    )


def _record_late(dialect: str) -> sa.Executable:
    insert, new = upsert(dialect, late_positives)
    return insert.on_conflict_do_update(
        index_elements=[late_positives.c.sha256],
        set_={name: new[name] for name in ("enforcement", "detail", "updated_at")},
    )


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
        row = (await self._db.execute(_GET_VERDICT, {"sha256": sha256})).first()
        return verdict_from_row(row) if row is not None else None

    async def get_verdicts(self, sha256s: Iterable[str]) -> dict[str, StoredVerdict]:
        """The stored verdicts among `sha256s`, by sha256; hashes without one are left out."""
        found: dict[str, StoredVerdict] = {}
        for chunk in chunks(list(sha256s)):
            query = sa.select(*VERDICT_COLUMNS).where(verdicts.c.sha256.in_(chunk))
            for row in await self._db.execute(query):
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
        signals = verdict.signals.model_dump_json() if verdict.signals else None
        row = {
            "sha256": sha256,
            "label": verdict.label.value,
            "reasons": json.dumps(verdict.reasons),
            "signals": signals,
            "backend": verdict.backend,
            "policy_version": verdict.policy_version,
            "media_type": media_type,
            "size": size,
            "source": source,
            "first_seen": time.time(),
            "judged_at": verdict.judged_at,
            "route": verdict.route.value,
        }
        statement = compiled_once(_put_verdict, self._db.dialect, _VERDICT_KEYS)
        await self._db.execute(statement, row)

    async def iter_verdicts(
        self,
        *,
        labels: Iterable[Label] | None = None,
        since: float | None = None,
        limit: int | None = None,
    ) -> AsyncIterator[StoredVerdict]:
        query = sa.select(*VERDICT_COLUMNS).order_by(verdicts.c.judged_at.desc())
        label_list = [label.value for label in labels] if labels else []
        if label_list:
            query = query.where(verdicts.c.label.in_(label_list))
        if since is not None:
            query = query.where(verdicts.c.judged_at >= since)
        if limit is not None:
            query = query.limit(row_limit(limit))
        for row in await self._db.execute(query):
            yield verdict_from_row(row)

    async def count_verdicts(self, *, since: float | None = None) -> dict[str, int]:
        """{label: n}, of those judged since `since` when given."""
        query = sa.select(verdicts.c.label, sa.func.count()).group_by(verdicts.c.label)
        if since is not None:
            query = query.where(verdicts.c.judged_at >= since)
        return {label: n for label, n in await self._db.execute(query)}

    async def search_verdicts(self, f: VerdictFilter) -> list[StoredVerdict]:
        """Newest first. With labels, one index range per label (label, judged_at) merged by
        time: a LIMIT then stops after a page of rows instead of sorting every positive.

        `source` is a prefix matched without regard to case (ASCII letters on SQLite, every
        letter on PostgreSQL: `lower()` of each), as the first releases did."""
        v = verdicts.alias("v")
        conditions: list[sa.ColumnElement[bool]] = []
        base = v
        if f.undecided:
            base = v.outerjoin(lists, lists.c.sha256 == v.c.sha256)  # type: ignore[assignment]
            conditions.append(lists.c.sha256.is_(None))
        if f.source:
            conditions.append(v.c.source.istartswith(f.source, autoescape=True))
        if f.backend:
            conditions.append(v.c.backend == f.backend)
        if f.since is not None:
            conditions.append(v.c.judged_at >= f.since)
        if f.until is not None:
            conditions.append(v.c.judged_at < f.until)
        columns = [v.c[c.name] for c in VERDICT_COLUMNS]
        newest = v.c.judged_at.desc()
        row_limit(f.limit)
        row_limit(f.offset, "offset")

        def select(*extra: sa.ColumnElement[bool]) -> sa.Select[Any]:
            return sa.select(*columns).select_from(base).where(*conditions, *extra)

        query: sa.Select[Any] | sa.CompoundSelect
        if not f.labels:
            query = select().order_by(newest).limit(f.limit).offset(f.offset)
        else:
            page = f.limit + f.offset
            parts = [
                sa.select(select(v.c.label == label).order_by(newest).limit(page).subquery())
                for label in f.labels
            ]
            query = (
                sa.union_all(*parts)
                .order_by(sa.literal_column("judged_at").desc())
                .limit(f.limit)
                .offset(f.offset)
            )
        return [verdict_from_row(r) for r in await self._db.execute(query)]

    async def signal_batches(
        self, *, since: float | None = None, batch_rows: int
    ) -> AsyncGenerator[list[SignalsRow]]:
        """Every verdict (judged since `since`) with its list entry, newest first, in batches
        (for a policy dry run; close it with `contextlib.aclosing`)."""
        v = verdicts
        query = (
            sa.select(
                v.c.sha256, v.c.label, v.c.reasons, v.c.signals, v.c.route, v.c.policy_version,
                lists.c.kind, lists.c.added_by,
            )
            .select_from(v.outerjoin(lists, lists.c.sha256 == v.c.sha256))
            .order_by(v.c.judged_at.desc())
        )  # fmt: skip
        if since is not None:
            query = query.where(v.c.judged_at >= since)
        # A long read: on a connection of its own, streamed (the shared one fetches whole).
        async with self.aside() as db:
            stream = db.stream(query, batch_rows)
            try:
                async for rows in stream:
                    yield cast(list[SignalsRow], rows)
            finally:
                await stream.aclose()

    # -- allow / deny lists ----------------------------------------------------------------

    async def list_kind(self, sha256: str) -> str | None:
        kind = (await self._db.execute(_LIST_KIND, {"sha256": sha256})).scalar()
        return str(kind) if kind is not None else None

    async def set_list(self, sha256: str, kind: str, *, note: str = "", by: str = "") -> None:
        refuse_nul(note, by)
        await self._db.execute(
            compiled_once(_set_list, self._db.dialect, _LIST_KEYS),
            {"sha256": sha256, "kind": kind, "note": note, "added_by": by, "added_at": time.time()},
        )

    async def remove_list(self, sha256: str) -> bool:
        done = await self._db.execute(sa.delete(lists).where(lists.c.sha256 == sha256))
        return done.rowcount > 0

    async def iter_list(self, kind: str) -> AsyncIterator[tuple[str, str, str, float]]:
        query = (
            sa.select(lists.c.sha256, lists.c.note, lists.c.added_by, lists.c.added_at)
            .where(lists.c.kind == kind)
            .order_by(lists.c.added_at)
        )
        for row in await self._db.execute(query):
            yield row[0], row[1] or "", row[2] or "", row[3]

    async def count_lists(self) -> dict[str, int]:
        """{kind: n} of the allow and deny lists."""
        query = sa.select(lists.c.kind, sa.func.count()).group_by(lists.c.kind)
        return {kind: n for kind, n in await self._db.execute(query)}

    async def sha256_by_prefix(self, prefix: str, limit: int = 2) -> list[str]:
        """Known sha256 values (verdicts, lists, audit) starting with a hex `prefix`."""
        audit = metadata.tables["audit"]  # store/audit.py's (the store composes every part)
        if row_limit(limit) == 0:
            return []
        bound = prefix + "g"  # just past every hex continuation: an index range scan
        found: set[str] = set()
        for table in (verdicts, lists, audit):
            column = table.c.sha256
            query = (
                sa.select(column).distinct().where(column >= prefix, column < bound).limit(limit)
            )
            found.update((await self._db.execute(query)).scalars())
        return sorted(found)[:limit]

    # -- late positives --------------------------------------------------------------------

    async def record_late_positive(
        self, sha256: str, label: Label, enforcement: str, detail: dict[str, Any]
    ) -> None:
        now = time.time()
        await self._db.execute(
            compiled_once(_record_late, self._db.dialect, _LATE_KEYS),
            {
                "sha256": sha256,
                "label": label.value,
                "found_at": now,
                "enforcement": enforcement,
                "detail": json.dumps(detail),
                "updated_at": now,
            },
        )

    async def late_positives(
        self, *, undecided: bool = False, limit: int | None = None
    ) -> list[LatePositive]:
        """Newest first; `undecided`: only those whose hash is on neither list."""
        query = sa.select(*_LATE_COLUMNS).order_by(late_positives.c.found_at.desc())
        if undecided:
            query = query.select_from(
                late_positives.outerjoin(lists, lists.c.sha256 == late_positives.c.sha256)
            ).where(lists.c.sha256.is_(None))
        if limit is not None:
            query = query.limit(row_limit(limit))
        return [_late_from_row(r) for r in await self._db.execute(query)]

    async def late_positive(self, sha256: str) -> LatePositive | None:
        query = sa.select(*_LATE_COLUMNS).where(late_positives.c.sha256 == sha256)
        row = (await self._db.execute(query)).first()
        return _late_from_row(row) if row is not None else None

    async def count_late_positives(self) -> dict[str, int]:
        """{enforcement: n}."""
        query = sa.select(late_positives.c.enforcement, sa.func.count()).group_by(
            late_positives.c.enforcement
        )
        return {k: n for k, n in await self._db.execute(query)}


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
