"""The plugin host: hooks, registries, discovery switches and broken plugins."""

from __future__ import annotations

import inspect
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import msgspec
import pytest

from nexus_core import (
    AuthProviderSpec,
    ChannelSpec,
    ConfigSectionSpec,
    EventBusSpec,
    ExecutorSpec,
    Nexus,
    NodeTypeSpec,
    StorageBackendSpec,
    hookimpl,
    hookspec,
    hookspecs,
)
from nexus_core.errors import PluginConflictError, PluginFailed, PluginLoadFailed
from nexus_core.plugins import PluginHost

HOOKS = sorted(name for name in dir(hookspecs) if name.startswith("nexus_"))


def test_every_hook_is_documented() -> None:
    # Datasette's rule: the docstring is the contract, so an undocumented hook fails.
    for name in HOOKS:
        doc = inspect.getdoc(getattr(hookspecs, name))
        assert doc, f"hook {name} has no docstring"
        assert "versionadded" in doc, f"hook {name} does not say when it was added"
        assert len(doc.split()) > 15, f"hook {name}'s docstring says too little"


class ClayConfig(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    depth: int = 3


class Everything:
    """A plugin implementing every core hook, to prove each is callable and collected."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    @hookimpl
    def nexus_add_hookspecs(self, pluginmanager):
        self.calls.append("add_hookspecs")

    @hookimpl
    def nexus_channels(self):
        return [ChannelSpec(name="carrier-pigeon", factory="x:y")]

    @hookimpl
    def nexus_auth_providers(self):
        return [AuthProviderSpec(name="secret-handshake", factory="x:y")]

    @hookimpl
    def nexus_storage_backends(self):
        return [StorageBackendSpec(name="clay", schemes=("clay", "tablet"), factory="x:y")]

    @hookimpl
    def nexus_node_types(self):
        return [NodeTypeSpec(name="Chisel", factory="x:y")]

    @hookimpl
    def nexus_event_buses(self):
        return [EventBusSpec(name="smoke", factory="x:y", priority=-5)]

    @hookimpl
    def nexus_executors(self):
        return [ExecutorSpec(name="conveyor", factory="x:y")]

    @hookimpl
    def nexus_config_sections(self):
        return [ConfigSectionSpec(name="plugins.clay", factory=ClayConfig)]

    @hookimpl
    async def nexus_startup(self, app):
        self.calls.append(f"startup:{app.title}")

    @hookimpl
    def nexus_shutdown(self, app):
        self.calls.append("shutdown")

    @hookimpl
    async def nexus_workflow_registered(self, app, workflow):
        self.calls.append(f"registered:{workflow.name}")


@pytest.mark.anyio
async def test_every_hook_reaches_the_host() -> None:
    plugin = Everything()
    app = Nexus("t", plugins=[plugin], autoload=False, storage="memory://")
    host = app.host
    name = f"{Everything.__module__}.Everything"
    assert host.channels()["carrier-pigeon"].plugin == name
    assert host.auth_providers()["secret-handshake"].plugin == name
    assert set(host.storage_backends()) >= {"clay", "tablet", "memory", "sqlite"}
    assert host.node_types()["Chisel"].plugin == name
    assert host.event_buses()["smoke"].priority == -5  # below the local bus: never picked
    assert host.executors()["conveyor"].plugin == name  # not used unless configured
    assert "plugins.clay" in host.config_sections()
    assert app.config.section("plugins.clay") == ClayConfig(depth=3)

    @app.workflow
    def ping() -> str:
        return "pong"

    async with app:

        @app.workflow
        def late() -> str:
            return "late"

    assert plugin.calls[0] == "add_hookspecs"
    assert plugin.calls[1:] == ["startup:t", "registered:ping", "registered:late", "shutdown"]
    info = next(p for p in app.plugins if p.name == name)
    assert set(info.hooks) == set(HOOKS)
    assert info.hooks == sorted(info.hooks)


def test_builtin_defaults_come_through_the_hooks() -> None:
    host = PluginHost(autoload=False)
    assert host.storage_backends()["sqlite"].plugin == "nexus-core:builtin"
    assert host.event_buses()["local"].priority == 0
    assert "PythonFunction" in host.node_types()
    assert [p.name for p in host.infos()] == ["nexus-core:builtin"]


def test_duplicate_names_name_both_plugins() -> None:
    class A:
        @hookimpl
        def nexus_node_types(self):
            return [NodeTypeSpec(name="Twin", factory="x:y")]

    class B(A):
        pass

    host = PluginHost([A(), B()], autoload=False)
    with pytest.raises(PluginConflictError) as err:
        host.node_types()
    assert __name__ in str(err.value)
    assert "A" in str(err.value) and "B" in str(err.value)
    assert "'Twin'" in str(err.value)


def test_duplicate_storage_scheme_is_a_conflict() -> None:
    class Mine:
        @hookimpl
        def nexus_storage_backends(self):
            return [StorageBackendSpec(name="other", schemes=("sqlite",), factory="x:y")]

    with pytest.raises(PluginConflictError, match="nexus-core:builtin"):
        PluginHost([Mine()], autoload=False).storage_backends()


def test_a_hook_must_return_its_spec_type() -> None:
    class Wrong:
        @hookimpl
        def nexus_node_types(self):
            return [ChannelSpec(name="x", factory="x:y")]

    with pytest.raises(PluginFailed, match="must return NodeTypeSpec") as err:
        PluginHost([Wrong()], autoload=False).node_types()
    assert "Wrong" in str(err.value) and "Remove it from the plugins" in str(err.value)


def test_a_plugin_can_add_hooks_of_its_own() -> None:
    class RouteSpecs:
        @hookspec
        def nexus_test_routes(self):
            """Routes (a test hook). .. versionadded:: 0.1"""

    class Provider:
        @hookimpl
        def nexus_add_hookspecs(self, pluginmanager):
            pluginmanager.add_hookspecs(RouteSpecs)

    class Consumer:
        @hookimpl
        def nexus_test_routes(self):
            return ["/mcp"]

    host = PluginHost([Provider(), Consumer()], autoload=False)
    assert host.hook("nexus_test_routes")() == [["/mcp"]]
    assert host.errors == []


def test_an_unknown_hook_is_reported_and_the_plugin_dropped() -> None:
    class Typo:
        @hookimpl
        def nexus_node_tpyes(self):
            return []

    class Optional:
        @hookimpl(optionalhook=True)
        def nexus_api_routes(self):
            return []

    host = PluginHost([Typo(), Optional()], autoload=False)
    assert len(host.errors) == 1
    assert "nexus_node_tpyes" in host.errors[0].error
    names = [p.name for p in host.infos()]
    assert any(n.endswith(".Optional") for n in names)
    assert not any("Typo" in n for n in names)


def test_an_unknown_hook_is_fatal_in_strict_mode() -> None:
    class Typo:
        @hookimpl
        def nexus_startupp(self):
            pass

    with pytest.raises(PluginLoadFailed, match="nexus_startupp"):
        PluginHost([Typo()], autoload=False, env={"NEXUS_STRICT_PLUGINS": "1"})


def test_plugin_info_serialises() -> None:
    payload = msgspec.json.decode(msgspec.json.encode(PluginHost(autoload=False).infos()))
    assert payload[0]["name"] == "nexus-core:builtin"
    assert "nexus_node_types" in payload[0]["hooks"]


# -- real distributions through entry points ------------------------------------

GOOD_PLUGIN = {
    "pyproject.toml": """
        [build-system]
        requires = ["setuptools>=61"]
        build-backend = "setuptools.build_meta"

        [project]
        name = "nexus-plugin-shout"
        version = "1.2.3"

        [project.entry-points."nexus.plugins"]
        nexus-plugin-shout = "nexus_plugin_shout"

        [tool.setuptools]
        packages = ["nexus_plugin_shout"]
    """,
    "nexus_plugin_shout/__init__.py": """
        import msgspec
        from nexus_core import Node, NodeTypeSpec, hookimpl

        class Shout(Node):
            type_name = "Shout"
            blocking = False

            class Inputs(msgspec.Struct):
                text: str

            class Outputs(msgspec.Struct):
                text: str

            def run(self, inputs):
                return self.Outputs(text=inputs.text.upper() + "!")

        @hookimpl
        def nexus_node_types():
            return [NodeTypeSpec(name="Shout", factory="nexus_plugin_shout:Shout")]
    """,
}

BROKEN_PLUGIN = {
    "pyproject.toml": """
        [build-system]
        requires = ["setuptools>=61"]
        build-backend = "setuptools.build_meta"

        [project]
        name = "nexus-plugin-broken"
        version = "0.0.1"

        [project.entry-points."nexus.plugins"]
        nexus-plugin-broken = "nexus_plugin_broken"

        [tool.setuptools]
        packages = ["nexus_plugin_broken"]
    """,
    "nexus_plugin_broken/__init__.py": """
        import a_module_that_does_not_exist  # noqa: F401
    """,
}

PROBE = """
import json, sys
import anyio
from nexus_core import Nexus, WorkflowBuilder

app = Nexus("probe")
out = {
    "plugins": {p.name: p.version for p in app.plugins},
    "errors": [{"name": e.name, "distribution": e.distribution, "version": e.version,
                "error": e.error, "hint": e.hint} for e in app.plugin_errors],
    "node_types": sorted(app.node_types()),
}
if "Shout" in out["node_types"]:
    wb = WorkflowBuilder("loud")
    wb.add_node("Shout", "shout")
    wb.add_workflow_inputs("shout", {"text": "text"})
    wb.set_output("shout", "text")
    app.register(wb)
    out["result"] = anyio.run(app.execute, "loud", {"text": "hi"}).output
print(json.dumps(out))
"""


def _write_tree(root: Path, files: dict[str, str]) -> None:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text).lstrip())


@pytest.fixture(scope="module")
def plugin_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Build and install two real plugin distributions into a private site folder."""
    base = tmp_path_factory.mktemp("plugins")
    site = base / "site"
    for name, files in {"good": GOOD_PLUGIN, "broken": BROKEN_PLUGIN}.items():
        src = base / name
        _write_tree(src, files)
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "install",
                "--quiet",
                "--no-deps",
                "--target",
                str(site),
                str(src),
            ],
            check=True,
            capture_output=True,
        )
    return site


def _probe(site: Path, **env: str) -> dict:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("NEXUS_")}
    environ["PYTHONPATH"] = os.pathsep.join([str(site), *sys.path])
    environ.update(env)
    proc = subprocess.run(
        [sys.executable, "-c", PROBE], env=environ, capture_output=True, text=True, check=False
    )
    assert proc.returncode == 0 or env.get("NEXUS_STRICT_PLUGINS"), proc.stderr
    if proc.returncode != 0:
        return {"returncode": proc.returncode, "stderr": proc.stderr}
    return json.loads(proc.stdout)


def test_an_installed_plugin_node_type_works_in_a_workflow(plugin_site: Path) -> None:
    out = _probe(plugin_site)
    assert out["plugins"]["nexus-plugin-shout"] == "1.2.3"
    assert "Shout" in out["node_types"]
    assert out["result"] == "HI!"


def test_a_broken_plugin_is_reported_and_the_host_keeps_running(plugin_site: Path) -> None:
    out = _probe(plugin_site)
    [error] = out["errors"]
    assert error["distribution"] == "nexus-plugin-broken"
    assert error["version"] == "0.0.1"
    assert "a_module_that_does_not_exist" in error["error"]
    assert "NEXUS_DISABLE_PLUGINS=nexus-plugin-broken" in error["hint"]
    assert "nexus-plugin-broken" not in out["plugins"]


def test_strict_mode_makes_a_broken_plugin_fatal(plugin_site: Path) -> None:
    out = _probe(plugin_site, NEXUS_STRICT_PLUGINS="1")
    assert out["returncode"] != 0
    assert "nexus-plugin-broken" in out["stderr"]
    assert "a_module_that_does_not_exist" in out["stderr"]


def test_disable_list_skips_a_plugin(plugin_site: Path) -> None:
    out = _probe(plugin_site, NEXUS_DISABLE_PLUGINS="nexus-plugin-broken")
    assert out["errors"] == []
    assert "nexus-plugin-shout" in out["plugins"]


def test_allow_list_loads_only_what_it_names(plugin_site: Path) -> None:
    out = _probe(plugin_site, NEXUS_PLUGINS="nexus-plugin-shout")
    assert out["errors"] == []
    assert set(out["plugins"]) == {"nexus-core:builtin", "nexus-plugin-shout"}


def test_an_empty_allow_list_loads_no_entry_points(plugin_site: Path) -> None:
    out = _probe(plugin_site, NEXUS_PLUGINS="")
    assert set(out["plugins"]) == {"nexus-core:builtin"}
    assert "PythonCodeNode" not in out["node_types"]


def test_autoload_can_be_switched_off(plugin_site: Path) -> None:
    out = _probe(plugin_site, NEXUS_DISABLE_PLUGIN_AUTOLOAD="1")
    assert set(out["plugins"]) == {"nexus-core:builtin"}
    assert out["errors"] == []


REQUIRED_PROBE = """
from nexus_core import Nexus
Nexus("strict", config={"required_plugins": ["nexus-plugin-broken"]})
"""


def test_a_required_plugin_that_fails_stops_the_host(plugin_site: Path) -> None:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("NEXUS_")}
    environ["PYTHONPATH"] = os.pathsep.join([str(plugin_site), *sys.path])
    proc = subprocess.run(
        [sys.executable, "-c", REQUIRED_PROBE], env=environ, capture_output=True, text=True
    )
    assert proc.returncode != 0
    assert "required plugins are missing" in proc.stderr
    assert "nexus-plugin-broken" in proc.stderr
    assert "a_module_that_does_not_exist" in proc.stderr


def test_nexus_core_registers_sdk_nodes_through_its_own_entry_point(plugin_site: Path) -> None:
    out = _probe(plugin_site)
    assert "nexus-core" in out["plugins"]


@pytest.mark.anyio
async def test_startup_runs_in_registration_order_and_shutdown_in_reverse() -> None:
    calls: list[str] = []

    class Named:
        def __init__(self, name: str) -> None:
            self.name = name

        @hookimpl
        def nexus_startup(self, app):
            calls.append(f"start {self.name}")

        @hookimpl
        def nexus_shutdown(self, app):
            calls.append(f"stop {self.name}")

    app = Nexus(plugins=[Named("a"), Named("b")], autoload=False, storage="memory://", env={})
    async with app:
        pass
    assert calls == ["start a", "start b", "stop b", "stop a"]


@pytest.mark.anyio
async def test_a_failing_startup_names_its_plugin() -> None:
    class Grumpy:
        @hookimpl
        def nexus_startup(self, app):
            raise RuntimeError("not today")

    app = Nexus(plugins=[Grumpy()], autoload=False, storage="memory://", env={})
    with pytest.raises(PluginFailed, match="not today") as err:
        async with app:
            pass
    assert "Grumpy" in str(err.value) and "failed in nexus_startup" in str(err.value)
    assert isinstance(err.value.__cause__, RuntimeError)


def test_collect_specs_serves_hooks_plugins_define_with_one_conflict_policy() -> None:
    from nexus_core.plugin import HttpMountSpec, collect_specs

    class MountSpecs:
        @hookspec
        def nexus_test_mounts(self, app):
            """Mounts (a test hook). .. versionadded:: 0.1"""

    class Provider:
        @hookimpl
        def nexus_add_hookspecs(self, pluginmanager):
            pluginmanager.add_hookspecs(MountSpecs)

    class Mounter:
        def __init__(self, path: str) -> None:
            self.path = path

        @hookimpl
        def nexus_test_mounts(self, app):
            return [HttpMountSpec(name=f"m{self.path}", path=self.path, factory="x:y", plugin=app)]

    class Other(Mounter):
        pass

    host = PluginHost([Provider(), Mounter("/a"), Other("/b")], autoload=False)
    found = collect_specs(
        host, "nexus_test_mounts", HttpMountSpec, key=lambda s: (s.path,), app="A"
    )
    assert set(found) == {"/a", "/b"}
    assert found["/a"].plugin.endswith("Mounter")  # the host's tag, not what the hook said
    assert collect_specs(host, "nexus_no_such_hook", HttpMountSpec) == {}

    clash = PluginHost([Provider(), Mounter("/a"), Other("/a")], autoload=False)
    with pytest.raises(
        PluginConflictError, match=r"'/a' is registered by both .*Other.* and .*Mounter"
    ):
        collect_specs(clash, "nexus_test_mounts", HttpMountSpec, key=lambda s: (s.path,), app="A")
