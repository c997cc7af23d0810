"""docker-compose.horde-scanner.yml merged onto a stock Lemmy compose file, as compose merges it.

No Docker engine (nor compose) is needed: the merge below follows the Compose Specification's
merge rules for the keys involved (mappings merge, `environment` and `depends_on` merge by key,
`volumes` by container path, sequences and scalars are replaced) and its interpolation syntax.
"""

from __future__ import annotations

import copy
import json
import re
import shutil
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from horde_scanner.testing.net import free_port
from tests.proc import serving

ROOT = Path(__file__).resolve().parents[2]
OVERRIDE = ROOT / "docker-compose.horde-scanner.yml"
LEMMY = Path(__file__).resolve().parents[1] / "data" / "lemmy-docker-compose.yml"
CLI = str(Path(sys.executable).with_name("horde-scanner"))

VARS = {"SCANNER_CLIENT_ID": "k3J9-long-random-id", "AI_HORDE_API_KEY": "horde-key"}


# --- interpolation: ${VAR}, ${VAR:-default}, ${VAR-default}, ${VAR:?error}, ${VAR?error}, $$ ---

_VAR = re.compile(r"\$(?:\$|\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\})")


class MissingVariable(Exception):
    pass


def _interpolate_str(text: str, env: dict[str, str]) -> str:
    def sub(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        name, op, arg = m.group("name"), m.group("op"), m.group("arg")
        value = env.get(name)
        unset = value is None or (op is not None and op.startswith(":") and value == "")
        if op in (":-", "-"):
            return arg if unset else str(value)
        if op in (":?", "?"):
            if unset:
                raise MissingVariable(f"{name}: {arg}")
            return str(value)
        return "" if value is None else value

    return _VAR.sub(sub, text)


def interpolate(node: Any, env: dict[str, str]) -> Any:
    if isinstance(node, str):
        return _interpolate_str(node, env)
    if isinstance(node, list):
        return [interpolate(item, env) for item in node]
    if isinstance(node, dict):
        return {key: interpolate(value, env) for key, value in node.items()}
    return node


# --- merge ---


def _env_map(env: Any) -> dict[str, str | None]:
    if env is None:
        return {}
    if isinstance(env, dict):
        return {k: None if v is None else str(v) for k, v in env.items()}
    out: dict[str, str | None] = {}
    for item in env:
        key, sep, value = str(item).partition("=")
        out[key] = value if sep else None
    return out


def _depends_map(deps: Any) -> dict[str, dict[str, Any]]:
    if deps is None:
        return {}
    if isinstance(deps, dict):
        return {k: {"condition": "service_started", **(v or {})} for k, v in deps.items()}
    return {name: {"condition": "service_started"} for name in deps}


def _volume_target(volume: Any) -> str:
    if isinstance(volume, dict):
        return str(volume["target"])
    parts = str(volume).split(":")
    return parts[1] if len(parts) > 1 else parts[0]


def _merge_depends(base: Any, over: Any) -> dict[str, dict[str, Any]]:
    merged = _depends_map(base)
    for name, spec in _depends_map(over).items():
        merged[name] = {**merged.get(name, {}), **spec}
    return merged


def _merge_volumes(base: Any, over: Any) -> list[Any]:
    by_target = {_volume_target(v): v for v in base or []}
    by_target.update({_volume_target(v): v for v in over})
    return list(by_target.values())


Rule = Callable[[Any, Any], Any]

# The keys of a service that merge by key or by container path, not as plain mappings.
_SERVICE_RULES: dict[str, Rule] = {
    "environment": lambda base, over: {**_env_map(base), **_env_map(over)},
    "depends_on": _merge_depends,
    "volumes": _merge_volumes,
}


def _merge_service(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    return _merge_mapping(base, over, _SERVICE_RULES)


def _merge_mapping(
    base: dict[str, Any], over: dict[str, Any], rules: dict[str, Rule] | None = None
) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in over.items():
        if rules and key in rules:
            out[key] = rules[key](base.get(key), value)
        elif isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge_mapping(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = {k: copy.deepcopy(v) for k, v in base.items() if k != "services"}
    for key, value in over.items():
        if key != "services":
            out[key] = (
                _merge_mapping(out.get(key) or {}, value) if isinstance(value, dict) else value
            )
    services = copy.deepcopy(base.get("services", {}))
    for name, spec in over.get("services", {}).items():
        services[name] = _merge_service(services[name], spec) if name in services else spec
    out["services"] = services
    return out


def networks_of(project: dict[str, Any], service: str) -> set[str]:
    nets = project["services"][service].get("networks") or ["default"]
    return set(nets) if isinstance(nets, list) else set(nets.keys())


def load(path: Path, env: dict[str, str]) -> dict[str, Any]:
    return interpolate(yaml.safe_load(path.read_text()), env)


@pytest.fixture
def merged() -> dict[str, Any]:
    return merge(load(LEMMY, VARS), load(OVERRIDE, VARS))


def test_the_fixture_is_lemmys_layout():
    services = yaml.safe_load(LEMMY.read_text())["services"]
    assert set(services) == {"lemmy", "lemmy-ui", "pictrs", "postgres", "proxy"}


def test_pictrs_keeps_its_settings_and_gets_exactly_the_two_variables(merged: dict[str, Any]):
    before = load(LEMMY, VARS)["services"]["pictrs"]
    after = merged["services"]["pictrs"]
    env_before, env_after = _env_map(before["environment"]), after["environment"]
    added = {k: v for k, v in env_after.items() if k not in env_before}
    assert set(added) == {
        "PICTRS__MEDIA__EXTERNAL_VALIDATION",
        "PICTRS__MEDIA__EXTERNAL_VALIDATION_TIMEOUT",
    }
    assert {k: env_after[k] for k in env_before} == env_before  # nothing of its own changed
    assert added["PICTRS__MEDIA__EXTERNAL_VALIDATION"] == (
        f"http://horde-scanner:14051/api/v1/scan/{VARS['SCANNER_CLIENT_ID']}"
    )
    # Lemmy waits 10 s (thumbnails) to 30 s (uploads); the scanner answers within 8 s.
    assert 10 <= float(added["PICTRS__MEDIA__EXTERNAL_VALIDATION_TIMEOUT"]) <= 30
    for key in ("image", "hostname", "user", "volumes", "restart", "logging"):
        assert after[key] == before[key], key
    # The override itself touches nothing else on pictrs.
    override_pictrs = yaml.safe_load(OVERRIDE.read_text())["services"]["pictrs"]
    assert set(override_pictrs) == {"environment", "depends_on"}
    assert after["depends_on"] == {"horde-scanner": {"condition": "service_healthy"}}


def test_the_scanner_service(merged: dict[str, Any]):
    scanner = merged["services"]["horde-scanner"]
    assert networks_of(merged, "horde-scanner") & networks_of(merged, "pictrs")
    assert scanner["hostname"] == "horde-scanner"
    assert scanner["restart"] == "always"
    test = scanner["healthcheck"]["test"]
    assert test[0] == "CMD" and test[1] == "python" and "/readyz" in test[-1]
    assert any(str(v).split(":")[1] == "/data" for v in scanner["volumes"])
    env = scanner["environment"]
    assert json.loads(env["HORDE_SCANNER_SERVER__CLIENTS"]) == {"pictrs": VARS["SCANNER_CLIENT_ID"]}
    assert env["HORDE_SCANNER_HORDE__API_KEY"] == VARS["AI_HORDE_API_KEY"]
    assert env["HORDE_SCANNER_PICTRS__URL"] == "http://pictrs:8080"
    # Other services are untouched.
    base = load(LEMMY, VARS)["services"]
    for name in ("lemmy", "lemmy-ui", "postgres", "proxy"):
        assert merged["services"][name] == base[name]


def test_the_client_id_is_required():
    with pytest.raises(MissingVariable, match="SCANNER_CLIENT_ID"):
        load(OVERRIDE, {})


def test_the_volume_ownership_step_matches_the_images_user():
    text = OVERRIDE.read_text()
    uid = re.search(r"^USER (\d+):(\d+)$", (ROOT / "Dockerfile").read_text(), re.M)
    assert uid is not None
    assert f"chown -R {uid[1]}:{uid[2]} volumes/horde-scanner" in text
    for doc in DOCS_WITH_STEPS:
        text = (ROOT / doc).read_text()
        assert f"chown -R {uid[1]}:{uid[2]} volumes/horde-scanner" in text, doc


def test_the_merged_scanner_env_runs_and_agrees_with_pictrs(merged: dict[str, Any], tmp_path: Path):
    """Start the real service with the environment compose gives the container, then call it the
    way pict-rs will, with the URL compose gives pict-rs (host name swapped for loopback)."""
    port = free_port()
    scanner_env = {k: v for k, v in merged["services"]["horde-scanner"]["environment"].items()}
    env = {
        "PATH": str(Path(sys.executable).parent),
        **{k: v or "" for k, v in scanner_env.items()},
        # Loopback only: what the container gets from the image, moved to this machine.
        "HORDE_SCANNER_SERVER__HOST": "127.0.0.1",
        "HORDE_SCANNER_SERVER__PORT": str(port),
        "HORDE_SCANNER_STORE__PATH": str(tmp_path / "horde-scanner.db"),
        "HORDE_SCANNER_HORDE__URL": f"http://127.0.0.1:{free_port()}/api",
        "HORDE_SCANNER_PICTRS__URL": f"http://127.0.0.1:{free_port()}",
    }
    with serving(env, port, cwd=tmp_path):
        url = merged["services"]["pictrs"]["environment"]["PICTRS__MEDIA__EXTERNAL_VALIDATION"]
        url = url.replace("http://horde-scanner:14051", f"http://127.0.0.1:{port}")
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(urllib.request.Request(url, data=b"", method="POST"), timeout=10)
        assert err.value.code == 400  # the id is accepted; the empty body is what is refused
        wrong = url.rsplit("/", 1)[0] + "/another-id"
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(
                urllib.request.Request(wrong, data=b"x", method="POST"), timeout=10
            )
        assert err.value.code == 401


def test_compose_itself_merges_it_the_same_way(merged: dict[str, Any], tmp_path: Path):
    """`docker-compose config` (Debian's compose, .ci/apt-packages.txt) needs no engine."""
    compose = shutil.which("docker-compose")
    assert compose, "docker-compose is missing: make system-deps installs it"
    (tmp_path / "docker-compose.yml").write_text(LEMMY.read_text())
    (tmp_path / OVERRIDE.name).write_text(OVERRIDE.read_text())
    (tmp_path / "horde-scanner").mkdir()  # the build context must exist
    (tmp_path / ".env").write_text("".join(f"{k}={v}\n" for k, v in VARS.items()))
    proc = subprocess.run(
        [compose, "-f", "docker-compose.yml", "-f", OVERRIDE.name, "config"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    real = yaml.safe_load(proc.stdout)["services"]
    ours = merged["services"]
    assert set(real) == set(ours)
    for name in ours:
        assert _env_map(real[name].get("environment")) == _env_map(ours[name].get("environment"))
        assert _depends_map(real[name].get("depends_on")) == _depends_map(
            ours[name].get("depends_on")
        )
        assert networks_of({"services": real}, name) == networks_of(merged, name)
    assert (
        real["horde-scanner"]["healthcheck"]["test"] == ours["horde-scanner"]["healthcheck"]["test"]
    )
    assert real["horde-scanner"]["restart"] == "always"


# --- the documented steps, as written (the README's shortest path and the install page) ---

# Both show the same steps under this heading; the install page adds lemmy-ansible's variant.
DOCS_WITH_STEPS = ("README.md", "docs/install.md")
STEPS_HEADING = "## Beside Lemmy, with Docker Compose"


def _section(doc: str, heading: str) -> str:
    text = (ROOT / doc).read_text()
    section = text[text.index(heading + "\n") :]
    end = section.find("\n## ", 1)
    return section if end < 0 else section[:end]


def _doc_blocks(doc: str, language: str, heading: str = STEPS_HEADING) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", _section(doc, heading), re.S)


def _doc_dotenv(doc: str) -> dict[str, str]:
    (steps,) = _doc_blocks(doc, "sh")
    body = re.search(r"cat >> \.env <<(\w+)\n(.*?)\n\1\n", steps, re.S)
    assert body, f"the steps in {doc} write .env with a heredoc"
    lines = dict(line.split("=", 1) for line in body[2].splitlines())
    assert lines["SCANNER_CLIENT_ID"] == "$(openssl rand -hex 32)"
    lines["SCANNER_CLIENT_ID"] = "0123456789abcdef" * 4  # what openssl prints: 64 hex digits
    return lines


def test_the_front_page_and_the_install_page_show_the_same_steps():
    (front,) = _doc_blocks("README.md", "sh")
    (page,) = _doc_blocks("docs/install.md", "sh")
    assert front == page


@pytest.mark.parametrize("doc", DOCS_WITH_STEPS)
def test_the_documented_steps_work_on_lemmys_layout(doc: str, tmp_path: Path):
    (steps,) = _doc_blocks(doc, "sh")
    assert f"cp horde-scanner/{OVERRIDE.name} ." in steps
    up = "docker compose -f docker-compose.yml -f docker-compose.horde-scanner.yml up -d"
    assert up in steps and up in OVERRIDE.read_text()
    dotenv = _doc_dotenv(doc)
    # Lemmy's directory: its compose file, a .env (with keys of its own), our override.
    (tmp_path / "docker-compose.yml").write_text(LEMMY.read_text())
    (tmp_path / OVERRIDE.name).write_text(OVERRIDE.read_text())
    (tmp_path / "horde-scanner").mkdir()  # the clone
    (tmp_path / ".env").write_text(
        "POSTGRES_PASSWORD=lemmy-db-password\n" + "".join(f"{k}={v}\n" for k, v in dotenv.items())
    )
    compose = shutil.which("docker-compose")
    assert compose, "docker-compose is missing: make system-deps installs it"
    # Plain `docker compose config`, no -f: COMPOSE_FILE from .env brings in the override.
    proc = subprocess.run(
        [compose, "config"], cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    services = yaml.safe_load(proc.stdout)["services"]
    pictrs_env = _env_map(services["pictrs"]["environment"])
    assert pictrs_env["PICTRS__MEDIA__EXTERNAL_VALIDATION"].endswith(dotenv["SCANNER_CLIENT_ID"])
    scanner_env = _env_map(services["horde-scanner"]["environment"])
    assert json.loads(scanner_env["HORDE_SCANNER_SERVER__CLIENTS"]) == {
        "pictrs": dotenv["SCANNER_CLIENT_ID"]
    }
    assert scanner_env["HORDE_SCANNER_PICTRS__API_KEY"] == dotenv["PICTRS_API_KEY"]
    # And horde-scanner's own CLI, run in that directory, is not upset by that .env.
    proc = subprocess.run(
        [CLI, "--db", str(tmp_path / "x.db"), "verdicts", "list"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": str(Path(sys.executable).parent), "HOME": str(tmp_path)},
    )
    assert proc.returncode == 0, proc.stderr


def test_the_documented_lemmy_ansible_variant_matches_the_override():
    (block,) = _doc_blocks("docs/install.md", "yaml", "## With lemmy-ansible")
    entries = yaml.safe_load(block)["pictrs_env_vars"]
    # lemmy-ansible's template writes each single-key entry as `- KEY=VALUE` under pictrs.
    rendered = {key: str(value) for item in entries for key, value in item.items()}
    assert all(len(item) == 1 for item in entries)
    ours = yaml.safe_load(OVERRIDE.read_text())["services"]["pictrs"]["environment"]
    assert set(rendered) == set(ours)
    client_id = "some-client-id"
    assert rendered["PICTRS__MEDIA__EXTERNAL_VALIDATION"].replace(
        "<SCANNER_CLIENT_ID>", client_id
    ) == _interpolate_str(
        ours["PICTRS__MEDIA__EXTERNAL_VALIDATION"], {"SCANNER_CLIENT_ID": client_id}
    )
    assert float(rendered["PICTRS__MEDIA__EXTERNAL_VALIDATION_TIMEOUT"]) == float(
        ours["PICTRS__MEDIA__EXTERNAL_VALIDATION_TIMEOUT"]
    )
