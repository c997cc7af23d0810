"""Late positives: a verdict that came after the upload was already accepted.

The verdict is always recorded (`late_positives` table, audit log), so the next storage sweep
acts on it. When pict-rs's internal API is configured, the file is purged at once:
sha256 -> aliases (via /internal/hashes) -> /internal/purge, which removes every alias.
pict-rs 0.4.x has no /internal/hashes: that is found out (and said) once, at start-up or at the
first late positive, and from then on late positives are only recorded, never retried.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Protocol

from horde_scanner.integrations.pictrs import (
    HASHES_MISSING,
    PictrsClient,
    PictrsError,
    PictrsUnsupported,
)
from horde_scanner.store.interfaces import AuditStore, LatePositiveStore
from horde_scanner.store.jobs import Job
from horde_scanner.tasks import cancel_and_wait
from horde_scanner.verdict import Label, Verdict


class EnforceStore(LatePositiveStore, AuditStore, Protocol):
    """What enforcing a late positive records."""


log = logging.getLogger(__name__)

# Said at start-up and on the admin page when no pict-rs API is configured.
NO_PICTRS_NOTE = (
    "no pict-rs API (pictrs.url + pictrs.api_key): late positives stay served until a "
    "storage sweep acts on them"
)


class LatePositiveEnforcer:
    def __init__(
        self, store: EnforceStore, pictrs: PictrsClient | None, reject_labels: frozenset[Label]
    ) -> None:
        self._store = store
        self._pictrs = pictrs
        self._reject = reject_labels
        self.enforced = 0
        # None: not known yet; False: pict-rs < 0.5.0, so record only.
        self.can_purge: bool | None = None if pictrs is not None else False
        self._probe: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Ask pict-rs once, in the background, whether it can purge by hash."""
        if self._pictrs is not None and self._probe is None:
            self._probe = asyncio.create_task(self._check_version(), name="pictrs-probe")

    async def stop(self) -> None:
        await cancel_and_wait([self._probe])
        self._probe = None

    async def _check_version(self) -> None:
        assert self._pictrs is not None
        try:
            supported = await self._pictrs.supports_hashes()
        except PictrsError as exc:
            log.info("pict-rs API not checked at start-up (%s); will try at the first purge", exc)
            return
        if supported:
            self.can_purge = True
        else:
            self._no_hashes()

    def _no_hashes(self) -> None:
        if self.can_purge is False:
            return
        self.can_purge = False
        log.warning(
            "%s; they are recorded and the next storage sweep acts on them "
            "(upgrade pict-rs to 0.5 to purge at once)",
            HASHES_MISSING,
        )

    @property
    def purges(self) -> bool:
        """Whether late positives are purged through pict-rs at once (else: at the next sweep)."""
        return self._pictrs is not None

    async def on_finished(self, job: Job, verdict: Verdict, answered: str | None) -> None:
        if answered != "accept" or verdict.label not in self._reject:
            return
        sha = job.sha256
        log.warning(
            "late positive %s (%s) was accepted before its verdict", sha[:12], verdict.label.value
        )
        if self._pictrs is None:
            await self._record(sha, verdict, "recorded", {"why": "pict-rs API not configured"})
            return
        if self.can_purge is False:
            await self._record(sha, verdict, "recorded", {"why": HASHES_MISSING})
            return
        try:
            result = await self._pictrs.purge_sha256(sha)
        except PictrsUnsupported:
            self._no_hashes()
            await self._record(sha, verdict, "recorded", {"why": HASHES_MISSING})
            return
        except PictrsError as exc:
            log.error("late positive %s: purge failed: %s", sha[:12], exc)
            await self._record(sha, verdict, "failed", {"error": str(exc)})
            return
        if result.found:
            self.enforced += 1
            await self._record(sha, verdict, "purged", {"aliases": result.aliases})
        else:
            await self._record(sha, verdict, "not_found", {"why": "no pict-rs alias has this hash"})

    async def _record(self, sha: str, verdict: Verdict, enforcement: str, detail: dict) -> None:
        await self._store.record_late_positive(sha, verdict.label, enforcement, detail)
        await self._store.audit(
            "late_positive",
            sha256=sha,
            label=verdict.label.value,
            action="purge" if enforcement == "purged" else "record",
            detail={"enforcement": enforcement, **detail, "reasons": verdict.reasons},
        )
