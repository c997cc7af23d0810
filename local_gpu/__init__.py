"""Optional torch backend (extra `[gpu]`); filled by its own issue. Imported lazily only."""
