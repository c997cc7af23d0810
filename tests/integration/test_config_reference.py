"""The configuration reference is generated from the Settings models and cannot drift: every
option has a description, the page on disk is what the generator writes, every option can be
found with the docs' own search, and `config show` / `config check` work as an admin runs them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from horde_scanner import config_reference as reference
from horde_scanner.config import Settings

ROOT = Path(__file__).resolve().parents[2]
PAGE = ROOT / "docs" / "reference" / "configuration.md"
CLI = str(Path(sys.executable).parent / "horde-scanner")


def _run(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    base = {"PATH": os.environ["PATH"], "HOME": str(cwd)}
    return subprocess.run(
        [CLI, *args], cwd=cwd, env={**base, **(env or {})}, capture_output=True, text=True,
        timeout=60,
    )  # fmt: skip


def test_every_option_has_a_description():
    assert reference.missing_descriptions(Settings) == []


def test_every_section_links_to_the_page_that_explains_it():
    """A new `[section]` needs its page in config_reference.SECTION_PAGES."""
    sections = {path[0] for path, _ in reference.sections(Settings) if len(path) == 1}
    assert sections <= set(reference.SECTION_PAGES), sections - set(reference.SECTION_PAGES)
    for page, _title in reference.SECTION_PAGES.values():
        assert (PAGE.parent / page).resolve().is_file(), page


def test_the_generated_page_is_up_to_date():
    assert PAGE.read_text() == reference.render(Settings), (
        "docs/reference/configuration.md is stale: run `make config-reference`"
    )


def test_every_option_is_on_the_page_with_type_default_env_and_toml_key():
    text = PAGE.read_text()
    options = list(reference.all_options(Settings))
    assert len(options) > 100
    for opt in options:
        section = text[text.index(f"### `{opt.key}`") :]
        section = section[: section.index("\n### ", 1)] if "\n### " in section[1:] else section
        description = " ".join((opt.info.description or "").split())
        assert description in section, opt.key
        assert "- type: " in section and "- default: " in section, opt.key
        assert f"- TOML: `{opt.path[-1]}`" in section, opt.key
        if opt.env is not None:
            assert f"`{opt.env}`" in section, opt.key


def test_the_check_flag_of_the_generator_reports_a_stale_page(tmp_path: Path):
    page = tmp_path / "configuration.md"
    page.write_text("old\n")
    proc = _run("config", "reference", "-o", str(page), "--check", cwd=tmp_path)
    assert proc.returncode == 1 and "stale" in proc.stderr
    assert page.read_text() == "old\n"
    proc = _run("config", "reference", "-o", str(page), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert page.read_text() == PAGE.read_text()
    assert _run("config", "reference", "-o", str(page), "--check", cwd=tmp_path).returncode == 0


def test_every_option_is_found_by_the_docs_search(tmp_path: Path):
    """Material's search index, as built: each option's key has an entry of its own that leads
    to its heading, and its environment variable is in that entry's text."""
    site = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "-q", "-d", str(site)],
        cwd=ROOT, check=True, capture_output=True, timeout=300,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )  # fmt: skip
    index = json.loads((site / "search" / "search_index.json").read_text())
    entries = {d["location"]: d for d in index["docs"]}
    for opt in reference.all_options(Settings):
        anchor = reference._anchor(opt.key)
        entry = entries.get(f"reference/configuration/#{anchor}")
        assert entry is not None, opt.key
        assert opt.key in entry["title"]
        if opt.env is not None:
            assert opt.env in entry["text"], opt.key


# --- config show / config check, as an admin runs them ---


def test_config_show_says_where_each_value_came_from_and_masks_secrets(tmp_path: Path):
    toml = tmp_path / "scanner.toml"
    toml.write_text(
        '[validation]\non_timeout = "reject"\n'
        '[store]\nurl = "postgresql://scanner:db-password-1@127.0.0.1:5432/scanner"\n'
        '[hashes]\npublish = true\npublish_token = "publish-token-secret"\n'
        '[[hashes.subscriptions]]\nname = "friend"\nurl = "https://friend.example/api/v1/hashes"\n'
        'token = "subscription-token-secret"\n'
    )
    (tmp_path / ".env").write_text(
        "POSTGRES_PASSWORD=lemmy-only\nHORDE_SCANNER_VALIDATION__DEADLINE_S=6.5\n"
    )
    env = {
        "HORDE_SCANNER_HORDE__API_KEY": "horde-key-secret",
        "HORDE_SCANNER_SERVER__CLIENTS": '{"lemmy": "client-id-secret"}',
        "HORDE_SCANNER_NOTIFY__WEBHOOK_URL": "https://discord.example/api/webhooks/1/hook-token",
    }
    proc = _run("--config", str(toml), "config", "show", cwd=tmp_path, env=env)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    secrets = ("horde-key-secret", "client-id-secret", "db-password-1", "publish-token-secret",
               "subscription-token-secret", "hook-token")  # fmt: skip
    for secret in secrets:
        assert secret not in out
    assert '"name" = "friend"' in out and '"token" = "********"' in out
    lines = {ln.split(" = ")[0]: ln for ln in out.splitlines() if " = " in ln}
    assert lines["on_timeout"] == f'on_timeout = "reject"  # config file {toml}'
    assert lines["deadline_s"] == "deadline_s = 6.5  # .env"
    assert lines["api_key"] == 'api_key = "********"  # env HORDE_SCANNER_HORDE__API_KEY'
    assert lines["clients"].startswith('clients = { "lemmy" = "********" }  # env ')
    assert '"postgresql://scanner:********@127.0.0.1:5432/scanner"' in lines["url"]
    assert lines["port"] == "port = 14051  # default"
    # One record a line with --json, every option of the tree but list items.
    proc = _run("--config", str(toml), "config", "show", "--json", cwd=tmp_path, env=env)
    records = [json.loads(ln) for ln in proc.stdout.splitlines()]
    assert {r["key"] for r in records} == {
        o.key for o in reference.all_options(Settings) if "[]" not in o.path
    }
    by_key = {r["key"]: r for r in records}
    assert by_key["validation.on_timeout"]["from"] == f"config file {toml}"
    assert by_key["horde.api_key"]["value"] == "********"
    assert "publish-token-secret" not in proc.stdout


def test_config_show_with_db_names_the_command_line(tmp_path: Path):
    proc = _run("--db", str(tmp_path / "x.db"), "config", "show", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert f'path = "{tmp_path / "x.db"}"  # command line --db' in proc.stdout


def test_config_check_accepts_a_good_file(tmp_path: Path):
    toml = tmp_path / "scanner.toml"
    toml.write_text('[validation]\non_timeout = "reject"\ndeadline_s = 7\n')
    proc = _run("config", "check", str(toml), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"{toml}: valid (2 options set in the file)"


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ('[validation]\non_timout = "reject"\n', "did you mean 'on_timeout'"),
        ('[validation]\non_timeout = "maybe"\n', "validation.on_timeout"),
        ("[server]\nport = 0\n", "server.port"),
        ("[server\nport = 1\n", "scanner.toml"),
        ('[policy]\npath = "missing-policy.toml"\n', "policy.path"),
    ],
)
def test_config_check_names_the_bad_key_and_why(tmp_path: Path, body: str, message: str):
    toml = tmp_path / "scanner.toml"
    toml.write_text(body)
    proc = _run("config", "check", str(toml), cwd=tmp_path)
    assert proc.returncode == 2
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr


def test_config_check_starts_nothing_even_with_a_broken_environment(tmp_path: Path):
    """A bad environment is reported by `config check` (naming the variable), not a crash, and
    `config` commands run where the main command would refuse to start."""
    toml = tmp_path / "scanner.toml"
    toml.write_text("")
    proc = _run(
        "config", "check", str(toml), cwd=tmp_path,
        env={"HORDE_SCANNER_SERVR__PORT": "1"},
    )  # fmt: skip
    assert proc.returncode == 2
    assert "HORDE_SCANNER_SERVR__PORT" in proc.stderr
    assert "did you mean HORDE_SCANNER_SERVER__PORT" in proc.stderr
    missing = _run("config", "check", str(tmp_path / "nope.toml"), cwd=tmp_path)
    assert missing.returncode == 2 and "not found" in missing.stderr


@pytest.mark.parametrize(
    "page", sorted(p.name for p in (ROOT / "docs").glob("*.md") if "```toml" in p.read_text())
)
def test_every_toml_example_in_the_docs_is_a_valid_configuration(page: str, tmp_path: Path):
    import re

    blocks = re.findall(r"```toml\n(.*?)```", (ROOT / "docs" / page).read_text(), re.S)
    for number, block in enumerate(blocks):
        toml = tmp_path / f"example{number}.toml"
        toml.write_text(block)
        proc = _run("config", "check", str(toml), cwd=tmp_path)
        assert proc.returncode == 0, f"{page}, TOML example {number + 1}: {proc.stderr}"
