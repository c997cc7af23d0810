"""A real Prometheus server (Debian's `prometheus` package) on loopback, scraping a running
service: the dashboard's and the alert rules' queries are evaluated by the real thing, and the
docs' metrics picture is drawn from what it answers."""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import IO, Any

import aiohttp

from horde_scanner.errors import FinalError
from horde_scanner.testing.net import free_port

ROOT = Path(__file__).resolve().parents[2]
ALERT_RULES = ROOT / "deploy" / "prometheus" / "horde-scanner-alerts.yml"
DASHBOARD = ROOT / "deploy" / "grafana" / "horde-scanner-dashboard.json"
JOB = "horde-scanner"


class PrometheusError(FinalError, RuntimeError):
    pass


def binary(name: str = "prometheus") -> str | None:
    return shutil.which(name)


def _prepare(workdir: Path, targets: list[str], scrape_interval_ms: int, rules: bool) -> Path:
    workdir.mkdir(parents=True, exist_ok=True)
    rule_file = workdir / "rules.yml"
    if rules:
        shutil.copy(ALERT_RULES, rule_file)
    config = {
        "global": {
            "scrape_interval": f"{scrape_interval_ms}ms",
            "evaluation_interval": f"{scrape_interval_ms}ms",
        },
        "rule_files": [str(rule_file)] if rules else [],
        "scrape_configs": [{"job_name": JOB, "static_configs": [{"targets": targets}]}],
    }
    config_file = workdir / "prometheus.yml"
    config_file.write_text(json.dumps(config))  # JSON is YAML
    return config_file


@contextlib.asynccontextmanager
async def running_prometheus(
    targets: list[str], workdir: Path, *, scrape_interval_ms: int = 1000, rules: bool = True
) -> AsyncIterator[str]:
    """Prometheus scraping `targets` (host:port) as job `horde-scanner`, with the alert rules
    loaded; yields its base URL. Listens on loopback only; its data lives in `workdir`."""
    exe = binary()
    if exe is None:
        raise PrometheusError("prometheus is missing: make system-deps installs it")
    config_file = _prepare(workdir, targets, scrape_interval_ms, rules)
    port = free_port()
    log_path = workdir / "prometheus.log"
    log = _open_log(log_path)
    proc = await asyncio.create_subprocess_exec(
        exe,
        f"--config.file={config_file}",
        f"--storage.tsdb.path={workdir / 'data'}",
        f"--web.listen-address=127.0.0.1:{port}",
        "--log.level=warn",
        stdout=log,
        stderr=log,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        await _wait_ready(base, proc, log_path)
        yield base
    finally:
        if proc.returncode is None:
            proc.terminate()
            try:
                await asyncio.wait_for(proc.wait(), 20)
            except TimeoutError:
                proc.kill()
                await proc.wait()
        log.close()


def _open_log(path: Path) -> IO[bytes]:
    return path.open("wb")


def _tail(path: Path) -> str:
    return path.read_text(errors="replace")[-2000:]


async def _wait_ready(base: str, proc: asyncio.subprocess.Process, log_path: Path) -> None:
    deadline = time.monotonic() + 60
    async with aiohttp.ClientSession() as http:
        while time.monotonic() < deadline:
            if proc.returncode is not None:
                raise PrometheusError(f"prometheus exited {proc.returncode}: {_tail(log_path)}")
            with contextlib.suppress(aiohttp.ClientError):
                async with http.get(f"{base}/-/ready") as resp:
                    if resp.status == 200:
                        return
            await asyncio.sleep(0.2)
    raise PrometheusError("prometheus did not become ready in 60 s")


async def query(http: aiohttp.ClientSession, base: str, expr: str) -> list[dict[str, Any]]:
    """An instant query; raises PrometheusError with Prometheus's own message on a bad one."""
    async with http.get(f"{base}/api/v1/query", params={"query": expr}) as resp:
        body = await resp.json()
    if body.get("status") != "success":
        raise PrometheusError(f"{expr}: {body.get('errorType')}: {body.get('error')}")
    result: list[dict[str, Any]] = body["data"]["result"]
    return result


async def query_range(
    http: aiohttp.ClientSession, base: str, expr: str, start: float, end: float, step: float
) -> list[dict[str, Any]]:
    params = {"query": expr, "start": str(start), "end": str(end), "step": str(step)}
    async with http.get(f"{base}/api/v1/query_range", params=params) as resp:
        body = await resp.json()
    if body.get("status") != "success":
        raise PrometheusError(f"{expr}: {body.get('errorType')}: {body.get('error')}")
    result: list[dict[str, Any]] = body["data"]["result"]
    return result


async def wait_for_scrapes(http: aiohttp.ClientSession, base: str, count: int = 3) -> None:
    """Until every target was scraped `count` times (so rate() has points to work with)."""
    deadline = time.monotonic() + 60
    expr = f'count_over_time(up{{job="{JOB}"}}[5m])'
    while time.monotonic() < deadline:
        result = await query(http, base, expr)
        if result and all(float(r["value"][1]) >= count for r in result):
            return
        await asyncio.sleep(0.5)
    raise PrometheusError(f"fewer than {count} scrapes in 60 s")


def dashboard_queries(dashboard: dict[str, Any] | None = None) -> list[tuple[str, str]]:
    """(panel title, PromQL) of every target of the dashboard, `$instance` as all instances."""
    dash = dashboard if dashboard is not None else json.loads(DASHBOARD.read_text())
    found = []
    for panel in dash["panels"]:
        for target in panel.get("targets", []):
            found.append((panel["title"], target["expr"].replace("$instance", ".*")))
    for var in dash.get("templating", {}).get("list", []):
        definition = var.get("definition", "")
        if definition.startswith("label_values("):
            metric = definition[len("label_values(") :].split(",")[0].strip()
            found.append((f"variable {var['name']}", metric))
    return found
