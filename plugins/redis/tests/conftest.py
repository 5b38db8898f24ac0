"""Fixtures: the machine's Redis on a per-test key prefix, deleted afterwards."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from redis_support import delete_prefix, new_prefix, redis_url


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def redis_base() -> str:
    """The machine's Redis URL (skips when Redis is down, unless services are required)."""
    return redis_url()


@pytest.fixture
def prefix(redis_base: str) -> Iterator[str]:
    """A key prefix of this test's own; its keys are deleted afterwards."""
    name = new_prefix()
    yield name
    delete_prefix(redis_base, name)
