"""Fixtures: one moto server per test session (skipped without moto unless required)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from s3_support import MotoServer, moto_server, new_bucket


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="session")
def moto() -> Iterator[MotoServer]:
    """``moto_server -H 127.0.0.1 -p <ephemeral>`` for the session, stopped at its end."""
    with moto_server() as server:
        yield server


@pytest.fixture
def bucket(moto: MotoServer) -> str:
    """A new empty bucket on the session's moto server."""
    return new_bucket(moto)
