"""Fixtures: the `nexus` console script run as a subprocess on an example app in tmp_path."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from cli_support import API_INSTALLED, APP_SOURCE, Cli, base_env, serve


@pytest.fixture
def app_file(tmp_path: Path) -> Path:
    path = tmp_path / "app.py"
    path.write_text(APP_SOURCE, encoding="utf-8")
    return path


@pytest.fixture
def cli(tmp_path: Path, app_file: Path) -> Cli:
    """``nexus`` in process on the example app (``NEXUS_APP``), storage in tmp_path."""
    env = base_env(tmp_path)
    env["NEXUS_APP"] = str(app_file)
    return Cli(tmp_path, env)


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A gateway serving the example app, shared by a module's remote tests."""
    if not API_INSTALLED:
        pytest.skip(
            "remote mode needs the API plugin (nexus-plugin-api) to serve a gateway; "
            "it is not installed here"
        )
    tmp = tmp_path_factory.mktemp("gateway")
    app = tmp / "app.py"
    app.write_text(APP_SOURCE, encoding="utf-8")
    with serve(app, tmp) as url:
        yield url


@pytest.fixture
def remote(tmp_path: Path, gateway: str) -> Cli:
    """``nexus`` against the gateway (``NEXUS_URL``), with its own user state."""
    env = base_env(tmp_path)
    env["NEXUS_URL"] = gateway
    return Cli(tmp_path, env)
