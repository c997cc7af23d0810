"""What each built-in `backend.kind` builds (the registry, backend_registry.py, names them):

    horde   the AI Horde only
    local   local paths only: CLIP in this process (extra [gpu]) and/or remote GPU workers
    hybrid  every path: the fastest live one first, the others as fallbacks both ways
    auto    `local` when this process sees a CUDA GPU or a worker pool is configured, else `horde`

With `prescreen.enabled`, the CPU nudity pre-screen sits in front of whatever was chosen.
local_gpu/ (torch) is loaded, through plugins.py, only when in-process CLIP is wanted.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import aiohttp
from pydantic import BaseModel

from horde_scanner.backend_registry import backend_kind
from horde_scanner.backends import plugins
from horde_scanner.backends.base import Backend
from horde_scanner.backends.horde import HordeBackend
from horde_scanner.backends.router import RoutedBackend
from horde_scanner.backends.workers import WorkerPool
from horde_scanner.config import ConfigError, Settings
from horde_scanner.policy.rules import Policy

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class BuildContext:
    """What a backend factory may use to build its backend."""

    settings: Settings
    session: aiohttp.ClientSession
    policy: Policy
    # The service's remote worker pool; None without workers.keys (or outside the service).
    pool: WorkerPool | None = None

    @property
    def budget_s(self) -> float:
        """How long a router may expect a path to take before trying it last."""
        return self.settings.backend.hybrid_budget_s or self.settings.validation.deadline_s

    def section(self, kind: str) -> BaseModel | None:
        """The options of `kind` from [backend.<kind>] (its defaults when not given)."""
        return self.settings.backend.section(kind)


def _clip_wanted(ctx: BuildContext, local_only: bool) -> bool:
    wanted = ctx.settings.local.in_process
    if wanted is not None:
        return wanted
    if not plugins.torch_installed():
        return False
    if plugins.cuda_available():
        return True
    # No GPU: CPU inference only when the admin asked for local judging and nothing else can.
    return local_only and ctx.pool is None


def _clip_backend(ctx: BuildContext) -> Backend:
    try:
        return plugins.local_clip_backend(ctx.settings.local, ctx.policy.clip.phrases)
    except plugins.PluginUnavailable as exc:
        raise ConfigError(f"local: {exc}") from None
    except ValueError as exc:
        raise ConfigError(f"policy [clip]: {exc}") from None


def _local_paths(ctx: BuildContext, *, local_only: bool) -> list[Backend]:
    paths: list[Backend] = []
    if _clip_wanted(ctx, local_only):
        paths.append(_clip_backend(ctx))
    if ctx.pool is not None:
        paths.append(ctx.pool)
    return paths


def _local(ctx: BuildContext, paths: list[Backend]) -> Backend:
    if not paths:
        raise ConfigError(
            "backend.kind=local: no local path. Install the [gpu] extra (torch, "
            "transformers) for CLIP in this process, or set workers.keys for remote workers"
        )
    return paths[0] if len(paths) == 1 else RoutedBackend("local", paths, ctx.budget_s)


def build_horde(ctx: BuildContext) -> Backend:
    return HordeBackend(ctx.settings.horde, ctx.session)


def build_local(ctx: BuildContext) -> Backend:
    return _local(ctx, _local_paths(ctx, local_only=True))


def build_hybrid(ctx: BuildContext) -> Backend:
    paths = [*_local_paths(ctx, local_only=False), build_horde(ctx)]
    return RoutedBackend("hybrid", paths, ctx.budget_s)


def build_auto(ctx: BuildContext) -> Backend:
    local = _local_paths(ctx, local_only=False)
    if not local:
        log.info("backend auto: no CUDA GPU and no worker pool; judging with the AI Horde")
        return build_horde(ctx)
    log.info("backend auto: judging locally (%s)", ", ".join(p.name for p in local))
    return _local(ctx, local)


def build_backend(
    settings: Settings,
    session: aiohttp.ClientSession,
    *,
    policy: Policy | None = None,
    pool: WorkerPool | None = None,
) -> Backend:
    """The backend `backend.kind` names (the registry's factory for it), behind the CPU
    pre-screen when that is on. `pool` is the service's worker pool (None: no workers)."""
    ctx = BuildContext(settings, session, policy or Policy.load(settings.policy.path), pool)
    built = backend_kind(settings.backend.kind).load()(ctx)
    if not isinstance(built, Backend):
        raise ConfigError(
            f"backend.kind={settings.backend.kind}: its factory built a "
            f"{type(built).__name__}, not a Backend"
        )
    backend: Backend = built
    if settings.prescreen.enabled:
        from horde_scanner.backends.nudenet import DetectorUnavailable, NudityDetector
        from horde_scanner.backends.prescreen import PrescreenBackend

        try:
            detector = NudityDetector(settings.prescreen.model_path, settings.prescreen.resolution)
        except DetectorUnavailable as exc:
            raise ConfigError(f"prescreen: {exc}") from None
        backend = PrescreenBackend(
            detector,
            ctx.policy.prescreen,
            backend,
            threads=settings.prescreen.threads,
            max_queue=settings.prescreen.max_queue,
        )
    return backend
