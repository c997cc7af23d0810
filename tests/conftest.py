"""Fixtures shared by the whole suite."""

from __future__ import annotations

import aiohttp
import pytest


@pytest.fixture
async def http():
    """A client session for talking to services on loopback."""
    async with aiohttp.ClientSession() as session:
        yield session
