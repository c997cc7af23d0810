"""One sweep of one source: list, skip what is known, judge the rest, act, checkpoint.

    listing ──► (batch of 256: one query for their records) ──seen──► done (no byte read)
                                                         └─new/changed──► bounded workers:
                    read -> sniff -> sha256 -> Judge.evaluate (cache, lists, backend) -> record
                                                  -> act (quarantine / delete) when positive

The checkpoint is the last identifier, in listing order, before which *every* file is recorded
(workers finish out of order; a window of sequence numbers tracks the low-water mark). A
killed sweep restarts from it; actions are made idempotent by `scan_actions`, not by it.

`--follow` then repeats with `Source.list_new(watermark - slack)`: only objects newer than the
newest one seen (by the store's own clock), newest first.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import AsyncIterator
from typing import Protocol

from horde_scanner.config import OnEvent, ScanSettings
from horde_scanner.judging.judge import Judge, Route
from horde_scanner.media.decode import sniff
from horde_scanner.sources.layout import is_v7_identifier
from horde_scanner.sources.source import Denied, Entry, ItemError, Source, Vanished
from horde_scanner.store.interfaces import AuditStore, ListStore, SweepStore
from horde_scanner.store.sweeps import FINAL_STATUSES, ScanFile, ScanRun
from horde_scanner.sweep.actions import Action, Actor, Outcome
from horde_scanner.sweep.metrics import SweepRun
from horde_scanner.sweep.progress import Counts, Progress
from horde_scanner.tasks import cancel_and_wait
from horde_scanner.verdict import Label


class SweepRunStore(SweepStore, ListStore, AuditStore, Protocol):
    """What a sweep run reads and records."""


log = logging.getLogger(__name__)

# New objects are looked for from this long before the newest one seen: writes land late and
# clocks of a bucket's nodes differ a little.
FOLLOW_SLACK_S = 120.0
# Bigger files get their first bytes read alone first, so a big non-media file costs nothing.
HEAD_FIRST_BYTES = 256 * 1024
SNIFF_BYTES = 64
_BATCH = 256
# Listed entries buffered ahead of the workers (each ~200 bytes): lets the total, hence the
# ETA, be known early on stores up to this size.
_LISTING_BUFFER = 50_000
# Finished files waiting behind a slow one before the listing pauses.
_WINDOW_MAX = 20_000
_CHECKPOINT_EVERY_S = 2.0
# Positives kept for the end-of-run list (a follow run can last months; counts keep totals).
_POSITIVES_KEPT = 1000
_RECORDS_PER_WRITE = 64
# After a stop (Ctrl-C, SIGTERM), files still being judged get this long to finish; the rest
# are cut off (their judgements stay persisted as jobs; the checkpoint does not pass them).
STOP_GRACE_S = 2.0


_WorkItem = tuple[int, Entry, ScanFile | None]


class Sweep:
    def __init__(
        self,
        *,
        judge: Judge,
        store: SweepRunStore,
        source: Source,
        action: Action,
        settings: ScanSettings,
        actor: Actor | None = None,
        progress: Progress | None = None,
        stop: asyncio.Event | None = None,
        shown: SweepRun | None = None,
    ) -> None:
        self.judge = judge
        self.store = store
        self.source = source
        self.action = action
        self.settings = settings
        self.actor = actor
        self.progress = progress or Progress(tty=False, log_every_s=10.0)
        self.stop = stop or asyncio.Event()
        # Where /metrics (or anyone holding the process's SweepProgress) sees this sweep.
        self.shown = shown
        self.counts = Counts()
        # (where, label, sha256) of every positive found or confirmed in this run.
        self.positives: list[tuple[str, str, str]] = []
        self.act_labels = {label.value for label in settings.act_labels}
        if settings.on_unreadable is OnEvent.REJECT:
            self.act_labels.add(Label.UNREADABLE.value)
        self.run_row: ScanRun | None = None
        self.resumed_from: str | None = None
        # Files cut off by a stop while their judgement waited (kept as jobs).
        self.interrupted = 0
        self._deny: set[str] = set()
        self._last_save = 0.0
        # File records are written in batches (one statement each); always before the
        # checkpoint that covers them and before any action on one of them.
        self._unwritten: list[ScanFile] = []

    # -- the run -------------------------------------------------------------------------------

    async def run(
        self, *, follow: bool = False, interval_s: float | None = None, cycles: int | None = None
    ) -> Counts:
        self._deny = {sha async for sha, *_ in self.store.iter_list("deny")}
        run = await self.store.unfinished_scan_run(self.source.url)
        if run is not None and run.action == self.action.value and run.follow == follow:
            self.resumed_from = run.cursor
            log.info(
                "resuming run %d of %s from %s",
                run.id,
                self.source.url,
                run.cursor or f"its {run.phase} phase",
            )
        else:
            run = await self.store.start_scan_run(self.source.url, self.action.value, follow)
        self.run_row = run
        if self.actor is not None:
            await self.actor.complete_interrupted()
        try:
            if run.phase == "sweep":
                await self._pass(self.source.list(run.cursor), checkpoint=True)
                if self.stop.is_set():
                    return self.counts
                run.cursor = None
                if follow:
                    run.phase = "follow"
                else:
                    run.state = "done"
                await self._save()
            interval = interval_s or self.settings.follow_interval_s
            done_cycles = 0
            while follow and not self.stop.is_set():
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(interval):
                        await self.stop.wait()
                if self.stop.is_set():
                    break
                since = (run.watermark or 0.0) - FOLLOW_SLACK_S
                self.progress.restart()
                await self._pass(
                    self.source.list_new(since, time_ordered=run.time_ordered), checkpoint=False
                )
                await self._save()
                done_cycles += 1
                if cycles is not None and done_cycles >= cycles:
                    break
        finally:
            await self._save(final=True)
            self.progress.close(self.counts)
            self._show()
            if self.shown is not None:
                self.shown.finish()
        return self.counts

    def _show(self) -> None:
        if self.shown is not None:
            self.shown.show(self.counts, self.action.value, listing_done=self.progress.listing_done)

    async def _flush_records(self) -> None:
        files, self._unwritten = self._unwritten, []
        await self.store.put_scan_files(files)

    async def _save(self, *, final: bool = False) -> None:
        if self.run_row is None:
            return
        self._last_save = time.monotonic()
        await self._flush_records()
        await self.store.save_scan_run(self.run_row, self.counts.as_dict() if final else None)
        await self.store.flush_audit()

    # -- one pass over a listing ---------------------------------------------------------------

    async def _pass(self, entries: AsyncIterator[Entry], *, checkpoint: bool) -> None:
        assert self.run_row is not None
        run = self.run_row
        listing: asyncio.Queue[Entry | None] = asyncio.Queue(maxsize=_LISTING_BUFFER)
        work: asyncio.Queue[_WorkItem | None] = asyncio.Queue(maxsize=self.settings.concurrency * 2)
        window: deque[int] = deque()
        finished: set[int] = set()
        names: dict[int, str] = {}
        room = asyncio.Event()
        room.set()
        self.progress.listing_done = False

        async def complete(seq: int) -> None:
            finished.add(seq)
            advanced = False
            while window and window[0] in finished:
                head = window.popleft()
                finished.discard(head)
                name = names.pop(head)
                if checkpoint:
                    run.cursor = name
                advanced = True
            if len(window) <= _WINDOW_MAX:
                room.set()
            self.progress.update(self.counts)
            self._show()
            if advanced and time.monotonic() - self._last_save >= _CHECKPOINT_EVERY_S:
                await self._save()

        async def lister() -> None:
            try:
                async for entry in entries:
                    if self.stop.is_set():
                        break
                    self.counts.listed += 1
                    await listing.put(entry)
                self.progress.listing_done = not self.stop.is_set()
            finally:
                await listing.put(None)

        async def classifier() -> None:
            seq = 0
            ended = False
            while not ended and not self.stop.is_set():
                first = await listing.get()
                if first is None:
                    break
                batch = [first]
                while len(batch) < _BATCH and not listing.empty():
                    item = listing.get_nowait()
                    if item is None:
                        ended = True
                        break
                    batch.append(item)
                known = await self.store.get_scan_files(
                    self.source.url, [e.identifier for e in batch]
                )
                for entry in batch:
                    if self.stop.is_set():
                        break
                    seq += 1
                    window.append(seq)
                    names[seq] = entry.identifier
                    if run.watermark is None or entry.mtime > run.watermark:
                        run.watermark = entry.mtime
                    if not run.time_ordered and is_v7_identifier(entry.identifier):
                        run.time_ordered = True
                    rec = known.get(entry.identifier)
                    if (
                        rec is not None
                        and rec.size == entry.size
                        and rec.mtime == entry.mtime
                        and rec.status in FINAL_STATUSES
                    ):
                        self.counts.seen += 1
                        if self._seen_needs_action(rec):
                            await work.put((seq, entry, rec))
                        else:
                            await complete(seq)
                    else:
                        await work.put((seq, entry, None))
                    if len(window) > _WINDOW_MAX:
                        room.clear()
                        await room.wait()

        async def worker() -> None:
            while True:
                item = await work.get()
                if item is None:
                    return
                seq, entry, rec = item
                try:
                    if rec is not None:
                        await self._act_on_seen(entry, rec)
                    else:
                        await self._handle(entry)
                except Exception:  # a bug on one file must not end the sweep
                    log.exception("scan: %s failed unexpectedly", entry.identifier)
                    self.counts.errors += 1
                await complete(seq)

        async def drain() -> None:
            for _ in workers:
                await work.put(None)
            # wait, not gather: giving this up on a stop must not cancel the workers too.
            await asyncio.wait(workers)

        async def ticker() -> None:
            # Redrawn even when nothing finishes: a stall must show as one (ETA "stalled").
            while True:
                await asyncio.sleep(1.0)
                self.progress.update(self.counts)

        workers = [asyncio.create_task(worker()) for _ in range(self.settings.concurrency)]
        list_task = asyncio.create_task(lister())
        tick_task = asyncio.create_task(ticker())
        stopped = asyncio.create_task(self.stop.wait())
        try:
            await self._unless_stopped(asyncio.create_task(classifier()), stopped)
            await self._unless_stopped(asyncio.create_task(drain()), stopped)
        finally:
            await cancel_and_wait([list_task, tick_task])
            if self.stop.is_set():
                await self._stop_workers(workers, work)
            stopped.cancel()
            await asyncio.gather(*workers, return_exceptions=True)

    @staticmethod
    async def _unless_stopped(task: asyncio.Task[None], stopped: asyncio.Task[bool]) -> None:
        """Await `task`, but give it up (cancelled) as soon as a stop is asked for."""
        await asyncio.wait([task, stopped], return_when=asyncio.FIRST_COMPLETED)
        if task.done():
            task.result()  # its failure is the sweep's
        else:
            await cancel_and_wait([task])

    async def _stop_workers(
        self, workers: list[asyncio.Task[None]], work: asyncio.Queue[_WorkItem | None]
    ) -> None:
        # Files not started are left for the next run; those being judged get a short grace.
        while not work.empty():
            work.get_nowait()
        for task in workers:
            if not task.done():
                work.put_nowait(None)
        _, pending = await asyncio.wait(workers, timeout=STOP_GRACE_S)
        self.interrupted += len(pending)
        await cancel_and_wait(pending)

    # -- one file ------------------------------------------------------------------------------

    def _seen_needs_action(self, rec: ScanFile) -> bool:
        if self.actor is None or rec.action is not None or not rec.sha256:
            return False
        return rec.label in self.act_labels or rec.sha256 in self._deny

    async def _act_on_seen(self, entry: Entry, rec: ScanFile) -> None:
        """A file judged positive before (e.g. by a dry run): act without reading it."""
        assert rec.sha256 is not None
        label, reasons = rec.label, rec.reasons or []
        current = await self.judge.lookup(rec.sha256)
        if current is not None and current.verdict is not None:
            # Lists and re-judged policy win over what the record says.
            label, reasons = current.verdict.label.value, current.verdict.reasons
        if label not in self.act_labels:
            return
        self._positive(entry, label, rec.sha256, reasons)
        await self._act(entry, rec.sha256, label, reasons)

    async def _handle(self, entry: Entry) -> None:
        c = self.counts
        if entry.size > self.settings.max_file_bytes:
            c.unreadable += 1
            reason = f"{entry.size} bytes: over scan.max_file_bytes; not read"
            self.progress.note(f"UNREADABLE {self._where(entry)}: {reason}")
            await self._record(entry, "unreadable", None, None, Label.UNREADABLE.value, [reason])
            return
        try:
            if entry.size > HEAD_FIRST_BYTES:
                head = await self.source.read(entry, SNIFF_BYTES)
                c.bytes_read += len(head)
                if sniff(head) is None:
                    c.not_media += 1
                    await self._record(entry, "not_media", None, None, None, None)
                    return
            data = await self.source.read(entry)
        except Vanished:
            c.vanished += 1
            return
        except Denied as exc:
            c.denied += 1
            self.progress.note(f"DENIED {self._where(entry)}: {exc}")
            return
        except ItemError as exc:
            c.errors += 1
            self.progress.note(f"ERROR {self._where(entry)}: {exc}")
            return
        c.read += 1
        c.bytes_read += len(data)
        media_type = sniff(data)
        if media_type is None:
            c.not_media += 1
            await self._record(entry, "not_media", None, None, None, None)
            return
        sha = await self.judge.sha256(data)
        outcome = await self.judge.evaluate(
            data, source=f"scan {self._where(entry)}", within_s=None, sha256=sha, durable=False
        )
        del data
        verdict = outcome.verdict
        if verdict is None:  # only with a timeout, which a sweep does not set
            c.errors += 1
            return
        if outcome.route is Route.BACKEND:
            c.judged += 1
        else:
            c.cached += 1
        label = verdict.label
        if label is Label.UNREADABLE:
            c.unreadable += 1
            status = "unreadable"
        elif label is Label.ERROR:
            c.errors += 1
            status = "error"
        else:
            setattr(c, label.value, getattr(c, label.value) + 1)
            status = "judged"
        await self._record(entry, status, sha, media_type, label.value, verdict.reasons)
        if label.value in self.act_labels:
            self._positive(entry, label.value, sha, verdict.reasons)
            await self._act(entry, sha, label.value, verdict.reasons)

    def _where(self, entry: Entry) -> str:
        return f"{self.source.url.rstrip('/')}/{entry.identifier}"

    def _positive(self, entry: Entry, label: str, sha: str, reasons: list[str]) -> None:
        if len(self.positives) < _POSITIVES_KEPT:
            self.positives.append((entry.identifier, label, sha))
        self.progress.note(
            f"{label.upper():<10} {self._where(entry)}  sha256 {sha[:16]}  {'; '.join(reasons)}"
        )

    async def _record(
        self,
        entry: Entry,
        status: str,
        sha: str | None,
        media_type: str | None,
        label: str | None,
        reasons: list[str] | None,
    ) -> None:
        self._unwritten.append(
            ScanFile(
                self.source.url, entry.identifier, entry.size, entry.mtime, status,
                sha, media_type, label, reasons, time.time(),
            )
        )  # fmt: skip
        if len(self._unwritten) >= _RECORDS_PER_WRITE:
            await self._flush_records()

    async def _act(self, entry: Entry, sha: str, label: str, reasons: list[str]) -> None:
        if self.actor is None:
            return
        await self._flush_records()  # the action updates this file's record
        result = await self.actor.act(
            identifier=entry.identifier,
            sha256=sha,
            size=entry.size,
            mtime=entry.mtime,
            label=label,
            reasons=reasons,
        )
        c = self.counts
        if result.outcome is Outcome.DONE:
            c.acted += 1
            where = f" -> {result.location}" if result.location else ""
            self.progress.note(f"{result.how:<10} {self._where(entry)}{where}")
        elif result.outcome is Outcome.ALREADY:
            c.already_acted += 1
        elif result.outcome is Outcome.VANISHED:
            c.vanished += 1
        elif result.outcome is Outcome.DENIED:
            c.denied += 1
            c.action_failed += 1
            self.progress.note(f"FAILED     {self.action.value} {self._where(entry)}: denied")
        else:
            c.action_failed += 1
            self.progress.note(
                f"FAILED     {self.action.value} {self._where(entry)}: "
                f"{result.detail.get('error', '')}"
            )
