"""Configuration keys beside Lemmy's: foreign keys ignored, misspelt ones of ours refused by name.

Every test runs the installed `horde-scanner` command in a directory holding a `.env` like the
one a Lemmy admin has (Lemmy's docker directory, where pictrs-safety's docs also put theirs).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import click
import pytest

from horde_scanner.cli import main as cli_main
from horde_scanner.config_keys import CLI_ENV_VARS
from horde_scanner.testing.net import free_port, wait_port

CLI = str(Path(sys.executable).with_name("horde-scanner"))

# What Lemmy's docker directory holds: its own variables and pict-rs's, nested with __ too.
LEMMY_DOTENV = """\
POSTGRES_PASSWORD=lemmy-db-password
POSTGRES_USER=lemmy
PICTRS__SERVER__API_KEY=pictrs-api-key
PICTRS__MEDIA__EXTERNAL_VALIDATION=http://horde-scanner:14051/api/v1/scan/some-id
LEMMY_UI_LEMMY_INTERNAL_HOST=lemmy:8536
LEMMY_UI_LEMMY_EXTERNAL_HOST=lemmy.example
LEMMY_UI_HTTPS=true
RUST_LOG="warn"
"""


def _clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.upper().startswith("HORDE_SCANNER_")}


def run_cli(
    cwd: Path, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    return subprocess.run(
        [CLI, *args],
        cwd=cwd,
        env={**_clean_env(), **(env or {})},
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.fixture
def lemmy_dir(tmp_path: Path) -> Path:
    (tmp_path / ".env").write_text(LEMMY_DOTENV)
    return tmp_path


@pytest.fixture
def serving(lemmy_dir: Path) -> Iterator[tuple[int, Path]]:
    port = free_port()
    db = lemmy_dir / "scanner.db"
    with (lemmy_dir / ".env").open("a") as f:
        f.write(f"HORDE_SCANNER_SERVER__PORT={port}\nHORDE_SCANNER_STORE__PATH={db}\n")
        f.write("HORDE_SCANNER_SERVER__CLIENT_IDS='[\"from-dotenv\"]'\n")
    proc = subprocess.Popen(
        [CLI, "serve"], cwd=lemmy_dir, env=_clean_env(), stderr=subprocess.PIPE, text=True
    )
    try:
        try:
            wait_port(port, timeout=30)
        except RuntimeError:
            proc.kill()
            raise AssertionError(f"serve did not start: {proc.communicate()[1]}") from None
        yield port, db
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        if proc.stderr:
            proc.stderr.close()


def test_serve_beside_lemmys_dotenv_reads_only_our_keys(serving: tuple[int, Path]):
    port, db = serving
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=10) as resp:
        assert resp.status == 200
    assert db.exists()  # the store path came from the same .env
    # The client id from .env is accepted; another is not.
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}/api/v1/scan/not-ours", data=b"x", method="POST"
    )
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(req, timeout=10)
    assert err.value.code == 401
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}/api/v1/scan/from-dotenv", data=b"", method="POST"
    )
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(req, timeout=10)
    assert err.value.code == 400  # past the client check: an empty body


def test_cli_commands_run_beside_lemmys_dotenv(lemmy_dir: Path):
    proc = run_cli(lemmy_dir, "verdicts", "list", "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == []
    assert "Extra inputs" not in proc.stderr


def _assert_refused(proc: subprocess.CompletedProcess, *needles: str) -> None:
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    for needle in needles:
        assert needle in proc.stderr, proc.stderr


@pytest.mark.parametrize(
    "key, expected",
    [
        # top level: today's pydantic-settings drops these without a word
        ("HORDE_SCANNER_SERVR__PORT", "did you mean HORDE_SCANNER_SERVER__PORT?"),
        ("HORDE_SCANNER_LOGLEVEL", "did you mean HORDE_SCANNER_LOG_LEVEL?"),
        ("HORDE_SCANNER_SERVER_PORT", "did you mean HORDE_SCANNER_SERVER__PORT?"),
        ("HORDE_SCANNER_NOTHING_LIKE_IT", "unknown key"),
        # a known section, an unknown key
        ("HORDE_SCANNER_SERVER__CLIENT_ID", "did you mean HORDE_SCANNER_SERVER__CLIENT_IDS?"),
        # a nested section
        ("HORDE_SCANNER_SCAN__S3__REGOIN", "did you mean HORDE_SCANNER_SCAN__S3__REGION?"),
    ],
)
@pytest.mark.parametrize("where", ["environment", ".env"])
def test_misspelt_keys_are_refused_by_name(lemmy_dir: Path, where: str, key: str, expected: str):
    if where == ".env":
        with (lemmy_dir / ".env").open("a") as f:
            f.write(f"{key}=1\n")
        proc = run_cli(lemmy_dir, "verdicts", "list")
    else:
        proc = run_cli(lemmy_dir, "verdicts", "list", env={key: "1"})
    _assert_refused(proc, key, f"({where})", expected)


def test_misspelt_keys_in_toml_are_refused_by_name(lemmy_dir: Path):
    (lemmy_dir / "scanner.toml").write_text(
        'log_levl = "DEBUG"\n[servr]\nport = 1\n[validation]\ndeadlin_s = 3\n'
        "[scan.s3]\nregoin = 'x'\n"
    )
    proc = run_cli(lemmy_dir, "--config", "scanner.toml", "verdicts", "list")
    _assert_refused(
        proc,
        "scanner.toml",
        "unknown key 'log_levl' (top level); did you mean 'log_level'?",
        "unknown key 'servr' (top level); did you mean 'server'?",
        "unknown key 'validation.deadlin_s' ([validation]); did you mean 'deadline_s'?",
        "unknown key 'scan.s3.regoin' ([scan.s3]); did you mean 'region'?",
    )


@pytest.mark.parametrize("where", ["environment", ".env"])
def test_a_list_as_plain_text_asks_for_a_json_list(lemmy_dir: Path, where: str):
    secret = "plain-client-secret-7f3a"
    if where == ".env":
        (lemmy_dir / ".env").write_text(
            LEMMY_DOTENV + f"HORDE_SCANNER_SERVER__CLIENT_IDS={secret}\n"
        )
        proc = run_cli(lemmy_dir, "verdicts", "list")
    else:
        env = {"HORDE_SCANNER_SERVER__CLIENT_IDS": secret}
        proc = run_cli(lemmy_dir, "verdicts", "list", env=env)
    _assert_refused(
        proc,
        "HORDE_SCANNER_SERVER__CLIENT_IDS",
        "needs a JSON list",
        "HORDE_SCANNER_SERVER__CLIENT_IDS='[\"abc\"]'",
    )
    assert "EnvSettingsSource" not in proc.stderr and "pydantic" not in proc.stderr
    assert secret not in proc.stderr + proc.stdout  # client ids are secrets


def test_a_json_list_and_json_tables_are_read(lemmy_dir: Path):
    env = {
        "HORDE_SCANNER_SERVER__CLIENT_IDS": '["a", "b"]',
        "HORDE_SCANNER_VALIDATION": '{"deadline_s": 5}',
    }
    proc = run_cli(lemmy_dir, "verdicts", "list", env=env)
    assert proc.returncode == 0, proc.stderr


def test_the_clis_own_variables_are_not_refused(lemmy_dir: Path):
    (lemmy_dir / "scanner.toml").write_text("[server]\nport = 15999\n")
    env = {
        "HORDE_SCANNER_CONFIG": str(lemmy_dir / "scanner.toml"),
        "HORDE_SCANNER_WORKER_KEY": "k",
        "HORDE_SCANNER_WORKER_SERVER": "http://127.0.0.1:1",
    }
    proc = run_cli(lemmy_dir, "verdicts", "list", env=env)
    assert proc.returncode == 0, proc.stderr


def _option_envvars(command: click.Command) -> set[str]:
    found = {
        name
        for param in command.params
        for name in ([param.envvar] if isinstance(param.envvar, str) else param.envvar or [])
    }
    if isinstance(command, click.Group):
        for sub in command.commands.values():
            found |= _option_envvars(sub)
    return found


def test_every_cli_envvar_is_known_to_the_key_check():
    ours = {name for name in _option_envvars(cli_main) if name.startswith("HORDE_SCANNER_")}
    assert ours and ours <= CLI_ENV_VARS


def test_the_clis_own_variables_in_dotenv_are_refused_with_why(lemmy_dir: Path):
    # click reads HORDE_SCANNER_CONFIG from the environment only; in .env it would do nothing.
    with (lemmy_dir / ".env").open("a") as f:
        f.write("HORDE_SCANNER_CONFIG=scanner.toml\n")
    proc = run_cli(lemmy_dir, "verdicts", "list")
    _assert_refused(proc, "HORDE_SCANNER_CONFIG (.env)", "from the environment only")
