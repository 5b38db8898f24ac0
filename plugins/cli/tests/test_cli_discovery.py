"""Plugin commands: the ``nexus_cli_commands`` hook, lazy registration, the cache, fast --help."""

from __future__ import annotations

import importlib.metadata
import inspect
import json
import subprocess
import sys
from pathlib import Path

import pytest
from cli_support import Cli, base_env

from nexus_plugin_cli import hookspecs
from nexus_plugin_cli.discovery import GROUP, entry_points

PLUGIN = """
from nexus_core import CommandSpec, hookimpl


@hookimpl(optionalhook=True)
def nexus_cli_commands():
    return [
        CommandSpec(name="hello", factory="fake_nexus_cmds:hello", description="Say hello (fake)."),
        CommandSpec(name="run", factory="fake_nexus_cmds:hello", description="Steals run."),
    ]
"""

COMMANDS = '''
import os
from pathlib import Path

Path(os.environ["FAKE_MARKER"]).write_text("imported")


def hello(*, name: str = "world") -> int:
    """Say hello."""
    print(f"hello {name}")
    return 0
'''

BROKEN = "raise ImportError('this plugin is broken on purpose')\n"


def install(site: Path, dist: str, module: str, source: str) -> None:
    """A minimal installed distribution with a ``nexus.plugins`` entry point."""
    info = site / f"{dist.replace('-', '_')}-1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(f"[{GROUP}]\n{dist} = {module}\n")
    (site / f"{module}.py").write_text(source)


@pytest.fixture
def plugin_cli(tmp_path: Path, app_file: Path) -> Cli:
    site = tmp_path / "site"
    install(site, "fake-plugin", "fake_nexus_plugin", PLUGIN)
    (site / "fake_nexus_cmds.py").write_text(COMMANDS)
    env = base_env(tmp_path)
    env.update(
        PYTHONPATH=str(site),
        FAKE_MARKER=str(tmp_path / "marker"),
        NEXUS_APP=str(app_file),
    )
    return Cli(tmp_path, env)


def test_a_plugin_command_is_listed_without_importing_it(plugin_cli: Cli) -> None:
    marker = plugin_cli.workdir / "marker"
    first = plugin_cli("--help")  # collects through the plugin host, then caches
    assert first.returncode == 0
    assert "hello" in first.stdout and "Say hello (fake)." in first.stdout
    assert "command 'run' skipped: a built-in command has that name" in first.stderr
    cached = plugin_cli("--help")
    assert cached.stdout == first.stdout and cached.stderr == ""
    assert not marker.exists()  # --help never imported the command's module
    done = plugin_cli("hello", "--name", "Ada")
    assert done.returncode == 0 and done.stdout.strip() == "hello Ada"
    assert marker.exists()
    assert plugin_cli("run", "greet", "--name", "x").returncode == 0  # the built-in run stays


def test_the_cache_follows_installs_and_switches(plugin_cli: Cli) -> None:
    assert "hello" in plugin_cli("--help").stdout
    blocked = plugin_cli("--help", env={"NEXUS_DISABLE_PLUGINS": "fake-plugin"})
    assert " hello " not in blocked.stdout
    site = Path(plugin_cli.env["PYTHONPATH"])
    install(
        site,
        "other-plugin",
        "other_nexus_plugin",
        PLUGIN.replace('"hello"', '"greetings"').replace(
            'CommandSpec(name="run", factory="fake_nexus_cmds:hello", description="Steals run."),',
            "",
        ),
    )
    both = plugin_cli("--help")
    assert "greetings" in both.stdout and "hello" in both.stdout


def test_a_broken_plugin_does_not_break_the_command(plugin_cli: Cli) -> None:
    install(Path(plugin_cli.env["PYTHONPATH"]), "broken-plugin", "broken_nexus_plugin", BROKEN)
    done = plugin_cli("--help")
    assert done.returncode == 0
    assert "broken-plugin" in done.stderr and "broken on purpose" in done.stderr
    assert "hello" in done.stdout
    assert plugin_cli("workflows").returncode == 0


def test_entry_points_are_read_like_importlib_metadata() -> None:
    expected = {ep.name: ep.value for ep in importlib.metadata.entry_points(group=GROUP)}
    found = {ep["name"]: ep["value"] for ep in entry_points()}
    assert found == expected


def _modules(env: dict[str, str], cwd: Path) -> list[str]:
    probe = (
        "import io, json, sys, contextlib\n"
        "from nexus_plugin_cli.main import main\n"
        "with contextlib.redirect_stdout(io.StringIO()):\n"
        "    main(['--help'])\n"
        "print(json.dumps(sorted(sys.modules)))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], env=env, cwd=cwd, capture_output=True, text=True, check=True
    )
    return json.loads(done.stdout.splitlines()[-1])


def test_help_imports_no_heavy_module(tmp_path: Path) -> None:
    env = base_env(tmp_path)
    heavy = ("litestar", "mcp", "uvicorn", "prompt_toolkit", "websockets")
    first = _modules(env, tmp_path)  # no cache yet: the plugin host collects the commands
    assert not [m for m in first if m.split(".")[0] in heavy]
    cached = _modules(env, tmp_path)
    light = (*heavy, "nexus_core", "cyclopts", "rich", "anyio", "httpx", "msgspec", "pluggy")
    assert not [m for m in cached if m.split(".")[0] in light]
    assert len(cached) < 120


def test_the_hook_is_documented() -> None:
    for name, function in inspect.getmembers(hookspecs, inspect.isfunction):
        if name.startswith("nexus_"):
            doc = inspect.getdoc(function) or ""
            assert "versionadded" in doc, name
            assert len(doc.splitlines()) > 3, name
    assert hookspecs.__all__ == ["nexus_cli_commands"]
