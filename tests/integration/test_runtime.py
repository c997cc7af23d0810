"""The one composition root (horde_scanner/runtime/) and the one finish every judgement ends
in: a sweep's positive is notified and counted like an upload's (in the service process and from
the CLI), real sweeps feed the sweep progress /metrics shows, an answer is counted once (the
overload path too), and the runtime stops what it started, in reverse order, and nothing else."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import sqlalchemy as sa

from horde_scanner.backends.mock import MockBackend
from horde_scanner.config import NotifySettings
from horde_scanner.integrations.notify import Notifier
from horde_scanner.media.hashing import sha256_hex
from horde_scanner.runtime import open_runtime
from horde_scanner.runtime.sweeps import run_scan
from horde_scanner.sweep.actions import Action
from horde_scanner.testing import images
from horde_scanner.testing.horde import FakeHorde
from horde_scanner.testing.pictrs import validate_upload
from horde_scanner.testing.service import running_service
from tests.admin_helpers import admin_settings, call, webhook_sink
from tests.scan_helpers import cli, cli_env
from tests.scan_trees import pictrs_tree
from tests.unit.service.test_metrics import scrape, value

API = "/api/v1/admin"


async def test_a_sweep_in_the_service_is_notified_counted_and_shown_like_an_upload(
    tmp_path: Path, http
):
    tree = pictrs_tree(v04={"green": 2, "red": 1}, v057={"magenta": 1, "red": 1}, thumbnails=0)
    root = tmp_path / "files"
    tree.write(root)
    async with webhook_sink() as sink:
        settings = admin_settings(tmp_path, notify={"webhook_url": sink.url})
        async with running_service(settings, backend=MockBackend()) as svc:
            upload = images.jpeg("red", seed=90)
            assert (await validate_upload(http, svc.scan_url(), upload, "image/jpeg")).status == 406
            report = await run_scan(settings, str(root), action=Action.DELETE, runtime=svc.runtime)
            m = await scrape(http, svc.url)
            # The service's own notifier sends the sweep's news too.
            deadline = asyncio.get_running_loop().time() + 5
            while len(sink.events("positive")) < 4:
                assert asyncio.get_running_loop().time() < deadline, sink.received
                await asyncio.sleep(0.02)

    reds, magentas = tree.with_label("csam"), tree.with_label("nsfw")
    assert report.counts.csam == 2 and report.counts.nsfw == 1 and report.counts.acted == 2
    # One upload and two swept files were judged csam; every one is counted.
    assert value(m, "horde_scanner_judgements_total", label="csam", backend="mock") == 3
    assert value(m, "horde_scanner_judgements_total", label="nsfw", backend="mock") == 1
    # The sweep showed itself through the runtime's SweepProgress, not through a test's hand.
    sweep = {"sweep": report.source}
    assert value(m, "horde_scanner_sweep_files_done", **sweep) == report.counts.done
    assert value(m, "horde_scanner_sweep_files_total", **sweep) == report.counts.listed
    assert value(m, "horde_scanner_sweep_files_by_label", label="csam", **sweep) == 2
    assert value(m, "horde_scanner_sweep_files_by_label", label="nsfw", **sweep) == 1
    assert value(m, "horde_scanner_sweep_files_by_label", label="clean", **sweep) == 2
    assert value(m, "horde_scanner_sweep_actions", action="delete", **sweep) == 2
    assert value(m, "horde_scanner_sweep_running", **sweep) == 0
    # Only uploads are validation answers.
    assert value(m, "horde_scanner_validation_seconds_count") == 1

    positives = sink.events("positive")
    uploads = [p for p in positives if p["source"].startswith("upload:")]
    assert len(uploads) == 1 and len(positives) == 4
    swept = {p["sha256"]: p for p in positives if p["source"].startswith("scan ")}
    assert {p["label"] for p in swept.values()} == {"csam", "nsfw"}
    assert len(swept) == len(reds) + len(magentas)
    assert all(p["late"] is False for p in swept.values())
    assert any(p["sha256"] == sha256_hex(upload) for p in positives)


async def test_a_cli_sweep_notifies_its_positives_before_it_exits(tmp_path: Path):
    tree = pictrs_tree(v04={"green": 2, "red": 1}, v057={"magenta": 1}, thumbnails=0)
    root = tmp_path / "files"
    tree.write(root)
    db = tmp_path / "s.db"
    async with webhook_sink(delay_s=0.2) as sink, FakeHorde(latency=0.05) as horde:
        env = cli_env(db, horde.url, HORDE_SCANNER_NOTIFY__WEBHOOK_URL=sink.url)
        result = await cli(["scan", str(root)], env)
        assert result.exit_code == 1, result.output  # positives found
        # Sent while the command ran: nothing is waited for after it returned.
        positives = sink.events("positive")
    assert sorted(p["label"] for p in positives) == ["csam", "nsfw"]
    assert all(p["source"].startswith(f"scan file://{root}/") for p in positives)
    assert {p["backend"] for p in positives} == {"horde"}


async def test_an_answer_is_counted_once_including_overload(tmp_path: Path, http):
    settings = admin_settings(
        tmp_path, server={"max_concurrent_uploads": 1}, validation={"deadline_s": 1.0}
    )
    async with running_service(settings, backend=MockBackend()) as svc:
        gate = svc.parts.upload_gate
        await gate.acquire()  # another upload being admitted, for longer than the deadline
        try:
            overloaded = await validate_upload(
                http, svc.scan_url(), images.jpeg("red", seed=92), "image/jpeg"
            )
        finally:
            gate.release()
        assert overloaded.status == 200 and overloaded.body["route"] == "overload"
        clean = await validate_upload(
            http, svc.scan_url(), images.jpeg("green", seed=91), "image/jpeg"
        )
        assert clean.status == 200
        normal = await validate_upload(
            http, svc.scan_url(), images.jpeg("red", seed=93), "image/jpeg"
        )
        assert normal.status == 406
        m = await scrape(http, svc.url)
        status, stats = await call(http, "GET", f"{svc.url}{API}/stats")
        assert status == 200

    answers = {k[1]: v for k, v in m.items() if k[0] == "horde_scanner_answers_total"}
    assert sum(answers.values()) == 3
    assert value(m, "horde_scanner_answers_total", label="none", route="overload", answer="accept")
    assert value(m, "horde_scanner_validation_seconds_count") == 3
    # The admin's numbers are the same count, not a second one.
    since_start = stats["answers_since_start"]
    assert since_start["overload:accept"] == 1
    assert sum(since_start.values()) == 3


async def test_whoever_listens_hears_every_judgement_the_runtime_finishes(tmp_path: Path):
    """on_judged (how the service's /metrics counts) hears a sweep's judgements too, each once,
    after they are stored."""
    tree = pictrs_tree(v04={"green": 2, "red": 1}, v057={"magenta": 1}, thumbnails=0)
    root = tmp_path / "files"
    tree.write(root)
    settings = admin_settings(tmp_path)
    heard: list[tuple[str, str, str | None]] = []
    async with open_runtime(settings, backend=MockBackend()) as rt:
        rt.on_judged(
            lambda job, verdict, answered: heard.append((job.sha256, verdict.label.value, answered))
        )
        report = await run_scan(settings, str(root), runtime=rt)
        store = await rt.store()
        for sha256, label, _ in heard:
            stored = await store.get_verdict(sha256)
            assert stored is not None and stored.verdict.label.value == label
    assert report.counts.judged == len(heard) == 4
    assert sorted(label for _, label, _ in heard) == ["clean", "clean", "csam", "nsfw"]
    assert len({sha for sha, _, _ in heard}) == 4
    assert {answered for _, _, answered in heard} == {None}  # no upload was answered


async def test_the_runtime_builds_only_what_is_asked_and_stops_it_in_reverse(tmp_path: Path):
    settings = admin_settings(tmp_path)
    backend = MockBackend()
    async with open_runtime(settings, backend=backend) as rt:
        store = await rt.store()
        assert await rt.store() is store  # built once
        judge = await rt.judge()
        assert judge.store is store and judge.backend is backend
        assert judge.hashes is await rt.hashes()
        session = await rt.session()
        assert rt.sweeps.runs() == []
        assert rt._subscriber is None and rt._watcher is None  # not asked for, not started
        assert await rt.pictrs() is None  # no pict-rs API configured
        stopped: list[str] = []

        async def note() -> None:
            stopped.append("caller's")
            assert not session.closed  # stopped before the parts it came after

        rt.on_close(note)
    assert stopped == ["caller's"]
    assert session.closed
    # The store was closed, not just dropped.
    with pytest.raises(sa.exc.ResourceClosedError, match="Connection is closed"):
        await store.count_jobs()
    assert judge.runner.outstanding == 0


async def test_a_stopping_notifier_sends_what_is_queued_for_at_most_its_timeout(http):
    async with webhook_sink(delay_s=0.1) as sink:
        notifier = Notifier(NotifySettings(webhook_url=sink.url), http)
        await notifier.start()
        for n in range(3):
            notifier.notify({"event": "positive", "sha256": f"{n:064x}"})
        await notifier.stop()
        assert [e["sha256"] for e in sink.events("positive")] == [f"{n:064x}" for n in range(3)]
        assert notifier.sent == 3 and notifier.queued == 0

    # A webhook slower than notify.timeout_s: the wait for the queue and the POST's own timeout
    # end at the same moment, which makes aiohttp turn the stop's cancellation into a timeout
    # error; the stop still ends (cancel_and_wait cancels again) instead of hanging.
    async with webhook_sink(delay_s=3.0) as stuck:
        notifier = Notifier(NotifySettings(webhook_url=stuck.url, timeout_s=0.3), http)
        await notifier.start()
        for n in range(3):
            notifier.notify({"event": "positive", "sha256": f"{n:064x}"})
        await notifier.stop()
        assert notifier.sent == 0
