"""Who uploaded a stored positive, where Lemmy uses it, and which instance it came from.

Never on the upload path. A background loop (one per service process) finds stored positives
not yet asked about (positive verdicts, deny-list entries; store.positives_without_provenance),
and resolves each: sha256 -> pict-rs aliases (kept from a late positive's purge, else asked of
pict-rs's /internal/hashes, where our sha256 is the first 64 hex of pict-rs's hash) -> Lemmy's
database (integrations/lemmy_db.py): upload row, uploader, every usage, origin instances.

While Lemmy's database cannot be asked (down, login refused), rows stay `pending` with the
error and are tried again every `lemmy.retry_s`; /readyz says so (uploads are not affected).
A schema we do not know is said once and provenance stays off; a missing grant is said (naming
the table) and checked again each retry, so fixing the grant needs no restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from horde_scanner.config import LemmySettings
from horde_scanner.integrations.lemmy_db import LemmyDb, LemmyDbError, UnknownSchema
from horde_scanner.integrations.notify import Notifier
from horde_scanner.integrations.pictrs import PictrsClient, PictrsError, PictrsUnsupported
from horde_scanner.store.interfaces import (
    AuditStore,
    LatePositiveStore,
    ProvenanceStore,
    SweepStore,
)
from horde_scanner.store.provenance import NO_ALIAS, PENDING, RESOLVED, Provenance
from horde_scanner.tasks import cancel_and_wait


class ProvenanceResolverStore(LatePositiveStore, AuditStore, SweepStore, ProvenanceStore, Protocol):
    """What the provenance resolver reads and records."""


log = logging.getLogger(__name__)

# Rows looked at per pass; passes run every POLL_S while there is work.
BATCH = 20
POLL_S = 1.0
# How long the resolving process's turn lasts unless renewed (a dead one's lapses).
TURN_S = 30.0
# New positives are read from a little before the last one seen (writes of other processes land
# out of order), and from the start once an hour.
MARK_LAG_S = 300.0
CATCH_UP_S = 3600.0
NO_PICTRS = (
    "no pict-rs API (pictrs.url + pictrs.api_key) and no alias recorded: the image cannot be "
    "matched to Lemmy's links"
)
NOT_IN_PICTRS = (
    "pict-rs holds no file with these bytes (rejected at upload, purged, or deleted before the "
    "lookup): Lemmy's links cannot be matched; for a rejected upload see `horde-scanner "
    "access-log`"
)


class ProvenanceResolver:
    def __init__(
        self,
        store: ProvenanceResolverStore,
        settings: LemmySettings,
        pictrs: PictrsClient | None,
        notifier: Notifier | None = None,
        *,
        lemmy: LemmyDb | None = None,
    ) -> None:
        self._store = store
        self._settings = settings
        self._pictrs = pictrs
        self._notifier = notifier
        self.lemmy = (
            lemmy if lemmy is not None else (LemmyDb(settings) if settings.database_url else None)
        )
        # off | starting | standby | ok | unreachable | error; `detail` says why.
        self.state = "off" if self.lemmy is None else "starting"
        self.detail = "lemmy.database_url not set" if self.lemmy is None else ""
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self.resolved = 0
        # How far the stored positives have been read (judged_at, added_at): each pass reads
        # only what is new. From 0 at start-up: what was stored before is caught up once.
        self._marks = {"verdict": 0.0, "deny": 0.0}
        self._caught_up_at = time.monotonic()
        # Called with the sha256 of each image resolved (lemmy.auto_actions).
        self.on_resolved: Callable[[str], Awaitable[object]] | None = None

    @property
    def enabled(self) -> bool:
        return self.lemmy is not None and self.state != "off"

    def describe(self) -> dict[str, Any]:
        """For /readyz and the admin page."""
        body: dict[str, Any] = {"state": self.state, "detail": self.detail}
        if self.lemmy is not None:
            body["database"] = self.lemmy.where
            if self.lemmy.schema is not None:
                body["schema"] = self.lemmy.schema.version
        return body

    async def start(self) -> None:
        if self.lemmy is not None and self._task is None:
            self._task = asyncio.create_task(self._loop(), name="provenance")

    async def stop(self) -> None:
        await cancel_and_wait([self._task])
        self._task = None
        if self.lemmy is not None:
            await self.lemmy.close()

    def wake(self) -> None:
        self._wake.set()

    async def _loop(self) -> None:
        while True:
            try:
                busy = await self.run_once()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("provenance pass failed")
                busy = False
            if self.state == "off":
                return
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), POLL_S if busy else POLL_S * 2)

    async def _ready(self) -> bool:
        """Whether Lemmy's database can be asked now (schema known, grants in place)."""
        assert self.lemmy is not None
        if self.lemmy.schema is not None and self.state == "ok":
            return True
        try:
            schema = await self.lemmy.check()
        except UnknownSchema as exc:
            self._set("off", f"{exc}; provenance is off", logging.ERROR)
            return False
        except LemmyDbError as exc:
            self._set("unreachable" if exc.retry else "error", str(exc), logging.WARNING)
            return False
        self._set("ok", f"Lemmy {schema.version} database {self.lemmy.where}", logging.INFO)
        return True

    def _set(self, state: str, detail: str, level: int) -> None:
        if (state, detail) != (self.state, self.detail):
            log.log(level, "provenance: %s", detail)  # said once per change, not per try
        self.state, self.detail = state, detail

    async def run_once(self, now: float | None = None) -> bool:
        """One pass: ask about new positives, resolve what is due. True when work was done."""
        if self.lemmy is None or self.state == "off":
            return False
        if not await self._store.hold_provenance_turn(TURN_S):
            # Another process sharing the store resolves.
            self._set("standby", "another process sharing the store resolves", logging.DEBUG)
            return False
        await self._ask_about_new_positives()
        now = time.time() if now is None else now
        due = await self._store.due_provenance(now, BATCH)
        if not due:
            return False
        if not await self._ready():
            for row in due:
                await self._postpone(row, self.detail)
            return False
        for row in due:
            if not await self.resolve(row):
                break
        return True

    async def _ask_about_new_positives(self) -> None:
        now = time.monotonic()
        if now - self._caught_up_at > CATCH_UP_S:
            # Once in a while from the start again (a verdict written late by another process
            # with an earlier time than the mark, a clock that stepped back).
            self._marks = {"verdict": 0.0, "deny": 0.0}
            self._caught_up_at = now
        found = await self._store.positives_without_provenance(
            BATCH,
            verdicts_since=max(0.0, self._marks["verdict"] - MARK_LAG_S),
            lists_since=max(0.0, self._marks["deny"] - MARK_LAG_S),
        )
        for sha, seen, why, mark in found:
            await self._store.want_provenance(sha, why, seen_at=seen)
            self._marks[why] = max(self._marks[why], mark)

    async def resolve_one(self, row: Provenance) -> bool:
        """Resolve this row now (the CLI's `lemmy provenance --now`); False when Lemmy's
        database cannot be asked (`detail` says why)."""
        if self.lemmy is None or not await self._ready():
            return False
        return await self.resolve(row)

    async def _postpone(self, row: Provenance, error: str) -> None:
        await self._store.settle_provenance(
            row.sha256,
            PENDING,
            aliases=row.aliases,
            record=row.record,
            error=error,
            next_try=time.time() + self._settings.retry_s,
        )

    async def aliases(self, row: Provenance) -> list[str] | None:
        """The image's pict-rs aliases; None when pict-rs cannot be asked now."""
        known = list(row.aliases)
        late = await self._store.late_positive(row.sha256)
        if late is not None:
            known += [str(a) for a in late.detail.get("aliases") or []]
        if known or self._pictrs is None:
            return list(dict.fromkeys(known))
        try:
            return await self._pictrs.aliases_for_sha256(row.sha256)
        except PictrsUnsupported as exc:
            # pict-rs 0.4: no way from a sha256 to an alias; asking again cannot help.
            await self._store.settle_provenance(
                row.sha256, NO_ALIAS, aliases=[], record=None, error=str(exc), next_try=0
            )
            return None
        except PictrsError as exc:
            await self._postpone(row, f"pict-rs: {exc}")
            return None

    async def resolve(self, row: Provenance) -> bool:
        """Resolve one row; False when Lemmy's database stopped answering (end the pass)."""
        assert self.lemmy is not None
        aliases = await self.aliases(row)
        if aliases is None:
            return True
        if not aliases:
            why = NO_PICTRS if self._pictrs is None else NOT_IN_PICTRS
            await self._store.settle_provenance(
                row.sha256, NO_ALIAS, aliases=[], record=None, error=why, next_try=0
            )
            return True
        seen = [row.seen_at] if row.seen_at is not None else []
        swept = (await self._store.sweep_locations([row.sha256])).get(row.sha256, [])
        seen += [float(loc["mtime"]) for loc in swept if loc.get("mtime")]
        try:
            found = await self.lemmy.lookup(aliases, min(seen) if seen else None)
        except LemmyDbError as exc:
            self._set("unreachable" if exc.retry else "error", str(exc), logging.WARNING)
            await self._postpone(row, str(exc))
            return False
        record = {**found.as_dict(), "resolved_at": time.time()}
        await self._store.settle_provenance(
            row.sha256, RESOLVED, aliases=aliases, record=record, error=None, next_try=0
        )
        await self._store.audit(
            "provenance",
            sha256=row.sha256,
            detail={
                "uploaders": uploader_names(record),
                "usages": len(record["usages"]),
                "origin_instances": record["origin_instances"],
            },
        )
        self.resolved += 1
        if self._notifier is not None:
            self._notifier.notify(notification(row.sha256, record))
        if self.on_resolved is not None:
            try:
                await self.on_resolved(row.sha256)
            except Exception:  # an action's failure is recorded there; never stop the loop
                log.exception("automatic Lemmy actions for %s failed", row.sha256[:12])
        return True


def uploader_names(record: dict[str, Any]) -> list[str]:
    """Each uploader as "name (actor URL)"."""
    out = []
    for up in record.get("uploads") or []:
        who = up.get("uploader")
        if who:
            out.append(f"{who['name']} ({who['actor_url']})")
    return list(dict.fromkeys(out))


def usage_links(record: dict[str, Any]) -> list[str]:
    """Each usage as "kind URL" (the object's ActivityPub id, or its owner's)."""
    return list(
        dict.fromkeys(f"{u['kind']} {u.get('url') or ''}".strip() for u in record["usages"])
    )


def notification(sha256: str, record: dict[str, Any]) -> dict[str, Any]:
    """The webhook event: names and links only (no bytes, no message text)."""
    return {
        "event": "provenance",
        "sha256": sha256,
        "uploaders": uploader_names(record),
        "thumbnail_of": [
            f"post {u['thumbnail_for_post']}"
            for u in record.get("uploads") or []
            if u.get("kind") == "thumbnail" and u.get("thumbnail_for_post")
        ],
        "used_in": usage_links(record),
        "origin_instances": record.get("origin_instances") or [],
    }
