"""Which backend judges: chosen once at start-up from `backend.kind`.

    horde   the AI Horde only
    local   local paths only: CLIP in this process (extra [gpu]) and/or remote GPU workers
    hybrid  every path: the fastest live one first, the others as fallbacks both ways
    auto    `local` when this process sees a CUDA GPU or a worker pool is configured, else `horde`

With `prescreen.enabled`, the CPU nudity pre-screen sits in front of whatever was chosen.
local_gpu/ (torch) is loaded, through plugins.py, only when in-process CLIP is wanted.
"""

from __future__ import annotations

import logging
import time
from dataclasses import replace

import aiohttp

from horde_scanner.backends import plugins
from horde_scanner.backends.base import (
    Backend,
    BackendFailed,
    BackendUnavailable,
    Readiness,
    describe_paths,
    judge_image,
)
from horde_scanner.backends.horde import HordeBackend
from horde_scanner.backends.workers import WorkerPool
from horde_scanner.config import BackendKind, ConfigError, Settings
from horde_scanner.media.decode import PreparedImage
from horde_scanner.policy.rules import Policy
from horde_scanner.verdict import Signals

log = logging.getLogger(__name__)

KINDS = tuple(k.value for k in BackendKind)

# Latency guesses before a path has answered anything (seconds). The Horde often needs tens of
# seconds for anonymous or low-kudos users.
_PRIOR_LATENCY_S = {"horde": 20.0, "workers": 1.0, "clip": 0.5}
_EWMA_WEIGHT = 0.2


class RoutedBackend:
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
        self.latency_s: dict[str, float] = {
            p.name: float(getattr(p, "expected_latency_s", _PRIOR_LATENCY_S.get(p.name, 5.0)))
            for p in paths
        }
        self.routed: dict[str, int] = {p.name: 0 for p in paths}
        self.fallbacks = 0

    def _refresh(self) -> None:
        # A path that knows its own expected latency (the AI Horde reads its queue) says so.
        for p in self.members:
            live_latency = getattr(p, "live_latency_s", None)
            if callable(live_latency):
                self.latency_s[p.name] = float(live_latency())

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

    async def aclose(self) -> None:
        for member in self.members:
            await member.aclose()


def _clip_wanted(settings: Settings, kind: BackendKind, pool: WorkerPool | None) -> bool:
    wanted = settings.local.in_process
    if wanted is not None:
        return wanted
    if not plugins.torch_installed():
        return False
    if plugins.cuda_available():
        return True
    # No GPU: CPU inference only when the admin asked for local judging and nothing else can.
    return kind is BackendKind.LOCAL and pool is None


def _clip_backend(settings: Settings, policy: Policy) -> Backend:
    try:
        return plugins.local_clip_backend(settings.local, policy.clip.phrases)
    except plugins.PluginUnavailable as exc:
        raise ConfigError(f"local: {exc}") from None
    except ValueError as exc:
        raise ConfigError(f"policy [clip]: {exc}") from None


def _local_paths(
    settings: Settings, kind: BackendKind, policy: Policy, pool: WorkerPool | None
) -> list[Backend]:
    paths: list[Backend] = []
    if _clip_wanted(settings, kind, pool):
        paths.append(_clip_backend(settings, policy))
    if pool is not None:
        paths.append(pool)
    return paths


def _core(
    settings: Settings,
    session: aiohttp.ClientSession,
    policy: Policy,
    pool: WorkerPool | None,
) -> Backend:
    kind = settings.backend.kind
    budget = settings.backend.hybrid_budget_s or settings.validation.deadline_s
    if kind is BackendKind.HORDE:
        return HordeBackend(settings.horde, session)
    local = _local_paths(settings, kind, policy, pool)
    if kind is BackendKind.AUTO:
        if not local:
            log.info("backend auto: no CUDA GPU and no worker pool; judging with the AI Horde")
            return HordeBackend(settings.horde, session)
        kind = BackendKind.LOCAL
        log.info("backend auto: judging locally (%s)", ", ".join(p.name for p in local))
    if kind is BackendKind.LOCAL:
        if not local:
            raise ConfigError(
                "backend.kind=local: no local path. Install the [gpu] extra (torch, "
                "transformers) for CLIP in this process, or set workers.keys for remote workers"
            )
        return local[0] if len(local) == 1 else RoutedBackend("local", local, budget)
    # hybrid
    return RoutedBackend("hybrid", [*local, HordeBackend(settings.horde, session)], budget)


def build_backend(
    settings: Settings,
    session: aiohttp.ClientSession,
    *,
    policy: Policy | None = None,
    pool: WorkerPool | None = None,
) -> Backend:
    """The configured backend. `pool` is the service's worker pool (None: no workers)."""
    policy = policy or Policy.load(settings.policy.path)
    backend = _core(settings, session, policy, pool)
    if settings.prescreen.enabled:
        from horde_scanner.backends.nudenet import DetectorUnavailable, NudityDetector
        from horde_scanner.backends.prescreen import PrescreenBackend

        try:
            detector = NudityDetector(settings.prescreen.model_path, settings.prescreen.resolution)
        except DetectorUnavailable as exc:
            raise ConfigError(f"prescreen: {exc}") from None
        backend = PrescreenBackend(
            detector,
            policy.prescreen,
            backend,
            threads=settings.prescreen.threads,
            max_queue=settings.prescreen.max_queue,
        )
    return backend
