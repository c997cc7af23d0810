"""Left only for review/evidence.py: the sweep's tables and every query on them are the
store's now (store/sweeps.py, `SweepTables`). Once evidence.py calls
`store.sweep_locations(...)` itself, this module goes."""

from __future__ import annotations

from horde_scanner.store.sqlite import Store


class ScanRecords:
    def __init__(self, store: Store) -> None:
        self.locations = store.sweep_locations
