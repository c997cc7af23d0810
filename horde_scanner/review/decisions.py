"""An admin's decisions about images: the one implementation that the CLI, the admin API and
the review page all call.

allow    allow-list the hash (always accepted from now on) and release it from every
         quarantine holder (the admin's own and the sweeps': copies go back where found).
         `horde-scanner allow` and `horde-scanner release` are this decision too.
confirm  deny-list the hash (always rejected) and discard the quarantined copies (the admin
         holder deletes its copy; sweep copies stay as evidence, the decision is recorded).
         `horde-scanner deny` is the same decision, recorded as "deny".
unlist   take a hash off the allow or deny list (`horde-scanner allow|deny --remove`)
rejudge  with the current policy from the stored signals, or a fresh backend call on the
         quarantined copy (the only bytes we keep); needs the running Judge

Every decision writes one audit record naming who made it, and is visible to a Judge in this
process at once (`judge.forget`); other processes see it through the store's data version, so
the CLI decides without a Judge.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import Any, Protocol

from horde_scanner.errors import FinalError
from horde_scanner.judging.judge import Judge
from horde_scanner.media.decode import sniff
from horde_scanner.review import view
from horde_scanner.review.quarantine import HELD, Quarantine, QuarantineHolder, ReleaseResult
from horde_scanner.store.interfaces import (
    JobStore,
)
from horde_scanner.store.verdicts import StoredVerdict
from horde_scanner.store.verdicts import VerdictFilter as VerdictFilter  # the search's filter
from horde_scanner.verdict import Label


class DecisionStore(view.ImageViewStore, JobStore, Protocol):
    """What an admin's review reads and decides (and shows: `view.detail`)."""


POSITIVE = (Label.CSAM.value, Label.NSFW.value)
UNSCANNED = (Label.UNREADABLE.value, Label.ERROR.value)


class ReviewError(FinalError):
    """A decision cannot be carried out; `status` is the HTTP status that fits."""

    def __init__(self, status: int, error: str, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.error = error
        self.detail = detail


class Review:
    def __init__(
        self,
        store: DecisionStore,
        judge: Judge | None,
        quarantine: Quarantine,
        holders: Sequence[QuarantineHolder] = (),
    ) -> None:
        self.store = store
        self.judge = judge
        self.quarantine = quarantine
        # Every decision goes to each holder in turn; the admin's own quarantine first.
        self.holders: list[QuarantineHolder] = [quarantine, *holders]

    # -- quarantine, across holders -------------------------------------------------------------

    async def held_among(self, hashes: list[str]) -> set[str]:
        held: set[str] = set()
        for holder in self.holders:
            held |= await holder.held_among([h for h in hashes if h not in held])
        return held

    async def held_bytes(self, sha256: str) -> bytes | None:
        """Bytes of a held copy from the first holder that can read one here."""
        for holder in self.holders:
            data = await holder.held_bytes(sha256)
            if data is not None:
                return data
        return None

    async def _release(self, sha256: str, by: str, note: str) -> ReleaseResult:
        result = ReleaseResult()
        for holder in self.holders:
            part = await holder.release(sha256, by=by, note=note)
            result.released += part.released
            result.failed += part.failed
        return result

    async def _discard(self, sha256: str, by: str, note: str) -> tuple[int, list[dict[str, Any]]]:
        deleted = 0
        for holder in self.holders:
            deleted += await holder.discard(sha256, by=by, note=note)
        kept = [
            c.public() for holder in self.holders for c in await holder.copies(sha256)
            if c.state == HELD
        ]  # fmt: skip
        return deleted, kept

    # -- reading -----------------------------------------------------------------------------

    async def search(self, f: VerdictFilter) -> list[StoredVerdict]:
        """Newest first (store.verdicts.VerdictTables.search_verdicts)."""
        return await self.store.search_verdicts(f)

    async def late_positives(self, limit: int = 100) -> list[dict[str, Any]]:
        """Late positives nobody has decided on yet."""
        return [
            view.late_entry(p) for p in await self.store.late_positives(undecided=True, limit=limit)
        ]

    async def detail(self, sha256: str) -> dict[str, Any] | None:
        return await view.detail(self.store, sha256, self.holders)

    async def _counts(self) -> dict[str, int]:
        total: dict[str, int] = {}
        for holder in self.holders:
            for state, n in (await holder.counts()).items():
                total[state] = total.get(state, 0) + n
        return total

    async def stats(self) -> dict[str, Any]:
        return {
            "verdicts": await self.store.count_verdicts(),
            "verdicts_last_24h": await self.store.count_verdicts(since=time.time() - 86400),
            "lists": await self.store.count_lists(),
            "late_positives": await self.store.count_late_positives(),
            "quarantine": await self._counts(),
            "jobs_waiting": await self.store.count_jobs(),
            "policy": self.judge.policy.version if self.judge else None,
        }

    # -- decisions ---------------------------------------------------------------------------

    async def allow(self, sha256: str, *, by: str, note: str = "") -> dict[str, Any]:
        previous = await self._label(sha256)
        await self.store.set_list(sha256, "allow", note=note, by=by)
        # Near copies blocked by this image's PDQ are lifted with it: the index drops the
        # image now (not at the next sync), and cached answers for the copies go too.
        # (Without a Judge, from the CLI, a running service sees the change by the store.)
        if self.judge is not None:
            if self.judge.hashes is not None:
                await self.judge.hashes.reload()
            if self.judge.embeddings is not None:
                await self.judge.embeddings.sync()  # and near copies by embedding
            self.judge.forget()
        released = await self._release(sha256, by, note)
        detail = {"note": note, "previous_label": previous, "quarantine": released.as_dict()}
        return await self._decided("allow", sha256, Label.CLEAN, "allow", by, detail)

    async def confirm(self, sha256: str, *, by: str, note: str = "") -> dict[str, Any]:
        return await self._deny("confirm", sha256, by=by, note=note)

    async def deny(self, sha256: str, *, by: str, note: str = "") -> dict[str, Any]:
        """A deny-list entry made without a machine verdict to confirm (the CLI's `deny`)."""
        return await self._deny("deny", sha256, by=by, note=note)

    async def _deny(self, event: str, sha256: str, *, by: str, note: str) -> dict[str, Any]:
        previous = await self._label(sha256)
        await self.store.set_list(sha256, "deny", note=note, by=by)
        self._forget(sha256)
        deleted, kept = await self._discard(sha256, by, note)
        detail = {
            "note": note,
            "previous_label": previous,
            "quarantine_deleted": deleted,
            "quarantine_kept": kept,
        }
        return await self._decided(event, sha256, Label.CSAM, "deny", by, detail)

    async def unlist(self, sha256: str, kind: str, *, by: str, note: str = "") -> bool:
        """Take `sha256` off the `kind` list ("allow" or "deny"); False when it was not on it.
        Released or discarded copies stay as they are: the next judgement decides anew."""
        if await self.store.list_kind(sha256) != kind or not await self.store.remove_list(sha256):
            return False
        self._forget(sha256)
        await self._decided(f"un{kind}", sha256, None, f"un{kind}", by, {"note": note})
        return True

    async def rejudge(
        self, sha256: str, *, by: str, mode: str = "policy", wait_s: float = 60.0
    ) -> dict[str, Any]:
        judge = self._judge()
        stored = await self.store.get_verdict(sha256)
        before = stored.verdict.label.value if stored else None
        if mode == "policy":
            if stored is None or stored.verdict.signals is None:
                raise ReviewError(
                    409,
                    "no_signals",
                    f"no stored signals for {sha256}: use mode=backend on a quarantined copy",
                )
            verdict = judge.policy.judge(stored.verdict.signals)
            await self.store.put_verdict(sha256, verdict)
            judge.forget(sha256)
        elif mode == "backend":
            verdict_or_none = await self._fresh(sha256, by, wait_s)
            if verdict_or_none is None:
                record = await self._decided(
                    "rejudge", sha256, None, "rejudge", by, {"mode": mode, "state": "pending"}
                )
                return {**record, "state": "pending"}
            verdict = verdict_or_none
        else:
            raise ReviewError(400, "bad_mode", f"mode must be policy or backend, not {mode!r}")
        detail = {
            "mode": mode,
            "from": before,
            "reasons": verdict.reasons,
            "policy": verdict.policy_version,
            "backend": verdict.backend,
        }
        record = await self._decided("rejudged", sha256, verdict.label, "rejudge", by, detail)
        return {**record, "state": "done"}

    async def _fresh(self, sha256: str, by: str, wait_s: float) -> Any:
        data = await self.held_bytes(sha256)
        if data is None:
            raise ReviewError(
                409,
                "no_copy",
                f"no copy of {sha256} is held in quarantine, so it cannot be sent to a backend "
                "again; use mode=policy, or let the next upload or sweep judge it",
            )
        judge = self._judge()
        judge.forget(sha256)
        runner = judge.runner
        fut = runner.future_for(sha256)
        if fut is None:
            fut = await runner.submit(
                sha256,
                data,
                media_type=sniff(data),
                size=len(data),
                source=f"rejudge:{by}",
                fresh=True,
            )
        del data
        try:
            return await asyncio.wait_for(asyncio.shield(fut), wait_s)
        except TimeoutError:
            return None

    def _judge(self) -> Judge:
        if self.judge is None:
            raise ReviewError(503, "no_judge", "re-judging needs the running service")
        return self.judge

    def _forget(self, sha256: str) -> None:
        if self.judge is not None:
            self.judge.forget(sha256)

    async def _label(self, sha256: str) -> str | None:
        stored = await self.store.get_verdict(sha256)
        return stored.verdict.label.value if stored else None

    async def _decided(
        self,
        event: str,
        sha256: str,
        label: Label | None,
        action: str,
        by: str,
        detail: dict[str, Any],
    ) -> dict[str, Any]:
        await self.store.audit(
            event,
            sha256=sha256,
            label=label.value if label else None,
            action=action,
            source=by,
            detail=detail,
        )
        trail = await self.store.audit_trail(sha256)  # flushes, so the record is on disk now
        return {
            "audit": view.audit_entry(trail[-1]),
            "sha256": sha256,
            "list": await self.store.list_kind(sha256),
        }
