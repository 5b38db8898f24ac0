"""Fixtures: the test application served on an ephemeral port in the test's event loop."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest
from api_apps import build
from api_support import serving
from nexus_core import Nexus


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
async def server() -> AsyncIterator[tuple[Nexus, str]]:
    app = build()
    async with serving(app) as url:
        yield app, url


@pytest.fixture
async def client(server: tuple[Nexus, str]) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=server[1], timeout=10) as http:
        yield http
