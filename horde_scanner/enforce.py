"""Late positives: a verdict that came after the upload was already accepted.

The verdict is always recorded (`late_positives` table, audit log), so the next storage sweep
acts on it. When pict-rs's internal API is configured, the file is purged at once:
sha256 -> aliases (via /internal/hashes) -> /internal/purge, which removes every alias.
"""

from __future__ import annotations

import logging

from horde_scanner.pictrs import PictrsClient, PictrsError
from horde_scanner.store import Job, Store
from horde_scanner.verdict import Label, Verdict

log = logging.getLogger(__name__)

# Said at start-up and on the admin page when no pict-rs API is configured.
NO_PICTRS_NOTE = (
    "no pict-rs API (pictrs.url + pictrs.api_key): late positives stay served until a "
    "storage sweep acts on them"
)


class LatePositiveEnforcer:
    def __init__(
        self, store: Store, pictrs: PictrsClient | None, reject_labels: frozenset[Label]
    ) -> None:
        self._store = store
        self._pictrs = pictrs
        self._reject = reject_labels
        self.enforced = 0

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
        try:
            result = await self._pictrs.purge_sha256(sha)
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
