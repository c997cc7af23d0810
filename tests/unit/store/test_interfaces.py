"""Every store implements the interfaces it claims (store/interfaces.py), checked at run time
as mypy checks it in store/conformance.py: each Protocol member exists, with the same
parameters (names, kinds, which have defaults), awaited or iterated as the Protocol says."""

from __future__ import annotations

import inspect
from typing import Any

import pytest

from horde_scanner.store import interfaces
from horde_scanner.store.memory import MemoryStore
from horde_scanner.store.postgres import PgStore
from horde_scanner.store.sqlite import Store

PROTOCOLS = {
    name: obj
    for name, obj in vars(interfaces).items()
    if inspect.isclass(obj)
    and getattr(obj, "_is_protocol", False)
    and obj.__module__ == interfaces.__name__
}
CONCERNS = [name for name in PROTOCOLS if name != "UnifiedStore"]


def members(protocol: type) -> dict[str, Any]:
    """The protocol's own members and those of the protocols it is made of."""
    found: dict[str, Any] = {}
    for klass in reversed(protocol.__mro__):
        if klass in PROTOCOLS.values():
            for name, value in vars(klass).items():
                if not name.startswith("_") or name in ("__aenter__", "__aexit__"):
                    found[name] = value
    return found


def mismatches(impl: type, protocol: type) -> list[str]:
    wrong = []
    for name, want in members(protocol).items():
        got = inspect.getattr_static(impl, name, None)
        if isinstance(want, property):
            continue  # attributes: test_attributes_are_there, on an instance
        if got is None:
            wrong.append(f"{name}: missing")
            continue
        fn = getattr(impl, name)
        if inspect.iscoroutinefunction(want) != inspect.iscoroutinefunction(fn):
            wrong.append(f"{name}: awaited in one, not in the other")
        wanted = list(inspect.signature(want).parameters.values())
        given = list(inspect.signature(fn).parameters.values())
        if [(p.name, p.kind) for p in wanted] != [(p.name, p.kind) for p in given]:
            wrong.append(f"{name}: parameters {inspect.signature(fn)} != {inspect.signature(want)}")
            continue
        for w, g in zip(wanted, given, strict=True):
            if (w.default is inspect.Parameter.empty) != (g.default is inspect.Parameter.empty):
                wrong.append(f"{name}: {w.name} has a default in one only")
    return wrong


def test_there_is_an_interface_per_concern() -> None:
    assert set(CONCERNS) >= {
        "StoreLifecycle", "VerdictStore", "ListStore", "LatePositiveStore", "JobStore",
        "AuditStore", "KudosStore", "ClusterStore", "HordeRequestStore", "ReviewStore",
        "HashBankStore", "EmbeddingStore", "SweepStore", "ProvenanceStore", "LemmyActionStore",
    }  # fmt: skip
    for name in CONCERNS:
        assert (PROTOCOLS[name].__doc__ or "").count("\n") >= 2, f"{name}: no contract"
    assert set(members(PROTOCOLS["UnifiedStore"])) >= {
        m for name in CONCERNS for m in members(PROTOCOLS[name])
    }


@pytest.mark.parametrize("impl", [Store, PgStore], ids=lambda c: c.__name__)
@pytest.mark.parametrize("protocol", sorted(PROTOCOLS))
def test_the_database_stores_implement_every_interface(impl: type, protocol: str) -> None:
    assert mismatches(impl, PROTOCOLS[protocol]) == []


@pytest.mark.parametrize("protocol", MemoryStore.CONCERNS)
def test_the_double_implements_the_interfaces_it_claims(protocol: str) -> None:
    assert mismatches(MemoryStore, PROTOCOLS[protocol]) == []


def test_the_double_does_not_claim_what_it_lacks() -> None:
    for name in set(CONCERNS) - set(MemoryStore.CONCERNS):
        assert mismatches(MemoryStore, PROTOCOLS[name]), name


async def test_attributes_are_there_on_an_open_store() -> None:
    attributes = {
        name
        for protocol in PROTOCOLS.values()
        for name, value in members(protocol).items()
        if isinstance(value, property)
    }
    assert attributes == {"dialect", "shared", "where", "holder", "health", "job_lease_s",
                          "audit_dropped"}  # fmt: skip
    store = await Store.open(":memory:")
    try:
        for name in attributes:
            assert getattr(store, name) is not None, name
    finally:
        await store.close()
    double = MemoryStore()
    for name in attributes:
        assert getattr(double, name) is not None, name


def test_a_horde_request_store_is_told_apart_at_run_time() -> None:
    """backends/horde.py keeps live requests only where the store has the concern."""
    assert isinstance(MemoryStore(), interfaces.HordeRequestStore)
    assert not isinstance(object(), interfaces.HordeRequestStore)
