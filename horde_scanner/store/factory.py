"""Opening a store: the one way in for code that composes the application (runtime.py, the
CLI's commands, the sweep application). What it hands back is typed by the interfaces
(store/interfaces.py), so nothing outside store/ needs the concrete classes."""

from __future__ import annotations

from pathlib import Path

from horde_scanner.config import StoreSettings
from horde_scanner.store.interfaces import UnifiedStore
from horde_scanner.store.sqlite import Store, StoreError

__all__ = ["StoreError", "open_store"]


async def open_store(target: Path | str | StoreSettings) -> UnifiedStore:
    """The store at `target` (the store settings, a path, `sqlite:///path` or
    `postgresql://...`), open, migrated and ready; `StoreError` when it cannot be."""
    return await Store.open(target)
