"""docker-compose.yml: the scanner on its own, and the demo against the fake AI Horde.

It takes its service from docker-compose.horde-scanner.yml (`extends`), so the two files cannot
drift apart; `docker-compose config` (Debian's compose, no engine) resolves it as compose will,
and the demo profile is run for real: the fake with the compose file's own command line, the
scanner with the environment compose gives it.
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import aiohttp
import yaml

from horde_scanner.testing import images
from horde_scanner.testing.net import free_port, wait_port
from horde_scanner.testing.pictrs import ValidationResult, validate_upload
from tests.deploy.test_compose_override import OVERRIDE, VARS, _env_map, load
from tests.proc import serving

ROOT = Path(__file__).resolve().parents[2]
STANDALONE = ROOT / "docker-compose.yml"
DEMO_HORDE = "http://127.0.0.1:7001/api"


def _config(env: dict[str, str]) -> dict[str, Any]:
    compose = shutil.which("docker-compose")
    assert compose, "docker-compose is missing: make system-deps installs it"
    proc = subprocess.run(
        [compose, "--profile", "demo", "-f", str(STANDALONE), "config"],
        cwd=ROOT,
        env={"PATH": "/usr/bin:/bin", **env},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    return yaml.safe_load(proc.stdout)["services"]


def test_the_scanner_is_the_overrides_scanner():
    services = _config(VARS)
    mine, lemmys = services["horde-scanner"], load(OVERRIDE, VARS)["services"]["horde-scanner"]
    env = _env_map(mine["environment"])
    assert env.pop("HORDE_SCANNER_HORDE__URL") == "https://aihorde.net/api"
    assert env == _env_map(lemmys["environment"])
    for key in ("healthcheck", "restart", "hostname", "image", "logging"):
        assert mine[key] == lemmys[key], key
    assert Path(mine["build"]["context"]) == ROOT
    assert [str(p.get("host_ip", "")) for p in _ports(mine)] == ["127.0.0.1"]
    # The fake is a demo only: it starts with --profile demo, inside the scanner's loopback.
    assert services["fake-horde"]["profiles"] == ["demo"]
    assert services["fake-horde"]["network_mode"] == "service:horde-scanner"


async def _upload(url: str, *bodies: bytes) -> list[ValidationResult]:
    """As pict-rs sends them: chunked raw bytes with the stored format's Content-Type."""
    async with aiohttp.ClientSession() as session:
        return [await validate_upload(session, url, body, "image/jpeg") for body in bodies]


def _ports(service: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for port in service["ports"]:
        if isinstance(port, dict):
            out.append(port)
        else:  # "127.0.0.1:14051:14051/tcp"
            host_ip, published, target = str(port).split(":")
            out.append({"host_ip": host_ip, "published": published, "target": target})
    return out


def test_the_demo_profile_judges_an_upload(tmp_path: Path):
    # As the demo line in docker-compose.yml runs it: no AI Horde key (the fake takes the
    # anonymous one, like the real Horde).
    demo = {"SCANNER_CLIENT_ID": VARS["SCANNER_CLIENT_ID"], "AI_HORDE_URL": DEMO_HORDE}
    services = _config(demo)
    fake = services["fake-horde"]
    horde_port, port = free_port(), free_port()
    # The compose file's own command line, on a free port instead of 7001.
    args = [a.replace("7001", str(horde_port)) for a in fake["entrypoint"][1:] + fake["command"]]
    horde = subprocess.Popen([sys.executable, *args], cwd=tmp_path, stderr=subprocess.DEVNULL)
    env = {
        "PATH": str(Path(sys.executable).parent),
        **{k: v or "" for k, v in _env_map(services["horde-scanner"]["environment"]).items()},
        # What the image sets, moved to this machine's loopback.
        "HORDE_SCANNER_SERVER__HOST": "127.0.0.1",
        "HORDE_SCANNER_SERVER__PORT": str(port),
        "HORDE_SCANNER_STORE__PATH": str(tmp_path / "horde-scanner.db"),
    }
    env["HORDE_SCANNER_HORDE__URL"] = env["HORDE_SCANNER_HORDE__URL"].replace(
        "7001", str(horde_port)
    )
    env["HORDE_SCANNER_PICTRS__URL"] = f"http://127.0.0.1:{free_port()}"
    try:
        wait_port(horde_port, timeout=30)
        with serving(env, port, cwd=tmp_path):
            url = f"http://127.0.0.1:{port}/api/v1/scan/{VARS['SCANNER_CLIENT_ID']}"
            red, green = asyncio.run(
                _upload(url, images.jpeg("red", seed=7), images.jpeg("green", seed=8))
            )
    finally:
        horde.terminate()
        horde.wait(timeout=30)
    assert (red.status, red.body["label"], red.body["route"]) == (406, "csam", "backend"), red
    assert (green.status, green.body["label"]) == (200, "clean")
