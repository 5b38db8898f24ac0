"""Config and storage of an app resolve beside the app file, through the real ``nexus`` command.

A desktop agent starts ``nexus mcp /path/app.py`` in a working directory of
its own; the app must still read ``/path/nexus.toml`` and keep its database
beside the app, not in the agent's directory.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytest.importorskip("nexus_plugin_cli", reason="the nexus command comes from nexus-plugin-cli")

APP = textwrap.dedent(
    '''
    from nexus_core import Nexus

    app = Nexus()


    @app.workflow
    def where(name: str) -> dict:
        """Say which settings the app read."""
        return {"name": name, "title": app.title, "storage": app.config.storage_url}
    '''
)


def _nexus() -> str:
    found = shutil.which("nexus", path=str(Path(sys.executable).parent))
    assert found, "the nexus console script is not installed next to this Python"
    return found


def _env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("NEXUS_")}
    env["NEXUS_CONFIG_HOME"] = str(tmp_path / "user-config")
    env["NEXUS_CLI_NO_CACHE"] = "1"
    return env


def _layout(tmp_path: Path, config: str | None) -> tuple[Path, Path]:
    project = tmp_path / "project"
    elsewhere = tmp_path / "agent-cwd"
    project.mkdir()
    elsewhere.mkdir()
    (project / "app.py").write_text(APP)
    if config is not None:
        (project / "nexus.toml").write_text(config)
    return project, elsewhere


def _run(app: Path, cwd: Path, env: dict[str, str]) -> dict[str, str]:
    done = subprocess.run(
        [_nexus(), "--app", str(app), "-q", "run", "where", "--name", "x"],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_config_beside_the_app_is_read_and_the_database_lands_beside_it(tmp_path: Path) -> None:
    project, elsewhere = _layout(
        tmp_path, '[nexus]\ntitle = "Beside the app"\nstorage = "sqlite:///data/app.db"\n'
    )
    (project / "data").mkdir()
    out = _run(project / "app.py", elsewhere, _env(tmp_path))
    assert out["title"] == "Beside the app"
    assert out["storage"] == f"sqlite:///{(project / 'data' / 'app.db').resolve()}"
    assert (project / "data" / "app.db").is_file()
    assert list(elsewhere.iterdir()) == []


def test_without_a_config_the_default_database_lands_beside_the_app(tmp_path: Path) -> None:
    project, elsewhere = _layout(tmp_path, None)
    out = _run(project / "app.py", elsewhere, _env(tmp_path))
    assert out["title"] == "Nexus"
    assert out["storage"] == f"sqlite:///{(project / '.nexus' / 'app.db').resolve()}"
    assert (project / ".nexus" / "app.db").is_file()
    assert list(elsewhere.iterdir()) == []


SHOP = textwrap.dedent(
    '''
    from nexus_core import Nexus

    app = Nexus("shop")


    @app.workflow
    def order(item: str) -> str:
        """Order an item."""
        return f"ordered {item}"
    '''
)


def _nexus_json(args: list[str], cwd: Path, env: dict[str, str]) -> object:
    done = subprocess.run(
        [_nexus(), *args],
        cwd=cwd,
        env={**env, "NEXUS_OUTPUT": "json"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def _workflows(listed: object) -> set[str]:
    runs = listed.get("runs", listed) if isinstance(listed, dict) else listed
    assert isinstance(runs, list)
    return {run["workflow"] for run in runs}


def test_two_apps_in_one_folder_keep_separate_histories(tmp_path: Path) -> None:
    project, elsewhere = _layout(tmp_path, None)
    (project / "shop.py").write_text(SHOP)
    env = _env(tmp_path)
    _run(project / "app.py", elsewhere, env)
    _nexus_json(
        ["--app", str(project / "shop.py"), "-q", "run", "order", "--item", "tea"], project, env
    )
    assert (project / ".nexus" / "app.db").is_file()
    assert (project / ".nexus" / "shop.db").is_file()
    assert not (project / "nexus.db").exists()
    app_runs = _nexus_json(["--app", str(project / "app.py"), "runs"], elsewhere, env)
    shop_runs = _nexus_json(["--app", "shop.py", "runs"], project, env)
    assert _workflows(app_runs) == {"where"}
    assert _workflows(shop_runs) == {"order"}


def test_an_explicit_nexus_db_is_still_used(tmp_path: Path) -> None:
    project, elsewhere = _layout(tmp_path, '[nexus]\nstorage = "sqlite:///nexus.db"\n')
    (project / "shop.py").write_text(SHOP)
    env = _env(tmp_path)
    out = _run(project / "app.py", elsewhere, env)
    assert out["storage"] == f"sqlite:///{(project / 'nexus.db').resolve()}"
    _nexus_json(
        ["--app", str(project / "shop.py"), "-q", "run", "order", "--item", "tea"], elsewhere, env
    )
    assert not (project / ".nexus").exists()
    shared = _nexus_json(["--app", str(project / "shop.py"), "runs"], elsewhere, env)
    assert _workflows(shared) == {"where", "order"}  # one file named for both: one history


def test_a_config_in_the_working_directory_wins_and_places_the_database(tmp_path: Path) -> None:
    project, elsewhere = _layout(tmp_path, '[nexus]\ntitle = "Beside the app"\n')
    (elsewhere / "nexus.toml").write_text(
        '[nexus]\ntitle = "Here"\nstorage = "sqlite:///here.db"\n'
    )
    out = _run(project / "app.py", elsewhere, _env(tmp_path))
    assert out["title"] == "Here"
    assert (elsewhere / "here.db").is_file()
    assert not (project / ".nexus").exists()


def test_nexus_config_names_the_file_and_its_folder_places_the_database(tmp_path: Path) -> None:
    project, elsewhere = _layout(tmp_path, '[nexus]\ntitle = "Beside the app"\n')
    named = tmp_path / "etc"
    named.mkdir()
    (named / "prod.toml").write_text('[nexus]\ntitle = "Named"\nstorage = "sqlite:///prod.db"\n')
    env = {**_env(tmp_path), "NEXUS_CONFIG": str(named / "prod.toml")}
    out = _run(project / "app.py", elsewhere, env)
    assert out["title"] == "Named"
    assert (named / "prod.db").is_file()


def test_nexus_mcp_stdio_from_another_directory_reads_the_apps_config(tmp_path: Path) -> None:
    pytest.importorskip("nexus_plugin_mcp", reason="nexus mcp comes from nexus-plugin-mcp")
    pytest.importorskip("mcp", reason="the MCP client comes from the mcp package")
    import anyio
    from mcp import Client, StdioServerParameters

    project, elsewhere = _layout(
        tmp_path, '[nexus]\ntitle = "Agent app"\nstorage = "sqlite:///agent.db"\n'
    )
    params = StdioServerParameters(
        command=_nexus(),
        args=["mcp", str(project / "app.py")],
        env={"NEXUS_CONFIG_HOME": str(tmp_path / "user-config")},
        cwd=str(elsewhere),
    )

    async def main() -> dict[str, str]:
        async with Client(params) as client:
            result = await client.call_tool("where", {"name": "agent"})
            assert not result.is_error, result.content
            return result.structured_content

    out = anyio.run(main)
    assert out["title"] == "Agent app"
    assert (project / "agent.db").is_file()
    assert list(elsewhere.iterdir()) == []
