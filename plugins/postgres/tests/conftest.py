"""Fixtures shared by the plugin's tests (each helper module keeps its own)."""

from __future__ import annotations

import pytest
from pg_support import schemas

__all__ = ["anyio_backend", "schemas"]


@pytest.fixture
def anyio_backend() -> str:
    """psycopg's async connections run on asyncio."""
    return "asyncio"
