"""Image embeddings across instances: an admin's confirmed positive on one instance holds a near
variant on another that never saw the original, through the published embedding list; a list
of another model is refused by name; an admin's allow lifts a match; without a model file the
feature is off and says so."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from PIL import Image

from horde_scanner.backends.mock import MockBackend
from horde_scanner.signals.embedding_list import Model, read_entries
from horde_scanner.signals.hash_list import ParseReport
from horde_scanner.testing import textures
from horde_scanner.testing.pictrs import validate_upload
from horde_scanner.testing.service import make_settings, running_service, wait_for
from horde_scanner.verdict import Signals
from tests.embedding_helpers import MODEL_ID, PREPROCESS

ADMIN = "admin-token-0123456789"
LIST_TOKEN = "list-token-0123456789"
API = {"Authorization": f"Bearer {ADMIN}"}

pytestmark = pytest.mark.timeout(120)


def always_clean(image: Image.Image) -> Signals:
    return Signals(backend="mock", nsfw=False, caption="a photo of a red wall")


def instance(tmp_path: Path, name: str, encoder: Path, **embeddings):
    return make_settings(
        tmp_path / f"{name}.db",
        "http://127.0.0.1:9/api",
        admin={"token": ADMIN},
        hashes={"publish": True, "publish_token": LIST_TOKEN, "sync_interval_s": 0.1},
        embeddings={
            "model_path": encoder,
            "model_id": MODEL_ID,
            "index_dir": tmp_path / f"{name}-index",
            "sync_interval_s": 0.1,
            **embeddings,
        },
    )


def subscription(url: str, **extra) -> dict:
    return {
        "name": "peer",
        "url": f"{url}/api/v1/embeddings",
        "token": LIST_TOKEN,
        "refresh_s": 0.2,
        **extra,
    }


async def embedding_list(http, svc) -> tuple[dict, list]:
    async with http.get(
        f"{svc.url}/api/v1/embeddings", headers={"Authorization": f"Bearer {LIST_TOKEN}"}
    ) as resp:
        assert resp.status == 200, await resp.text()
        body = await resp.read()
    header = json.loads(body)
    report = ParseReport()
    entries = list(
        read_entries(io.StringIO(body.decode()), "json", Model(MODEL_ID, PREPROCESS, 512), report)
    )
    assert report.skipped == 0
    return header, entries


async def confirm(http, svc, sha: str) -> None:
    async with http.post(
        f"{svc.url}/api/v1/admin/verdicts/{sha}/confirm", json={"by": "alice"}, headers=API
    ) as resp:
        assert resp.status == 200, await resp.text()


async def test_a_confirmed_positive_holds_its_variant_on_another_instance(
    tmp_path: Path, http, encoder: Path
):
    picture = textures.textured("red", seed=71)
    a_settings = instance(tmp_path, "a", encoder)
    async with running_service(a_settings, backend=MockBackend(textures.red_is_csam)) as a:
        first = await validate_upload(http, a.scan_url(), textures.encode(picture), "image/jpeg")
        assert first.status == 406 and first.body["route"] == "backend"
        # A machine positive is not published until an admin confirms it.
        assert (await embedding_list(http, a))[1] == []
        await confirm(http, a, first.body["sha256"])
        header, entries = await embedding_list(http, a)
        assert header["model"] == MODEL_ID and header["preprocess"] == PREPROCESS
        assert header["dim"] == 512
        assert len(entries) == 1 and entries[0].confirmed_by == "api:alice"
        assert len(entries[0].hex) == 4096

        b_backend = MockBackend(always_clean)
        b_settings = instance(tmp_path, "b", encoder, subscriptions=[subscription(a.url)])
        async with running_service(b_settings, backend=b_backend) as b:
            matcher = b.parts.embeddings
            assert matcher is not None
            await wait_for(lambda: _true(matcher.size == 1), timeout=10)
            # B never saw the original: a re-compressed copy of it is held there.
            variant = textures.variants(picture)["recompressed-q35"]
            held = await validate_upload(http, b.scan_url(), variant, "image/jpeg")
            assert held.status == 406, held.body
            assert held.body["route"] == "match" and held.body["label"] == "csam"
            reason = " ".join(held.body["reasons"])
            assert "embedding match (cosine 0.9" in reason
            assert "subscribed list 'peer'" in reason
            # An unrelated image still passes.
            other = textures.encode(textures.textured("red", seed=90))
            passed = await validate_upload(http, b.scan_url(), other, "image/jpeg")
            assert passed.status == 200 and passed.body["label"] == "clean"
            # B's own list holds none of it: what it subscribed to is never echoed.
            assert (await embedding_list(http, b))[1] == []


async def test_an_allow_lifts_an_embedding_match(tmp_path: Path, http, encoder: Path):
    picture = textures.textured("red", seed=72)
    async with running_service(
        instance(tmp_path, "a", encoder), backend=MockBackend(textures.red_is_csam)
    ) as a:
        first = await validate_upload(http, a.scan_url(), textures.encode(picture), "image/jpeg")
        await confirm(http, a, first.body["sha256"])
        b_settings = instance(tmp_path, "b", encoder, subscriptions=[subscription(a.url)])
        async with running_service(b_settings, backend=MockBackend(always_clean)) as b:
            matcher = b.parts.embeddings
            assert matcher is not None
            await wait_for(lambda: _true(matcher.size == 1), timeout=10)
            copies = textures.variants(picture)
            held = await validate_upload(http, b.scan_url(), copies["reencoded-png"], "image/png")
            assert held.status == 406 and held.body["route"] == "match"
            async with http.post(
                f"{b.url}/api/v1/admin/verdicts/{held.body['sha256']}/allow",
                json={"by": "bob"},
                headers=API,
            ) as resp:
                assert resp.status == 200, await resp.text()
            again = await validate_upload(http, b.scan_url(), copies["reencoded-png"], "image/png")
            assert again.status == 200 and again.body["route"] == "allow"
            # Another near copy of the same entry is lifted too (the allow overrides it).
            lifted = await validate_upload(
                http, b.scan_url(), copies["webp-thumbnail"], "image/webp"
            )
            assert lifted.status == 200, lifted.body
            assert lifted.body["label"] == "clean" and lifted.body["route"] == "backend"


async def test_a_list_of_another_model_is_refused_by_name(tmp_path: Path, http, encoder: Path):
    picture = textures.textured("red", seed=74)
    other = instance(tmp_path, "a", encoder, model_id="some-other-model")
    async with running_service(other, backend=MockBackend(textures.red_is_csam)) as a:
        first = await validate_upload(http, a.scan_url(), textures.encode(picture), "image/jpeg")
        await confirm(http, a, first.body["sha256"])
        b_settings = instance(tmp_path, "b", encoder, subscriptions=[subscription(a.url)])
        async with running_service(b_settings, backend=MockBackend(always_clean)) as b:
            store = b.parts.store

            async def refused():
                state = await store.hash_subscription("peer")
                return state if state is not None and state.last_error else None

            state = await wait_for(refused, timeout=10)
            assert "some-other-model" in state.last_error
            assert MODEL_ID in state.last_error
            assert b.parts.embeddings is not None and b.parts.embeddings.size == 0
            variant = textures.variants(picture)["recompressed-q35"]
            passed = await validate_upload(http, b.scan_url(), variant, "image/jpeg")
            assert passed.status == 200


async def test_without_a_model_file_the_feature_is_off_and_says_so(tmp_path: Path, http):
    settings = instance(tmp_path, "a", tmp_path / "missing.onnx")
    async with running_service(settings, backend=MockBackend(always_clean)) as svc:
        async with http.get(f"{svc.url}/readyz") as resp:
            body = await resp.json()
        assert body["embeddings"]["enabled"] is False
        assert "missing.onnx: no such file" in body["embeddings"]["detail"]
        assert "\n" not in body["embeddings"]["detail"]
        # Uploads are judged as before.
        result = await validate_upload(
            http, svc.scan_url(), textures.encode(textures.textured("red", seed=1)), "image/jpeg"
        )
        assert result.status == 200
        async with http.get(
            f"{svc.url}/api/v1/embeddings", headers={"Authorization": f"Bearer {LIST_TOKEN}"}
        ) as resp:
            assert resp.status == 404
            assert (await resp.json())["error"] == "not_published"


async def _true(value: bool) -> bool:
    return value


async def test_an_embedding_a_backend_sends_counts_when_the_encoder_gives_none(
    tmp_path: Path, http, encoder: Path
):
    from horde_scanner.signals.encoder import ImageEncoder
    from horde_scanner.signals.vectors import to_hex

    listed = textures.textured("red", seed=76)
    vector = ImageEncoder(encoder, PREPROCESS, 512).encode(listed)

    def worker_like(image: Image.Image) -> Signals:
        # A remote worker or the local GPU backend computing the same model's embedding.
        sent = {"model": MODEL_ID, "preprocess": PREPROCESS, "vector": to_hex(vector)}
        return Signals(backend="mock", nsfw=False, caption="a wall", extra={"embedding": sent})

    async with running_service(
        instance(tmp_path, "a", encoder), backend=MockBackend(worker_like)
    ) as svc:
        matcher = svc.parts.embeddings
        assert matcher is not None and matcher.pool is not None
        from horde_scanner.signals.embedding_list import EmbeddingEntry
        from horde_scanner.store.hashes import LOCAL

        await svc.parts.store.add_embedding_entries(LOCAL, MODEL_ID, [EmbeddingEntry(vector)])
        await matcher.sync()

        async def busy(image):
            return None  # the encoder's queue full

        matcher.pool.encode = busy  # type: ignore[method-assign]
        other = textures.encode(textures.textured("green", seed=77))
        held = await validate_upload(http, svc.scan_url(), other, "image/jpeg")
        assert held.status == 406 and held.body["route"] == "match", held.body
        assert "imported list" in " ".join(held.body["reasons"])


async def test_without_usearch_the_feature_is_off_and_says_so(
    tmp_path: Path, http, encoder: Path, monkeypatch
):
    import importlib.util

    found = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "usearch" else found(name, *a)
    )
    async with running_service(
        instance(tmp_path, "a", encoder), backend=MockBackend(always_clean)
    ) as svc:
        async with http.get(f"{svc.url}/readyz") as resp:
            body = await resp.json()
        assert body["embeddings"] == {
            "enabled": False,
            "detail": "off: embeddings need usearch: pip install 'horde-scanner[embeddings]'",
        }
        result = await validate_upload(
            http, svc.scan_url(), textures.encode(textures.textured("red", seed=2)), "image/jpeg"
        )
        assert result.status == 200
