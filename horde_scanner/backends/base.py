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
- `concurrency` (optional attribute): how many `judge` calls it keeps busy at once. The Judge
  runs as many background judgements as the largest number declared by the paths inside its
  backend (`concurrency()`); a backend that queues its own work need not declare one.
- A backend that cleared an image cheaply (without its full judgement, like the CPU
  pre-screen) marks its Signals with `mark_screen(..., CLEARED)`; callers ask `cleared()` to
  decide on a second opinion, whoever set it.

`MockBackend` (mock.py) is the in-process implementation for tests and benchmarks.
"""

from __future__ import annotations

import asyncio
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Protocol

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


class BackendUnavailable(Exception):
    """Cannot judge now; try again later."""

    def __init__(self, reason: str, retry_after_s: float | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retry_after_s = retry_after_s


class BackendFailed(Exception):
    """Will not judge this image, ever."""


@dataclass(frozen=True, slots=True)
class Readiness:
    name: str
    live: bool
    detail: str = ""
    # How many times this path has come back after being unreachable. Watchers compare
    # counts, not `live` alone: an outage shorter than their polling interval is still seen.
    recoveries: int = 0


class Backend(Protocol):
    name: str
    # Optional class attribute `takes_frames: bool` (see the contract above).

    async def judge(self, image: PreparedImage) -> Signals: ...

    def readiness(self) -> Readiness: ...

    async def aclose(self) -> None: ...


def concurrency(backend: Backend) -> int:
    """Judgements worth running at once behind `backend`: the most any of its paths declares."""
    declared = [
        value
        for b in iter_backends(backend)
        if isinstance(value := getattr(b, "concurrency", None), int) and value > 0
    ]
    return max(declared, default=DEFAULT_CONCURRENCY)


def mark_screen(signals: Signals, outcome: str) -> Signals:
    """`signals` marked with what a screening path did (CLEARED or PASSED_ON)."""
    return signals.model_copy(update={"extra": {**signals.extra, SCREEN_KEY: outcome}})


def cleared(signals: Signals) -> bool:
    """A screening path cleared the image without the full judgement."""
    return signals.extra.get(SCREEN_KEY) == CLEARED


def describe_paths(backend: Backend) -> list[Readiness]:
    """Every judging path behind `backend` (a router or a pre-screen has several), for /readyz."""
    paths = getattr(backend, "paths", None)
    if callable(paths):
        result: list[Readiness] = paths()
        return result
    return [backend.readiness()]


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
        todo.extend(getattr(current, "members", None) or [])
        inner = getattr(current, "next", None)
        if inner is not None and hasattr(inner, "judge"):
            todo.append(inner)
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
    if not image.animated or getattr(backend, "takes_frames", False):
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
