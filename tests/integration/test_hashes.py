"""Perceptual hashes end to end: PDQ robustness on generated pictures, near copies of a
positive rejected before any backend call, and hash lists shared between two running
instances over loopback (publish, subscribe, ETag, allow, review, a source that fails)."""

from __future__ import annotations

from pathlib import Path

from aiohttp import web

from horde_scanner.backends.mock import MockBackend
from horde_scanner.media.decode import DecodeLimits, decode
from horde_scanner.media.hashing import pdq_distance, pdq_hash, sha256_hex
from horde_scanner.signals.hash_index import PdqIndex, hex_to_words
from horde_scanner.signals.hash_list import HashEntry, dump_json, parse
from horde_scanner.store.hashes import LOCAL
from horde_scanner.store.sqlite import Store
from horde_scanner.testing import textures
from horde_scanner.testing.pictrs import validate_upload
from horde_scanner.testing.server import AppServer
from horde_scanner.testing.service import make_settings, running_service, wait_for
from horde_scanner.verdict import Signals

TOKEN = "s3cret-list-token"


def pdq_of(data: bytes):
    return pdq_hash(decode(data, DecodeLimits()).image)


def always_clean(image) -> Signals:
    return Signals(backend="mock", nsfw=False, caption="a photo of a landscape")


def settings_for(tmp_path: Path, name: str, **hashes):
    # The Horde URL is never contacted: every test here gives the service a MockBackend.
    return make_settings(
        tmp_path / f"{name}.db", "http://127.0.0.1:9/api", hashes={"sync_interval_s": 0.1, **hashes}
    )


# -- PDQ itself ---------------------------------------------------------------------------------


def test_copies_match_unrelated_pictures_do_not():
    originals = [textures.textured(c, seed=s) for c in ("red", "green", "blue") for s in (1, 2)]
    hashes = [pdq_of(textures.encode(img, quality=92)) for img in originals]
    assert all(h.quality >= 50 for h in hashes)
    index = PdqIndex(hex_to_words([h.hex for h in hashes]))
    for row, img in enumerate(originals):
        for kind, data in textures.variants(img).items():
            copy = pdq_of(data)
            distance = pdq_distance(copy.hex, hashes[row].hex)
            assert distance <= 31, f"{kind} of picture {row}: distance {distance}"
            hits = index.search(copy.hex, 31)
            assert [hit.row for hit in hits] == [row], kind
    unrelated = [
        pdq_of(textures.encode(textures.textured(c, seed=s)))
        for c in ("red", "green", "blue")
        for s in (50, 51, 52)
    ]
    for other in unrelated:
        assert min(pdq_distance(other.hex, h.hex) for h in hashes) > 31
        assert index.search(other.hex, 31) == []


def faint_pair() -> tuple[bytes, bytes]:
    """Two nearly flat pictures, one pixel apart: different bytes, the same PDQ, quality 0."""
    img = textures.faint((200, 30, 30), seed=3)
    other = img.copy()
    other.putpixel((0, 0), (0, 0, 0))
    return textures.encode(img, "PNG"), textures.encode(other, "PNG")


def test_flat_pictures_have_no_quality():
    a, b = (pdq_of(data) for data in faint_pair())
    assert a.quality < 50 and b.quality < 50
    # Their hashes agree: only the quality rule keeps them from matching each other.
    assert pdq_distance(a.hex, b.hex) <= 31
    assert pdq_of(textures.encode(textures.flat())).quality < 50


# -- one instance -------------------------------------------------------------------------------


async def test_near_copy_of_positive_is_rejected_without_backend(tmp_path: Path, http):
    backend = MockBackend(textures.red_is_csam)
    positive = textures.textured("red", seed=7)
    clean = textures.textured("green", seed=8)
    async with running_service(settings_for(tmp_path, "one"), backend=backend) as svc:
        first = await validate_upload(http, svc.scan_url(), textures.encode(positive), "image/jpeg")
        assert first.status == 406 and first.body["route"] == "backend"
        calls = backend.calls
        original_pdq = (await svc.parts.hashes.store.pdq_of(first.body["sha256"]))[0]
        for kind, data in textures.variants(positive).items():
            result = await validate_upload(http, svc.scan_url(), data, "image/jpeg")
            assert result.status == 406, kind
            assert result.body["route"] == "match" and result.body["label"] == "csam"
            assert original_pdq.hex in result.body["reasons"][0]
            assert first.body["sha256"] in result.body["reasons"][0]
        assert backend.calls == calls

        # A clean verdict is never lent to a near copy: the copy is judged itself.
        ok = await validate_upload(http, svc.scan_url(), textures.encode(clean), "image/jpeg")
        assert ok.status == 200
        calls = backend.calls
        copy = textures.variants(clean)["recompressed-q35"]
        again = await validate_upload(http, svc.scan_url(), copy, "image/jpeg")
        assert again.status == 200 and again.body["route"] == "backend"
        assert backend.calls == calls + 1

    # The PDQ is stored with the verdict and the index is rebuilt from it at start-up.
    async with running_service(settings_for(tmp_path, "one"), backend=backend) as svc:
        calls = backend.calls
        data = textures.encode(textures.trim(positive, 0.004), quality=80)
        result = await validate_upload(http, svc.scan_url(), data, "image/jpeg")
        assert result.status == 406 and result.body["route"] == "match"
        assert backend.calls == calls


async def test_deny_entry_arriving_later_beats_a_cached_clean_verdict(tmp_path: Path, http):
    backend = MockBackend(always_clean)
    picture = textures.textured("green", seed=17)
    data = textures.encode(picture)
    async with running_service(settings_for(tmp_path, "late"), backend=backend) as svc:
        first = await validate_upload(http, svc.scan_url(), data, "image/jpeg")
        assert first.status == 200 and first.body["label"] == "clean"
        again = await validate_upload(http, svc.scan_url(), data, "image/jpeg")
        assert again.body["route"] == "cache"
        # Another process (an admin's import) adds a look-alike's PDQ to the deny list.
        reported = pdq_of(textures.variants(picture)["webp-thumbnail"]).hex
        async with await Store.open(tmp_path / "late.db") as admin:
            await admin.add_hash_entries(LOCAL, [HashEntry("pdq", reported, note="#12")])
        result = await wait_for(lambda: _upload_rejected(http, svc.scan_url(), data))
        assert result.body["route"] == "match" and "note: #12" in result.body["reasons"][0]
        assert backend.calls == 1


async def test_flat_pictures_never_match(tmp_path: Path, http):
    backend = MockBackend(textures.red_is_csam)
    red, other = faint_pair()
    async with running_service(settings_for(tmp_path, "flat"), backend=backend) as svc:
        first = await validate_upload(http, svc.scan_url(), red, "image/png")
        assert first.status == 406 and first.body["route"] == "backend"
        calls = backend.calls
        second = await validate_upload(http, svc.scan_url(), other, "image/png")
        # Rejected all the same, but by the backend, not by a low-quality hash.
        assert second.body["sha256"] != first.body["sha256"]
        assert second.body["route"] == "backend"
        assert backend.calls == calls + 1


# -- two instances ------------------------------------------------------------------------------


async def test_subscribed_list_rejects_near_copy_without_backend(tmp_path: Path, http):
    backend_a = MockBackend(textures.red_is_csam)
    backend_b = MockBackend(always_clean)  # B's own backend would let it through
    positive = textures.textured("red", seed=21)
    # A publishes its machine positives unreviewed here: what travels is the subject of
    # tests/integration/test_publish_confirmed.py, these tests are about how it travels.
    a_settings = settings_for(
        tmp_path,
        "a",
        publish=True,
        publish_token=TOKEN,
        publish_source="a.example",
        publish_unreviewed=True,
    )
    async with running_service(a_settings, backend=backend_a) as a:
        first = await validate_upload(http, a.scan_url(), textures.encode(positive), "image/jpeg")
        assert first.status == 406

        b_settings = settings_for(
            tmp_path,
            "b",
            subscriptions=[
                {
                    "name": "a",
                    "url": f"{a.url}/api/v1/hashes",
                    "token": TOKEN,
                    "refresh_s": 0.2,
                }
            ],
        )
        async with running_service(b_settings, backend=backend_b) as b:
            hashes_b = b.parts.hashes
            await wait_for(lambda: _has(hashes_b.size > 0))
            copy = textures.variants(positive)["webp-thumbnail"]
            result = await validate_upload(http, b.scan_url(), copy, "image/webp")
            assert result.status == 406 and result.body["route"] == "match"
            assert "subscribed list 'a'" in result.body["reasons"][0]
            assert "source a.example" in result.body["reasons"][0]
            assert backend_b.calls == 0
            # The exact bytes are on the list by sha256 too.
            exact = await validate_upload(
                http, b.scan_url(), textures.encode(positive), "image/jpeg"
            )
            assert exact.status == 406 and backend_b.calls == 0
            # Something unrelated is B's own backend's business.
            other = textures.encode(textures.textured("red", seed=99))
            judged = await validate_upload(http, b.scan_url(), other, "image/jpeg")
            assert judged.status == 200 and backend_b.calls == 1

            # ETag: further refreshes are 304s and move no list data.
            state = await hashes_b.store.hash_subscription("a")
            assert state is not None and state.etag
            fetched = state.bytes_fetched
            await wait_for(lambda: _status_is(hashes_b, "a", 304))
            state = await hashes_b.store.hash_subscription("a")
            assert state.bytes_fetched == fetched and state.entries == 2

        async with http.get(
            f"{a.url}/api/v1/hashes", headers={"Authorization": f"Bearer {TOKEN}"}
        ) as resp:
            assert resp.status == 200
            etag = resp.headers["ETag"]
            entries, errors = parse(await resp.read())
            assert not errors
            assert {(e.signal, e.source) for e in entries} == {
                ("sha256", "a.example"),
                ("pdq", "a.example"),
            }
        async with http.get(
            f"{a.url}/api/v1/hashes",
            headers={"Authorization": f"Bearer {TOKEN}", "If-None-Match": etag},
        ) as resp:
            assert resp.status == 304 and await resp.read() == b""
        async with http.get(f"{a.url}/api/v1/hashes") as resp:
            assert resp.status == 401 and (await resp.json())["error"] == "unauthorized"


async def test_publishing_is_off_by_default(tmp_path: Path, http):
    async with running_service(settings_for(tmp_path, "off"), backend=MockBackend()) as svc:
        async with http.get(f"{svc.url}/api/v1/hashes") as resp:
            assert resp.status == 404 and (await resp.json())["error"] == "not_published"


async def test_allow_overrides_subscribed_deny_and_removal_propagates(tmp_path: Path, http):
    backend_a = MockBackend(textures.red_is_csam)
    backend_b = MockBackend(always_clean)
    positive = textures.textured("red", seed=31)
    copies = textures.variants(positive)
    a_settings = settings_for(
        tmp_path, "a", publish=True, publish_public=True, publish_unreviewed=True
    )
    async with running_service(a_settings, backend=backend_a) as a:
        first = await validate_upload(http, a.scan_url(), textures.encode(positive), "image/jpeg")
        assert first.status == 406
        b_settings = settings_for(
            tmp_path,
            "b",
            subscriptions=[{"name": "a", "url": f"{a.url}/api/v1/hashes", "refresh_s": 0.2}],
        )
        async with running_service(b_settings, backend=backend_b) as b:
            await wait_for(lambda: _has(b.parts.hashes.size > 0))
            png = copies["reencoded-png"]
            rejected = await validate_upload(http, b.scan_url(), png, "image/png")
            assert rejected.status == 406 and rejected.body["route"] == "match"

            # B's admin says the picture is fine (the CLI's `allow`: another connection).
            async with await Store.open(tmp_path / "b.db") as admin:
                await admin.set_list(sha256_hex(png), "allow", note="false positive", by="cli")
            allowed = await wait_for(lambda: _upload_ok(http, b.scan_url(), png))
            assert allowed.body["route"] == "allow"
            # The allow also overrides the subscribed PDQ entry for other copies...
            calls = backend_b.calls
            other = await wait_for(
                lambda: _upload_ok(http, b.scan_url(), copies["recompressed-q35"])
            )
            assert other.body["route"] == "backend" and backend_b.calls == calls + 1
            # ...and the original's exact sha256 on A's list still counts.
            exact = await validate_upload(
                http, b.scan_url(), textures.encode(positive), "image/jpeg"
            )
            assert exact.status == 406

            # A's admin removes the entry at the source: it leaves A's published list, and
            # B forgets it on its next refresh.
            async with await Store.open(tmp_path / "a.db") as admin:
                await admin.set_list(first.body["sha256"], "allow", by="cli")

            async def gone() -> bool:
                async with http.get(f"{a.url}/api/v1/hashes") as resp:
                    entries, _ = parse(await resp.read())
                return not entries

            await wait_for(gone)
            upscaled = copies["upscaled"]
            result = await wait_for(lambda: _upload_ok(http, b.scan_url(), upscaled))
            assert result.body["route"] == "backend"


async def test_review_source_accepts_and_flags(tmp_path: Path, http):
    backend_a = MockBackend(textures.red_is_csam)
    backend_b = MockBackend(always_clean)
    positive = textures.textured("red", seed=41)
    a_settings = settings_for(
        tmp_path, "a", publish=True, publish_public=True, publish_unreviewed=True
    )
    async with running_service(a_settings, backend=backend_a) as a:
        await validate_upload(http, a.scan_url(), textures.encode(positive), "image/jpeg")
        b_settings = settings_for(
            tmp_path,
            "b",
            subscriptions=[
                {
                    "name": "maybe",
                    "url": f"{a.url}/api/v1/hashes",
                    "trust": "review",
                    "refresh_s": 30,
                }
            ],
        )
        async with running_service(b_settings, backend=backend_b) as b:
            await wait_for(lambda: _has(b.parts.hashes.size > 0))
            copy = textures.variants(positive)["recompressed-q35"]
            result = await validate_upload(http, b.scan_url(), copy, "image/jpeg")
            assert result.status == 200 and result.body["route"] == "backend"
            assert backend_b.calls == 1
            flags = await b.parts.hashes.store.hash_flags()
            assert [(f.sha256, f.origin, f.signal) for f in flags] == [
                (result.body["sha256"], "maybe", "pdq")
            ]
            trail = await b.parts.store.audit_trail(result.body["sha256"])
            assert "hash_review" in [t.event for t in trail]


async def test_failing_source_keeps_last_good_copy(tmp_path: Path, http):
    good = [
        HashEntry("pdq", pdq_of(textures.encode(textures.textured("red", seed=51))).hex),
        HashEntry("sha256", "ab" * 32, note="reported"),
    ]
    mode = {"now": "good"}

    async def serve(request: web.Request) -> web.Response:
        if mode["now"] == "good":
            return web.Response(
                text=dump_json(good), content_type="application/json", headers={"ETag": '"v1"'}
            )
        if mode["now"] == "error":
            return web.Response(status=503, text="maintenance")
        if mode["now"] == "garbage":
            return web.Response(text="<html>not a list</html>", content_type="text/html")
        # Valid JSON, every row wrong: wrong hex length, unknown type.
        return web.json_response(
            [{"signal": "pdq", "value": "abc"}, {"signal": "md5", "value": "00" * 16}]
        )

    source = web.Application()
    source.router.add_get("/list", serve)
    server = AppServer(source)
    url = f"{await server.start()}/list"
    settings = settings_for(
        tmp_path, "sub", subscriptions=[{"name": "src", "url": url, "refresh_s": 3600}]
    )
    try:
        async with running_service(settings, backend=MockBackend()) as svc:
            subscriber = svc.parts.subscriber
            sub = settings.hashes.subscriptions[0]
            hashes = svc.parts.hashes
            await wait_for(lambda: _has(hashes.size == 1))
            for failure in ("error", "garbage", "bad-rows", "down"):
                mode["now"] = failure
                if failure == "down":
                    await server.stop()
                assert await subscriber.refresh(sub) == "failed"
                state = await hashes.store.hash_subscription("src")
                assert state.entries == 2 and state.last_error, failure
                assert hashes.size == 1
                assert len(await hashes.store.sha256_entries("ab" * 32)) == 1
            # The service still answers.
            result = await validate_upload(
                http, svc.scan_url(), textures.encode(textures.textured("blue")), "image/jpeg"
            )
            assert result.status == 200
    finally:
        await server.stop()


async def _has(value: bool) -> bool:
    return value


async def _status_is(matcher, name: str, status: int) -> bool:
    state = await matcher.store.hash_subscription(name)
    return state is not None and state.last_status == status


async def _upload_rejected(http, url: str, data: bytes):
    result = await validate_upload(http, url, data, "application/octet-stream")
    return result if result.status == 406 else None


async def _upload_ok(http, url: str, data: bytes):
    result = await validate_upload(http, url, data, "application/octet-stream")
    return result if result.status == 200 else None
