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
- `readiness()` answers quickly, without sending work, whether the backend can take work.

`MockBackend` (mock.py) is the in-process implementation for tests and benchmarks.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from horde_scanner.media import PreparedImage
from horde_scanner.verdict import Signals


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


class Backend(Protocol):
    name: str

    async def judge(self, image: PreparedImage) -> Signals: ...

    def readiness(self) -> Readiness: ...

    async def aclose(self) -> None: ...


def describe_paths(backend: Backend) -> list[Readiness]:
    """Every judging path behind `backend` (a router or a pre-screen has several), for /readyz."""
    paths = getattr(backend, "paths", None)
    if callable(paths):
        result: list[Readiness] = paths()
        return result
    return [backend.readiness()]
