"""Fixtures of the MCP plugin's tests."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

EXAMPLE = Path(__file__).with_name("mcp_example_app.py")


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def example_app(tmp_path: Path) -> Path:
    """The example application, written to its own directory as a user's app file would be."""
    target = tmp_path / "mcp_app.py"
    shutil.copyfile(EXAMPLE, target)
    return target


@pytest.fixture(autouse=True)
def _memory_storage(monkeypatch: pytest.MonkeyPatch) -> None:
    # In-process hosts never write ./nexus.db; spawned servers get it explicitly.
    monkeypatch.setenv("NEXUS_STORAGE", "memory://")
