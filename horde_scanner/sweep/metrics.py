"""Sweep progress, as plain numbers a sweep updates and /metrics reads at scrape time.

For a sweep running in the service process (`svc.sweeps`), or any other owner of a
`SweepProgress`:

    run = sweeps.start("local:/var/lib/pictrs", total=None)   # total may come later
    run.total = 120_000                                       # once the listing is known
    run.advance(label="clean")                                # per judged file
    run.advance(skipped=True)                                 # per file known from before
    run.fail()                                                # per file that could not be read
    run.act("quarantine")                                     # per action taken
    run.finish()

A sweep (sweep/runner.py) shows its counts here through `show()`, in the service process and
in the CLI alike: the runtime (horde_scanner/runtime/) holds one `SweepProgress` per process.
Nothing here knows about Prometheus, so `sweep/` can use it without importing `service/`.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field

from horde_scanner.sweep.progress import Counts


@dataclass
class SweepRun:
    name: str
    total: int | None = None
    done: int = 0
    skipped: int = 0
    failed: int = 0
    labels: Counter[str] = field(default_factory=Counter)
    actions: Counter[str] = field(default_factory=Counter)
    started_at: float = field(default_factory=time.time)
    finished_at: float | None = None

    def advance(self, n: int = 1, *, label: str | None = None, skipped: bool = False) -> None:
        self.done += n
        if skipped:
            self.skipped += n
        if label is not None:
            self.labels[label] += n

    def fail(self, n: int = 1) -> None:
        self.done += n
        self.failed += n

    def act(self, action: str, n: int = 1) -> None:
        self.actions[action] += n

    def finish(self) -> None:
        self.finished_at = time.time()

    def show(self, counts: Counts, action: str, *, listing_done: bool) -> None:
        """Take a running sweep's numbers as they are now (the runner calls this per file)."""
        self.done = counts.done
        self.skipped = counts.seen
        self.failed = counts.errors + counts.denied
        if listing_done:
            self.total = counts.listed
        for label in ("clean", "nsfw", "csam", "unreadable"):
            if value := getattr(counts, label):
                self.labels[label] = value
        if counts.acted:
            self.actions[action] = counts.acted

    @property
    def running(self) -> bool:
        return self.finished_at is None


class SweepProgress:
    """The sweeps of this process, by name; a restarted sweep of the same name replaces it."""

    def __init__(self) -> None:
        self._runs: dict[str, SweepRun] = {}

    def start(self, name: str, total: int | None = None) -> SweepRun:
        run = SweepRun(name, total)
        self._runs[name] = run
        return run

    def runs(self) -> list[SweepRun]:
        return list(self._runs.values())
