"""The quarantine contract sweeps rely on: files held in one local directory, the original
identifier recorded, release through a restorer per origin, discard deletes."""

from __future__ import annotations

import asyncio
import stat
from pathlib import Path

from horde_scanner.media.hashing import sha256_hex
from horde_scanner.review.quarantine import Quarantine, QuarantineItem
from horde_scanner.store.memory import MemoryStore


class RecordingRestorer:
    def __init__(self) -> None:
        self.restored: list[tuple[str, bytes]] = []

    async def restore(self, item: QuarantineItem, held_file: Path) -> str:
        self.restored.append((item.identifier, await asyncio.to_thread(held_file.read_bytes)))
        return f"uploaded back to {item.identifier}"


async def test_admit_release_and_discard(tmp_path: Path):
    async with MemoryStore() as store:  # the rows: bookkeeping (tests/integration/store/)
        q = Quarantine(store, tmp_path / "q")
        data = b"\xff\xd8\xff pretend jpeg"
        sha = sha256_hex(data)
        original = tmp_path / "store" / "a" / "b.jpg"
        original.parent.mkdir(parents=True)
        original.write_bytes(data)

        item = await q.admit_file(
            sha, original, origin="local", detail={"instance": "lemmy.example"}
        )
        assert not original.exists()
        held = q.held_path(sha)
        assert held == tmp_path / "q" / sha[:2] / sha and held.read_bytes() == data
        assert stat.S_IMODE(held.stat().st_mode) == 0o600
        assert stat.S_IMODE(held.parent.stat().st_mode) == 0o700
        assert (item.origin, item.identifier, item.state) == ("local", str(original), "held")
        assert await q.held_bytes(sha) == data
        assert await q.held_among([sha, "0" * 64]) == {sha}

        # Same bytes found in a second place (another store): held once, recorded twice.
        s3 = RecordingRestorer()
        q.register_restorer("s3", s3)
        await q.admit_bytes(sha, data, origin="s3", identifier="bucket/key.jpg")
        assert len(await q.held(sha)) == 2

        result = await q.release(sha, by="api:alice")
        assert {r["identifier"] for r in result.released} == {str(original), "bucket/key.jpg"}
        assert result.failed == []
        assert original.read_bytes() == data and s3.restored == [("bucket/key.jpg", data)]
        assert not held.exists() and await q.held_bytes(sha) is None
        assert {i.state for i in await q.items(sha)} == {"released"}
        assert {i.updated_by for i in await q.items(sha)} == {"api:alice"}
        events = [a.event for a in await store.audit_trail(sha)]
        assert events.count("quarantined") == 2

        other = b"another file"
        other_sha = sha256_hex(other)
        await q.admit_bytes(other_sha, other, origin="ssh", identifier="host:/srv/x")
        assert await q.discard(other_sha, by="page:bob") == 1
        assert not q.held_path(other_sha).exists()
        assert [i.state for i in await q.items(other_sha)] == ["deleted"]
        assert await q.counts() == {"released": 2, "deleted": 1}


async def test_release_never_overwrites_and_reports_missing_restorers(tmp_path: Path):
    async with MemoryStore() as store:  # the rows: bookkeeping (tests/integration/store/)
        q = Quarantine(store, tmp_path / "q")
        data = b"bytes"
        sha = sha256_hex(data)
        original = tmp_path / "x.jpg"
        await q.admit_bytes(sha, data, origin="local", identifier=str(original))
        original.write_bytes(b"something new uploaded since")
        await q.admit_bytes(sha, data, origin="ftp", identifier="ftp://host/x")
        result = await q.release(sha, by="cli")
        assert result.released[0]["what"].startswith("left alone")
        assert original.read_bytes() == b"something new uploaded since"
        assert "no restorer for origin 'ftp'" in result.failed[0]["why"]
        # A copy that could not be put back keeps the held file for a manual restore.
        assert q.held_path(sha).read_bytes() == data
