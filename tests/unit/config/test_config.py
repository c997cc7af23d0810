"""Configuration: env, .env, TOML, and clear errors naming the key."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from horde_scanner.config import ConfigError, load_settings
from horde_scanner.policy.rules import Policy, PolicyError
from horde_scanner.verdict import Label, Signals

ROOT = Path(__file__).resolve().parents[3]


def test_defaults():
    s = load_settings()
    assert s.server.port == 14051
    assert s.validation.deadline_s == 8.0
    assert s.validation.on_timeout == "accept"
    assert s.validation.reject_labels == [Label.CSAM]
    assert s.horde.api_key == "0000000000"


def test_env_nested_and_toml(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    toml = tmp_path / "c.toml"
    toml.write_text(
        '[validation]\ndeadline_s = 5.5\non_timeout = "reject"\n[server]\nclient_ids = ["abc"]\n'
    )
    monkeypatch.setenv("HORDE_SCANNER_VALIDATION__DEADLINE_S", "4")
    s = load_settings(toml)
    assert s.validation.deadline_s == 4.0  # env beats the file
    assert s.validation.on_timeout == "reject"
    assert s.server.client_ids == ["abc"]


def test_dotenv(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / ".env").write_text("HORDE_SCANNER_SERVER__PORT=15000\n")
    assert load_settings().server.port == 15000


def test_bad_value_names_the_key(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("HORDE_SCANNER_VALIDATION__ON_TIMEOUT", "maybe")
    with pytest.raises(ConfigError, match=r"validation\.on_timeout"):
        load_settings()


def test_unknown_key_in_toml(tmp_path: Path):
    toml = tmp_path / "c.toml"
    toml.write_text("[validation]\ndeadlin_s = 3\n")
    with pytest.raises(ConfigError, match=r"validation\.deadlin_s"):
        load_settings(toml)


def test_missing_and_broken_config_file(tmp_path: Path):
    with pytest.raises(ConfigError, match="not found"):
        load_settings(tmp_path / "nope.toml")
    broken = tmp_path / "b.toml"
    broken.write_text("[server\nport=1")
    with pytest.raises(ConfigError, match="b.toml"):
        load_settings(broken)


def test_serve_with_bad_config_exits_with_message(tmp_path: Path):
    env = {**os.environ, "HORDE_SCANNER_SERVER__PORT": "99999"}
    proc = subprocess.run(
        [sys.executable, "-m", "horde_scanner.cli", "serve"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode != 0
    assert "server.port" in proc.stderr and "HORDE_SCANNER_SERVER__PORT" in proc.stderr


def test_policy_override_and_errors(tmp_path: Path):
    custom = tmp_path / "p.toml"
    custom.write_text(
        'version = "mine-1"\n[horde]\nunderage_words = ["tiny"]\nsexual_words = ["spicy"]\n'
    )
    policy = Policy.load(custom)
    verdict = policy.judge(Signals(backend="horde", nsfw=False, caption="a spicy tiny thing"))
    assert verdict.label is Label.CSAM and verdict.policy_version == "mine-1"
    (tmp_path / "nov.toml").write_text("[horde]\n")
    with pytest.raises(PolicyError, match="version"):
        Policy.load(tmp_path / "nov.toml")
    with pytest.raises(PolicyError):
        Policy.load(tmp_path / "missing.toml")


@pytest.mark.parametrize(
    "caption, nsfw, label",
    [
        ("a photo of a young girl in a bedroom", True, Label.CSAM),
        ("two kids playing in the snow", False, Label.CLEAN),
        ("a naked woman on a bed", False, Label.NSFW),
        ("a naked toddlers at the beach", False, Label.CSAM),
        ("a landscape with trees", True, Label.NSFW),
        ("a bookshop with a kidney shaped table", True, Label.NSFW),  # "kid" is a whole word
    ],
)
def test_bundled_policy(caption: str, nsfw: bool, label: Label):
    verdict = Policy.load().judge(Signals(backend="horde", nsfw=nsfw, caption=caption))
    assert verdict.label is label
    if label is Label.CSAM:
        assert any("caption word" in r for r in verdict.reasons)


def test_tags_below_confidence_are_ignored():
    policy = Policy.load()
    weak = Signals(backend="horde", nsfw=True, caption="a drawing", tags={"lolicon": 2.0})
    strong = Signals(backend="horde", nsfw=True, caption="a drawing", tags={"lolicon": 40.0})
    assert policy.judge(weak).label is Label.NSFW
    assert policy.judge(strong).label is Label.CSAM


def test_every_media_option_reaches_the_decoder_s_limits(tmp_path: Path):
    """[media] and the decoder's limits are one set of names: a TOML value for each option
    comes out of MediaSettings.limits() (the worker, the preview and the Judge all use it)."""
    import dataclasses

    from horde_scanner.config import MediaSettings
    from horde_scanner.media.decode import DecodeLimits

    names = {f.name for f in dataclasses.fields(DecodeLimits)}
    assert names == set(MediaSettings.model_fields)
    values = {
        "max_pixels": 1234567,
        "backend_max_side": 384,
        "webp_quality": 61,
        "max_frames": 5,
        "max_frame_count": 77,
        "max_total_pixels": 7654321,
        "max_decode_s": 2.5,
        "near_duplicate_bits": 9,
        "decode_memory_bytes": 100 * 1024 * 1024,
    }
    assert set(values) == names
    toml = tmp_path / "c.toml"
    toml.write_text("[media]\n" + "".join(f"{k} = {v}\n" for k, v in values.items()))
    limits = load_settings(toml).media.limits()
    assert dataclasses.asdict(limits) == values
    # A caller's own size (the review page's preview) overrides one field, keeps the rest.
    preview = load_settings(toml).media.limits(backend_max_side=256)
    assert dataclasses.asdict(preview) == {**values, "backend_max_side": 256}
