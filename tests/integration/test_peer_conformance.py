"""Conformance with the real peers, parsing what we send the way each of them parses it.

- fedi-safety's pictrs-safety worker (db0/fedi-safety `fedi_safety/pictrs_safety.py`,
  `lemmy_safety_pictrs.py`): a thread pool fed every 0.1 s; each task does a blocking
  `requests.get(URL/api/v1/pop, headers={"apikey": KEY}, timeout=2)`, logs `response.json()`
  when not `ok`, returns on 204, takes the job name as
  `headers["Content-Disposition"].split('=', 1)[1]` (unparsed), opens the bytes with PIL,
  and posts `{"image", "is_csam", "is_nsfw": is_csam}` with the same header, never looking at
  the answer. The worker below is that sequence written from the protocol, not its code.
- pict-rs's external validation: any 2xx accepts, anything else rejects (the fake pict-rs in
  horde_scanner/testing/pictrs.py does the upload and the call).
"""

from __future__ import annotations

import asyncio
import io
import logging
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import requests
from PIL import Image

from horde_scanner.backends.mock import colour_marker_signals
from horde_scanner.config import ConfigError, load_settings
from horde_scanner.media.hashing import sha256_hex
from horde_scanner.testing import images
from horde_scanner.testing.pictrs import FakePictrs, validate_upload
from horde_scanner.testing.service import make_settings, running_service

KEY = "fedi-safety-key"
NO_HORDE = "http://127.0.0.1:9/api"  # never contacted with backend.kind=local


def pool_settings(tmp_path: Path, keys: Any = (KEY,), **sections: Any):
    workers = {
        "keys": keys if isinstance(keys, dict) else list(keys),
        "missing_after_s": 3.0,
        **sections.pop("workers", {}),
    }
    return make_settings(
        tmp_path / "s.db",
        NO_HORDE,
        backend={"kind": "local"},
        local={"in_process": False},
        workers=workers,
        **sections,
    )


def marker_is_csam(image: Image.Image) -> bool:
    """The stand-in for fedi-safety's check_image (CLIP): testing/images.py's colour markers."""
    signals = colour_marker_signals(image)
    return bool(signals.nsfw and signals.caption and "young" in signals.caption)


class FediSafetyWorker:
    """fedi-safety's worker loop. `posted` only observes what the real worker ignores."""

    def __init__(self, url: str, key: str = KEY, threads: int = 4) -> None:
        self.url = url
        self.headers = {"apikey": key}
        self.threads = threads
        self.stop = threading.Event()
        self.names: list[str] = []
        self.posted: list[tuple[dict[str, Any], int]] = []
        self.errors: list[str] = []
        self.dispositions: list[str] = []
        self._thread: threading.Thread | None = None

    def pop_and_check(self) -> None:
        try:
            response = requests.get(f"{self.url}/api/v1/pop", headers=self.headers, timeout=2)
            if not response.ok:
                self.errors.append(str(response.json()))
                return
            if response.status_code == 200:
                if "Content-Disposition" not in response.headers:
                    self.errors.append("Filename not found in headers")
                    return
                self.dispositions.append(response.headers["Content-Disposition"])
                filename = response.headers["Content-Disposition"].split("=", 1)[1]
                image = Image.open(io.BytesIO(response.content))
            elif response.status_code == 204:
                return
            else:
                self.errors.append(f"status {response.status_code}")
                return
            is_csam = marker_is_csam(image)
            payload = {"image": filename, "is_csam": is_csam, "is_nsfw": is_csam}
            self.names.append(filename)
            answer = requests.post(f"{self.url}/api/v1/pop", headers=self.headers, json=payload)
            self.posted.append((payload, answer.status_code))
        except Exception as err:  # the real worker logs every exception and goes on
            self.errors.append(f"Exception: {err}")

    def _loop(self) -> None:
        with ThreadPoolExecutor(max_workers=self.threads) as executor:
            while not self.stop.is_set():
                executor.submit(self.pop_and_check)
                time.sleep(0.1)

    def __enter__(self) -> FediSafetyWorker:
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        assert self._thread is not None
        self._thread.join(timeout=10)


async def until(predicate, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


async def pictrs_upload(http: aiohttp.ClientSession, pictrs: FakePictrs, data: bytes) -> Any:
    form = aiohttp.FormData()
    form.add_field("images", data, filename="upload.jpg", content_type="image/jpeg")
    async with http.post(f"{pictrs.url}/image", data=form) as resp:
        return resp.status, await resp.json()


async def pop_job_name(http: aiohttp.ClientSession, url: str, headers: dict[str, str]) -> str:
    """Pop until a job comes, and take its name the way fedi-safety does: everything after the
    first `=` of Content-Disposition, unparsed."""
    while True:
        async with http.get(f"{url}/api/v1/pop", headers=headers) as resp:
            if resp.status == 200:
                return resp.headers["Content-Disposition"].split("=", 1)[1]
        await asyncio.sleep(0.05)


async def test_fedi_safety_worker_judges_pictrs_uploads_end_to_end(tmp_path: Path, http):
    """pict-rs -> horde-scanner (IPADDR) -> fedi-safety's worker -> its boolean -> pict-rs."""
    async with running_service(pool_settings(tmp_path)) as svc:
        pictrs = FakePictrs(external_validation=svc.scan_url("IPADDR"))
        async with pictrs:
            with FediSafetyWorker(svc.url) as worker:
                await until(lambda: bool(svc.parts.workers.live_workers()))
                red = await pictrs_upload(http, pictrs, images.jpeg("red", seed=1))
                green = await pictrs_upload(http, pictrs, images.jpeg("green", seed=2))
            async with http.get(f"{svc.url}/readyz") as resp:
                ready = await resp.json()
            stored = await svc.parts.store.get_verdict(sha256_hex(images.jpeg("red", seed=1)))
    assert red == (400, {"msg": "Failed external validation", "code": "failed-external-validation"})
    assert green[0] == 201 and green[1]["msg"] == "ok"
    assert [v.outcome for v in pictrs.validations] == ["rejected", "accepted"]
    # What the worker parsed is the job name itself, and both answers were taken.
    assert all(re.fullmatch(r"[0-9a-f]{32}\.webp", name) for name in worker.names)
    assert [status for _, status in worker.posted] == [201, 201]
    assert [p["is_csam"] for p, _ in worker.posted] == [True, False]
    assert all(
        re.fullmatch(r"attachment; filename=[0-9a-f]{32}\.webp", d) for d in worker.dispositions
    )
    assert worker.errors == []
    # A boolean is a verdict here, marked as one remote worker's unconfirmed say-so.
    assert stored is not None and stored.verdict.label.value == "csam"
    assert stored.verdict.backend == "worker:key1/127.0.0.1"
    assert stored.verdict.signals is not None
    assert stored.verdict.signals.extra == {
        "worker": "key1/127.0.0.1",
        "answer": "boolean",
        "evidence": False,
    }
    assert ready["paths"]["workers"]["live"] is True


async def test_a_quoted_job_name_is_accepted_too(tmp_path: Path, http):
    async with running_service(pool_settings(tmp_path)) as svc:
        upload = asyncio.create_task(
            validate_upload(http, svc.scan_url(), images.jpeg("red", seed=3), "image/jpeg")
        )
        headers = {"apikey": KEY}
        name = await pop_job_name(http, svc.url, headers)
        body = {"image": f'"{name}"', "is_csam": True, "is_nsfw": True}
        async with http.post(f"{svc.url}/api/v1/pop", headers=headers, json=body) as resp:
            answered = resp.status, await resp.json()
        result = await upload
    assert answered == (201, {"image": name, "accepted": True})
    assert result.status == 406 and result.body["label"] == "csam"


async def metric(http: aiohttp.ClientSession, url: str, outcome: str) -> float:
    async with http.get(f"{url}/metrics") as resp:
        text = await resp.text()
    found = re.search(
        rf'^horde_scanner_worker_answers_total\{{outcome="{outcome}"\}} (\S+)$', text, re.M
    )
    return float(found.group(1)) if found else 0.0


async def test_only_the_worker_holding_a_job_is_believed(tmp_path: Path, http, caplog):
    """Worker B answering a job popped by worker A is refused (403, counted, logged); the
    same name under another key is another worker; A's answer is then believed."""
    keys = {"alice": "alice-secret-1", "bob": "bob-secret-22"}
    async with running_service(pool_settings(tmp_path, keys)) as svc:
        red = images.jpeg("red", seed=4)
        upload = asyncio.create_task(validate_upload(http, svc.scan_url(), red, "image/jpeg"))
        a = {"apikey": keys["alice"], "X-Worker-Name": "gpu-a"}
        name = await pop_job_name(http, svc.url, a)
        lie = {"image": name, "is_csam": False, "is_nsfw": False}
        impostors = [
            {"apikey": keys["alice"], "X-Worker-Name": "gpu-b"},  # same key, other worker
            {"apikey": keys["bob"], "X-Worker-Name": "gpu-a"},  # same name, other key
        ]
        refused = []
        with caplog.at_level(logging.WARNING, logger="horde_scanner"):
            for headers in impostors:
                async with http.post(f"{svc.url}/api/v1/pop", headers=headers, json=lie) as r:
                    refused.append((r.status, (await r.json())["error"]))
        truth = {"image": name, "is_csam": True, "is_nsfw": True}
        async with http.post(f"{svc.url}/api/v1/pop", headers=a, json=truth) as r:
            believed = r.status
        result = await upload
        not_holder = await metric(http, svc.url, "not_holder")
        accepted = await metric(http, svc.url, "accepted")
    assert refused == [(403, "not_your_job")] * 2
    assert believed == 201
    assert result.status == 406 and result.body["label"] == "csam"
    assert any("worker:alice/gpu-a" in reason for reason in result.body["reasons"])
    assert (not_holder, accepted) == (2.0, 1.0)
    logged = [r.getMessage() for r in caplog.records if "worker answer refused" in r.getMessage()]
    assert len(logged) == 2 and all("not_holder" in m for m in logged)
    assert "bob-secret" not in caplog.text and "alice-secret" not in caplog.text


async def test_a_removed_key_is_refused_and_the_old_list_form_still_works(tmp_path: Path, http):
    # bob's key was revoked (taken out of workers.keys); alice's stays.
    async with running_service(pool_settings(tmp_path, {"alice": "alice-secret-1"})) as svc:
        url = f"{svc.url}/api/v1/pop"
        async with http.get(url, headers={"apikey": "bob-secret-22"}) as r:
            pop_status = r.status
        body = {"image": "x.webp", "is_csam": False, "is_nsfw": False}
        async with http.post(url, headers={"apikey": "bob-secret-22"}, json=body) as r:
            answer = r.status, (await r.json())["error"]
        async with http.get(url, headers={"apikey": "alice-secret-1"}) as r:
            alice = r.status
        async with http.post(url, headers={"apikey": "alice-secret-1"}, json={"image": 1}) as r:
            malformed = r.status
        bad_key = await metric(http, svc.url, "bad_worker_key")
        bad_answer = await metric(http, svc.url, "bad_answer")
    assert (pop_status, answer, alice, malformed) == (401, (401, "bad_worker_key"), 204, 400)
    assert (bad_key, bad_answer) == (1.0, 1.0)
    # workers.keys as a plain list (the old single-key option) names its keys key1, key2...
    settings = pool_settings(tmp_path / "old", ["one-secret", "two-secret"])
    assert settings.workers.keys == {"key1": "one-secret", "key2": "two-secret"}


def test_worker_keys_by_name_in_toml_and_as_the_old_env_list(tmp_path: Path, monkeypatch):
    config = tmp_path / "scanner.toml"
    config.write_text('[workers.keys]\ngpu-box = "secret-one"\nfedi-safety = "secret-two"\n')
    assert load_settings(config).workers.keys == {
        "gpu-box": "secret-one",
        "fedi-safety": "secret-two",
    }
    monkeypatch.setenv("HORDE_SCANNER_WORKERS__KEYS", '["secret"]')
    assert load_settings(None).workers.keys == {"key1": "secret"}
    monkeypatch.delenv("HORDE_SCANNER_WORKERS__KEYS")
    with pytest.raises(ConfigError, match="workers.keys.*same secret"):
        load_settings(None, workers={"keys": {"a": "same", "b": "same"}})
    with pytest.raises(ConfigError, match="workers.keys.*worker key name"):
        load_settings(None, workers={"keys": {"bad name!": "x"}})


async def test_readyz_says_when_workers_take_jobs_but_no_answer_is_accepted(tmp_path: Path, http):
    """A worker that mangles the job name (as fedi-safety did with a quoted header that
    carried other text) gets every answer refused: /readyz and /metrics say so."""
    settings = pool_settings(tmp_path, validation={"deadline_s": 1.0})
    async with running_service(settings) as svc:
        upload = asyncio.create_task(
            validate_upload(http, svc.scan_url(), images.jpeg("red", seed=5), "image/jpeg")
        )
        headers = {"apikey": KEY}
        name = await pop_job_name(http, svc.url, headers)
        statuses, states = [], []
        for mangled in (f"{name}; size=1", f"attachment; filename={name}"):
            body = {"image": mangled, "is_csam": True, "is_nsfw": True}
            async with http.post(f"{svc.url}/api/v1/pop", headers=headers, json=body) as resp:
                statuses.append(resp.status)
            async with http.get(f"{svc.url}/readyz") as resp:
                ready = await resp.json()
            states.append(ready["status"])
        unknown = await metric(http, svc.url, "unknown_job")
        result = await upload
    # One refused answer is ordinary (a late duplicate); two with nothing accepted is not.
    assert statuses == [404, 404] and states == ["ready", "degraded"]
    assert ready["status"] == "degraded"
    workers = ready["paths"]["workers"]
    assert workers["live"] is False
    assert "none of their answers was accepted" in workers["detail"]
    assert "unknown_job" in workers["detail"]
    assert unknown == 2.0
    # Answered by on_timeout: at the deadline, or at once when the pool went down first.
    assert result.body["route"] in ("timeout", "unavailable")


async def test_pictrs_reads_any_2xx_as_accept_and_anything_else_as_reject(tmp_path: Path, http):
    """Our answers as pict-rs reads them: 200 clean, 406 csam, 401 for an unknown client id
    (so a misconfigured id fails closed, as pict-rs rejects the upload)."""
    settings = pool_settings(tmp_path)
    async with running_service(settings) as svc:
        good = FakePictrs(external_validation=svc.scan_url())
        wrong = FakePictrs(external_validation=svc.scan_url("not-a-client"))
        async with good, wrong:
            with FediSafetyWorker(svc.url) as _:
                await until(lambda: bool(svc.parts.workers.live_workers()))
                ok = await pictrs_upload(http, good, images.jpeg("green", seed=6))
                bad = await pictrs_upload(http, good, images.jpeg("red", seed=7))
            refused = await pictrs_upload(http, wrong, images.jpeg("green", seed=6))
    assert ok[0] == 201
    assert bad[0] == 400 and bad[1]["code"] == "failed-external-validation"
    assert refused[0] == 400 and refused[1]["code"] == "failed-external-validation"
    assert [(v.status, v.outcome) for v in good.validations] == [
        (200, "accepted"),
        (406, "rejected"),
    ]
    assert [(v.status, v.outcome) for v in wrong.validations] == [(401, "rejected")]


@pytest.mark.parametrize("version", ["0.4.3", "0.4.8"])
def test_fake_pictrs_versions_know_their_features(version: str):
    pictrs = FakePictrs(version=version, external_validation="http://127.0.0.1:9/x")
    assert not pictrs.has_hashes_endpoint
    assert pictrs.validation_timeout == (None if version == "0.4.3" else 10.0)
    with pytest.raises(ValueError, match="0.4.3"):
        FakePictrs(version="0.4.2", external_validation="http://127.0.0.1:9/x")


async def test_readyz_says_when_workers_take_jobs_and_never_answer(tmp_path: Path, http):
    """A worker that takes jobs and dies on each (never posting) is also a stuck pool."""
    settings = pool_settings(
        tmp_path,
        workers={"missing_after_s": 5.0, "job_timeout_s": 0.2},
        validation={"deadline_s": 3.0},
    )
    async with running_service(settings) as svc:
        upload = asyncio.create_task(
            validate_upload(http, svc.scan_url(), images.jpeg("red", seed=8), "image/jpeg")
        )
        pool = svc.parts.workers
        taken = 0
        while pool.reassigned < 2:
            async with http.get(f"{svc.url}/api/v1/pop", headers={"apikey": KEY}) as resp:
                taken += resp.status == 200
            await asyncio.sleep(0.05)
        async with http.get(f"{svc.url}/readyz") as resp:
            ready = await resp.json()
        result = await upload
    workers = ready["paths"]["workers"]
    assert taken >= 2 and workers["live"] is False
    assert re.search(
        r"answered none of the last \d+ within workers.job_timeout_s", workers["detail"]
    )
    # Answered by on_timeout: at the deadline, or at once when the pool went down first.
    assert result.body["route"] in ("timeout", "unavailable")
