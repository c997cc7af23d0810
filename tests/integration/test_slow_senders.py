"""Slow senders over loopback: a connection that trickles (or never sends) its body is cut off
with a JSON 408 and recorded, and a real pict-rs upload arriving meanwhile gets a verdict."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from horde_scanner.media.hashing import sha256_hex
from horde_scanner.testing import images
from horde_scanner.testing.horde import FakeHorde
from horde_scanner.testing.pictrs import ValidationResult, validate_upload
from horde_scanner.testing.service import (
    RunningService,
    make_settings,
    running_service,
    wait_for,
)

SLOW = 128


@asynccontextmanager
async def _service(
    tmp_path: Path,
    *,
    latency: float = 0.1,
    validation: dict[str, Any] | None = None,
    **server: Any,
) -> AsyncIterator[RunningService]:
    """The service in front of a fake Horde that answers after `latency`; `server` adds to
    the server section."""
    async with FakeHorde(latency=latency) as horde:
        settings = make_settings(
            tmp_path / "s.db", horde.url, validation=validation or {}, server=server
        )
        async with running_service(settings) as svc:
            yield svc


async def _unjudged(svc: RunningService, columns: str) -> list[Any]:
    """The audit rows of uploads answered without a judgement."""
    store = svc.parts.store
    await store.flush_audit()
    rows = await store.db.execute_fetchall(f"SELECT {columns} FROM audit WHERE event='unjudged'")
    return list(rows)


async def _upload_without_a_slot(http, svc: RunningService, data: bytes) -> ValidationResult:
    """An upload that finds the one admission slot taken (another upload being admitted, for
    longer than the deadline)."""
    gate = svc.parts.upload_gate
    await gate.acquire()
    try:
        return await validate_upload(http, svc.scan_url(), data, "image/jpeg")
    finally:
        gate.release()


async def _announce_big_upload(
    url: str,
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A raw connection that has announced a 10 MB JPEG body and sent its first byte."""
    parts = urlsplit(url)
    reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
    writer.write(
        (
            f"POST {parts.path} HTTP/1.1\r\nHost: {parts.netloc}\r\n"
            "Content-Type: image/jpeg\r\nContent-Length: 10000000\r\n\r\n"
        ).encode()
        + b"\xff"
    )
    return reader, writer


async def _slow_sender(url: str, *, drip: bool) -> tuple[int, dict[str, object]]:
    """Announce a 10 MB body, then send a byte a second (drip) or nothing; return the answer."""
    reader, writer = await _announce_big_upload(url)
    await writer.drain()

    async def dripping() -> None:
        while drip:
            await asyncio.sleep(1.0)
            writer.write(b"\x00")
            await writer.drain()

    dripper = asyncio.create_task(dripping())
    try:
        raw = await asyncio.wait_for(reader.read(), 30.0)  # the server closes after answering
    finally:
        dripper.cancel()
        writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    return status, json.loads(body)


async def _metric(http, base: str, name: str) -> dict[str, float]:
    async with http.get(f"{base}/metrics") as resp:
        text = await resp.text()
    found = {}
    for line in text.splitlines():
        if line.startswith(name + "{"):
            labels, _, value = line.partition("} ")
            found[labels.split('"')[1]] = float(value)
    return found


async def test_slow_senders_are_cut_off_and_a_real_upload_still_gets_a_verdict(
    tmp_path: Path, http
):
    async with _service(tmp_path, latency=0.2, validation={"deadline_s": 6.0}) as svc:
        slow = [
            asyncio.create_task(_slow_sender(svc.scan_url(), drip=i % 2 == 0)) for i in range(SLOW)
        ]
        # Every slow connection is in the handler, waiting on its body, before the real
        # upload comes (today's code let them hold all the admission slots).
        await asyncio.sleep(0.5)
        red = images.jpeg("red", seed=41)
        real = await validate_upload(http, svc.scan_url(), red, "image/jpeg")
        assert real.status == 406, real.body
        assert real.body["label"] == "csam" and real.body["route"] == "backend"

        answers = await asyncio.gather(*slow)
        assert {status for status, _ in answers} == {408}
        assert {body["error"] for _, body in answers} == {"too_slow"}
        assert all("upload_min_bytes_per_s" in str(body["detail"]) for _, body in answers)

        # Every cut-off is recorded (audit row with what is known) and counted.
        async def unjudged():
            rows = await _unjudged(svc, "source, detail")
            return rows if len(rows) >= SLOW else None

        rows = await wait_for(unjudged)
        assert len(rows) == SLOW
        detail = json.loads(rows[0][1])
        assert detail["declared_bytes"] == 10_000_000
        assert detail["received_bytes"] >= 1 and detail["address"] == "127.0.0.1"
        assert rows[0][0].startswith("upload:")
        counted = await _metric(http, svc.url, "horde_scanner_unjudged_uploads_total")
        assert counted == {"too_slow": SLOW}
        # The slots and the byte budget are all free again.
        assert svc.parts.upload_memory.used == 0


@pytest.mark.parametrize("memory", [1, 1000])
async def test_a_body_past_the_memory_budget_is_spooled_and_judged(
    tmp_path: Path, http, memory: int
):
    async with _service(tmp_path, upload_memory_bytes=memory) as svc:
        red = images.jpeg("red", seed=42)
        assert len(red) > memory
        result = await validate_upload(http, svc.scan_url(), red, "image/jpeg", chunk_size=1000)
        assert result.status == 406 and result.body["label"] == "csam"
        green = await validate_upload(
            http, svc.scan_url(), images.jpeg("green", seed=43), "image/jpeg"
        )
        assert green.status == 200 and green.body["label"] == "clean"
        assert svc.parts.upload_memory.used == 0 and svc.parts.upload_spool.used == 0


async def test_no_room_in_memory_or_spool_is_a_recorded_503(tmp_path: Path, http):
    async with _service(tmp_path, upload_memory_bytes=1, upload_spool_bytes=0) as svc:
        result = await validate_upload(http, svc.scan_url(), images.jpeg(seed=44), "image/jpeg")
        assert result.status == 503 and result.body["error"] == "busy"
        rows = await _unjudged(svc, "action")
        assert [r[0] for r in rows] == ["busy"]
        counted = await _metric(http, svc.url, "horde_scanner_unjudged_uploads_total")
        assert counted == {"busy": 1}


async def test_a_body_not_complete_by_the_deadline_is_cut_off(tmp_path: Path, http):
    async with _service(tmp_path, validation={"deadline_s": 1.0}, upload_min_bytes_per_s=1) as svc:
        # Fast enough for the rate (1 byte/s), never done by the deadline.
        status, body = await _slow_sender(svc.scan_url(), drip=True)
        assert status == 408 and body["error"] == "read_deadline"
        counted = await _metric(http, svc.url, "horde_scanner_unjudged_uploads_total")
        assert counted == {"read_deadline": 1}


async def test_no_admission_slot_by_the_deadline_is_recorded(tmp_path: Path, http):
    async with _service(
        tmp_path,
        validation={"deadline_s": 1.0, "on_timeout": "reject"},
        max_concurrent_uploads=1,
    ) as svc:
        result = await _upload_without_a_slot(http, svc, images.jpeg(seed=45))
        assert result.status == 406 and result.body["route"] == "overload"
        rows = await _unjudged(svc, "action, detail")
        assert [r[0] for r in rows] == ["overload"]
        detail = json.loads(rows[0][1])
        assert detail["received_bytes"] == len(images.jpeg(seed=45))
        assert detail["judged_later"] is True
        counted = await _metric(http, svc.url, "horde_scanner_unjudged_uploads_total")
        assert counted == {"overload": 1}
        store = svc.parts.store

        # Answered, but not dropped: judged once the slot is free.
        async def judged():
            return await store.get_verdict(sha256_hex(images.jpeg(seed=45)))

        stored = await wait_for(judged)
        assert stored.verdict.label.value == "clean" and stored.source.startswith("upload:")
        assert svc.parts.late_admissions.admitted == 1
        assert svc.parts.upload_memory.used == 0


async def test_a_positive_answered_while_overloaded_is_found_and_enforced_later(
    tmp_path: Path, http
):
    """on_timeout=accept lets an upload in when no slot came free: it must not slip through
    unjudged. Its body waits for a slot, is judged, and the positive is a late positive
    (purged through the pict-rs API when configured, here recorded for enforcement)."""
    async with _service(
        tmp_path,
        validation={"deadline_s": 1.0, "on_timeout": "accept"},
        max_concurrent_uploads=1,
    ) as svc:
        red = images.jpeg("red", seed=46)
        result = await _upload_without_a_slot(http, svc, red)
        assert result.status == 200 and result.body["route"] == "overload"
        store = svc.parts.store

        async def late():
            rows = await store.late_positives()
            return [r for r in rows if r.sha256 == sha256_hex(red)]

        (row,) = await wait_for(late)
        assert row.label == "csam"
        stored = await store.get_verdict(sha256_hex(red))
        assert stored is not None and stored.verdict.label.value == "csam"


async def test_a_cut_off_sender_that_keeps_sending_gets_its_whole_answer_and_the_end(
    tmp_path: Path, http
):
    """Lingering close: the 408 is followed by our FIN at once (not after server.linger_s), and
    bytes the sender is still pushing are read and dropped rather than answered by a reset,
    which would take the 408 with it."""
    async with _service(
        tmp_path,
        upload_rate_grace_s=0.2,
        linger_s=30.0,
        # A connection still lingering when the test ends is not waited for.
        shutdown_timeout_s=1.0,
    ) as svc:
        reader, writer = await _announce_big_upload(svc.scan_url())
        answered = asyncio.Event()

        async def pushing() -> int:
            sent = 0
            while not answered.is_set():  # too slow: a byte every 50 ms
                await asyncio.sleep(0.05)
                writer.write(b"\x00")
                sent += 1
            for _ in range(64):  # then, after the 408, a burst the server never reads
                writer.write(b"\x00" * 16384)
                await writer.drain()
                sent += 16384
            return sent

        pusher = asyncio.create_task(pushing())
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10.0)
            answered.set()
            # The end of the answer comes long before the 30 s linger is over.
            rest = await asyncio.wait_for(reader.read(), 10.0)
            sent = await asyncio.wait_for(pusher, 10.0)
        finally:
            pusher.cancel()
            writer.close()
        assert head.startswith(b"HTTP/1.1 408 ")
        assert b"Connection: close" in head
        assert json.loads(rest)["error"] == "too_slow"
        assert sent > 64 * 16384  # the burst was taken, not reset
