"""Which backend judges: chosen once at start-up from `backend.kind`."""

from __future__ import annotations

import aiohttp

from horde_scanner.backends.base import Backend
from horde_scanner.backends.horde import HordeBackend
from horde_scanner.config import ConfigError, Settings

KINDS = ("auto", "horde")


def build_backend(settings: Settings, session: aiohttp.ClientSession) -> Backend:
    kind = settings.backend.kind
    if kind in ("auto", "horde"):
        # Without a local GPU or worker pool, auto means the AI Horde.
        return HordeBackend(settings.horde, session)
    raise ConfigError(f"backend.kind: unknown backend {kind!r} (known: {', '.join(KINDS)})")
