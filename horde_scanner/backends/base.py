"""The seam between "we have pixels" and "someone has an opinion about them".

A Backend turns one decoded image into Signals. Its contract:

- `judge(image)` takes a PreparedImage (RGB pixels, longest side at most the configured backend
  size, and the same pixels as WebP) and returns the backend's raw Signals. It never returns a
  Verdict: policy makes verdicts.
- It raises `BackendUnavailable` when it cannot judge *now* (down, overloaded, in maintenance,
  misconfigured): the caller keeps the work and tries again later.
- It raises `BackendFailed` when it will never judge *this image* (it refuses the image): the
  caller records an `error` verdict instead of retrying forever.
- Any other exception is a bug in the backend and is treated like `BackendUnavailable`.
- It may take as long as it needs; callers that have a deadline enforce it themselves and may
  cancel the call, so `judge` must clean up (e.g. cancel remote work) on cancellation.
- Animations and videos: a PreparedImage carries the sampled `frames` (one for a still image).
  A backend that sets `takes_frames = True` judges all of them in `judge` (one batch, fewer
  requests) and returns `framesignals.combine(...)` Signals with one entry per frame or group
  of frames. Any other backend sees one frame per `judge` call: callers go through
  `judge_image()`, which splits a multi-frame image and combines the answers.
- `readiness()` answers quickly, without sending work, whether the backend can take work.
- `concurrency`: how many `judge` calls it keeps busy at once (None: not declared). The Judge
  runs as many background judgements as the largest number declared by the paths inside its
  backend (`concurrency()`); a backend that queues its own work need not declare one.
- Lifetime: `start(store)` once before the first `judge` (the store is there for a backend that
  keeps state in it, like the AI Horde's kudos spend), `close()` once at the end. A backend
  that holds others (a router, a pre-screen) starts and closes them with itself (`inner()`).
- What it tells about itself: `paths()` (each judging path, for /readyz), `describe()` (its own
  details, shown under its name in /readyz), `metrics()` (its own Prometheus families, on
  /metrics), `expected_latency_s` and `live_latency_s()` (for routing).
- A backend that cleared an image cheaply (without its full judgement, like the CPU
  pre-screen) marks its Signals with `mark_screen(..., CLEARED)`; callers ask `cleared()` to
  decide on a second opinion, whoever set it.

Every capability has a default on the base class `Backend`, so a backend overrides only what
it has, and callers never probe. Which backend `backend.kind` names is the registry's
(backend_registry.py); adding one is a module with a `Backend` subclass and its settings.

`MockBackend` (mock.py) is the in-process implementation for tests and benchmarks.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from horde_scanner.errors import FinalError, RetryLater
from horde_scanner.media.decode import PreparedImage
from horde_scanner.policy import frames as framesignals
from horde_scanner.tasks import cancel_and_wait
from horde_scanner.verdict import Signals

# Judgements at once when no path inside a backend declares `concurrency`: local paths queue
# their own work (a worker pool refuses new images beyond workers.max_queue).
DEFAULT_CONCURRENCY = 40
# Signals.extra[SCREEN_KEY]: what a cheap screening path did with the image.
SCREEN_KEY = "prescreen"
CLEARED = "cleared"
PASSED_ON = "passed_on"


# Prometheus names of what backends report on /metrics (`Backend.metrics()`).
METRIC_PREFIX = "horde_scanner"


class BackendUnavailable(RetryLater):
    """Cannot judge now; try again later (after `retry_after_s`, when known)."""


class BackendFailed(FinalError):
    """Will not judge this image, ever."""


@dataclass(frozen=True, slots=True)
class Readiness:
    name: str
    live: bool
    detail: str = ""
    # How many times this path has come back after being unreachable. Watchers compare
    # counts, not `live` alone: an outage shorter than their polling interval is still seen.
    recoveries: int = 0


class Backend:
    """The base of every backend: the contract above, each optional capability defaulted."""

    name: str = "backend"
    # Judges a multi-frame image in one `judge` call (else: one frame per call).
    takes_frames: bool = False
    # `judge` calls worth running at once (None: not declared; see `concurrency()`).
    concurrency: int | None = None
    # Seconds an image is expected to take before this path has answered anything (routing).
    expected_latency_s: float = 5.0

    async def judge(self, image: PreparedImage) -> Signals:
        raise NotImplementedError

    def readiness(self) -> Readiness:
        return Readiness(self.name, True)

    # -- lifetime ------------------------------------------------------------------------------

    async def start(self, store: object | None = None) -> None:
        """Before the first `judge`: start the backends inside this one."""
        for inner in self.inner():
            await inner.start(store)

    async def close(self) -> None:
        """At the end: close the backends inside this one."""
        for inner in self.inner():
            await inner.close()

    async def aclose(self) -> None:
        """`close()`, under the name `contextlib.aclosing` and older callers use."""
        await self.close()

    # -- what it tells about itself ------------------------------------------------------------

    def inner(self) -> Sequence[Backend]:
        """The backends this one hands images to (a router's paths, a pre-screen's next)."""
        return ()

    def paths(self) -> list[Readiness]:
        """Every judging path inside this backend, for /readyz."""
        return [self.readiness()]

    def live_latency_s(self) -> float | None:
        """Seconds a new image is expected to take now, when this backend knows (None: not)."""
        return None

    def passes_on(self) -> Backend | None:
        """The backend a cheap screen hands what it does not clear to (second opinions)."""
        return None

    def describe(self) -> dict[str, Any]:
        """This backend's own details, shown under its name in /readyz (empty: nothing)."""
        return {}

    def metrics(self) -> Iterable[Metric]:
        """This backend's own Prometheus families for /metrics (names from `metric_name`)."""
        return ()


def metric_name(name: str) -> str:
    return f"{METRIC_PREFIX}_{name}"


def gauge(name: str, doc: str, value: float, labels: dict[str, str] | None = None) -> Metric:
    """A one-sample gauge family named `horde_scanner_<name>`."""
    family = GaugeMetricFamily(metric_name(name), doc, labels=list(labels or {}))
    family.add_metric(list((labels or {}).values()), value)
    return family


def counter(name: str, doc: str, value: float) -> Metric:
    """A one-sample counter family named `horde_scanner_<name>`."""
    family = CounterMetricFamily(metric_name(name), doc)
    family.add_metric([], value)
    return family


def concurrency(backend: Backend) -> int:
    """Judgements worth running at once behind `backend`: the most any of its paths declares."""
    declared = [b.concurrency for b in iter_backends(backend) if b.concurrency]
    return max(declared, default=DEFAULT_CONCURRENCY)


def mark_screen(signals: Signals, outcome: str) -> Signals:
    """`signals` marked with what a screening path did (CLEARED or PASSED_ON)."""
    return signals.model_copy(update={"extra": {**signals.extra, SCREEN_KEY: outcome}})


def cleared(signals: Signals) -> bool:
    """A screening path cleared the image without the full judgement."""
    return signals.extra.get(SCREEN_KEY) == CLEARED


def describe_paths(backend: Backend) -> list[Readiness]:
    """Every judging path behind `backend` (a router or a pre-screen has several), for /readyz."""
    return backend.paths()


def iter_backends(backend: Backend) -> list[Backend]:
    """`backend` and every backend inside it (a router's members, what a pre-screen passes
    on to), each once, outermost first."""
    out: list[Backend] = []
    todo: list[Backend] = [backend]
    while todo:
        current = todo.pop(0)
        if any(current is seen for seen in out):
            continue
        out.append(current)
        todo.extend(current.inner())
    return out


# The content hash (sha256) of the file being judged, while a backend judges it: a backend
# that keeps work across a restart files it under this (backends/horde.py keeps the id of each
# live AI Horde request, so the process after a crash polls it instead of submitting again).
judging_sha256: ContextVar[str | None] = ContextVar("judging_sha256", default=None)


async def judge_image(
    backend: Backend, image: PreparedImage, *, sha256: str | None = None
) -> Signals:
    """`backend.judge` for any image: frame by frame unless the backend takes frames itself.
    `sha256`: the file's content hash, for the backend's use (`judging_sha256`).

    A frame that fails for good fails the whole file (its verdict would be incomplete)."""
    if sha256 is None:  # a path inside a backend (router, pre-screen): the caller's file
        return await _judge_image(backend, image)
    token = judging_sha256.set(sha256)
    try:
        return await _judge_image(backend, image)
    finally:
        judging_sha256.reset(token)


async def _judge_image(backend: Backend, image: PreparedImage) -> Signals:
    if not image.animated or backend.takes_frames:
        return await backend.judge(image)
    singles = [image.subset([frame]) for frame in image.frames]
    tasks = [asyncio.ensure_future(backend.judge(one)) for one in singles]
    try:
        results = await asyncio.gather(*tasks)
    except BaseException:
        await cancel_and_wait(tasks)  # no frame is judged for nothing once the file cannot be
        raise
    return framesignals.combine(
        backend.name, [(one.frames, signals) for one, signals in zip(singles, results, strict=True)]
    )
