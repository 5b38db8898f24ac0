"""Every plugin failure names the plugin, its distribution and version, and how to disable it.

Real distributions, built in temporary folders, installed with pip and found
through the host's entry-point discovery.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from plugin_dists import dist, environ, install

from nexus_core import Nexus, hookimpl
from nexus_core.errors import PluginFailed
from nexus_core.plugins import PluginHost

pytestmark = pytest.mark.slow  # builds and installs eight distributions

BOOM = dist(
    "nexus-plugin-boom",
    "0.3.0",
    "nexus_plugin_boom",
    """
    from nexus_core import hookimpl

    @hookimpl
    def nexus_startup(app):
        raise RuntimeError("boom")
    """,
)

BAD_REGISTRATION = dist(
    "nexus-plugin-badreg",
    "0.2.0",
    "nexus_plugin_badreg",
    """
    from nexus_core import hookimpl

    @hookimpl
    def nexus_node_types():
        raise ValueError("no nodes today")
    """,
)

GHOST_CHANNEL = dist(
    "nexus-plugin-ghost",
    "1.0.0",
    "nexus_plugin_ghost",
    """
    from nexus_core import ChannelSpec, hookimpl

    @hookimpl
    def nexus_channels():
        return [ChannelSpec(name="ghost", factory="nexus_plugin_ghost.missing:Ghost")]
    """,
)

BROKEN_IMPORT = dist(
    "nexus-plugin-shattered",
    "0.0.7",
    "nexus_plugin_shattered",
    "import a_module_that_does_not_exist  # noqa: F401\n",
)

TWIN_CODE = """
from nexus_core import hookimpl

@hookimpl
def nexus_startup(app):
    pass
"""
TWIN_A = dist("nexus-twin-a", "1.0", "nexus_twin_a", TWIN_CODE, entry_point="nexus-plugin-twin")
TWIN_B = dist("nexus-twin-b", "2.0", "nexus_twin_b", TWIN_CODE, entry_point="nexus-plugin-twin")

HELLO_CODE = """
from nexus_core import CommandSpec, hookimpl

@hookimpl(optionalhook=True)
def nexus_cli_commands():
    return [CommandSpec(name="hello", factory="{package}:hello")]

def hello() -> int:
    print("hello from {package}")
    return 0
"""
HELLO_A = dist("nexus-hello-a", "1.1", "nexus_hello_a", HELLO_CODE.format(package="nexus_hello_a"))
HELLO_B = dist("nexus-hello-b", "2.2", "nexus_hello_b", HELLO_CODE.format(package="nexus_hello_b"))

APP = """
from nexus_core import Nexus

app = Nexus("failures", storage="memory://")

@app.workflow
def greet(name: str) -> str:
    return f"Hello, {name}."
"""

PROBE = """
import json, logging, sys
import anyio
from nexus_core import Nexus
from nexus_core.errors import NexusError

logging.basicConfig(level=logging.WARNING, format="LOG %(message)s")
out = {}
try:
    app = Nexus("probe", storage="memory://")
    out["errors"] = [str(e) for e in app.plugin_errors]
    out["node_types"] = sorted(app.node_types())
    out["errors_after"] = [str(e) for e in app.plugin_errors]
    if len(sys.argv) > 1:
        async def main():
            async with app.running(channels=sys.argv[1:]):
                pass
        anyio.run(main)
except NexusError as exc:
    out["raised"] = type(exc).__name__
    out["message"] = exc.message
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def sites(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("failing-plugins")
    dists = {
        "boom": BOOM,
        "badreg": BAD_REGISTRATION,
        "ghost": GHOST_CHANNEL,
        "shattered": BROKEN_IMPORT,
        "twin-a": TWIN_A,
        "twin-b": TWIN_B,
        "hello-a": HELLO_A,
        "hello-b": HELLO_B,
    }
    site = install(base, dists)
    return dict.fromkeys(dists, site)


def _probe(*sites: Path, args: tuple[str, ...] = (), **env: str) -> tuple[dict, str]:
    proc = subprocess.run(
        [sys.executable, "-c", PROBE, *args],
        env=environ(*sites, NEXUS_PLUGINS=env.pop("NEXUS_PLUGINS", ""), **env),
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout), proc.stderr


def _named(message: str, plugin: str, version: str) -> None:
    assert f"plugin {plugin!r} ({plugin} {version})" in message, message
    assert f"NEXUS_DISABLE_PLUGINS={plugin}" in message, message
    assert f"pip uninstall {plugin}" in message, message


def test_a_raising_registration_hook_is_reported_and_the_host_keeps_running(
    sites: dict[str, Path],
) -> None:
    out, stderr = _probe(sites["badreg"], NEXUS_PLUGINS="nexus-plugin-badreg,nexus-core")
    assert "PythonFunction" in out["node_types"]  # everyone else's node types are there
    (error,) = out["errors_after"]
    _named(error, "nexus-plugin-badreg", "0.2.0")
    assert "failed in nexus_node_types: ValueError: no nodes today" in error
    assert stderr.count("no nodes today") == 1  # warned once


def test_a_channel_factory_that_cannot_be_imported_names_its_plugin(
    sites: dict[str, Path],
) -> None:
    out, _ = _probe(sites["ghost"], args=("ghost",), NEXUS_PLUGINS="nexus-plugin-ghost")
    assert out["raised"] == "PluginFailed"
    message = out["message"]
    assert message.startswith("channel 'ghost' of plugin 'nexus-plugin-ghost'")
    _named(message, "nexus-plugin-ghost", "1.0.0")
    assert "nexus_plugin_ghost.missing" in message


def test_two_distributions_with_one_entry_point_name_are_an_error_naming_both(
    sites: dict[str, Path],
) -> None:
    out, stderr = _probe(sites["twin-a"], NEXUS_PLUGINS="nexus-plugin-twin")
    (error,) = out["errors"]
    assert "nexus-twin-a 1.0" in error and "nexus-twin-b 2.0" in error
    assert "'pip uninstall nexus-twin-a' or 'pip uninstall nexus-twin-b'" in error
    assert stderr.count("declared by two distributions") == 1


def test_a_typo_in_the_plugin_switches_gets_a_did_you_mean(sites: dict[str, Path]) -> None:
    _, stderr = _probe(
        sites["boom"],
        NEXUS_PLUGINS="nexus-plugin-bom",
        NEXUS_DISABLE_PLUGINS="nexus-plugn-boom",
    )
    assert "NEXUS_PLUGINS names 'nexus-plugin-bom', which is not an installed plugin" in stderr
    assert "did you mean 'nexus-plugin-boom'?" in stderr
    assert "NEXUS_DISABLE_PLUGINS names 'nexus-plugn-boom'" in stderr
    assert stderr.count("did you mean") == 2


def test_a_broken_plugin_is_warned_about_once_per_process(sites: dict[str, Path]) -> None:
    script = (
        "import logging; logging.basicConfig(format='LOG %(message)s')\n"
        "from nexus_core.plugins import PluginHost\n"
        "hosts = [PluginHost() for _ in range(3)]\n"
        "assert all(len(h.errors) == 1 for h in hosts)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", script],
        env=environ(sites["shattered"], NEXUS_PLUGINS="nexus-plugin-shattered"),
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.count("a_module_that_does_not_exist") == 1, proc.stderr


# -- through the CLI ------------------------------------------------------------


def _nexus(tmp_path: Path, *args: str, sites: tuple[Path, ...], **env: str):
    (tmp_path / "app.py").write_text(APP)
    return subprocess.run(
        [sys.executable, "-m", "nexus_plugin_cli", *args],
        cwd=tmp_path,
        env=environ(*sites, **env),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_a_failing_startup_reaches_the_cli_as_exit_1_naming_the_plugin(
    tmp_path: Path, sites: dict[str, Path]
) -> None:
    pytest.importorskip("nexus_plugin_cli", reason="the nexus command is nexus-plugin-cli's")
    proc = _nexus(
        tmp_path,
        "run",
        "greet",
        "--name",
        "Ada",
        "--app",
        "app.py",
        sites=(sites["boom"],),
        NEXUS_PLUGINS="nexus-plugin-boom,nexus-plugin-cli",
    )
    assert proc.returncode == 1, proc.stderr
    assert "failed in nexus_startup: RuntimeError: boom" in proc.stderr
    _named(proc.stderr, "nexus-plugin-boom", "0.3.0")
    assert "please report" not in proc.stderr
    assert "Traceback" not in proc.stderr


def test_nexus_serve_with_a_channel_that_cannot_start_exits_1_naming_it(
    tmp_path: Path, sites: dict[str, Path]
) -> None:
    pytest.importorskip("nexus_plugin_cli", reason="the nexus command is nexus-plugin-cli's")
    pytest.importorskip("nexus_plugin_api", reason="nexus serve comes with nexus-plugin-api")
    (tmp_path / "nexus.toml").write_text("[nexus.channels.api]\nport = 0\n")
    proc = _nexus(
        tmp_path,
        "serve",
        "app.py",
        sites=(sites["ghost"],),
        NEXUS_PLUGINS="nexus-plugin-ghost,nexus-plugin-cli,nexus-plugin-api",
    )
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "error: channel 'ghost' of plugin 'nexus-plugin-ghost'" in proc.stderr
    _named(proc.stderr, "nexus-plugin-ghost", "1.0.0")
    assert "Traceback" not in proc.stderr


def test_nexus_plugins_warns_about_a_broken_plugin_once(
    tmp_path: Path, sites: dict[str, Path]
) -> None:
    pytest.importorskip("nexus_plugin_cli", reason="the nexus command is nexus-plugin-cli's")
    proc = _nexus(
        tmp_path,
        "plugins",
        sites=(sites["shattered"],),
        NEXUS_PLUGINS="nexus-plugin-shattered,nexus-plugin-cli",
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.count("a_module_that_does_not_exist") == 1, proc.stderr
    _named(proc.stderr, "nexus-plugin-shattered", "0.0.7")


def test_two_plugins_with_one_command_name_are_a_conflict_naming_both(
    tmp_path: Path, sites: dict[str, Path]
) -> None:
    pytest.importorskip("nexus_plugin_cli", reason="the nexus command is nexus-plugin-cli's")
    both = "nexus-hello-a,nexus-hello-b,nexus-plugin-cli"
    proc = _nexus(tmp_path, "--help", sites=(sites["hello-a"],), NEXUS_PLUGINS=both)
    assert proc.returncode == 0, proc.stderr
    assert "command 'hello' is registered by both" in proc.stderr
    assert "(nexus-hello-a 1.1)" in proc.stderr and "(nexus-hello-b 2.2)" in proc.stderr
    one = _nexus(
        tmp_path, "hello", sites=(sites["hello-a"],), NEXUS_PLUGINS="nexus-hello-b,nexus-plugin-cli"
    )
    assert one.returncode == 0, one.stderr
    assert "hello from nexus_hello_b" in one.stdout


# -- lifecycle ------------------------------------------------------------------


@pytest.mark.anyio
async def test_shutdown_runs_only_for_plugins_whose_startup_ran() -> None:
    calls: list[str] = []

    class Named:
        def __init__(self, name: str, fail: bool = False) -> None:
            self.name = name
            self.fail = fail

        @hookimpl
        def nexus_startup(self, app):
            calls.append(f"start {self.name}")
            if self.fail:
                raise RuntimeError(f"{self.name} cannot start")

        @hookimpl
        def nexus_shutdown(self, app):
            calls.append(f"stop {self.name}")

    class ShutdownOnly:
        @hookimpl
        def nexus_shutdown(self, app):
            calls.append("stop shutdown-only")

    plugins = [Named("a"), Named("b", fail=True), Named("c"), ShutdownOnly()]
    app = Nexus(plugins=plugins, autoload=False, storage="memory://", env={})
    with pytest.raises(PluginFailed, match="b cannot start"):
        async with app:
            pass
    assert calls == ["start a", "start b", "stop a"]

    calls.clear()
    app = Nexus(plugins=[Named("a"), ShutdownOnly()], autoload=False, storage="memory://", env={})
    async with app:
        pass
    assert calls == ["start a", "stop shutdown-only", "stop a"]


def test_a_registration_hook_of_a_plugin_passed_explicitly_raises_naming_it() -> None:
    class Broken:
        @hookimpl
        def nexus_channels(self):
            raise KeyError("oops")

    with pytest.raises(PluginFailed, match=r"Broken' failed in nexus_channels: KeyError"):
        PluginHost([Broken()], autoload=False).channels()


def test_hook_wrappers_run_around_registration_hooks() -> None:
    seen: list[str] = []

    class Wrapper:
        @hookimpl(wrapper=True)
        def nexus_channels(self):
            seen.append("before")
            result = yield
            seen.append("after")
            return result

    class Provider:
        @hookimpl
        def nexus_channels(self):
            from nexus_core import ChannelSpec

            return [ChannelSpec(name="pigeon", factory="x:y")]

    host = PluginHost([Wrapper(), Provider()], autoload=False)
    assert host.channels()["pigeon"].plugin.endswith("Provider")
    assert seen == ["before", "after"]
