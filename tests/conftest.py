"""Fixtures shared by the whole suite."""

from __future__ import annotations

from pathlib import Path

import aiohttp
import pytest


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request, tmp_path) -> str:
    """A fresh, empty store of each kind in turn: a SQLite file, a PostgreSQL database."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'store.db'}"
    return request.getfixturevalue("pg_url")


@pytest.fixture
async def store(store_url):
    """The store at `store_url`, open for one test."""
    from horde_scanner.store.sqlite import Store

    s = await Store.open(store_url)
    yield s
    await s.close()


@pytest.fixture(scope="module")
def encoder(tmp_path_factory) -> Path:
    """The tiny test encoder's ONNX file (horde_scanner/testing/tiny_encoder.py), one per
    module."""
    from horde_scanner.testing.tiny_encoder import write_tiny_encoder

    return write_tiny_encoder(tmp_path_factory.mktemp("encoder") / "tiny.onnx")


@pytest.fixture
async def http():
    """A client session for talking to services on loopback."""
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture(scope="session")
def pg_server():
    """One PostgreSQL server for the session (CI installs it: a missing one fails loudly)."""
    from horde_scanner.testing.pg import PgServer

    server = PgServer().start()
    yield server
    server.stop()


@pytest.fixture
def pg_url(pg_server) -> str:
    """A fresh, empty PostgreSQL database for one test."""
    return pg_server.new_database()


@pytest.fixture
def readme_role(pg_server):
    """The one-liner of docs/scaling.md makes the role and database `scanner` with fixed names;
    drop both after the test, so the next test that runs it on this session's server can."""
    yield "scanner"
    pg_server.drop_role("scanner")


_FOLDER_MARKERS = ("unit", "integration", "deploy")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Each test is marked by the folder it lives in (tests/unit, tests/integration,
    tests/deploy), so `pytest -m unit` and the make targets pick the same sets."""
    tests_dir = Path(__file__).resolve().parent
    for item in items:
        try:
            folder = Path(str(item.path)).resolve().relative_to(tests_dir).parts[0]
        except ValueError:
            continue
        if folder in _FOLDER_MARKERS:
            item.add_marker(getattr(pytest.mark, folder))
