"""Every exit status of the CLI (docs/cli.md), each from the real `horde-scanner` process as
an admin runs it: one message naming the problem on standard error, never a traceback.

The statuses come from one place (cli/common.py): an error's branch in errors.py decides
(InvalidInput 2, FinalError 4, RetryLater 5), a bug is 70."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from horde_scanner.cli.common import (
    EXIT_CLEAN,
    EXIT_FAILED,
    EXIT_INTERNAL,
    EXIT_INVALID,
    EXIT_NOT_JUDGED,
    EXIT_POSITIVE,
    EXIT_RETRY_LATER,
    exit_code,
)
from horde_scanner.config import ConfigError
from horde_scanner.errors import FinalError, HordeScannerError, RetryLater
from horde_scanner.integrations.lemmy_db import LemmyDbError
from horde_scanner.testing import images
from horde_scanner.testing.net import free_port

ROOT = Path(__file__).resolve().parents[2]


def horde_scanner(
    tmp_path: Path, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    base = {
        k: v for k, v in os.environ.items() if not k.startswith("HORDE_SCANNER_")
    }  # the suite's own environment says nothing about this store
    base.update(
        {
            "HORDE_SCANNER_STORE__PATH": str(tmp_path / "s.db"),
            # The log's INFO lines (a new store's revisions) are not the message under test.
            "HORDE_SCANNER_LOG_LEVEL": "WARNING",
            # A closed loopback port: nothing here may reach an AI Horde.
            "HORDE_SCANNER_HORDE__URL": f"http://127.0.0.1:{free_port()}",
        }
    )
    base.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "horde_scanner.cli", *args],
        cwd=tmp_path,
        env=base,
        capture_output=True,
        text=True,
        timeout=120,
    )


def one_message(proc: subprocess.CompletedProcess[str], *words: str) -> None:
    """A message naming the problem, and no traceback."""
    assert "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.startswith("Error: "), proc.stderr
    for word in words:
        assert word in proc.stderr, proc.stderr


def test_0_success(tmp_path: Path):
    bundled = ROOT / "horde_scanner" / "data" / "policy.toml"
    proc = horde_scanner(tmp_path, "policy", "check", str(bundled))
    assert proc.returncode == EXIT_CLEAN == 0, proc.stderr
    assert "is valid" in proc.stdout


def test_1_did_not_do_all_it_was_asked(tmp_path: Path):
    listed = tmp_path / "list.csv"
    good = "a" * 64
    listed.write_text(f"signal,value\nsha256,{good}\nsha256,not-a-hash\n")
    proc = horde_scanner(tmp_path, "hashes", "import", str(listed))
    assert proc.returncode == EXIT_POSITIVE == 1, proc.stderr
    assert "skipped" in proc.stderr and "Traceback" not in proc.stderr


def test_2_bad_input_names_the_key(tmp_path: Path):
    config = tmp_path / "scanner.toml"
    config.write_text("[validation]\non_timout = 'accept'\n")
    proc = horde_scanner(tmp_path, "--config", str(config), "verdicts", "list")
    assert proc.returncode == EXIT_INVALID == 2
    one_message(proc, "validation.on_timout", "did you mean 'on_timeout'")
    # The policy file is input too.
    policy = tmp_path / "policy.toml"
    policy.write_text('version = "mine"\n[horde]\nweak_underage_words = ["girl", 3]\n')
    proc = horde_scanner(tmp_path, "policy", "check", str(policy))
    assert proc.returncode == EXIT_INVALID
    one_message(proc, "weak_underage_words")


def test_3_not_judged(tmp_path: Path):
    image = tmp_path / "one.jpg"
    image.write_bytes(images.jpeg("green", seed=3))
    # The AI Horde is down (a closed port): the file is left as a job, not judged.
    proc = horde_scanner(
        tmp_path,
        "check",
        "--wait",
        "2",
        str(image),
        env={"HORDE_SCANNER_BACKEND__KIND": "horde", "HORDE_SCANNER_HORDE__RETRIES": "0"},
    )
    assert proc.returncode == EXIT_NOT_JUDGED == 3, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr


def test_4_failed_for_good(tmp_path: Path):
    proc = horde_scanner(tmp_path, "scan", str(tmp_path / "nope"))
    assert proc.returncode == EXIT_FAILED == 4
    one_message(proc, "no such directory")


def test_5_try_again_later(tmp_path: Path):
    # Lemmy's database does not answer (a closed loopback port): worth asking again later.
    url = f"postgresql://reader:secret@127.0.0.1:{free_port()}/lemmy"
    proc = horde_scanner(tmp_path, "lemmy", "check", env={"HORDE_SCANNER_LEMMY__DATABASE_URL": url})
    assert proc.returncode == EXIT_RETRY_LATER == 5, proc.stderr
    one_message(proc, "unreachable")
    assert "secret" not in proc.stderr


def test_70_a_bug_is_one_line_not_a_traceback(tmp_path: Path):
    # A backend module whose factory has a bug, registered before the CLI runs.
    script = (
        "from horde_scanner.backend_registry import register_backend\n"
        "def build(ctx):\n"
        "    raise ZeroDivisionError('the factory divided by zero')\n"
        "register_backend('buggy', build)\n"
        "from horde_scanner.cli import main\n"
        "main()\n"
    )
    image = tmp_path / "one.jpg"
    image.write_bytes(images.jpeg("green", seed=4))
    env = {k: v for k, v in os.environ.items() if not k.startswith("HORDE_SCANNER_")}
    env.update(
        {
            "HORDE_SCANNER_STORE__PATH": str(tmp_path / "s.db"),
            "HORDE_SCANNER_LOG_LEVEL": "WARNING",
            "HORDE_SCANNER_BACKEND__KIND": "buggy",
        }
    )
    proc = subprocess.run(
        [sys.executable, "-c", script, "check", str(image)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == EXIT_INTERNAL == 70, proc.stderr
    one_message(proc, "internal error", "ZeroDivisionError: the factory divided by zero")
    assert len(proc.stderr.strip().splitlines()) == 1


def test_each_branch_has_its_code():
    assert exit_code(ConfigError("x")) == EXIT_INVALID
    assert exit_code(FinalError("x")) == EXIT_FAILED
    assert exit_code(RetryLater("x", retry_after_s=3)) == EXIT_RETRY_LATER
    # An error whose class cannot know says so per instance.
    assert exit_code(LemmyDbError("x", retry=True)) == EXIT_RETRY_LATER
    assert exit_code(LemmyDbError("x", retry=False)) == EXIT_FAILED
    assert exit_code(HordeScannerError("x")) == EXIT_FAILED
