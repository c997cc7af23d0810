"""The sweep commands as functions (the CLI is a thin layer over these): scan, apply, release.

Each opens a runtime (runtime/__init__.py), or uses the caller's, and asks it for the store,
then opens the source (so that a wrong credential or host key stops before any work), then asks
for the same Judge the validation service uses, with the same finish.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Protocol

from horde_scanner.backends.base import Backend
from horde_scanner.config import OnEvent, Settings
from horde_scanner.runtime import Runtime, open_runtime
from horde_scanner.sources.address import make_source
from horde_scanner.sources.source import ItemError, Source
from horde_scanner.store.factory import open_store
from horde_scanner.store.interfaces import ListStore, VerdictStore
from horde_scanner.store.sweeps import ScanFile
from horde_scanner.sweep.actions import (
    PRUNE_REMINDER,
    Action,
    Actor,
    Outcome,
    check_releasable,
    releasable,
)
from horde_scanner.sweep.holder import review_for
from horde_scanner.sweep.progress import Counts, Progress
from horde_scanner.sweep.runner import Sweep
from horde_scanner.verdict import Label


class LabelStore(VerdictStore, ListStore, Protocol):
    """What finding a file's label now reads (an admin's list entry first)."""


log = logging.getLogger(__name__)


@dataclass
class Report:
    source: str
    action: str
    counts: Counts
    positives: list[tuple[str, str, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    run_id: int | None = None
    resumed_from: str | None = None
    # Stopped by a signal before the end; files whose judgement was cut off (kept as jobs).
    stopped: bool = False
    interrupted: int = 0


@asynccontextmanager
async def _opened(source: Source) -> AsyncIterator[Source]:
    await source.open()
    try:
        yield source
    finally:
        await source.close()


@asynccontextmanager
async def _runtime(
    settings: Settings, runtime: Runtime | None, backend: Backend | None
) -> AsyncIterator[Runtime]:
    """The caller's runtime (a sweep inside the service), or one of the sweep's own."""
    if runtime is not None:
        yield runtime
        return
    async with open_runtime(settings, backend=backend) as own:
        yield own


async def run_scan(
    settings: Settings,
    address: str,
    *,
    action: Action = Action.REPORT,
    follow: bool = False,
    interval_s: float | None = None,
    cycles: int | None = None,
    backend: Backend | None = None,
    progress: Progress | None = None,
    stop: asyncio.Event | None = None,
    source: Source | None = None,
    runtime: Runtime | None = None,
) -> Report:
    """Sweep `address` (or an already built, unopened `source`) and act as asked.

    With `runtime`, the sweep uses that runtime's parts (and its `backend`, not the argument);
    otherwise it opens its own. Either way its judgements end in the runtime's finish (stored,
    counted, notified) and its progress shows in the runtime's `sweeps`."""
    source = source or make_source(address, settings)
    async with _runtime(settings, runtime, backend) as rt:
        store = await rt.store()
        async with _opened(source):
            judge = await rt.judge()
            actor = None
            if action is not Action.REPORT:
                actor = Actor(store, source, action, pictrs=await rt.pictrs())
            sweep = Sweep(
                judge=judge,
                store=store,
                source=source,
                action=action,
                settings=settings.scan,
                actor=actor,
                progress=progress,
                stop=stop,
                shown=rt.sweeps.start(source.url),
            )
            counts = await sweep.run(follow=follow, interval_s=interval_s, cycles=cycles)
            report = Report(
                source.url,
                action.value,
                counts,
                sweep.positives,
                run_id=sweep.run_row.id if sweep.run_row else None,
                resumed_from=sweep.resumed_from,
                stopped=sweep.stop.is_set(),
                interrupted=sweep.interrupted,
            )
            _add_notes(report, source, actor)
    return report


def _add_notes(report: Report, source: Source, actor: Actor | None) -> None:
    if actor is not None and actor.direct_deletes:
        report.notes.append(PRUNE_REMINDER.format(n=actor.direct_deletes))
    if source.list_errors:
        report.notes.append(f"{source.list_errors} director(y/ies) could not be listed (see log)")


def _apply_labels(settings: Settings) -> set[str]:
    labels = {label.value for label in settings.scan.act_labels}
    if settings.scan.on_unreadable is OnEvent.REJECT:
        labels.add(Label.UNREADABLE.value)
    return labels


async def plan_apply(
    settings: Settings, *, since: float | None = None, address: str | None = None
) -> dict[str, dict[str, int]]:
    """What `apply` would act on, without acting: {source: {label: files}} (for the prompt)."""
    labels = _apply_labels(settings)
    plan: dict[str, dict[str, int]] = {}
    async with await open_store(settings.store) as store:
        source_url = make_source(address, settings).url if address else None
        rows = await store.unacted_scan_positives(labels, since=since, source=source_url)
        for row in rows:
            assert row.sha256 is not None
            label = await _current_label(store, row.sha256, row.label)
            if label in labels:
                by_label = plan.setdefault(row.source, {})
                by_label[label] = by_label.get(label, 0) + 1
    return plan


async def run_apply(
    settings: Settings,
    *,
    action: Action,
    since: float | None = None,
    address: str | None = None,
    progress: Progress | None = None,
) -> list[Report]:
    """Act on positives that earlier sweeps recorded (dry runs), without judging again."""
    if action is Action.REPORT:
        raise ValueError("apply needs --action quarantine or delete")
    labels = _apply_labels(settings)
    reports: list[Report] = []
    async with open_runtime(settings) as rt:
        store = await rt.store()
        source_url = make_source(address, settings).url if address else None
        rows = await store.unacted_scan_positives(labels, since=since, source=source_url)
        by_source: dict[str, list[ScanFile]] = {}
        for row in rows:
            by_source.setdefault(row.source, []).append(row)
        # Open every source first: a bad credential stops us before the first action.
        sources = {url: make_source(url, settings) for url in by_source}
        opened: list[Source] = []
        try:
            for src in sources.values():
                await src.open()
                opened.append(src)
            pictrs = await rt.pictrs()
            for url, pending in by_source.items():
                src = sources[url]
                actor = Actor(store, src, action, pictrs=pictrs)
                await actor.complete_interrupted()
                counts = Counts(listed=len(pending))
                report = Report(url, action.value, counts)
                for rec in pending:
                    assert rec.sha256 is not None
                    label = await _current_label(store, rec.sha256, rec.label)
                    if label not in labels:
                        counts.seen += 1
                        continue
                    entry = await src.stat(rec.identifier)
                    if entry is None:
                        counts.vanished += 1
                        continue
                    if entry.size != rec.size or entry.mtime != rec.mtime:
                        counts.changed += 1
                        if progress:
                            progress.note(
                                f"CHANGED    {_where(url, rec.identifier)}: scan it again"
                            )
                        continue
                    report.positives.append((rec.identifier, label, rec.sha256))
                    result = await actor.act(
                        identifier=rec.identifier, sha256=rec.sha256, size=rec.size,
                        mtime=rec.mtime, label=label, reasons=rec.reasons or [],
                    )  # fmt: skip
                    if result.outcome is Outcome.DONE:
                        counts.acted += 1
                        if progress:
                            progress.note(f"{result.how:<10} {_where(url, rec.identifier)}")
                    elif result.outcome is Outcome.ALREADY:
                        counts.already_acted += 1
                    elif result.outcome is Outcome.VANISHED:
                        counts.vanished += 1
                    else:
                        counts.action_failed += 1
                        if progress:
                            progress.note(
                                f"FAILED     {_where(url, rec.identifier)}: {result.detail}"
                            )
                _add_notes(report, src, actor)
                reports.append(report)
        finally:
            for src in opened:
                await src.close()
    return reports


def _where(url: str, identifier: str) -> str:
    return f"{url.rstrip('/')}/{identifier}"


async def _current_label(store: LabelStore, sha256: str, recorded: str | None) -> str | None:
    kind = await store.list_kind(sha256)
    if kind == "allow":
        return Label.CLEAN.value
    if kind == "deny":
        return Label.CSAM.value
    stored = await store.get_verdict(sha256)
    if stored is not None and stored.verdict.label not in (Label.ERROR, Label.UNREADABLE):
        return stored.verdict.label.value
    return recorded


async def run_release(
    settings: Settings, target: str, *, note: str = "", by: str = "cli"
) -> list[str]:
    """Restore quarantined objects by action id (or every one with a sha256): the allow
    decision for that hash, which allow-lists it and releases every quarantined copy."""
    async with open_runtime(settings) as rt:
        store = await rt.store()
        if target.isdigit():
            row = await store.get_scan_action(int(target))
            if row is None:
                raise ItemError(f"no action #{target}")
            check_releasable(row)
            sha256, ids = row.sha256, [row.id]
        else:
            sha256 = target.lower()
            rows = [r for r in await store.scan_actions_for(sha256, state="done") if releasable(r)]
            if not rows:
                raise ItemError(f"nothing quarantined with sha256 {target}")
            ids = [r.id for r in rows]
        note = note or "released from quarantine " + ", ".join(f"#{i}" for i in ids)
        decided = await review_for(settings, store).allow(sha256, by=by, note=note)
    outcome = decided["audit"]["detail"]["quarantine"]
    restored = [str(r["identifier"]) for r in outcome["released"]]
    if outcome["failed"]:
        failed = "; ".join(f"{f['identifier']}: {f['why']}" for f in outcome["failed"])
        done = f" (restored: {', '.join(restored)})" if restored else ""
        raise ItemError(f"allow-listed {sha256}, but could not restore {failed}{done}")
    return restored
