"""Every part's schema steps, in the order they are applied (by name)."""

from __future__ import annotations

from horde_scanner.store import (
    audit,
    cluster,
    embeddings,
    hashes,
    horde_requests,
    jobs,
    kudos,
    provenance,
    review,
    sweeps,
    verdicts,
)
from horde_scanner.store.tables import SchemaStep

_PARTS = (
    verdicts,
    jobs,
    audit,
    sweeps,
    hashes,
    embeddings,
    review,
    kudos,
    cluster,
    provenance,
    horde_requests,
)


def schema_steps() -> list[SchemaStep]:
    steps = sorted((step for part in _PARTS for step in part.STEPS), key=lambda s: s.name)
    names = [s.name for s in steps]
    if len(set(names)) != len(names):  # a programming error, caught by any test that opens one
        raise RuntimeError(f"two schema steps share a name: {names}")
    return steps
