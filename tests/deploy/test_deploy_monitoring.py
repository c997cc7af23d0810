"""The monitoring samples in deploy/: the alert rules pass `promtool check rules` and their own
unit tests (`promtool test rules`), the sample Prometheus configuration passes `promtool check
config`, every metric name the rules and the Grafana dashboard use is one /metrics exposes, and
a real Prometheus scraping a real service evaluates every query of both without an error."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import aiohttp
import pytest
import yaml

from horde_scanner.testing import images
from horde_scanner.testing.horde import FakeHorde
from horde_scanner.testing.pictrs import validate_upload
from horde_scanner.testing.prometheus import (
    ALERT_RULES,
    DASHBOARD,
    dashboard_queries,
    query,
    running_prometheus,
    wait_for_scrapes,
)
from horde_scanner.testing.service import make_settings, running_service

ROOT = Path(__file__).resolve().parents[2]
PROM = ROOT / "deploy" / "prometheus"
# Series Prometheus makes itself for every target; not in /metrics.
PROMETHEUS_OWN = {"up"}


def _promtool(*args: str, cwd: Path = PROM) -> subprocess.CompletedProcess:
    exe = shutil.which("promtool")
    assert exe, "promtool is missing: make system-deps installs it (Debian package prometheus)"
    return subprocess.run([exe, *args], cwd=cwd, capture_output=True, text=True, timeout=120)


def _alert_rules() -> list[dict]:
    groups = yaml.safe_load(ALERT_RULES.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


def _used_metric_names() -> set[str]:
    exprs = [rule["expr"] for rule in _alert_rules()]
    exprs += [expr for _, expr in dashboard_queries()]
    names = set()
    for expr in exprs:
        names |= set(re.findall(r"\b(horde_scanner_[a-z_]+)\b", expr))
        names |= {"up"} & set(re.findall(r"\bup\b(?=\{)", expr))
    return names


def test_promtool_checks_the_alert_rules():
    proc = _promtool("check", "rules", ALERT_RULES.name)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"SUCCESS: {len(_alert_rules())} rules found" in proc.stdout


def test_the_alert_rules_unit_tests_pass():
    proc = _promtool("test", "rules", "horde-scanner-alerts.test.yml")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUCCESS" in proc.stdout


def test_every_alert_rule_has_a_unit_test():
    tests = yaml.safe_load((PROM / "horde-scanner-alerts.test.yml").read_text())["tests"]
    tested = {case["alertname"] for test in tests for case in test["alert_rule_test"]}
    assert tested == {rule["alert"] for rule in _alert_rules()}


def test_promtool_checks_the_sample_prometheus_config():
    proc = _promtool("check", "config", "prometheus.yml")
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_the_issue_s_alerts_are_all_there():
    """Scanner down, backend down, on_timeout answers rising, jobs backlog growing, kudos
    budget near its end."""
    names = {rule["alert"] for rule in _alert_rules()}
    assert {
        "HordeScannerDown",
        "HordeScannerBackendDown",
        "HordeScannerOnTimeoutAnswersRising",
        "HordeScannerJobsBacklogGrowing",
        "HordeScannerKudosBudgetNearlySpent",
    } <= names
    for rule in _alert_rules():
        assert rule["labels"]["severity"] in {"critical", "warning", "info"}
        assert rule["annotations"]["summary"] and rule["annotations"]["description"]


def test_the_dashboard_is_grafana_json_with_a_datasource_variable():
    dash = json.loads(DASHBOARD.read_text())
    assert dash["uid"] and dash["title"] and dash["schemaVersion"] >= 30
    variables = {v["name"]: v for v in dash["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dash["panels"]:
        assert panel["datasource"]["uid"] == "${datasource}"
        assert panel["targets"], panel["title"]
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24


@pytest.fixture
async def busy_service(tmp_path: Path, http: aiohttp.ClientSession):
    """A service with every family of /metrics present: the AI Horde path with its load read
    and a kudos budget, a webhook (to a closed port: it fails), a sweep, and some uploads."""
    async with FakeHorde(latency=0.1) as horde:
        settings = make_settings(
            tmp_path / "s.db",
            horde.url,
            horde={"max_kudos_per_day": 1000.0, "performance_interval_s": 0.5},
            notify={"webhook_url": "http://127.0.0.1:9/hook", "timeout_s": 0.5},
        )
        async with running_service(settings) as svc:
            for seed, colour in enumerate(["red", "green", "blue"]):
                data = images.jpeg(colour, seed=700 + seed)
                assert (await validate_upload(http, svc.scan_url(), data, "image/jpeg")).status
            async with http.post(svc.scan_url(), data=b"") as resp:
                assert resp.status == 400  # an unjudged upload: empty body
            run = svc.parts.sweeps.start("local:/srv/pictrs", total=4)
            run.advance(1, label="clean")
            yield svc


async def test_every_metric_name_used_exists_in_metrics_output(busy_service, http):
    async with http.get(f"{busy_service.url}/metrics") as resp:
        text = await resp.text()
    exposed = set(re.findall(r"^# TYPE (\S+) (\S+)", text, re.M))
    names = {name for name, _ in exposed}
    names |= {name + suffix for name, kind in exposed if kind == "histogram"
              for suffix in ("_bucket", "_sum", "_count")}  # fmt: skip
    names |= set(re.findall(r"^(horde_scanner_\w+?)(?:\{| )", text, re.M))
    used = _used_metric_names()
    assert used - PROMETHEUS_OWN, "no horde_scanner metric found in the rules and dashboard"
    assert used - PROMETHEUS_OWN <= names, sorted(used - PROMETHEUS_OWN - names)


async def test_a_real_prometheus_evaluates_every_query(busy_service, http, tmp_path: Path):
    target = busy_service.url.removeprefix("http://")
    async with running_prometheus([target], tmp_path / "prom") as prom:
        await wait_for_scrapes(http, prom, count=3)
        for _title, expr in dashboard_queries():
            await query(http, prom, expr)  # raises with Prometheus's message on a bad query
        for rule in _alert_rules():
            await query(http, prom, rule["expr"])
        # And the series are really there: the scanner is up, its backend too, answers counted.
        up = await query(http, prom, 'up{job="horde-scanner"}')
        assert [float(r["value"][1]) for r in up] == [1.0]
        backend = await query(http, prom, "min(horde_scanner_backend_up)")
        assert float(backend[0]["value"][1]) == 1.0
        answers = await query(http, prom, "sum(horde_scanner_answers_total)")
        assert float(answers[0]["value"][1]) == 3.0
        # The rules are loaded and healthy.
        async with http.get(f"{prom}/api/v1/rules") as resp:
            groups = (await resp.json())["data"]["groups"]
        rules = [r for g in groups for r in g["rules"]]
        assert len(rules) == len(_alert_rules())
        assert all(r["health"] in ("ok", "unknown") for r in rules), rules
