"""Admin actions through Lemmy's API (moderation/actions.py, integrations/lemmy_api.py) against
the fake Lemmy (horde_scanner/testing/lemmy.py: upstream routes, auth forms and error shapes of
0.18, 0.19 and 1.0), on provenance resolved from a real PostgreSQL holding Lemmy's tables."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import aiohttp
import pytest

from horde_scanner.backends.mock import MockBackend
from horde_scanner.config import LemmyAction, LemmySettings
from horde_scanner.moderation.actions import Moderator
from horde_scanner.moderation.provenance import ProvenanceResolver
from horde_scanner.store.sqlite import Store
from horde_scanner.testing import lemmy_db as L
from horde_scanner.testing.lemmy import FakeLemmy
from horde_scanner.testing.pictrs import DEFAULT_API_KEY, FakePictrs
from horde_scanner.testing.service import running_service, wait_for
from horde_scanner.verdict import Label, Verdict, VerdictRoute
from tests.admin_helpers import admin_settings, call

IMAGE = b"RIFF\x00\x00\x00\x00WEBPVP8 positive-image-bytes" + bytes(64)
SHA = hashlib.sha256(IMAGE).hexdigest()
REASON = "Confirmed positive image (horde-scanner)"
API_OF = {"0.19.3": "0.19", "0.19.4": "0.19", "1.0": "1.0"}


def fake_lemmy(api: str) -> FakeLemmy:
    """The scenario's objects (testing/lemmy_schemas/scenario.sql) as Lemmy knows them."""
    lemmy = FakeLemmy(version=api)
    lemmy.add_user("admin", "admin-password", 1, admin=True)
    lemmy.add_user("carol", "carol-password", 4, admin=False)
    lemmy.persons |= {2, 3}
    lemmy.posts |= {1, 2, 3, 4}
    lemmy.comments |= {1, 2}
    lemmy.private_messages |= {1}
    lemmy.images |= {L.UPLOAD_ALIAS, L.THUMB_ALIAS, L.OTHER_ALIAS}
    return lemmy


def lemmy_settings(pg_url: str, lemmy: FakeLemmy, **more: object) -> LemmySettings:
    values: dict[str, object] = {
        "database_url": pg_url,
        "url": lemmy.url,
        "username": "admin",
        "password": "admin-password",
        "api_timeout_s": 2.0,
    }
    values.update(more)
    return LemmySettings.model_validate(values)


@asynccontextmanager
async def resolved(
    tmp_path: Path, pg_url: str, version: str, lemmy: FakeLemmy, **more: object
) -> AsyncIterator[tuple[Store, Moderator]]:
    """A store whose positive has its provenance resolved, and a Moderator for it."""
    await L.create_lemmy(pg_url, version)
    store = await Store.open(tmp_path / "s.db")
    settings = lemmy_settings(pg_url, lemmy, **more)
    try:
        async with aiohttp.ClientSession() as session:
            resolver = ProvenanceResolver(store, settings, None)
            moderator = Moderator(store, settings, session, lambda: resolver.lemmy.schema.api)
            await store.put_verdict(SHA, Verdict(label=Label.CSAM), source="sweep:local:/x")
            await store.record_late_positive(
                SHA, Label.CSAM, "purged", {"aliases": [L.UPLOAD_ALIAS]}
            )
            await resolver.run_once()
            prov = await store.provenance(SHA)
            assert prov is not None and prov.state == "resolved"
            yield store, moderator
            await resolver.stop()
    finally:
        await store.close()


def expected_ban_and_purge(api: str) -> list[tuple[str, str, dict]]:
    if api == "1.0":
        return [
            (
                "POST",
                "/api/v4/admin/ban",
                {"person_id": 2, "ban": True, "remove_or_restore_data": True, "reason": REASON},
            ),
            ("POST", "/api/v4/admin/purge/post", {"post_id": 1, "reason": REASON}),
            ("POST", "/api/v4/admin/purge/comment", {"comment_id": 1, "reason": REASON}),
        ]
    return [
        (
            "POST",
            "/api/v3/user/ban",
            {"person_id": 2, "ban": True, "remove_data": True, "reason": REASON},
        ),
        ("POST", "/api/v3/admin/purge/post", {"post_id": 1, "reason": REASON}),
        ("POST", "/api/v3/admin/purge/comment", {"comment_id": 1, "reason": REASON}),
    ]


@pytest.mark.parametrize("version", ["0.19.3", "0.19.4", "1.0"])
async def test_ban_and_purge_sends_exactly_the_expected_calls(tmp_path, pg_url, version):
    api = API_OF[version]
    async with (
        fake_lemmy(api) as lemmy,
        resolved(tmp_path, pg_url, version, lemmy) as (
            store,
            moderator,
        ),
    ):
        actions = [LemmyAction.BAN, LemmyAction.PURGE]
        dry = await moderator.act(SHA, actions, by="alice", dry_run=True)
        assert lemmy.calls == []  # a dry run calls nothing, not even the login
        assert [(c["method"], c["path"], c["body"]) for c in dry["calls"]] == (
            expected_ban_and_purge(api)
        )
        assert any("private message" in n for n in dry["notes"])
        done = await moderator.act(SHA, actions, by="alice", dry_run=False)
        assert lemmy.sent() == expected_ban_and_purge(api)
        assert {c.auth for c in lemmy.calls if not c.path.endswith("login")} == {"bearer"}
        assert done["failed"] == 0 and {c["state"] for c in done["calls"]} == {"done"}
        rows = await store.lemmy_actions(SHA)
        assert [(r.action, r.target, r.state, r.requested_by) for r in rows] == [
            ("ban_person", "person:2", "done", "alice"),
            ("purge_post", "post:1", "done", "alice"),
            ("purge_comment", "comment:1", "done", "alice"),
        ]
        assert "jwt-" not in str([r.request for r in rows] + [r.answer for r in rows])
        # Done calls are not sent again.
        again = await moderator.act(SHA, actions, by="alice", dry_run=True)
        assert again["calls"] == [] and len(again["skipped"]) == 3


@pytest.mark.parametrize("api", ["0.19", "1.0"])
async def test_report_remove_and_delete_image_forms(tmp_path, pg_url, api):
    version = "1.0" if api == "1.0" else "0.19.4"
    async with (
        fake_lemmy(api) as lemmy,
        resolved(tmp_path, pg_url, version, lemmy) as (
            _,
            moderator,
        ),
    ):
        actions = [LemmyAction.REPORT, LemmyAction.REMOVE, LemmyAction.DELETE_IMAGE]
        result = await moderator.act(SHA, actions, by="alice", dry_run=False)
        assert result["failed"] == 0, result
        v = "/api/v4" if api == "1.0" else "/api/v3"
        delete = (
            ("DELETE", "/api/v4/image", {"filename": L.UPLOAD_ALIAS})
            if api == "1.0"
            else ("GET", f"/pictrs/image/delete/horde-scanner/{L.UPLOAD_ALIAS}", None)
        )
        assert lemmy.sent() == [
            ("POST", f"{v}/post/report", {"post_id": 1, "reason": REASON}),
            ("POST", f"{v}/comment/report", {"comment_id": 1, "reason": REASON}),
            ("POST", f"{v}/private_message/report", {"private_message_id": 1, "reason": REASON}),
            ("POST", f"{v}/post/remove", {"post_id": 1, "removed": True, "reason": REASON}),
            ("POST", f"{v}/comment/remove", {"comment_id": 1, "removed": True, "reason": REASON}),
            delete,
        ]
        assert L.UPLOAD_ALIAS not in lemmy.images
        # The delete token is never shown (0.19's route carries one in its path).
        shown = [c["path"] for c in result["calls"]]
        assert all("horde-scanner/" not in p for p in shown)


async def test_a_refused_call_is_reported_and_can_be_retried(tmp_path, pg_url):
    async with (
        fake_lemmy("0.19") as lemmy,
        resolved(tmp_path, pg_url, "0.19.4", lemmy) as (
            store,
            moderator,
        ),
    ):
        lemmy.comments.discard(1)  # Lemmy no longer has the comment
        result = await moderator.act(SHA, [LemmyAction.PURGE], by="alice", dry_run=False)
        assert result["failed"] == 1
        failed = next(c for c in result["calls"] if c["state"] == "failed")
        assert failed["status"] == 404
        assert failed["answer"] == {"error": "unknown", "message": "Record not found"}
        rows = {r.target: r for r in await store.lemmy_actions(SHA)}
        assert rows["post:1"].state == "done" and rows["comment:1"].state == "failed"
        trail = [a for a in await store.audit_trail(SHA) if a.event == "lemmy_action"]
        assert [(a.action, a.detail["state"], a.detail["status"]) for a in trail] == [
            ("purge_post", "done", 200),
            ("purge_comment", "failed", 404),
        ]
        lemmy.comments.add(1)
        retried = await moderator.retry(rows["comment:1"].id, by="bob")
        assert retried["state"] == "done"
        row = await store.lemmy_action(rows["comment:1"].id)
        assert row is not None and row.state == "done" and row.attempts == 2


async def test_an_expired_jwt_is_renewed_by_logging_in_again(tmp_path, pg_url):
    async with (
        fake_lemmy("1.0") as lemmy,
        resolved(tmp_path, pg_url, "1.0", lemmy) as (
            _,
            moderator,
        ),
    ):
        await moderator.act(SHA, [LemmyAction.REPORT], by="alice", dry_run=False)
        lemmy.expire_tokens()
        result = await moderator.act(SHA, [LemmyAction.PURGE], by="alice", dry_run=False)
        assert result["failed"] == 0
        logins = [c for c in lemmy.calls if c.path == "/api/v4/account/auth/login"]
        assert len(logins) == 2
        refused = [c for c in lemmy.calls if c.user is None and not c.path.endswith("login")]
        assert len(refused) == 1  # the one call Lemmy answered 401, then sent again


async def test_a_non_admin_account_is_refused_and_nothing_is_marked_done(tmp_path, pg_url):
    async with (
        fake_lemmy("0.19") as lemmy,
        resolved(
            tmp_path, pg_url, "0.19.4", lemmy, username="carol", password="carol-password"
        ) as (store, moderator),
    ):
        result = await moderator.act(SHA, [LemmyAction.BAN], by="alice", dry_run=False)
        assert result["failed"] == 1
        assert result["calls"][0]["status"] == 400
        assert result["calls"][0]["answer"] == {"error": "not_an_admin"}
        assert [r.state for r in await store.lemmy_actions(SHA)] == ["failed"]


async def test_a_wrong_password_is_said_and_nothing_is_marked_done(tmp_path, pg_url):
    async with (
        fake_lemmy("0.19") as lemmy,
        resolved(tmp_path, pg_url, "0.19.4", lemmy, password="wrong") as (store, moderator),
    ):
        result = await moderator.act(SHA, [LemmyAction.BAN], by="alice", dry_run=False)
        assert result["failed"] == 1
        answer = result["calls"][0]["answer"]
        assert answer["error"] == "login_failed" and "refused the login" in answer["detail"]
        assert "wrong" not in str(answer)  # the password is never repeated
        assert [r.state for r in await store.lemmy_actions(SHA)] == ["failed"]


async def test_a_lemmy_that_times_out_is_reported_not_waited_on(tmp_path, pg_url):
    async with (
        fake_lemmy("0.19") as lemmy,
        resolved(tmp_path, pg_url, "0.19.4", lemmy, api_timeout_s=0.3) as (store, moderator),
    ):
        await moderator.act(SHA, [LemmyAction.REPORT], by="alice", dry_run=False)  # logged in
        lemmy.delay_s = 2.0
        calls_before = len(lemmy.calls)
        actions = [LemmyAction.BAN, LemmyAction.PURGE]
        result = await moderator.act(SHA, actions, by="alice", dry_run=False)
        # One timeout, not one per call: the rest are recorded as not sent, to retry.
        assert len(lemmy.calls) == calls_before + 1  # only the first was sent
        first, *rest = result["calls"]
        assert first["state"] == "failed" and first["status"] is None
        assert first["answer"]["error"] == "timeout"
        assert [c["answer"]["error"] for c in rest] == ["not_sent", "not_sent"]
        rows = [r for r in await store.lemmy_actions(SHA) if not r.action.startswith("report")]
        assert [r.state for r in rows] == ["failed"] * 3


async def test_lemmy_018_gets_the_jwt_in_the_body(tmp_path, pg_url):
    """0.18 records no uploads (no ban possible); its API takes `auth` in the body."""
    async with fake_lemmy("0.18") as lemmy:
        await L.create_lemmy(pg_url, "0.18")
        store = await Store.open(tmp_path / "s.db")
        try:
            async with aiohttp.ClientSession() as session:
                settings = lemmy_settings(pg_url, lemmy)
                resolver = ProvenanceResolver(store, settings, None)
                moderator = Moderator(store, settings, session, lambda: resolver.lemmy.schema.api)
                await store.put_verdict(SHA, Verdict(label=Label.CSAM), source="sweep:x")
                await store.record_late_positive(
                    SHA, Label.CSAM, "purged", {"aliases": [L.UPLOAD_ALIAS]}
                )
                await resolver.run_once()
                actions = [LemmyAction.BAN, LemmyAction.PURGE]
                dry = await moderator.act(SHA, actions, by="alice", dry_run=True)
                assert dry["api"] == "0.18"
                assert any("no uploader is known" in n for n in dry["notes"])
                assert dry["calls"][0]["body"]["auth"] == "***"
                result = await moderator.act(SHA, actions, by="alice", dry_run=False)
                assert result["failed"] == 0
                sent = [c for c in lemmy.calls if not c.path.endswith("login")]
                assert [c.path for c in sent] == [
                    "/api/v3/admin/purge/post",
                    "/api/v3/admin/purge/comment",
                ]
                assert {c.auth for c in sent} == {"body"}
                await resolver.stop()
        finally:
            await store.close()


async def test_auto_actions_only_for_vouched_positives(tmp_path, pg_url):
    async with (
        fake_lemmy("0.19") as lemmy,
        resolved(tmp_path, pg_url, "0.19.4", lemmy, auto_actions=["report"]) as (store, moderator),
    ):
        # A machine verdict alone: nothing.
        assert await moderator.auto(SHA) is None
        assert lemmy.calls == []
        # A deny-list match: reported.
        await store.put_verdict(
            SHA, Verdict(label=Label.CSAM, route=VerdictRoute.MATCH), source="sweep:x"
        )
        result = await moderator.auto(SHA)
        assert result is not None and result["failed"] == 0
        assert [p for _, p, _ in lemmy.sent()] == [
            "/api/v3/post/report",
            "/api/v3/comment/report",
            "/api/v3/private_message/report",
        ]
        rows = await store.lemmy_actions(SHA)
        assert {r.requested_by for r in rows} == {"auto"}


async def test_admin_api_dry_run_then_act_and_refusal_status(tmp_path, pg_url, http):
    await L.create_lemmy(pg_url, "1.0")
    pictrs = FakePictrs()
    await pictrs.start()
    pictrs.add_image(IMAGE, "webp", alias=L.UPLOAD_ALIAS)
    try:
        async with fake_lemmy("1.0") as lemmy:
            lemmy.comments.discard(1)
            settings = admin_settings(
                tmp_path,
                pictrs={"url": pictrs.url, "api_key": DEFAULT_API_KEY},
                lemmy={
                    "database_url": pg_url,
                    "url": lemmy.url,
                    "username": "admin",
                    "password_file": str(_secret(tmp_path, "admin-password")),
                },
            )
            async with running_service(settings, backend=MockBackend()) as svc:
                store = svc.parts.store
                await store.put_verdict(SHA, Verdict(label=Label.CSAM), source="sweep:local:/x")

                async def resolved_now():
                    row = await store.provenance(SHA)
                    return row is not None and row.state == "resolved"

                await wait_for(resolved_now)
                base = f"{svc.url}/api/v1/admin/verdicts/{SHA}"
                status, body = await call(http, "GET", f"{base}/provenance")
                assert status == 200 and body["lemmy"]["schema"] == "1.0"
                assert body["provenance"]["uploads"][0]["uploader"]["name"] == "bob"
                status, body = await call(
                    http, "POST", f"{base}/lemmy", json={"actions": ["ban", "purge"]}
                )
                assert status == 200 and body["dry_run"] is True and lemmy.calls == []
                assert [c["path"] for c in body["calls"]] == [
                    "/api/v4/admin/ban",
                    "/api/v4/admin/purge/post",
                    "/api/v4/admin/purge/comment",
                ]
                status, body = await call(
                    http,
                    "POST",
                    f"{base}/lemmy",
                    json={"actions": ["ban", "purge"], "dry_run": False, "by": "alice"},
                )
                assert status == 502 and body["error"] == "lemmy_refused"
                assert body["detail"] == "1 of 3 calls failed"
                failed = next(c for c in body["calls"] if c["state"] == "failed")
                assert failed["answer"]["error"] == "not_found"
                lemmy.comments.add(1)
                status, body = await call(
                    http, "POST", f"{svc.url}/api/v1/admin/lemmy/actions/{failed['id']}/retry"
                )
                assert status == 200 and body["state"] == "done"
                status, body = await call(http, "GET", base)
                assert [a["state"] for a in body["lemmy_actions"]] == ["done"] * 3
                status, body = await call(http, "POST", f"{base}/lemmy", json={"actions": ["nuke"]})
                assert status == 400 and body["error"] == "bad_action"
    finally:
        await pictrs.stop()


def _secret(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "lemmy-password"
    path.write_text(text + "\n")
    return path


async def test_auto_actions_run_on_an_admin_confirm_and_on_a_deny_list_match(
    tmp_path, pg_url, http
):
    """lemmy.auto_actions through the service: nothing for the machine's positive until an
    admin confirms it; a deny-list match is acted on as soon as its provenance is known."""
    await L.create_lemmy(pg_url, "0.19.4")
    matched = b"RIFF\x00\x00\x00\x00WEBPVP8 deny-list-match" + bytes(64)
    matched_sha = hashlib.sha256(matched).hexdigest()
    pictrs = FakePictrs()
    await pictrs.start()
    pictrs.add_image(IMAGE, "webp", alias=L.UPLOAD_ALIAS)
    pictrs.add_image(matched, "webp", alias=L.OTHER_ALIAS)
    try:
        async with fake_lemmy("0.19") as lemmy:
            settings = admin_settings(
                tmp_path,
                pictrs={"url": pictrs.url, "api_key": DEFAULT_API_KEY},
                lemmy={
                    "database_url": pg_url,
                    "url": lemmy.url,
                    "username": "admin",
                    "password": "admin-password",
                    "auto_actions": ["report"],
                },
            )
            async with running_service(settings, backend=MockBackend()) as svc:
                store = svc.parts.store
                await store.put_verdict(SHA, Verdict(label=Label.CSAM), source="sweep:local:/x")

                async def resolved(sha: str):
                    row = await store.provenance(sha)
                    return row is not None and row.state == "resolved"

                await wait_for(lambda: resolved(SHA))
                assert lemmy.sent() == []  # a machine verdict alone: nothing
                status, _ = await call(
                    http, "POST", f"{svc.url}/api/v1/admin/verdicts/{SHA}/confirm", json={}
                )
                assert status == 200
                assert [p for _, p, _ in lemmy.sent()] == [
                    "/api/v3/post/report",
                    "/api/v3/comment/report",
                    "/api/v3/private_message/report",
                ]
                assert {a.requested_by for a in await store.lemmy_actions(SHA)} == {"auto"}
                # A deny-list match (its verdict rests on a list entry): acted on once resolved.
                await store.put_verdict(
                    matched_sha,
                    Verdict(label=Label.CSAM, route=VerdictRoute.MATCH),
                    source="sweep:local:/y",
                )
                await wait_for(lambda: resolved(matched_sha))
                rows = await wait_for(lambda: store.lemmy_actions(matched_sha))
                assert [(r.action, r.target) for r in rows] == [("report_post", "post:4")]
    finally:
        await pictrs.stop()
