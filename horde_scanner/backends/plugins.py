"""The one door to the optional torch backend (`local_gpu/`, extra [gpu]).

horde_scanner never imports `local_gpu`: the base install has no torch, and `local_gpu` itself
builds on horde_scanner's lower rooms. This module loads it by name, only when a caller asks
for local judging, and turns its errors into ours.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from types import ModuleType
from typing import Any, cast

from horde_scanner.backends.base import Backend
from horde_scanner.config import LocalSettings
from horde_scanner.errors import FinalError, RetryLater
from horde_scanner.media.types import DecodeLimits
from horde_scanner.policy.rules import Policy

PLUGIN = "local_gpu"
INSTALL_HINT = "pip install -c constraints.txt 'horde-scanner[gpu]'"


class PluginUnavailable(FinalError):
    """The local backend cannot run here: the extra is missing or the model cannot load."""


class WorkerStopped(RetryLater):
    """The GPU worker gave up (the service refused it or cannot be reached)."""


def _load(module: str = "") -> ModuleType:
    name = f"{PLUGIN}.{module}" if module else PLUGIN
    try:
        return importlib.import_module(name)
    except ImportError as exc:
        raise PluginUnavailable(
            f"local judging needs the [gpu] extra ({exc.name} is missing): {INSTALL_HINT}"
        ) from None


def torch_installed() -> bool:
    """Whether the [gpu] extra is there, without importing torch."""
    return bool(_load().torch_installed())


def cuda_available() -> bool:
    return bool(_load().cuda_available())


def local_clip_backend(settings: LocalSettings, phrases: Sequence[str]) -> Backend:
    """The in-process CLIP backend. Raises PluginUnavailable (missing extra, model that cannot
    load) and ValueError (phrases it cannot score)."""
    backend_module, clip = _load("backend"), _load("clip")
    try:
        return cast(Backend, backend_module.LocalClipBackend.from_settings(settings, list(phrases)))
    except clip.ModelUnavailable as exc:
        raise PluginUnavailable(str(exc)) from None


async def run_worker(
    server: str,
    key: str,
    backend: Backend,
    *,
    limits: DecodeLimits,
    policy: Policy,
    **options: Any,
) -> None:
    """Pull jobs from a service and judge them with `backend` until stopped."""
    worker = _load("worker")
    runner = worker.Worker(server, key, backend, limits=limits, policy=policy, **options)
    try:
        await runner.run()
    except worker.WorkerError as exc:
        raise WorkerStopped(str(exc)) from None
