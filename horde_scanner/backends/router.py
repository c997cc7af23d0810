"""Several judging paths behind one backend (`backend.kind` local with two paths, hybrid):
each image goes to the fastest live path, and on to the next when one cannot take it.
Which paths are built for which kind is backends/kinds.py's."""

from __future__ import annotations

import logging
import time
from dataclasses import replace

from horde_scanner.backends.base import (
    Backend,
    BackendFailed,
    BackendUnavailable,
    Readiness,
    describe_paths,
    judge_image,
)
from horde_scanner.media.decode import PreparedImage
from horde_scanner.verdict import Signals

log = logging.getLogger(__name__)

_EWMA_WEIGHT = 0.2


class RoutedBackend(Backend):
    """Several paths; each image goes to the fastest live one that should answer within the
    budget, and on to the next when a path cannot take it now (down, saturated, gone)."""

    def __init__(self, name: str, paths: list[Backend], budget_s: float) -> None:
        if not paths:
            raise ValueError("a router needs at least one path")
        self.name = name
        # Frames go to a path whole: each path judges them its own best way (judge_image).
        self.takes_frames = True
        self.members = paths
        self.budget_s = budget_s
        # Each path's guess before it has answered anything (the Horde's is tens of seconds).
        self.latency_s: dict[str, float] = {p.name: float(p.expected_latency_s) for p in paths}
        self.routed: dict[str, int] = {p.name: 0 for p in paths}
        self.fallbacks = 0

    def _refresh(self) -> None:
        # A path that knows its own expected latency (the AI Horde reads its queue) says so.
        for p in self.members:
            live = p.live_latency_s()
            if live is not None:
                self.latency_s[p.name] = float(live)

    def order(self) -> list[Backend]:
        """Live paths: those expected within the budget first, fastest first; then the rest."""
        self._refresh()
        live = [p for p in self.members if p.readiness().live]
        return sorted(
            live,
            key=lambda p: (self.latency_s[p.name] > self.budget_s, self.latency_s[p.name]),
        )

    async def judge(self, image: PreparedImage) -> Signals:
        order = self.order()
        if not order:
            details = "; ".join(f"{r.name}: {r.detail}" for r in self.paths())
            raise BackendUnavailable(f"no judging path is live ({details})", retry_after_s=5.0)
        problems: list[str] = []
        failed: BackendFailed | None = None
        for i, path in enumerate(order):
            if i:
                self.fallbacks += 1
                log.info("routing to %s after: %s", path.name, problems[-1])
            started = time.monotonic()
            try:
                signals = await judge_image(path, image)
            except BackendUnavailable as exc:
                problems.append(f"{path.name}: {exc.reason}")
                continue
            except BackendFailed as exc:
                # One path refusing an image (e.g. the Horde's filters) is no reason for the
                # others to refuse it too.
                failed = exc
                problems.append(f"{path.name}: {exc}")
                continue
            took = time.monotonic() - started
            old = self.latency_s[path.name]
            self.latency_s[path.name] = old + _EWMA_WEIGHT * (took - old)
            self.routed[path.name] += 1
            return signals
        if failed is not None and len(problems) == 1:
            raise failed
        raise BackendUnavailable("every path failed: " + "; ".join(problems), retry_after_s=5.0)

    def readiness(self) -> Readiness:
        paths = self.paths()
        live = [r.name for r in paths if r.live]
        detail = f"live paths: {', '.join(live) or 'none'}"
        return Readiness(self.name, bool(live), detail)

    def paths(self) -> list[Readiness]:
        self._refresh()
        out: list[Readiness] = []
        for member in self.members:
            for r in describe_paths(member):
                typical = self.latency_s.get(r.name)
                extra = f"; typical {typical:.2f} s" if typical is not None else ""
                out.append(replace(r, detail=r.detail + extra))
        return out

    def inner(self) -> list[Backend]:
        return self.members
