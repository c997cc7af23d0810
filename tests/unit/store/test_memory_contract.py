"""The in-memory double (store/memory.py) keeps the contract of the concerns it implements:
the same clauses the SQLite and PostgreSQL stores pass (tests/integration/store/
test_contract.py), and what it says of itself (one process, nothing kept)."""

from __future__ import annotations

import pytest

from horde_scanner.store.memory import MemoryStore
from horde_scanner.testing.store_contract import CLAUSES, A, Promise, verdict

MINE = [p for p in CLAUSES if p.concern in MemoryStore.CONCERNS]


def test_the_double_runs_a_clause_of_every_concern_it_claims() -> None:
    claimed = set(MemoryStore.CONCERNS) - {"StoreLifecycle"}  # lifecycle: the tests below
    assert {p.concern for p in MINE} == claimed


@pytest.mark.parametrize("promise", MINE, ids=lambda p: f"{p.concern}.{p.name}")
async def test_clause(promise: Promise) -> None:
    async with MemoryStore() as store:
        await promise.check(store)


async def test_its_records_are_copies_the_caller_cannot_change_behind_its_back() -> None:
    async with MemoryStore() as store:
        detail = {"k": [1]}
        await store.audit("judged", sha256=A, detail=detail)
        detail["k"].append(2)
        [row] = await store.audit_trail(A)
        assert row.detail == {"k": [1]}
        original = verdict()
        await store.put_verdict(A, original)
        original.reasons.append("changed later")
        stored = await store.get_verdict(A)
        assert stored is not None and stored.verdict.reasons == ["clean because"]
        stored.verdict.reasons.append("changed by a reader")
        again = await store.get_verdict(A)
        assert again is not None and again.verdict.reasons == ["clean because"]


async def test_it_is_one_process_and_closing_writes_the_audit_buffer() -> None:
    store = MemoryStore(holder="test:1")
    assert (store.dialect, store.shared, store.job_lease_s, store.holder) == (
        "memory",
        False,
        0.0,
        "test:1",
    )
    heard: list[tuple[str, str]] = []
    store.subscribe(lambda kind, key: heard.append((kind, key)))
    before = await store.data_version()
    await store.put_verdict(A, verdict())
    await store.audit("judged", sha256=A)
    assert heard == [] and await store.data_version() == before  # its own changes
    await store.ping()
    await store.probe()
    assert store.health.available
    await store.close()
    assert len(store._t.audit) == 1  # written by close
    with pytest.raises(RuntimeError, match="closed"):
        await store.get_verdict(A)


async def test_records_of_the_other_concerns_are_copies_too() -> None:
    async with MemoryStore() as store:
        await store.want_provenance(A, "sweep", aliases=["a.png"], seen_at=None)
        row = await store.provenance(A)
        assert row is not None
        row.aliases.append("changed by a reader")
        again = await store.provenance(A)
        assert again is not None and again.aliases == ["a.png"]
        reasons = ["r"]
        action, _ = await store.begin_scan_action(
            source="local:/srv", identifier="f", sha256=A, size=1, mtime=1.0,
            action="quarantine", label="csam", reasons=reasons,
        )  # fmt: skip
        reasons.append("changed by the caller")
        action.detail["k"] = "changed by a reader"
        got = await store.get_scan_action(action.id)
        assert got is not None and (got.reasons, got.detail) == (["r"], {})
        run = await store.start_scan_run("local:/srv", "report", follow=False)
        run.cursor = "moved but not saved"
        unsaved = await store.unfinished_scan_run("local:/srv")
        assert unsaved is not None and unsaved.cursor is None
