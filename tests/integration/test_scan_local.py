"""Sweeps of a local pict-rs-like tree: report, rescan, quarantine/release, delete (with and
without pict-rs), apply, follow, interrupted actions and bad input. Real files, a real SQLite
store; the backend is the fake AI Horde over loopback (CLI) or the in-process MockBackend."""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import stat
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from horde_scanner.backends.mock import MockBackend
from horde_scanner.media.hashing import sha256_hex
from horde_scanner.runtime.sweeps import run_apply, run_release, run_scan
from horde_scanner.sources.local import LocalSource
from horde_scanner.sources.source import Denied, Entry, ItemError
from horde_scanner.store.sqlite import Store
from horde_scanner.sweep.actions import Action
from horde_scanner.sweep.runner import FOLLOW_SLACK_S
from horde_scanner.testing import images
from horde_scanner.testing.horde import FakeHorde
from horde_scanner.testing.pictrs import FakePictrs, new_identifier
from tests.scan_helpers import action_rows, audit_rows, cli, cli_env, scan_settings
from tests.scan_trees import pictrs_tree, v7_time


@pytest.fixture
def tree():
    return pictrs_tree(v04={"green": 3, "red": 1}, v057={"green": 3, "magenta": 1, "red": 1})


@pytest.fixture
def root(tmp_path: Path, tree) -> Path:
    files = tmp_path / "files"
    tree.write(files)
    return files


async def test_report_then_rescan_reads_nothing(tmp_path: Path, tree, root: Path, monkeypatch):
    settings = scan_settings(tmp_path / "s.db")
    backend = MockBackend()
    report = await run_scan(settings, str(root), backend=backend)
    c = report.counts
    assert c.listed == len(tree.files)
    assert c.not_media == len(tree.with_label(None)) == 3
    assert c.csam == len(tree.with_label("csam")) == 2
    assert c.nsfw == 1 and c.clean == len(tree.with_label("clean"))
    assert c.errors == c.unreadable == c.acted == 0
    assert sorted(p[0] for p in report.positives) == tree.with_label("csam")
    # A dry run moves nothing.
    assert all((root / i).exists() for i in tree.files)
    calls = backend.calls

    def no_reads(self, entry, limit=None):
        raise AssertionError(f"read {entry.identifier} on an unchanged store")

    monkeypatch.setattr(LocalSource, "read", no_reads)
    again = await run_scan(settings, f"file://{root}", backend=backend)
    assert again.counts.seen == again.counts.listed == len(tree.files)
    assert again.counts.bytes_read == 0 and backend.calls == calls
    assert again.source == report.source  # a path and its file:// URL are one source


async def test_changed_file_is_judged_again(tmp_path: Path, root: Path, tree):
    settings = scan_settings(tmp_path / "s.db")
    backend = MockBackend()
    await run_scan(settings, str(root), backend=backend)
    victim = tree.with_label("clean")[0]
    (root / victim).write_bytes(images.jpeg("red", size=(96, 96), seed=999))
    report = await run_scan(settings, str(root), backend=backend)
    assert report.counts.seen == len(tree.files) - 1
    assert report.counts.csam == 1 and report.positives[0][0] == victim


async def test_cli_quarantine_release_and_export(tmp_path: Path, tree, root: Path):
    db = tmp_path / "s.db"
    qdir = tmp_path / "q"
    async with FakeHorde(latency=0.05) as horde:
        env = cli_env(db, horde.url, HORDE_SCANNER_SCAN__QUARANTINE_PATH=str(qdir))
        result = await cli(["scan", str(root), "--action", "quarantine"], env)
        assert result.exit_code == 1, result.output  # positives were found
        assert "skipped as seen" in result.output and "csam" in result.output
    reds = tree.with_label("csam")
    assert stat.S_IMODE(qdir.stat().st_mode) == 0o700
    for ident in reds:
        assert not (root / ident).exists()
    moved = {p.name for p in qdir.iterdir()}
    assert len(moved) == 2
    rows = action_rows(db)
    assert sorted(r[1] for r in rows) == reds and {r[3] for r in rows} == {"done"}
    audits = audit_rows(db, "scan_action")
    assert len(audits) == 2
    for a in audits:
        assert a["action"] == "quarantined" and a["label"] == "csam"
        d = a["detail"]
        assert d["identifier"] in reds and d["size"] > 0 and d["mtime"] > 0 and d["reasons"]
        assert Path(d["location"]).parent == qdir

    # The follow-up records carry where each file was found and what was done, no bytes.
    out = await cli(["verdicts", "export", "--label", "csam", "--format", "json"], env)
    exported = json.loads(out.output)
    assert len(exported) == 2
    for record in exported:
        (found,) = record["found"]
        assert found["identifier"] in reds and found["action"] == "quarantine"
        assert found["action_state"] == "done" and found["location"].startswith(str(qdir))
    csv_out = await cli(["verdicts", "export", "--label", "csam", "--format", "csv"], env)
    header = csv_out.output.splitlines()[0].split(",")
    assert "found" in header and "actions" in header
    assert reds[0] in csv_out.output

    # Release the first: back in place, hash allow-listed, not acted on again.
    first = rows[0]
    out = await cli(["release", str(first[0]), "--note", "false positive"], env)
    assert out.exit_code == 0, out.output
    assert (root / first[1]).exists()
    released_sha = sha256_hex((root / first[1]).read_bytes())
    async with await Store.open(db) as store:
        assert await store.list_kind(released_sha) == "allow"
    assert audit_rows(db, "released")[0]["detail"]["identifier"] == first[1]
    async with FakeHorde(latency=0.05) as horde:
        env = cli_env(db, horde.url, HORDE_SCANNER_SCAN__QUARANTINE_PATH=str(qdir))
        again = await cli(["scan", str(root), "--action", "quarantine"], env)
        assert again.exit_code == 0
        assert horde.posts == 0
    assert (root / first[1]).exists()
    assert len(audit_rows(db, "scan_action")) == 2
    # Releasing twice is refused with a message.
    twice = await cli(["release", str(first[0])], env)
    assert twice.exit_code == 4 and "nothing to release" in twice.output


async def test_delete_without_pictrs_reminds_prune_missing(tmp_path: Path, tree, root: Path):
    settings = scan_settings(tmp_path / "s.db")
    report = await run_scan(settings, str(root), action=Action.DELETE, backend=MockBackend())
    assert report.counts.acted == 2
    for ident in tree.with_label("csam"):
        assert not (root / ident).exists()
    for ident in tree.with_label("clean") + tree.with_label(None):
        assert (root / ident).exists()
    assert any("prune_missing" in note for note in report.notes)
    assert {a["action"] for a in audit_rows(tmp_path / "s.db", "scan_action")} == {"deleted"}


async def test_delete_through_pictrs_purges_aliases(tmp_path: Path):
    """Files pict-rs knows are purged through its API (every alias); a thumbnail it does not
    know by hash is deleted in place, with the prune_missing reminder."""
    files = tmp_path / "files"
    async with FakePictrs() as pictrs:
        red = images.jpeg("red", size=(96, 96), seed=7)
        alias = pictrs.add_image(red, "jpeg")
        second = pictrs.add_alias(alias)
        green = pictrs.add_image(images.jpeg("green", size=(96, 96), seed=8), "jpeg")
        for a, data in ((alias, red), (green, pictrs.images[green])):
            path = files / pictrs.identifier(a)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
        thumb_id = new_identifier("webp", datetime.now(UTC))
        thumb = files / thumb_id
        thumb.parent.mkdir(parents=True, exist_ok=True)
        thumb.write_bytes(images.encode(images.image("red", size=(40, 40), seed=9), "WEBP"))

        settings = scan_settings(
            tmp_path / "s.db", pictrs={"url": pictrs.url, "api_key": pictrs.api_key}
        )
        report = await run_scan(settings, str(files), action=Action.DELETE, backend=MockBackend())
        assert report.counts.csam == 2 and report.counts.acted == 2
        assert set(pictrs.purged_aliases) == {alias, second}
        assert green in pictrs.images
        assert not thumb.exists()
        assert any("prune_missing" in n and "1 file" in n for n in report.notes)
        by_how = {
            a["detail"]["identifier"]: a for a in audit_rows(tmp_path / "s.db", "scan_action")
        }
        assert by_how[thumb_id]["action"] == "deleted"
        purged = [a for a in by_how.values() if a["action"] == "purged"]
        assert len(purged) == 1 and set(purged[0]["detail"]["aliases"]) == {alias, second}


async def test_delete_with_pictrs_down_fails_without_deleting(tmp_path: Path, root: Path, tree):
    settings = scan_settings(
        tmp_path / "s.db", pictrs={"url": "http://127.0.0.1:9", "api_key": "k"}
    )
    report = await run_scan(settings, str(root), action=Action.DELETE, backend=MockBackend())
    assert report.counts.action_failed == 2 and report.counts.acted == 0
    assert all((root / i).exists() for i in tree.with_label("csam"))
    assert {r[3] for r in action_rows(tmp_path / "s.db")} == {"failed"}
    failed = audit_rows(tmp_path / "s.db", "scan_action_failed")
    assert len(failed) == 2 and "unreachable" in failed[0]["detail"]["error"]


async def test_apply_acts_on_dry_run_without_judging(tmp_path: Path, root: Path, tree):
    db = tmp_path / "s.db"
    settings = scan_settings(db)
    backend = MockBackend()
    await run_scan(settings, str(root), backend=backend)
    calls = backend.calls
    reds = tree.with_label("csam")
    # One positive changes after the dry run: apply must not act on bytes it never judged.
    changed = reds[0]
    (root / changed).write_bytes(images.jpeg("green", size=(96, 96), seed=4242))

    reports = await run_apply(settings, action=Action.QUARANTINE)
    (report,) = reports
    assert report.counts.acted == 1 and report.counts.changed == 1
    assert (root / changed).exists() and not (root / reds[1]).exists()
    assert backend.calls == calls  # apply judged nothing
    (again,) = await run_apply(settings, action=Action.QUARANTINE)
    assert again.counts.acted == 0 and again.counts.changed == 1
    assert len(audit_rows(db, "scan_action")) == 1


async def test_apply_since_and_cli_errors(tmp_path: Path, root: Path):
    db = tmp_path / "s.db"
    settings = scan_settings(db)
    await run_scan(settings, str(root), backend=MockBackend())
    future = (datetime.now(UTC) + timedelta(days=1)).date().isoformat()
    assert (
        await run_apply(
            settings,
            action=Action.DELETE,
            since=datetime.fromisoformat(future).replace(tzinfo=UTC).timestamp(),
        )
        == []
    )
    env = cli_env(db, "http://127.0.0.1:9")
    bad = await cli(["apply", "--action", "delete", "--since", "last tuesday"], env)
    assert bad.exit_code == 2 and "--since" in bad.output
    out = await cli(["apply", "--action", "delete", "--since", "1h", "--yes"], env)
    assert out.exit_code == 0, out.output
    assert "acted" in out.output
    assert len(audit_rows(db, "scan_action")) == 2


async def test_follow_picks_up_new_files_without_walking_old_branches(tmp_path: Path):
    start = datetime.now(UTC) - timedelta(days=30)
    tree = pictrs_tree(
        v04={"green": 1}, v057={"green": 6}, thumbnails=0, non_media=False, start=start
    )
    files = tmp_path / "files"
    tree.write(files, mtime_base=start.timestamp())
    settings = scan_settings(tmp_path / "s.db")
    source = LocalSource(files, tmp_path / "q")
    listed_dirs: list[str] = []
    real_listdir = source._listdir_sync

    def counting(rel: str):
        listed_dirs.append(rel)
        return real_listdir(rel)

    source._listdir_sync = counting  # type: ignore[method-assign]
    stop = asyncio.Event()
    backend = MockBackend()
    task = asyncio.create_task(
        run_scan(
            settings,
            str(files),
            action=Action.QUARANTINE,
            follow=True,
            interval_s=0.1,
            backend=backend,
            stop=stop,
            source=source,
        )
    )
    await _until(lambda: backend.calls == len(tree.media))
    await asyncio.sleep(0.3)  # a few idle cycles
    listed_dirs.clear()
    now = datetime.now(UTC)
    new_red = new_identifier("jpeg", now)
    new_green = new_identifier("png", now + timedelta(seconds=1))
    (files / new_red).parent.mkdir(parents=True, exist_ok=True)
    (files / new_red).write_bytes(images.jpeg("red", size=(96, 96), seed=501))
    (files / new_green).parent.mkdir(parents=True, exist_ok=True)
    (files / new_green).write_bytes(images.encode(images.image("green", seed=502), "PNG"))
    await _until(lambda: not (files / new_red).exists())
    stop.set()
    report = await task
    assert backend.calls == len(tree.media) + 2
    assert report.counts.acted == 1 and (files / new_green).exists()
    # UUIDv7 branches older than the newest file seen before (minus the slack) were never
    # listed by the follow cycles.
    times = {i: v7_time(i) for i in [*tree.files, new_red, new_green]}
    newest_old = max(t for i, t in times.items() if t and i in tree.files)
    floor = newest_old - FOLLOW_SLACK_S - 65  # 4 levels of directories span 65 s
    prefix = lambda i: "/".join(i.split("/")[:4])  # noqa: E731
    old = {prefix(i) for i, t in times.items() if t and t < floor}
    old -= {prefix(i) for i, t in times.items() if t and t >= floor}
    assert old and not any(d.startswith(b) for d in listed_dirs for b in old)
    assert any(d.startswith(prefix(new_red)) for d in listed_dirs)


async def test_follow_restart_keeps_watermark(tmp_path: Path, root: Path):
    settings = scan_settings(tmp_path / "s.db")
    stop = asyncio.Event()
    task = asyncio.create_task(
        run_scan(
            settings, str(root), follow=True, interval_s=0.05, backend=MockBackend(), stop=stop
        )
    )
    await asyncio.sleep(0.5)
    stop.set()
    first = await task
    assert first.counts.listed >= 10
    backend = MockBackend()
    report = await run_scan(
        settings, str(root), follow=True, interval_s=0.05, backend=backend, cycles=1
    )
    # Resumed in its follow phase: no second full sweep, nothing judged again.
    assert report.resumed_from is None and backend.calls == 0
    assert report.counts.listed < first.counts.listed


async def test_interrupted_action_is_completed_not_repeated(tmp_path: Path, root: Path, tree):
    db = tmp_path / "s.db"
    qdir = tmp_path / "q"
    settings = scan_settings(db, scan={"quarantine_path": qdir})
    await run_scan(settings, str(root), backend=MockBackend())
    red = tree.with_label("csam")[0]
    sha = sha256_hex((root / red).read_bytes())
    # A run that died right after moving the file, before marking the action done:
    async with await Store.open(db) as store:
        st = (root / red).stat()
        row, fresh = await store.begin_scan_action(
            source=LocalSource(root, qdir).url,
            identifier=red,
            sha256=sha,
            size=st.st_size,
            mtime=st.st_mtime,
            action="quarantine",
            label="csam",
            reasons=["test"],
        )
        assert fresh
        qdir.mkdir(mode=0o700)
        location = qdir / f"{row.id:08d}-{sha}"
        await store.set_scan_action_location(row.id, str(location))
        os.replace(root / red, location)

    report = await run_scan(settings, str(root), action=Action.QUARANTINE, backend=MockBackend())
    assert report.counts.acted == 1  # the other red one
    rows = {r[1]: r for r in action_rows(db)}
    assert rows[red][3] == "done" and rows[red][4] == str(location)
    assert location.exists() and len(list(qdir.iterdir())) == 2
    # A third run finds both done: nothing acted twice.
    third = await run_scan(settings, str(root), action=Action.QUARANTINE, backend=MockBackend())
    assert third.counts.acted == 0
    restored = await run_release(settings, sha)
    assert len(restored) == 1 and (root / red).exists() and not location.exists()


async def test_unreadable_files_follow_on_unreadable(tmp_path: Path):
    files = tmp_path / "files"
    files.mkdir()
    corrupt = b"\xff\xd8\xff\xe0" + b"\x00garbage" * 40
    (files / "corrupt").write_bytes(corrupt)
    (files / "bomb").write_bytes(images.png_bomb())
    (files / "red").write_bytes(images.jpeg("red", size=(64, 64), seed=1))
    db = tmp_path / "s.db"
    settings = scan_settings(db)
    report = await run_scan(settings, str(files), action=Action.DELETE, backend=MockBackend())
    assert report.counts.unreadable == 2 and report.counts.acted == 1
    assert (files / "corrupt").exists() and (files / "bomb").exists()
    # Unreadable results count as seen: an unchanged corrupt file is not read again.
    again = await run_scan(settings, str(files), action=Action.DELETE, backend=MockBackend())
    assert again.counts.seen == 2 and again.counts.bytes_read == 0

    reject = scan_settings(
        tmp_path / "r.db", scan={"on_unreadable": "reject", "quarantine_path": tmp_path / "q"}
    )
    report = await run_scan(reject, str(files), action=Action.QUARANTINE, backend=MockBackend())
    assert report.counts.unreadable == 2 and report.counts.acted == 2
    assert not (files / "corrupt").exists()


async def test_vanished_and_denied_files_are_counted_not_fatal(tmp_path: Path, root: Path, tree):
    victims = tree.with_label("clean")[:2]

    class Flaky(LocalSource):
        async def read(self, entry: Entry, limit: int | None = None) -> bytes:
            if entry.identifier == victims[0]:
                (self.root / entry.identifier).unlink()  # gone between listing and reading
            if entry.identifier == victims[1]:
                raise Denied(f"{entry.identifier}: permission denied")
            return await super().read(entry, limit)

    settings = scan_settings(tmp_path / "s.db")
    report = await run_scan(
        settings, str(root), backend=MockBackend(), source=Flaky(root, tmp_path / "q")
    )
    assert report.counts.vanished == 1 and report.counts.denied == 1
    assert report.counts.csam == 2  # the rest was judged
    assert report.counts.listed == len(tree.files)


async def test_bad_sources_stop_before_any_work(tmp_path: Path):
    env = cli_env(tmp_path / "s.db", "http://127.0.0.1:9")
    missing = await cli(["scan", str(tmp_path / "nope")], env)
    assert missing.exit_code == 4 and "no such directory" in missing.output
    a_file = tmp_path / "f"
    a_file.write_bytes(b"x")
    assert "not a directory" in (await cli(["scan", str(a_file)], env)).output
    odd = await cli(["scan", "ftp://example.invalid/x"], env)
    assert odd.exit_code == 4 and "unknown kind of source" in odd.output
    rel = await cli(["release", "not-an-id"], env)
    assert rel.exit_code == 2 and "action id" in rel.output
    none = await cli(["release", "12345"], env)
    assert none.exit_code == 4 and "no action #12345" in none.output
    with pytest.raises(ItemError):
        await run_release(scan_settings(tmp_path / "s.db"), "0" * 64)


async def _until(predicate, timeout: float = 20.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.05)


async def test_killed_sweep_resumes_and_never_acts_twice(tmp_path: Path):
    """A real `horde-scanner scan` process, killed with SIGKILL mid-sweep, then run again."""
    tree = pictrs_tree(v04={"green": 6, "red": 3}, v057={"green": 9, "red": 3}, thumbnails=0)
    files = tmp_path / "files"
    tree.write(files)
    db = tmp_path / "s.db"
    reds = tree.with_label("csam")
    async with FakeHorde(latency=0.25) as horde:
        env = {
            **os.environ,
            **cli_env(
                db,
                horde.url,
                HORDE_SCANNER_SCAN__CONCURRENCY="2",
                HORDE_SCANNER_SCAN__QUARANTINE_PATH=str(tmp_path / "q"),
            ),
        }
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "horde_scanner.cli",
            "scan",
            str(files),
            "--action",
            "quarantine",
            env=env,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )

        def progress() -> tuple[int, int]:
            if not db.exists():
                return 0, 0
            with sqlite3.connect(db) as conn:
                try:
                    files_done = conn.execute("SELECT COUNT(*) FROM scan_files").fetchone()[0]
                    acted = conn.execute(
                        "SELECT COUNT(*) FROM scan_actions WHERE state='done'"
                    ).fetchone()[0]
                except sqlite3.OperationalError:
                    return 0, 0
            return files_done, acted

        await _until(lambda: progress()[0] >= 8 and progress()[1] >= 1, timeout=60)
        proc.kill()
        await proc.wait()
        done_before, acted_before = progress()
        assert done_before < len(tree.files) and acted_before < len(reds)

        result = await cli(
            ["scan", str(files), "--action", "quarantine"],
            cli_env(db, horde.url, HORDE_SCANNER_SCAN__QUARANTINE_PATH=str(tmp_path / "q")),
        )
        assert result.exit_code == 1, result.output
        assert "resumed after" in result.output
        # Judged files were not sent again; only those in flight at the kill may have been.
        assert horde.posts <= len(tree.media) + 2
    assert all(not (files / r).exists() for r in reds)
    actions = audit_rows(db, "scan_action")
    assert sorted(a["detail"]["identifier"] for a in actions) == reds
    assert len(list((tmp_path / "q").iterdir())) == len(reds)


def test_progress_bar_on_a_terminal_and_log_lines_otherwise(caplog):
    import io

    from horde_scanner.sweep.progress import Counts, Progress, summary_table

    counts = Counts(listed=200, seen=50, clean=40, csam=2, judged=42)
    out = io.StringIO()
    bar = Progress(out, tty=True)
    bar.listing_done = True
    bar.update(counts, force=True)
    bar.note("CSAM somewhere")
    bar.close(counts)
    text = out.getvalue()
    assert "[" in text and "92/200 files" in text and "ETA" in text and "/s" in text
    assert "CSAM somewhere\n" in text and text.endswith("\n")

    caplog.set_level("INFO", logger="horde_scanner.sweep")
    plain = Progress(io.StringIO(), tty=False, log_every_s=3600)
    plain.update(counts)
    plain.update(counts)  # within the interval: no second line
    assert len([r for r in caplog.records if "scan progress" in r.message]) == 1
    assert plain.stream.getvalue() == ""  # type: ignore[attr-defined]

    table = summary_table(counts, title="t")
    for row in (
        "listed",
        "skipped as seen",
        "judged (backend)",
        "clean",
        "nsfw",
        "csam",
        "unreadable",
        "errors",
        "acted",
    ):
        assert row in table


async def test_backend_outage_keeps_the_work_and_the_sweep_finishes(tmp_path: Path):
    """The sweep's fast path judges without job rows; when the backend is down the miss
    becomes an ordinary persisted job and the sweep waits for its verdict."""
    files = tmp_path / "files"
    files.mkdir()
    (files / "a").write_bytes(images.jpeg("red", size=(64, 64), seed=11))
    (files / "b").write_bytes(images.jpeg("green", size=(64, 64), seed=12))
    db = tmp_path / "s.db"
    backend = MockBackend()
    backend.available = False
    task = asyncio.create_task(run_scan(scan_settings(db), str(files), backend=backend))

    def pending_jobs() -> int:
        with sqlite3.connect(db) as conn:
            try:
                return int(conn.execute("SELECT COUNT(*) FROM jobs").fetchone()[0])
            except sqlite3.OperationalError:  # the file exists, its schema not yet
                return 0

    await _until(lambda: db.exists() and pending_jobs() == 2)
    assert not task.done()
    backend.available = True
    report = await task
    assert report.counts.csam == 1 and report.counts.clean == 1
    assert pending_jobs() == 0


async def test_listing_resumes_exactly_after_any_checkpoint(tmp_path: Path, root: Path, tree):
    """Both walks (the threaded local one and the async one SSH uses) yield, after any
    checkpoint, exactly the tail of the full listing: nothing skipped, nothing twice."""
    from horde_scanner.sources.layout import walk

    source = LocalSource(root, tmp_path / "q")

    async def listdir(rel: str):
        return source._listdir_sync(rel)

    full = [e.identifier async for e in source.list()]
    assert sorted(full) == sorted(tree.files)
    async_full = [e.identifier async for e in walk(listdir, None, source._skip)]
    assert async_full == full
    for i, cursor in enumerate(full):
        tail = full[i + 1 :]
        assert [e.identifier async for e in source.list(cursor)] == tail
        assert [e.identifier async for e in walk(listdir, cursor, source._skip)] == tail
