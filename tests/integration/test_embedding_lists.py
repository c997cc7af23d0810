"""Embedding lists as data: HMA's signal form, bad rows, another model's list, and subscribed
lists over their caps (refused, the last good copy kept, memory bounded)."""

from __future__ import annotations

import asyncio
import binascii
import io
import json
import logging
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from aiohttp import web

from horde_scanner.backends.mock import MockBackend
from horde_scanner.signals.embedding_list import (
    EmbeddingEntry,
    Model,
    OtherModel,
    dump_hma,
    dump_json,
    read_entries,
)
from horde_scanner.signals.hash_list import ListFormatError, ParseReport
from horde_scanner.signals.hash_subscribe import CHANGED, FAILED
from horde_scanner.signals.vectors import BadVector, from_hex, to_hex
from horde_scanner.testing.service import make_settings, running_service
from horde_scanner.verdict import Signals
from tests.embedding_helpers import MODEL_ID, PREPROCESS, unit_vectors

MODEL = Model(MODEL_ID, PREPROCESS, 512)


def read(text: str, fmt: str | None = None, model: Model = MODEL, **kw):
    report = ParseReport()
    entries = list(read_entries(io.StringIO(text), fmt, model, report, **kw))
    return entries, report


# -- HMA's form --------------------------------------------------------------------------------


def test_the_hex_is_hmas_float32_bytes():
    vector = unit_vectors(1)[0]
    text = to_hex(vector)
    assert len(text) == 4096
    # tx-extension-clip: binascii.hexlify(vector.tobytes()) and np.frombuffer(unhexlify, float32)
    assert text == binascii.hexlify(vector.astype(np.float32).tobytes()).decode()
    back = np.frombuffer(binascii.unhexlify(text.encode()), dtype=np.float32)
    assert np.array_equal(from_hex(text, 512), back)


def test_hma_lines_round_trip_with_or_without_the_signal_type():
    vectors = unit_vectors(3)
    text = dump_hma(EmbeddingEntry(v) for v in vectors)
    assert text.count("\n") == 3 and all(len(line) == 4096 for line in text.splitlines())
    entries, report = read(text, "hma")
    assert report.skipped == 0
    assert np.array_equal(np.stack([e.vector for e in entries]), vectors)
    typed = "# exported from HMA\n\n" + "".join(f"clip {to_hex(v)}\n" for v in vectors)
    entries, report = read(typed)  # told apart from JSON by its first character
    assert len(entries) == 3 and report.skipped == 0


# -- bad input ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("zz" * 2048, "not hexadecimal"),
        ("00" * 1024, "4096 hex characters, got 2048"),
        (to_hex(unit_vectors(1)[0] * 2), "L2-normalised (length 1), got length 2.0000"),
        (to_hex(np.full(512, np.nan, np.float32)), "not a finite number"),
    ],
)
def test_a_bad_vector_says_what_is_wrong(text: str, message: str):
    with pytest.raises(BadVector, match=message.replace("(", r"\(").replace(")", r"\)")):
        from_hex(text, 512)


def test_bad_rows_are_skipped_with_their_line_numbers():
    good = EmbeddingEntry(unit_vectors(1)[0], source="peer.example")
    doc = json.loads(dump_json(MODEL, [good]))
    doc["entries"] += [
        {"embedding": "xy" * 2048},
        {"embedding": "00" * 100},
        {"embedding": to_hex(unit_vectors(1, 1)[0] * 0.5)},
        {"embedding": to_hex(unit_vectors(1, 2)[0]), "label": "weird"},
        "not an object",
    ]
    text = json.dumps(doc).replace("}, ", "},\n")
    entries, report = read(text)
    assert len(entries) == 1 and entries[0].source == "peer.example"
    assert report.skipped == 5
    messages = [str(e) for e in report.errors]
    assert any("not hexadecimal" in m for m in messages)
    assert any("got 200" in m for m in messages)
    assert any("L2-normalised" in m for m in messages)
    assert any("unknown label" in m for m in messages)
    assert all(m.startswith("line ") for m in messages)


def test_a_list_of_another_model_is_refused_by_name():
    text = dump_json(Model("someone-elses-clip", MODEL.preprocess, 512), [])
    with pytest.raises(OtherModel, match="someone-elses-clip.*tiny-test-encoder-v1"):
        read(text)
    other_prep = dump_json(Model(MODEL.model, "resize256-bilinear-centercrop-none", 512), [])
    with pytest.raises(OtherModel, match="preprocessing 'resize256-bilinear"):
        read(other_prep)
    # A header after the entries cannot vouch for them: the list is refused.
    late = '{"entries": [], "format": "horde-scanner-embeddings"}'
    with pytest.raises(ListFormatError):
        read(late)
    # What a source names is shown only in safe characters.
    hostile = dump_json(Model("evil\n<script>", MODEL.preprocess, 512), [])
    with pytest.raises(OtherModel) as refused:
        read(hostile)
    assert "\n" not in str(refused.value) and "<" not in str(refused.value)


# -- subscriptions over their caps ---------------------------------------------------------------


class ListServer:
    """Serves whatever `body` is now: bytes, or a callable writing a streamed response."""

    def __init__(self) -> None:
        self.body: object = b""

    async def handle(self, request: web.Request) -> web.StreamResponse:
        if callable(self.body):
            return await self.body(request)
        return web.Response(body=self.body, content_type="application/json")


async def endless_rows(request: web.Request) -> web.StreamResponse:
    """A list that never ends: valid rows, streamed, until the reader hangs up."""
    resp = web.StreamResponse(headers={"Content-Type": "application/json"})
    await resp.prepare(request)
    head = json.dumps(
        {
            "format": "horde-scanner-embeddings",
            "version": 1,
            "model": MODEL.model,
            "preprocess": MODEL.preprocess,
            "dim": 512,
        }
    )[:-1]
    await resp.write((head + ', "entries": [\n').encode())
    row = (json.dumps({"embedding": to_hex(unit_vectors(1)[0])}) + ",\n").encode()
    try:
        for _ in range(1_000_000):
            await resp.write(row * 16)
    except (ConnectionResetError, asyncio.CancelledError):
        pass
    return resp


async def test_lists_over_their_caps_are_refused_and_the_last_good_copy_kept(
    tmp_path: Path, encoder: Path, caplog: pytest.LogCaptureFixture
):
    server = ListServer()
    app = web.Application()
    app.router.add_get("/list", server.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    url = f"http://127.0.0.1:{runner.addresses[0][1]}/list"
    sub = {"name": "peer", "url": url, "refresh_s": 3600}
    settings = make_settings(
        tmp_path / "s.db",
        "http://127.0.0.1:9/api",
        embeddings={
            "model_path": encoder,
            "model_id": MODEL.model,
            "index_dir": tmp_path / "ix",
            "subscriptions": [sub],
            "max_list_rows": 100_000,
            "max_list_bytes": 8 * 1024 * 1024,
        },
    )
    clean = MockBackend(lambda image: Signals(backend="mock", nsfw=False, caption="a wall"))
    try:
        async with running_service(settings, backend=clean) as svc:
            subscriber = svc.parts.embedding_subscriber
            matcher = svc.parts.embeddings
            assert subscriber is not None and matcher is not None
            config = svc.parts.settings.embeddings.subscriptions[0]

            good = [EmbeddingEntry(v) for v in unit_vectors(2, 5)]
            server.body = dump_json(MODEL, good).encode()
            assert await subscriber.refresh(config) == CHANGED
            assert matcher.size == 2

            # A million rows (short ones: 3 MB) is over the row cap.
            server.body = (
                dump_json(MODEL, [])[:-4] + ",\n".join(["{}"] * 1_000_000) + "]}\n"
            ).encode()
            tracemalloc.start()
            try:
                assert await subscriber.refresh(config) == FAILED
                peak = tracemalloc.get_traced_memory()[1]
            finally:
                tracemalloc.stop()
            # Rows are counted, never held: far less than the 3 MB document.
            assert peak < 16 * 1024 * 1024, peak
            state = await svc.parts.store.hash_subscription("peer")
            assert state is not None and "more than 100000 rows" in (state.last_error or "")
            assert state.entries == 2
            assert matcher.size == 2
            assert await svc.parts.store.embedding_entry_count(MODEL.model) == 2

            # An endless list of valid rows is cut off at the byte cap while it arrives.
            server.body = endless_rows
            assert await subscriber.refresh(config) == FAILED
            state = await svc.parts.store.hash_subscription("peer")
            assert state is not None and "max_list_bytes" in (state.last_error or "")
            assert matcher.size == 2

            # A list of another model keeps the last good copy too.
            server.body = dump_json(Model("other", MODEL.preprocess, 512), good[:1]).encode()
            assert await subscriber.refresh(config) == FAILED
            assert matcher.size == 2

            # Bad rows are skipped and said by their line only: what the source sent in them
            # is never echoed into the log.
            secret = "not-a-label-a1b2c3"
            records = [e.record() for e in good]
            records[0]["label"] = secret
            head = dump_json(MODEL, [])[:-4]
            server.body = (head + "\n" + ",\n".join(map(json.dumps, records)) + "]}\n").encode()
            with caplog.at_level(logging.INFO):
                assert await subscriber.refresh(config) == CHANGED
            assert matcher.size == 1
            assert "skipped 1 bad rows (first at line 2)" in caplog.text
            assert secret not in caplog.text
    finally:
        await runner.cleanup()
