"""Proof, checked by mypy (`make lint`), that every store implements every interface of
store/interfaces.py: each function below only type-checks while the class it takes has every
method of the Protocols it returns, with compatible signatures. Nothing here runs.

tests/unit/store/test_interfaces.py checks the same at run time (names, parameters and
defaults), for the stores mypy cannot see through (a method added by a mixin at run time)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from horde_scanner.store.interfaces import (
        AuditStore,
        ClusterStore,
        EmbeddingStore,
        HashBankStore,
        HordeRequestStore,
        JobStore,
        KudosStore,
        LatePositiveStore,
        LemmyActionStore,
        ListStore,
        ProvenanceStore,
        ReviewStore,
        StoreLifecycle,
        SweepStore,
        UnifiedStore,
        VerdictStore,
    )
    from horde_scanner.store.memory import MemoryStore
    from horde_scanner.store.postgres import PgStore
    from horde_scanner.store.sqlite import Store

    def sqlite_store_is_unified(store: Store) -> UnifiedStore:
        return store

    def postgres_store_is_unified(store: PgStore) -> UnifiedStore:
        return store

    class MemoryConcerns(
        StoreLifecycle,
        VerdictStore,
        ListStore,
        LatePositiveStore,
        JobStore,
        AuditStore,
        KudosStore,
        ClusterStore,
        HordeRequestStore,
        ReviewStore,
        LemmyActionStore,
        HashBankStore,
        EmbeddingStore,
        SweepStore,
        ProvenanceStore,
        Protocol,
    ):
        """What the in-memory double implements: every concern (UnifiedStore less `aside()`,
        a connection of its own, which a double has no use for)."""

    def memory_store_implements_every_concern(store: MemoryStore) -> MemoryConcerns:
        return store
