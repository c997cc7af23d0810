"""What an operator meets at the command line, driven as a real process (pipes or a pty):
check's exit codes, scan stopping on signals, the sweep's bar beside log lines, serve's
start-up and shutdown lines, sha256 prefixes, confirmed deletes, and no tracebacks."""

from __future__ import annotations

import asyncio
import json
import re
import signal
import sqlite3
import time
from pathlib import Path

import pytest

from horde_scanner.media.hashing import sha256_hex
from horde_scanner.testing import images
from horde_scanner.testing.horde import FakeHorde
from horde_scanner.testing.net import free_port, wait_port
from tests.proc import OnTerminal, cli_env, run

NEVER = 10_000.0  # seconds per form: a Horde that never finishes within a test


def _refused() -> str:
    return f"http://127.0.0.1:{free_port()}/api"


def _tree(root: Path, colours: list[str]) -> list[Path]:
    root.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, colour in enumerate(colours):
        path = root / f"{i:03d}-{colour}.png"
        path.write_bytes(images.encode(images.image(colour, seed=100 + i), "PNG"))
        paths.append(path)
    return paths


# -- check ---------------------------------------------------------------------------------------


async def test_check_exit_codes_and_full_hashes(tmp_path: Path):
    green, red = _tree(tmp_path / "in", ["green", "red"])
    db = tmp_path / "s.db"
    async with FakeHorde(latency=0.05) as horde:
        env = cli_env(db, horde.url)
        clean = await run(["check", str(green)], env, cwd=tmp_path)
        assert clean.rc == 0, clean.stderr
        assert sha256_hex(green.read_bytes()) in clean.stdout.split()  # the full value
        positive = await run(["check", str(green), str(red)], env, cwd=tmp_path)
        assert positive.rc == 1
    async with FakeHorde(latency=NEVER) as slow:
        other = _tree(tmp_path / "more", ["blue"])[0]
        pending = await run(
            ["check", "--wait", "0.5", "--json", str(other)], cli_env(db, slow.url), cwd=tmp_path
        )
        assert pending.rc == 3, pending.stderr  # "pending" is never 0
        row = json.loads(pending.stdout)
        assert row["label"] == "pending" and "kept as a job" in row["reasons"][0]
    # The job was kept: the same store still holds it for the service to judge.
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT COUNT(*) FROM jobs").fetchone()[0] == 1


async def test_check_with_the_horde_unreachable_answers_3_without_waiting_out(tmp_path: Path):
    path = _tree(tmp_path / "in", ["green"])[0]
    started = time.monotonic()
    done = await run(["check", str(path)], cli_env(tmp_path / "s.db", _refused()), cwd=tmp_path)
    print(f"check with a refused Horde: {time.monotonic() - started:.1f} s (default wait 60 s)")
    assert done.rc == 3, done.stderr
    assert "pending" in done.stdout and "no judging path is live" in done.stdout
    assert "Traceback" not in done.stderr


async def test_check_errors_exit_2_not_1(tmp_path: Path):
    done = await run(
        ["check", str(tmp_path / "missing.jpg")],
        cli_env(tmp_path / "s.db", _refused()),
        cwd=tmp_path,
    )
    assert done.rc == 2
    bad_store = await run(
        ["--db", "/proc/horde-scanner-test.db", "check", str(tmp_path)],
        cli_env(tmp_path / "s.db", _refused()),
        cwd=tmp_path,
    )
    assert bad_store.rc == 2 and "cannot open store" in bad_store.stderr


# -- sha256 prefixes -------------------------------------------------------------------------------


async def test_verdicts_show_and_allow_take_unique_prefixes(tmp_path: Path):
    env = cli_env(tmp_path / "s.db", _refused())
    a, b = "abcdef" + "0" * 58, "abcdef" + "1" * 58
    assert (await run(["deny", a, b], env, cwd=tmp_path)).rc == 0
    ambiguous = await run(["verdicts", "show", "abcdef"], env, cwd=tmp_path)
    assert ambiguous.rc != 0 and "ambiguous" in ambiguous.stderr and a in ambiguous.stderr
    shown = await run(["verdicts", "show", "ABCDEF1"], env, cwd=tmp_path)
    assert shown.rc == 0, shown.stderr
    assert json.loads(shown.stdout)["sha256"] == b
    allowed = await run(["allow", "abcdef0"], env, cwd=tmp_path)
    assert allowed.rc == 0 and f"allowed {a}" in allowed.stdout
    unknown = await run(["allow", "fedcba98"], env, cwd=tmp_path)
    assert unknown.rc != 0 and "no known sha256 starts with fedcba98" in unknown.stderr
    short = await run(["verdicts", "show", "abc"], env, cwd=tmp_path)
    assert short.rc == 2 and "unique prefix of at least 6" in short.stderr


# -- apply --action delete -------------------------------------------------------------------------


async def _dry_run_with_positives(tmp_path: Path) -> tuple[dict[str, str], list[Path]]:
    files = _tree(tmp_path / "files", ["red", "green", "red"])
    env = cli_env(tmp_path / "s.db", "")
    async with FakeHorde(latency=0.05) as horde:
        env["HORDE_SCANNER_HORDE__URL"] = horde.url
        dry = await run(["scan", str(tmp_path / "files")], env, cwd=tmp_path)
    assert dry.rc == 1, dry.stderr  # positives found
    env["HORDE_SCANNER_HORDE__URL"] = _refused()  # apply judges nothing
    return env, [f for f in files if "red" in f.name]


async def test_apply_delete_refuses_without_a_terminal_or_yes(tmp_path: Path):
    env, reds = await _dry_run_with_positives(tmp_path)
    refused = await run(["apply", "--action", "delete"], env, cwd=tmp_path)
    assert refused.rc != 0
    assert "will delete 2 file(s)" in refused.stderr and "2 csam" in refused.stderr
    assert "--yes" in refused.stderr
    assert all(p.exists() for p in reds)
    done = await run(["apply", "--action", "delete", "--yes"], env, cwd=tmp_path)
    assert done.rc == 0, done.stderr
    assert not any(p.exists() for p in reds)


async def test_apply_delete_asks_on_a_terminal(tmp_path: Path):
    env, reds = await _dry_run_with_positives(tmp_path)
    no = OnTerminal(["apply", "--action", "delete"], env, cwd=tmp_path)
    await no.start()
    await no.wait_for_text("This cannot be undone")
    assert "will delete 2 file(s)" in no.text and "2 csam" in no.text
    no.send("n\n")
    assert await no.wait() != 0
    assert all(p.exists() for p in reds)

    yes = OnTerminal(["apply", "--action", "delete"], env, cwd=tmp_path)
    await yes.start()
    await yes.wait_for_text("This cannot be undone")
    yes.send("y\n")
    assert await yes.wait() == 0, yes.text
    assert not any(p.exists() for p in reds)


# -- scan stops on signals -------------------------------------------------------------------------


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
async def test_scan_stops_on_signals_while_the_horde_never_answers(tmp_path: Path, sig):
    _tree(tmp_path / "files", ["green", "blue", "yellow", "magenta", "green", "blue"])
    db = tmp_path / "s.db"
    async with FakeHorde(latency=NEVER) as horde:
        proc = await asyncio.create_subprocess_exec(
            *_cli_argv(["scan", str(tmp_path / "files")]),
            env=cli_env(db, horde.url),
            cwd=tmp_path,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        deadline = time.monotonic() + 30
        while horde.posts < 4 and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert horde.posts >= 4  # every worker waits on the Horde now
        await asyncio.sleep(0.3)
        sent_at = time.monotonic()
        proc.send_signal(sig)
        out, err = await asyncio.wait_for(proc.communicate(), 60)
        print(f"{sig.name}: scan exited {time.monotonic() - sent_at:.1f} s after the signal")
        await asyncio.sleep(0.2)
        deletes = horde.deletes
    text = err.decode()
    assert proc.returncode == 3, text  # stopped before judging everything
    assert "stopping" in text and "kept as jobs" in text and "checkpoint is saved" in text
    assert "Traceback" not in text
    assert "(stopped)" in out.decode()
    assert deletes >= 4  # the abandoned AI Horde requests were cancelled, costing no kudos
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT COUNT(*) FROM jobs").fetchone()[0] >= 4
        (state,) = conn.execute("SELECT state FROM scan_runs").fetchone()
    assert state != "done"  # resumable


def _cli_argv(args: list[str]) -> list[str]:
    import sys

    return [sys.executable, "-m", "horde_scanner.cli", *args]


async def test_sweep_bar_and_log_lines_share_a_terminal(tmp_path: Path):
    """The Horde refused, then back on its port mid-sweep: log lines (unreachable, reachable
    again, jobs resumed) arrive while the bar is drawn and none is written onto the bar's
    line; the stall shows as one, never as "ETA 0s"; the sweep then finishes by itself."""
    _tree(tmp_path / "files", ["green", "blue", "yellow", "red"])
    port = free_port()
    env = cli_env(tmp_path / "s.db", f"http://127.0.0.1:{port}/api")
    term = OnTerminal(["scan", str(tmp_path / "files")], env, cwd=tmp_path)
    await term.start()
    await term.wait_for_text("unreachable")
    await term.wait_for_text("stalled", timeout=20)
    horde = FakeHorde(latency=0.05)
    await horde.start(port=port)
    try:
        rc = await term.wait(60)
    finally:
        await horde.stop()
    text = term.text
    assert rc == 1, text  # the red one is a positive
    assert "reachable again" in text and "CSAM" in text
    assert "ETA 0s" not in text
    log_line = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ (INFO|WARNING|ERROR) ")
    seen_logs = 0
    for line in text.replace("\r\n", "\n").split("\n"):
        # What stays visible of a line is what follows its last carriage return.
        visible = line.split("\r")[-1].replace("\x1b[K", "")
        if log_line.search(visible):
            seen_logs += 1
            assert log_line.match(visible), f"log line written onto other text: {visible!r}"
    assert seen_logs >= 3


# -- serve -----------------------------------------------------------------------------------------


async def test_serve_says_where_it_listens_what_is_on_and_when_it_stops(tmp_path: Path):
    port = free_port()
    env = cli_env(
        tmp_path / "s.db", _refused(), HORDE_SCANNER_SERVER__CLIENTS='{"lemmy": "s3cr3t-id"}'
    )
    proc = await asyncio.create_subprocess_exec(
        *_cli_argv(["serve", "--port", str(port)]),
        env=env,
        cwd=tmp_path,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    await asyncio.to_thread(wait_port, port)
    proc.send_signal(signal.SIGTERM)
    _, err = await asyncio.wait_for(proc.communicate(), 30)
    text = err.decode()
    assert proc.returncode == 0, text
    (listening,) = [line for line in text.splitlines() if "listening on" in line]
    # The start-up heap is out of the cyclic collector's reach (service/serve.py: freeze_heap).
    (frozen,) = [line for line in text.splitlines() if "start-up heap frozen" in line]
    assert int(frozen.split("frozen: ")[1].split()[0]) > 10_000, frozen
    assert f"http://127.0.0.1:{port}" in listening
    assert "backend horde" in listening and "pict-rs API: off" in listening
    assert "clients: lemmy" in listening and "s3cr3t-id" not in text
    assert "late positives stay served until a storage sweep" in text
    assert "shutting down" in text and text.rstrip().endswith("stopped")
    assert "Traceback" not in text


@pytest.mark.parametrize(
    ("store", "message"),
    [
        ("/proc/horde-scanner.db", "cannot open store /proc/horde-scanner.db"),
        ("{file}/sub/s.db", "cannot create the directory of store"),
    ],
)
@pytest.mark.parametrize(
    "command", [["serve", "--port", "{port}"], ["check", "{file}"], ["scan", "{dir}"]]
)
async def test_store_problems_are_one_clear_message(
    tmp_path: Path, store: str, message: str, command
):
    a_file = tmp_path / "plain-file"
    a_file.write_text("not a directory")
    values = {"file": str(a_file), "port": str(free_port()), "dir": str(tmp_path)}
    args = ["--db", store.format(**values), *[c.format(**values) for c in command]]
    done = await run(args, cli_env(tmp_path / "unused.db", _refused()), cwd=tmp_path, timeout=60)
    assert done.rc != 0
    assert message in done.stderr, done.stderr
    assert "Traceback" not in done.stderr and "cannot listen" not in done.stderr


async def test_serve_on_a_port_in_use_is_one_clear_message(tmp_path: Path):
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = await run(
            ["serve", "--port", str(port)], cli_env(tmp_path / "s.db", _refused()), cwd=tmp_path
        )
    assert done.rc != 0
    assert f"cannot listen on 127.0.0.1:{port}" in done.stderr
    assert "Traceback" not in done.stderr and "listening on" not in done.stderr
