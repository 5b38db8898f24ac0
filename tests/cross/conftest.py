"""Fixtures of the cross-channel tests: one event loop per module, user folders in tmp.

Each module starts its servers once (module-scoped fixtures) and talks to them
from async tests, so the anyio backend is module-scoped here (it is
function-scoped in ``tests/conftest.py``). Modules skip themselves, naming the
missing package, when a plugin is not installed (see
``cross_support.require_plugins``).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from .cross_support import base_env


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Path:
    """A folder of this module's own: databases, logs, batch files, user config."""
    return tmp_path_factory.mktemp(request.module.__name__.rpartition(".")[2])


@pytest.fixture(scope="module")
def db_url(workdir: Path) -> str:
    """The SQLite file every process of the module shares (gateway, MCP, CLI)."""
    return f"sqlite:///{workdir / 'nexus.db'}"


@pytest.fixture(scope="module")
def env(workdir: Path, db_url: str) -> dict[str, str]:
    """The environment of every subprocess: shared storage, user folders under ``workdir``."""
    return base_env(workdir, NEXUS_STORAGE=db_url)
