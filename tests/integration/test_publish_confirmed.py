"""What travels is what a person confirmed: a machine positive blocks its near copies here at
once, waits in the review queue, and enters the published list only when an admin confirms it
(saying who and when); an admin's allow lifts it and its near copies together."""

from __future__ import annotations

import time
from pathlib import Path

from PIL import Image

from horde_scanner.backends.mock import MockBackend
from horde_scanner.signals.hash_list import parse
from horde_scanner.testing import textures
from horde_scanner.testing.pictrs import validate_upload
from horde_scanner.testing.service import make_settings, running_service
from horde_scanner.verdict import Label, Signals, Verdict

ADMIN = "admin-token-0123456789"
LIST_TOKEN = "list-token-0123456789"
API = {"Authorization": f"Bearer {ADMIN}"}


def settings(tmp_path: Path, **hashes):
    return make_settings(
        tmp_path / "s.db",
        "http://127.0.0.1:9/api",
        admin={"token": ADMIN},
        hashes={"publish": True, "publish_token": LIST_TOKEN, "sync_interval_s": 0.1, **hashes},
    )


async def published(http, svc) -> list:
    async with http.get(
        f"{svc.url}/api/v1/hashes", headers={"Authorization": f"Bearer {LIST_TOKEN}"}
    ) as resp:
        assert resp.status == 200
        entries, errors = parse(await resp.read())
    assert not errors
    return entries


async def test_a_positive_travels_only_once_an_admin_confirms_it(tmp_path: Path, http):
    backend = MockBackend(textures.red_is_csam)
    picture = textures.textured("red", seed=71)
    async with running_service(settings(tmp_path), backend=backend) as svc:
        first = await validate_upload(http, svc.scan_url(), textures.encode(picture), "image/jpeg")
        assert first.status == 406 and first.body["route"] == "backend"
        sha = first.body["sha256"]

        # Not confirmed: not published...
        assert await published(http, svc) == []
        # ...but a re-encoded copy is still rejected here, without a fresh backend call.
        copy = textures.variants(picture)["recompressed-q35"]
        again = await validate_upload(http, svc.scan_url(), copy, "image/jpeg")
        assert again.status == 406 and again.body["route"] == "match"
        assert backend.calls == 1
        # It waits in the review queue.
        async with http.get(f"{svc.url}/api/v1/admin/queue", headers=API) as resp:
            queue = await resp.json()
        assert sha in [p["sha256"] for p in queue["positives"]]

        before = time.time()
        async with http.post(
            f"{svc.url}/api/v1/admin/verdicts/{sha}/confirm", json={"by": "alice"}, headers=API
        ) as resp:
            assert resp.status == 200, await resp.text()
        entries = await published(http, svc)
        assert {e.signal for e in entries} == {"sha256", "pdq"}
        assert [e.value for e in entries if e.signal == "sha256"] == [sha]
        for entry in entries:
            assert entry.confirmed_by == "api:alice"
            assert entry.confirmed_at is not None
            assert before - 1 <= entry.confirmed_at <= time.time() + 1
        # The copy's own verdict came from a hash match: never evidence of its own.
        assert again.body["sha256"] not in [e.value for e in entries]


async def test_unreviewed_positives_travel_only_when_configured(tmp_path: Path, http):
    backend = MockBackend(textures.red_is_csam)
    picture = textures.encode(textures.textured("red", seed=72))
    config = settings(tmp_path, publish_unreviewed=True)
    async with running_service(config, backend=backend) as svc:
        first = await validate_upload(http, svc.scan_url(), picture, "image/jpeg")
        assert first.status == 406
        entries = await published(http, svc)
        assert first.body["sha256"] in [e.value for e in entries]
        assert {e.confirmed_by for e in entries} == {""}
        assert all("unreviewed" in e.note for e in entries)

        # A remote worker's bare yes/no is a verdict here, never evidence for others.
        boolean = Verdict(
            label=Label.CSAM,
            backend="worker:gpu-1",
            signals=Signals(backend="worker:gpu-1", nsfw=True, extra={"evidence": False}),
        )
        await svc.parts.store.put_verdict("ee" * 32, boolean)
        assert "ee" * 32 not in [e.value for e in await published(http, svc)]


async def test_an_allow_lifts_the_positive_and_its_near_copies_at_once(tmp_path: Path, http):
    calls = []

    def wrong_once(image: Image.Image) -> Signals:
        # A false positive the first time, then the right answer.
        calls.append(1)
        if len(calls) == 1:
            return Signals(backend="mock", nsfw=True, caption="a photo of a young girl")
        return Signals(backend="mock", nsfw=False, caption="a photo of a red wall")

    picture = textures.textured("red", seed=73)
    async with running_service(settings(tmp_path), backend=MockBackend(wrong_once)) as svc:
        first = await validate_upload(http, svc.scan_url(), textures.encode(picture), "image/jpeg")
        assert first.status == 406
        copy = textures.variants(picture)["reencoded-png"]
        blocked = await validate_upload(http, svc.scan_url(), copy, "image/png")
        assert blocked.status == 406 and blocked.body["route"] == "match"

        sha = first.body["sha256"]
        allow = f"{svc.url}/api/v1/admin/verdicts/{sha}/allow"
        nul = {"by": "bob", "note": "a\u0000b"}  # no store keeps a NUL: refused, not a 500
        async with http.post(allow, json=nul, headers=API) as resp:
            assert resp.status == 400 and (await resp.json())["error"] == "bad_note"
        async with http.post(allow, json={"by": "bob"}, headers=API) as resp:
            assert resp.status == 200
        original = await validate_upload(
            http, svc.scan_url(), textures.encode(picture), "image/jpeg"
        )
        assert original.status == 200 and original.body["route"] == "allow"
        lifted = await validate_upload(http, svc.scan_url(), copy, "image/png")
        assert lifted.status == 200, lifted.body
        assert lifted.body["route"] == "backend" and lifted.body["label"] == "clean"
        assert await published(http, svc) == []
