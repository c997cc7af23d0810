"""Tests of the test doubles themselves, over real loopback HTTP.

Most horde tests drive a FakeClock instead of sleeping, so they are instant and exact; one test
keeps the real clock to prove the default path works.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import io
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from PIL import Image

from horde_scanner.testing.horde import (
    ANON_APIKEY,
    INTERROGATION_LISTS,
    FakeHorde,
    default_judge,
    marker_b64,
    marker_image,
)
from horde_scanner.testing.pictrs import FakePictrs, hash_slug, pictrs_hash, validate_upload

AGENT = "horde-scanner:0.1:tests"
HEADERS = {"apikey": ANON_APIKEY, "Client-Agent": AGENT}
ALL3 = ("caption", "nsfw", "interrogation")


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as client:
        yield client


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


async def submit(
    session: aiohttp.ClientSession,
    horde: FakeHorde,
    forms: tuple[str, ...] = ALL3,
    *,
    colour: str = "green",
    headers: dict[str, str] | None = None,
    **extra: Any,
) -> tuple[int, Any]:
    body: dict[str, Any] = {
        "source_image": marker_b64(colour),
        "forms": [{"name": name} for name in forms],
        **extra,
    }
    async with session.post(
        f"{horde.url}/v2/interrogate/async",
        json=body,
        headers=HEADERS if headers is None else headers,
    ) as resp:
        return resp.status, await resp.json()


async def status(
    session: aiohttp.ClientSession, horde: FakeHorde, rid: str, method: str = "GET"
) -> tuple[int, Any]:
    async with session.request(method, f"{horde.url}/v2/interrogate/status/{rid}") as resp:
        return resp.status, await resp.json()


def form_states(body: dict[str, Any]) -> dict[str, str]:
    return {form["form"]: form["state"] for form in body["forms"]}


# --- horde: lifecycle and shapes -------------------------------------------------------------


async def test_submit_poll_done_shapes(session: aiohttp.ClientSession, clock: FakeClock) -> None:
    async with FakeHorde(latency=4.0, clock=clock) as horde:
        assert horde.url.startswith("http://127.0.0.1:") and horde.url.endswith("/api")
        code, body = await submit(session, horde)
        assert code == 202 and set(body) == {"id"}
        rid = body["id"]

        code, body = await status(session, horde, rid)
        assert code == 200 and body["state"] == "waiting"
        assert body["forms"] == [{"form": name, "state": "waiting"} for name in ALL3]

        clock.advance(2.0)
        _, body = await status(session, horde, rid)
        assert body["state"] == "processing"
        assert all("result" not in form for form in body["forms"])

        clock.advance(2.0)
        _, body = await status(session, horde, rid)
        assert body["state"] == "done"
        results = {form["form"]: form["result"] for form in body["forms"]}
        assert results["caption"] == {"caption": "a photo of a landscape with trees"}
        assert results["nsfw"] == {"nsfw": False}
        lists = results["interrogation"]["interrogation"]
        assert set(lists) == set(INTERROGATION_LISTS)
        for entries in lists.values():
            assert 1 <= len(entries) <= 5
            assert all(set(e) == {"text", "confidence"} for e in entries)

        sub = horde.submissions[0]
        assert sub.id == rid and sub.forms == list(ALL3) and sub.slow_workers is True
        assert sub.image_size == (64, 64) and sub.source_is_url is False
        assert sub.image_format == "PNG"  # as sent, not the WebP copy workers get
        assert sub.client_agent == AGENT and AGENT in horde.client_agents
        # caption 1 + nsfw 1 + interrogation 3, each plus burn 2 (slow_workers defaults to true)
        assert horde.kudos_spent == {ANON_APIKEY: 11.0}
        assert (horde.posts, horde.status_calls) == (1, 3)


async def test_real_clock_and_markers(session: aiohttp.ClientSession) -> None:
    async with FakeHorde(latency=0.05) as horde:
        code, body = await submit(session, horde, colour="red", slow_workers=False)
        assert code == 202
        await asyncio.sleep(0.08)
        _, body = await status(session, horde, body["id"])
        assert body["state"] == "done"
        results = {form["form"]: form["result"] for form in body["forms"]}
        assert results["nsfw"] == {"nsfw": True}
        assert results["caption"]["caption"] == "a photo of a young girl in a bedroom"
        tags = [t["text"] for t in results["interrogation"]["interrogation"]["tags"]]
        assert "lolicon" in tags
        # slow_workers=false burns 1: (1+1) + (1+1) + (3+1)
        assert horde.kudos_spent[ANON_APIKEY] == 8.0


@pytest.mark.parametrize(
    ("colour", "nsfw", "caption"),
    [
        ("red", True, "a photo of a young girl in a bedroom"),
        ("magenta", True, "a photo of a naked woman on a bed"),
        ("yellow", False, "a photo of a little girl at school"),
        ("green", False, "a photo of a landscape with trees"),
    ],
)
def test_default_judge_markers(colour: str, nsfw: bool, caption: str) -> None:
    image = Image.open(io.BytesIO(marker_image(colour, fmt="JPEG")))
    verdict = default_judge(image)
    assert (verdict["nsfw"], verdict["caption"]) == (nsfw, caption)


async def test_duplicates_dropped_and_empty_forms_fault(
    session: aiohttp.ClientSession, clock: FakeClock
) -> None:
    async with FakeHorde(latency=1.0, clock=clock) as horde:
        code, body = await submit(session, horde, ("caption", "caption", "nsfw"))
        assert code == 202
        _, body = await status(session, horde, body["id"])
        assert [f["form"] for f in body["forms"]] == ["caption", "nsfw"]

        code, body = await submit(session, horde, ())
        assert code == 202
        _, body = await status(session, horde, body["id"])
        assert body == {"state": "faulted", "forms": []}


async def test_overall_state_rules(session: aiohttp.ClientSession, clock: FakeClock) -> None:
    async with FakeHorde(latency=2.0, clock=clock) as horde:
        horde.fault_forms = {"nsfw"}
        _, partial = await submit(session, horde, ("caption", "nsfw"))
        horde.fault_forms = set()
        horde.fault_next = 1
        _, faulted = await submit(session, horde, ("caption", "nsfw"))
        # vectorize has no public worker, so it waits for ever next to a finished caption.
        _, waiting = await submit(session, horde, ("caption", "vectorize"))
        clock.advance(2.0)

        _, body = await status(session, horde, partial["id"])
        assert body["state"] == "partial"
        assert form_states(body) == {"caption": "done", "nsfw": "faulted"}
        assert "result" not in body["forms"][1]
        _, body = await status(session, horde, faulted["id"])
        assert body["state"] == "faulted"
        assert form_states(body) == {"caption": "faulted", "nsfw": "faulted"}
        _, body = await status(session, horde, waiting["id"])
        assert body["state"] == "waiting"
        assert form_states(body) == {"caption": "done", "vectorize": "waiting"}
        # Only delivered captions are charged: two of them at 1 + burn 2.
        assert horde.kudos_spent[ANON_APIKEY] == 6.0


async def test_delete_cancels_but_keeps_the_request(
    session: aiohttp.ClientSession, clock: FakeClock
) -> None:
    async with FakeHorde(latency=2.0, clock=clock, expire_after=60.0) as horde:
        _, body = await submit(session, horde, ("caption", "vectorize"))
        rid = body["id"]
        clock.advance(2.0)
        code, body = await status(session, horde, rid, "DELETE")
        assert code == 200 and body["state"] == "partial"
        assert form_states(body) == {"caption": "done", "vectorize": "cancelled"}
        assert body["forms"][0]["result"] == {"caption": "a photo of a landscape with trees"}
        # The request stays: a later GET still answers, with the same forms.
        code, later = await status(session, horde, rid)
        assert code == 200 and later == body
        # Only the delivered caption is charged (1 + burn 2); the waiting vectorize is free.
        assert horde.deletes == 1 and horde.kudos_spent[ANON_APIKEY] == 3.0
        clock.advance(61.0)
        code, body = await status(session, horde, rid)
        assert code == 404 and body["rc"] == "RequestNotFound"

        # A form cancelled while a worker processes it is charged like a delivery.
        _, body = await submit(session, horde, ("nsfw",))
        clock.advance(1.5)
        _, body = await status(session, horde, body["id"], "DELETE")
        assert body == {"state": "partial", "forms": [{"form": "nsfw", "state": "cancelled"}]}
        assert horde.kudos_spent[ANON_APIKEY] == 6.0
        # One cancelled while still waiting costs nothing.
        _, body = await submit(session, horde, ("nsfw",))
        clock.advance(0.5)
        _, body = await status(session, horde, body["id"], "DELETE")
        assert form_states(body) == {"nsfw": "cancelled"}
        assert horde.kudos_spent[ANON_APIKEY] == 6.0


async def test_expiry_counts_from_creation_by_default(
    session: aiohttp.ClientSession, clock: FakeClock
) -> None:
    async with FakeHorde(latency=8.0, expire_after=10.0, clock=clock) as horde:
        _, served = await submit(session, horde, ("caption",))
        clock.advance(9.0)
        assert (await status(session, horde, served["id"]))[1]["state"] == "done"
        clock.advance(1.5)
        code, body = await status(session, horde, served["id"])
        assert code == 404 and body["rc"] == "RequestNotFound"

        _, late = await submit(session, horde, ("caption",))
        horde.expire_after = 5.0  # expires before its worker delivers
        clock.advance(8.0)
        assert (await status(session, horde, late["id"]))[0] == 404
        assert horde.kudos_spent[ANON_APIKEY] == 3.0


async def test_expiry_restarts_on_delivery(
    session: aiohttp.ClientSession, clock: FakeClock
) -> None:
    async with FakeHorde(latency=8.0, expire_after=10.0, expiry_refresh=True, clock=clock) as horde:
        _, stuck = await submit(session, horde, ("vectorize",))
        _, served = await submit(session, horde, ("caption",))
        clock.advance(12.0)
        code, body = await status(session, horde, stuck["id"])
        assert code == 404 and body["rc"] == "RequestNotFound"
        # Delivered at t=8, so it lives until t=18.
        code, body = await status(session, horde, served["id"])
        assert code == 200 and body["state"] == "done"
        clock.advance(6.5)
        code, body = await status(session, horde, served["id"])
        assert code == 404


# --- horde: errors and limits ----------------------------------------------------------------


async def test_post_errors(session: aiohttp.ClientSession) -> None:
    async with FakeHorde(latency=1.0, valid_keys={"goodkey123"}) as horde:
        code, body = await submit(session, horde, headers={"Client-Agent": AGENT})
        assert code == 400 and "rc" not in body
        assert body["message"] == "Input payload validation failed" and "apikey" in body["errors"]

        code, body = await submit(session, horde, ("caption", "telepathy"))
        assert code == 400 and "rc" not in body and "forms.1.name" in body["errors"]

        code, body = await submit(session, horde, headers={"apikey": "nope"})
        assert (code, body["rc"]) == (401, "InvalidAPIKey")
        code, _ = await submit(session, horde, headers={"apikey": "goodkey123"})
        assert code == 202

        horde.maintenance = True
        code, body = await submit(session, horde)
        assert (code, body["rc"]) == (400, "MaintenanceMode")
        horde.maintenance = False

        horde.untrusted_ip = True
        code, body = await submit(session, horde)
        assert (code, body["rc"]) == (403, "UntrustedUnsafeIP")
        horde.untrusted_ip = False

        code, body = await submit(session, horde, webhook="http://example.invalid/hook")
        assert (code, body["rc"]) == (400, "BadRequest")

        async def post_source(source: str) -> tuple[int, Any]:
            payload = {"source_image": source, "forms": [{"name": "caption"}]}
            url = f"{horde.url}/v2/interrogate/async"
            async with session.post(url, json=payload, headers=HEADERS) as resp:
                return resp.status, await resp.json()

        code, body = await post_source(base64.b64encode(b"not an image").decode())
        assert (code, body["rc"]) == (400, "ImageValidationFailed")
        # Over 3072*3072 pixels in area: the server's own check says ImageValidationFailed.
        code, body = await post_source(marker_b64(size=(3073, 3072), fmt="PNG"))
        assert (code, body["rc"]) == (400, "ImageValidationFailed")
        # Small in area but more than 255 tiles of 512 px: the WebP re-encode fails first...
        elongated = marker_b64(size=(1, 131_000), fmt="PNG")
        code, body = await post_source(elongated)
        assert (code, body["rc"]) == (400, "ImageValidationFailed")
        # ...so only an unconverted source (a URL on the real server) hits the tile limit.
        horde.reencode_webp = False
        code, body = await post_source(elongated)
        assert (code, body["rc"]) == (400, "SourceImageResolutionExceeded")
        # A non-loopback URL is refused without any traffic leaving the machine.
        code, body = await post_source("https://example.invalid/cat.png")
        assert (code, body["rc"]) == (400, "ImageValidationFailed")
        assert horde.errors["ImageValidationFailed"] == 4


async def test_url_source_from_loopback(session: aiohttp.ClientSession) -> None:
    async def image(_: web.Request) -> web.Response:
        return web.Response(body=marker_image("magenta"), content_type="image/png")

    app = web.Application()
    app.router.add_get("/img.png", image)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        port = runner.addresses[0][1]
        async with FakeHorde(latency=0.01) as horde:
            url = f"{horde.url}/v2/interrogate/async"
            payload = {
                "source_image": f"http://127.0.0.1:{port}/img.png",
                "forms": [{"name": "nsfw"}],
            }
            async with session.post(url, json=payload, headers=HEADERS) as resp:
                assert resp.status == 202
                rid = (await resp.json())["id"]
            await asyncio.sleep(0.03)
            _, body = await status(session, horde, rid)
            assert body["forms"][0]["result"] == {"nsfw": True}
            assert horde.submissions[0].source_is_url is True
    finally:
        await runner.cleanup()


async def test_rate_limits_have_no_rc(session: aiohttp.ClientSession, clock: FakeClock) -> None:
    async with FakeHorde(clock=clock, post_rate_per_min=3, status_rate_per_s=2) as horde:
        for _ in range(3):
            code, body = await submit(session, horde, ("caption",))
            assert code == 202
        rid = body["id"]
        code, body = await submit(session, horde, ("caption",))
        assert code == 429 and body == {"message": "3 per 1 minute"}

        # The status key is ip + method + path: GET and DELETE on one id count apart...
        assert (await status(session, horde, rid))[0] == 200
        assert (await status(session, horde, rid))[0] == 200
        code, body = await status(session, horde, rid)
        assert code == 429 and body == {"message": "2 per 1 second"}
        assert (await status(session, horde, rid, "DELETE"))[0] == 200
        # ...and another request id has its own budget.
        other = horde.submissions[0].id
        assert (await status(session, horde, other))[0] == 200
        assert horde.rate_limited == 2

        clock.advance(1.0)
        assert (await status(session, horde, rid))[0] == 200
        clock.advance(61.0)
        code, _ = await submit(session, horde, ("caption",))
        assert code == 202


async def test_submit_limit_is_a_fixed_window(
    session: aiohttp.ClientSession, clock: FakeClock
) -> None:
    """A window opens at its first request: a full burst passes at once, and a client that
    sends its next burst right as the window ends is let through again."""
    async with FakeHorde(clock=clock, post_rate_per_min=90) as horde:
        for _ in range(90):
            assert (await submit(session, horde, ("nsfw",)))[0] == 202
        assert (await submit(session, horde, ("nsfw",)))[0] == 429
        clock.advance(59.9)
        assert (await submit(session, horde, ("nsfw",)))[0] == 429
        clock.advance(0.1)
        for _ in range(90):
            assert (await submit(session, horde, ("nsfw",)))[0] == 202
        assert (await submit(session, horde, ("nsfw",)))[0] == 429
        assert horde.rate_limited == 3 and len(horde.submissions) == 180


async def test_too_many_prompts(session: aiohttp.ClientSession, clock: FakeClock) -> None:
    async with FakeHorde(
        latency=2.0, clock=clock, valid_keys={"userkey"}, max_forms_per_user=4
    ) as horde:
        user = {"apikey": "userkey"}
        assert (await submit(session, horde, ALL3, headers=user))[0] == 202
        code, body = await submit(session, horde, ("caption", "nsfw"), headers=user)
        assert (code, body["rc"]) == (429, "TooManyPrompts")
        # The anonymous user has its own, larger allowance.
        assert (await submit(session, horde, ("caption", "nsfw")))[0] == 202
        clock.advance(2.0)  # the first request's forms are done, freeing the user's slots
        assert (await submit(session, horde, ALL3, headers=user))[0] == 202
        assert horde.active_forms("userkey") == 3

        horde.too_many_prompts = True
        code, body = await submit(session, horde, ("caption",))
        assert (code, body["rc"]) == (429, "TooManyPrompts")
        assert horde.rate_limited == 0


async def test_dropped_connections_and_delays(
    session: aiohttp.ClientSession, clock: FakeClock
) -> None:
    async with FakeHorde(latency=1.0, clock=clock) as horde:
        horde.drop_connections = 1
        with pytest.raises(aiohttp.ServerDisconnectedError):
            await submit(session, horde)
        assert horde.dropped == 1 and not horde.submissions

        horde.drop_connections = 1
        horde.drop_after_handling = True
        with pytest.raises(aiohttp.ServerDisconnectedError):
            await submit(session, horde)
        # The request was created even though the client never learnt its id.
        assert len(horde.submissions) == 1

        horde.delay_responses = 0.05
        loop = asyncio.get_running_loop()
        started = loop.time()
        async with session.get(f"{horde.url}/v2/status/heartbeat") as resp:
            assert await resp.json() == {"message": "OK", "version": "4.x"}
        assert loop.time() - started >= 0.05


async def test_performance(session: aiohttp.ClientSession, clock: FakeClock) -> None:
    async with FakeHorde(latency=2.0, clock=clock, interrogator_count=7) as horde:
        await submit(session, horde)
        async with session.get(f"{horde.url}/v2/status/performance") as resp:
            body = await resp.json()
        assert body["queued_forms"] == 3 and body["interrogator_count"] == 7
        # Processing forms count too (count_totals: waiting or processing).
        clock.advance(1.0)
        horde.extra_queued_forms = 40
        async with session.get(f"{horde.url}/v2/status/performance") as resp:
            body = await resp.json()
        assert body["queued_forms"] == 43
        clock.advance(1.0)
        async with session.get(f"{horde.url}/v2/status/performance") as resp:
            assert (await resp.json())["queued_forms"] == 40


# --- pict-rs ---------------------------------------------------------------------------------


def api(token: str = "secret") -> dict[str, str]:
    return {"X-Api-Token": token}


async def test_pictrs_hash_and_aliases() -> None:
    pictrs = FakePictrs("secret")
    data = marker_image(fmt="WEBP")
    first = pictrs.add_image(data)
    second = pictrs.add_image(data)
    third = pictrs.add_alias(first)
    # sha256, 6-byte big-endian size, format byte 8 (webp): 78 hex characters.
    expected = hashlib.sha256(data).digest() + len(data).to_bytes(6, "big") + b"\x08"
    assert pictrs.hash_hex(first) == expected.hex() == pictrs_hash(data).hex()
    assert len(pictrs.hash_hex(first)) == 78
    assert pictrs.aliases_of(third) == [first, second, third]
    assert first.endswith(".webp") and len(pictrs.images) == 3
    assert pictrs.identifier(first).count("/") == 10


async def test_pictrs_hash_pages(session: aiohttp.ClientSession) -> None:
    pictrs = FakePictrs("secret")
    base = datetime(2024, 1, 1, tzinfo=UTC)
    aliases = [
        pictrs.add_image(
            marker_image(size=(8 + i, 8), fmt="PNG"), "png", created_at=base + timedelta(minutes=i)
        )
        for i in range(5)
    ]
    async with pictrs:
        seen: list[list[str]] = []
        pages: list[dict[str, Any]] = []
        slug: str | None = None
        while True:
            params = {"limit": "2"} | ({"slug": slug} if slug else {})
            async with session.get(
                f"{pictrs.url}/internal/hashes", params=params, headers=api()
            ) as resp:
                assert resp.status == 200
                body = await resp.json()
            assert body["msg"] == "ok"
            page = body["page"]
            pages.append(page)
            seen.extend(h["aliases"] for h in page["hashes"])
            slug = page.get("next")
            if slug is None:
                break
        assert seen == [[a] for a in reversed(aliases)]
        assert [len(p["hashes"]) for p in pages] == [2, 2, 1]
        assert "prev" not in pages[0] and pages[1]["prev"] == pages[0]["current"]
        assert pages[0]["next"] == pages[1]["current"]
        newest = pages[0]["hashes"][0]
        assert newest["hex"] == pictrs.hash_hex(aliases[-1])
        assert pages[0]["current"] == hash_slug(bytes.fromhex(newest["hex"]))
        assert newest["details"]["width"] == 12 and newest["details"]["format"] == "Image"
        assert newest["details"]["content_type"] == "image/png"

        params = {"timestamp": (base + timedelta(minutes=2)).isoformat(), "limit": "10"}
        async with session.get(
            f"{pictrs.url}/internal/hashes", params=params, headers=api()
        ) as resp:
            older = (await resp.json())["page"]["hashes"]
        assert [h["aliases"] for h in older] == [[aliases[1]], [aliases[0]]]


async def test_pictrs_purge_auth(session: aiohttp.ClientSession) -> None:
    pictrs = FakePictrs("secret")
    alias = pictrs.add_image(marker_image(fmt="WEBP"))
    twin = pictrs.add_alias(alias)
    other = pictrs.add_image(marker_image("red", fmt="WEBP"))
    async with pictrs:
        url = f"{pictrs.url}/internal/purge"
        for headers in ({}, api("wrong")):
            async with session.post(url, params={"alias": alias}, headers=headers) as resp:
                assert resp.status == 401
                assert await resp.json() == {"msg": "Invalid API Key", "code": "invalid-api-token"}
        assert pictrs.auth_failures == 2 and not pictrs.purged

        async with session.post(url, params={"alias": alias}, headers=api()) as resp:
            assert resp.status == 200
            assert await resp.json() == {"msg": "ok", "aliases": [alias, twin]}
        assert pictrs.purged == [alias] and pictrs.purged_aliases == [alias, twin]
        assert set(pictrs.images) == {other}

        async with session.post(url, params={"alias": alias}, headers=api()) as resp:
            assert resp.status == 404 and (await resp.json())["code"] == "alias-not-found"

    keyless = FakePictrs(None)
    async with keyless:
        async with session.get(
            f"{keyless.url}/internal/aliases", params={"alias": "x"}, headers=api("")
        ) as resp:
            assert resp.status == 401


async def test_pictrs_alias_endpoints(session: aiohttp.ClientSession) -> None:
    pictrs = FakePictrs("secret")
    data = marker_image(fmt="PNG")
    alias = pictrs.add_image(data, "png")
    twin = pictrs.add_alias(alias)
    async with pictrs:
        base = pictrs.url

        async def call(method: str, path: str, alias_: str) -> tuple[int, Any]:
            async with session.request(
                method, f"{base}{path}", params={"alias": alias_}, headers=api()
            ) as resp:
                return resp.status, (await resp.json() if resp.content_length else None)

        assert await call("GET", "/internal/aliases", alias) == (
            200,
            {"msg": "ok", "aliases": [alias, twin]},
        )
        assert await call("GET", "/internal/identifier", twin) == (
            200,
            {"msg": "ok", "identifier": pictrs.identifier(alias)},
        )
        assert (await call("GET", "/internal/identifier", "missing.webp"))[0] == 404
        assert await call("POST", "/internal/delete", twin) == (200, {"msg": "ok"})
        assert (await call("POST", "/internal/delete", twin))[0] == 404
        assert pictrs.deleted == [twin]

        async with session.get(f"{base}/image/original/{alias}") as resp:
            assert resp.status == 200 and await resp.read() == data
            assert resp.content_type == "image/png"

        pictrs.remove_file(alias)
        async with session.post(f"{base}/internal/prune_missing", headers=api()) as resp:
            assert await resp.json() == {"complete": False, "progress": 0, "total": 1}
        assert pictrs.images == {}
        assert (await call("GET", "/internal/identifier", alias))[0] == 404


# --- pict-rs external validation -------------------------------------------------------------


class Validator:
    """A tiny validation endpoint that records what pict-rs-style clients send it."""

    def __init__(self, status: int = 200, delay: float = 0.0) -> None:
        self.status = status
        self.delay = delay
        self.seen: list[tuple[dict[str, str], bytes]] = []
        self.runner: web.AppRunner | None = None
        self.url = ""

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.seen.append((dict(request.headers), body))
        await asyncio.sleep(self.delay)
        return web.json_response({"ok": self.status < 300}, status=self.status)

    async def __aenter__(self) -> Validator:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post("/api/v1/scan/pictrs", self.handle)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", 0).start()
        self.url = f"http://127.0.0.1:{self.runner.addresses[0][1]}/api/v1/scan/pictrs"
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.runner is not None
        await self.runner.cleanup()


async def test_validate_upload_is_chunked(session: aiohttp.ClientSession) -> None:
    data = marker_image(size=(300, 300), fmt="PNG") * 3
    async with Validator(status=406) as validator:
        status_, elapsed, body = await validate_upload(
            session, validator.url, data, "image/png", chunk_size=1000
        )
    assert status_ == 406 and elapsed >= 0 and body == {"ok": False}
    headers, received = validator.seen[0]
    assert received == data
    assert headers.get("Transfer-Encoding") == "chunked"
    assert "Content-Length" not in headers
    assert headers["Content-Type"] == "image/png"
    assert headers["User-Agent"].startswith("pict-rs")

    with pytest.raises(ValueError):
        await validate_upload(session, "http://10.0.0.1/scan", data, "image/png")


async def upload(
    session: aiohttp.ClientSession, pictrs: FakePictrs, data: bytes
) -> tuple[int, Any]:
    form = aiohttp.FormData()
    form.add_field("images", data, filename="upload.png", content_type="image/png")
    async with session.post(f"{pictrs.url}/image", data=form) as resp:
        return resp.status, await resp.json()


async def test_ingest_calls_external_validation(session: aiohttp.ClientSession) -> None:
    data = marker_image(fmt="PNG")
    async with Validator() as validator, FakePictrs(external_validation=validator.url) as pictrs:
        code, body = await upload(session, pictrs, data)
        assert code == 201 and body["msg"] == "ok"
        alias = body["files"][0]["file"]
        assert pictrs.images == {alias: data}
        assert validator.seen[0][0]["Content-Type"] == "image/png"

        validator.status = 406
        code, body = await upload(session, pictrs, marker_image("red", fmt="PNG"))
        assert (code, body["code"]) == (400, "failed-external-validation")
        assert len(pictrs.images) == 1

        validator.status, validator.delay = 200, 0.5
        pictrs.validation_timeout = 0.1
        code, body = await upload(session, pictrs, marker_image("yellow", fmt="PNG"))
        assert (code, body["code"]) == (500, "http-client-error")
        assert [v.outcome for v in pictrs.validations] == ["accepted", "rejected", "error"]
