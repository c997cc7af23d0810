"""Shared pieces of the sweep tests: settings, a CLI runner that shares the test's fakes, and
small readers of the store."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from pathlib import Path
from typing import Any

from click.testing import CliRunner, Result

from horde_scanner.cli import main
from horde_scanner.config import Settings, load_settings


def scan_settings(db: Path, *, horde_url: str = "http://127.0.0.1:9", **sections: Any) -> Settings:
    """Settings for a sweep test. The Horde URL is a fake's, or a closed loopback port when
    the test passes a MockBackend (so nothing can ever reach the real AI Horde)."""
    tree: dict[str, Any] = {
        "store": {"path": db},
        "horde": {
            "url": horde_url,
            "poll_interval_s": 0.12,
            "retries": 2,
            "http_timeout_s": 5.0,
        },
        "scan": {"concurrency": 4},
    }
    for name, values in sections.items():
        if isinstance(values, dict):
            tree.setdefault(name, {}).update(values)
        else:
            tree[name] = values
    return load_settings(None, **tree)


def cli_env(db: Path, horde_url: str, **extra: str) -> dict[str, str]:
    env = {
        "HORDE_SCANNER_STORE__PATH": str(db),
        "HORDE_SCANNER_HORDE__URL": horde_url,
        "HORDE_SCANNER_HORDE__POLL_INTERVAL_S": "0.12",
        "HORDE_SCANNER_SCAN__CONCURRENCY": "4",
    }
    env.update(extra)
    return env


async def cli(args: list[str], env: dict[str, str]) -> Result:
    """Run the CLI in a thread: its own event loop, while fakes keep serving on ours."""
    runner = CliRunner()
    return await asyncio.to_thread(runner.invoke, main, args, env=env, catch_exceptions=False)


def audit_rows(db: Path, event: str) -> list[dict[str, Any]]:
    with sqlite3.connect(db) as conn:
        rows = conn.execute(
            "SELECT sha256, label, action, source, detail FROM audit WHERE event=? ORDER BY id",
            (event,),
        ).fetchall()
    return [
        {"sha256": r[0], "label": r[1], "action": r[2], "source": r[3], "detail": json.loads(r[4])}
        for r in rows
    ]


def action_rows(db: Path) -> list[tuple[Any, ...]]:
    with sqlite3.connect(db) as conn:
        return conn.execute(
            "SELECT id, identifier, action, state, location FROM scan_actions ORDER BY id"
        ).fetchall()
