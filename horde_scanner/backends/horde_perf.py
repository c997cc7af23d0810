"""What the AI Horde says about its own load (`GET /v2/status/performance`), and what we
expect a new request to take.

The server's `queued_forms` counts interrogation forms waiting or processing over the whole
Horde; `interrogator_count` and `interrogator_thread_count` are the alchemist workers (and their
threads) seen in the past 5 minutes (`horde/apis/v2/base.py::HordeLoad`,
`horde/database/functions.py::count_totals`). Priority goes by the requester's kudos, so a
registered user often jumps much of that queue: our own recent requests, when there are some,
are a better guide than the queue, and the queue is the guide otherwise.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

# A form takes an alchemist a few seconds (the legacy worker allows about 10 s); our guess
# per form when nothing better is known.
SECONDS_PER_FORM = 3.0
# Our own answers count for this long; older ones say little about the Horde now.
OWN_LATENCY_FRESH_S = 600.0
_EWMA_WEIGHT = 0.2


@dataclass(frozen=True, slots=True)
class HordeLoad:
    queued_forms: float
    interrogators: int
    threads: int
    read_at: float

    @classmethod
    def from_body(cls, body: Any, read_at: float) -> HordeLoad | None:
        if not isinstance(body, dict):
            return None
        try:
            queued = float(body.get("queued_forms") or 0.0)
            workers = int(body.get("interrogator_count") or 0)
            threads = int(body.get("interrogator_thread_count") or workers)
        except (TypeError, ValueError):
            return None
        return cls(max(0.0, queued), max(0, workers), max(0, threads), read_at)

    def queue_latency_s(self, forms_per_request: int) -> float:
        """Time to get through the whole queue and then our own forms (inf: no workers)."""
        if self.interrogators <= 0:
            return math.inf
        threads = max(1, self.threads)
        return (self.queued_forms / threads + forms_per_request) * SECONDS_PER_FORM


class LatencyEstimate:
    """Expected seconds from submit to answer: our own recent requests when we have some,
    else the Horde's queue, else a prior."""

    def __init__(self, prior_s: float, *, clock: Any = time.monotonic) -> None:
        self.prior_s = prior_s
        self._clock = clock
        self.own_s: float | None = None
        self._own_at = 0.0
        self.load: HordeLoad | None = None

    def observe(self, took_s: float) -> None:
        if self.own_s is None:
            self.own_s = took_s
        else:
            self.own_s += _EWMA_WEIGHT * (took_s - self.own_s)
        self._own_at = self._clock()

    def expected_s(self, forms_per_request: int) -> float:
        if self.own_s is not None and self._clock() - self._own_at <= OWN_LATENCY_FRESH_S:
            return self.own_s
        if self.load is not None:
            return self.load.queue_latency_s(forms_per_request)
        return self.prior_s

    def source(self) -> str:
        if self.own_s is not None and self._clock() - self._own_at <= OWN_LATENCY_FRESH_S:
            return "own requests"
        return "horde queue" if self.load is not None else "prior"
