"""The policy dry run in the admin API, over loopback: upload a candidate TOML, get the diff."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import aiohttp

from horde_scanner.backends.mock import MockBackend
from horde_scanner.media.hashing import sha256_hex
from horde_scanner.policy.rules import Policy
from horde_scanner.store.sqlite import Store
from horde_scanner.testing import images
from horde_scanner.testing.pictrs import validate_upload
from horde_scanner.testing.service import running_service
from horde_scanner.verdict import Signals
from tests.admin_helpers import TOKEN, admin_settings, call
from tests.policy_history import CASES, OLD_POLICY, expected_flips, fill

API = "/api/v1/admin"
BUNDLED = Path(__file__).parents[3] / "horde_scanner" / "data" / "policy.toml"


async def _post(
    http: aiohttp.ClientSession, url: str, body: bytes | aiohttp.FormData, token: str | None = TOKEN
) -> tuple[int, Any]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    if isinstance(body, bytes):
        headers["Content-Type"] = "application/toml"
    async with http.post(url, data=body, headers=headers) as resp:
        return resp.status, await resp.json(content_type=None)


async def test_policy_diff_over_the_api_changes_nothing(tmp_path: Path, http):
    settings = admin_settings(tmp_path)
    async with await Store.open(settings.store.path) as store:
        cases = {c.name: c for c in CASES}
        await fill(store)
    async with running_service(settings, backend=MockBackend()) as svc:
        store = svc.parts.store
        running = svc.parts.policy.version
        # A decision made through the API itself is reported as a confirm, by its author.
        little = cases["toddler"].sha256
        status, _ = await call(
            http, "POST", f"{svc.url}{API}/verdicts/{little}/confirm", json={"by": "dora"}
        )
        assert status == 200
        before = {c.sha256: (await store.get_verdict(c.sha256)).verdict for c in CASES}

        url = f"{svc.url}{API}/policy/diff?samples=50"
        status, body = await _post(http, url, BUNDLED.read_bytes())
        assert status == 200, body
        assert body["candidate"]["version"] == "2026.12-1" and body["current"]["version"] == running
        flips = {(c["from"], c["to"]): {s["sha256"] for s in c["samples"]} for c in body["changes"]}
        assert flips == expected_flips()
        decisions = {d["sha256"]: d for d in body["decisions"]["items"]}
        assert decisions[little]["decision"] == "confirm" and decisions[little]["by"] == "api:dora"
        assert decisions[little]["agrees"] is True
        assert decisions[cases["sexy-teen"].sha256]["agrees"] is False
        assert decisions[cases["adult-girl-bed"].sha256]["agrees"] is True

        # The same file sent as a form upload, with filters: since and label.
        form = aiohttp.FormData()
        form.add_field("policy", BUNDLED.read_bytes(), filename="candidate.toml")
        status, body = await _post(http, f"{svc.url}{API}/policy/diff?since=30d&label=nsfw", form)
        assert status == 200, body
        assert body["filter"]["labels"] == ["nsfw"] and body["filter"]["since"]
        assert {(c["from"], c["to"]) for c in body["changes"]} == {("csam", "nsfw")}
        assert body["changes"][0]["count"] == len(expected_flips(30)[("csam", "nsfw")])

        # Against the running policy (the bundled one) nothing changes.
        status, body = await _post(http, f"{url}&baseline=current", BUNDLED.read_bytes())
        assert status == 200 and body["baseline"] == "policy 2026.12-1" and body["changed"] == 0
        status, body = await _post(http, f"{url}&baseline=current", OLD_POLICY.read_bytes())
        # The old policy as the candidate: the reverse flips.
        assert status == 200 and [(c["from"], c["to"]) for c in body["changes"]] == [
            ("nsfw", "csam")
        ]

        # Nothing was written: same verdicts, same running policy.
        after = {c.sha256: (await store.get_verdict(c.sha256)).verdict for c in CASES}
        assert after == before
        assert svc.parts.policy.version == running


async def test_policy_check_and_bad_candidates_get_400_naming_the_key(tmp_path: Path, http):
    async with running_service(admin_settings(tmp_path), backend=MockBackend()) as svc:
        base = f"{svc.url}{API}/policy"
        status, body = await _post(http, f"{base}/check", BUNDLED.read_bytes())
        assert status == 200 and body == {"valid": True, "version": "2026.12-1"}
        bad = (
            BUNDLED.read_text()
            .replace("weak_underage_words = [", "weak_underage_words = [3, ")
            .encode()
        )
        for path in ("check", "diff"):
            status, body = await _post(http, f"{base}/{path}", bad)
            assert status == 400 and body["error"] == "bad_policy", body
            assert "[horde]" in body["detail"] and "`weak_underage_words`" in body["detail"]
        status, body = await _post(http, f"{base}/diff", b'version = "x"\n[hord]\n')
        assert status == 400 and "unknown key `hord`" in body["detail"]
        status, body = await _post(http, f"{base}/diff", b"version = \n")
        assert status == 400 and body["error"] == "bad_policy"
        status, body = await _post(http, f"{base}/diff", b"")
        assert status == 400 and body["error"] == "missing_policy"
        status, body = await _post(http, f"{base}/diff", b"\xff\xfe")
        assert status == 400 and "UTF-8" in body["detail"]
        status, body = await _post(http, f"{base}/diff", b"#" * (300 * 1024))
        assert status == 413 and body["error"] == "policy_too_large"
        for query, error in (
            ("since=lately", "bad_time"),
            ("label=evil", "bad_label"),
            ("samples=-1", "bad_samples"),
            ("baseline=yesterday", "bad_baseline"),
        ):
            status, body = await _post(http, f"{base}/diff?{query}", BUNDLED.read_bytes())
            assert status == 400 and body["error"] == error, query
        status, body = await _post(http, f"{base}/diff", BUNDLED.read_bytes(), token=None)
        assert status == 401


async def test_after_the_switch_a_cached_weak_cue_csam_is_rejudged_and_accepted(
    tmp_path: Path, http
):
    """The bumped bundled policy re-judges verdicts made under the old one from their stored
    signals as they are looked up: no backend call, and the adult upload is accepted."""
    adult, child = images.jpeg("green", seed=160), images.jpeg("green", seed=161)
    settings = admin_settings(tmp_path)
    old = Policy.load(OLD_POLICY)
    async with await Store.open(settings.store.path) as store:
        for data, caption in (
            (adult, "a naked girl laying on a bed"),
            (child, "a naked little girl laying on a bed"),
        ):
            verdict = old.judge(Signals(backend="horde", nsfw=True, caption=caption))
            assert verdict.label.value == "csam"
            await store.put_verdict(sha256_hex(data), verdict, media_type="image/jpeg")
    backend = MockBackend()
    async with running_service(settings, backend=backend) as svc:
        accepted = await validate_upload(http, svc.scan_url(), adult, "image/jpeg")
        assert accepted.status == 200 and accepted.body["route"] == "cache"
        assert accepted.body["label"] == "nsfw"
        stored = await svc.parts.store.get_verdict(sha256_hex(adult))
        assert stored.verdict.policy_version == "2026.12-1"
        assert any("not enough for csam" in r for r in stored.verdict.reasons)
        rejected = await validate_upload(http, svc.scan_url(), child, "image/jpeg")
        assert rejected.status == 406 and rejected.body["label"] == "csam"
    assert backend.calls == 0
