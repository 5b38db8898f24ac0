"""Fixtures: the example workflows behind the API and voice plugins, on an ephemeral port."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

# The API plugin's test helpers (a real server on an ephemeral port).
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "api" / "tests"))


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"
