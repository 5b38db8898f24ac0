"""``nexus_api_mounts``: another plugin's ASGI app on the same server, its lifespan entered."""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from api_apps import register
from api_support import serving
from nexus_core import HttpMountSpec, Nexus, hookimpl
from nexus_core.errors import PluginConflictError, PluginFailed

from nexus_plugin_api.asgi import collect_mounts

pytestmark = pytest.mark.anyio


class EchoApp:
    """An ASGI app that answers with the scope it saw, and records its lifespan."""

    def __init__(self, app: Nexus) -> None:
        self.host = app
        self.events: list[str] = []

    @contextlib.asynccontextmanager
    async def lifespan(self) -> AsyncIterator[None]:
        self.events.append("enter")
        try:
            yield
        finally:
            self.events.append("exit")

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        assert scope["type"] == "http"
        body = json.dumps(
            {
                "path": scope["path"],
                "root_path": scope["root_path"],
                "method": scope["method"],
                "query": scope["query_string"].decode(),
                "lifespan": list(self.events),
            }
        ).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"application/json")],
            }
        )
        await send({"type": "http.response.body", "body": body})


class MountPlugin:
    """A plugin object implementing the API plugin's hook, as the MCP plugin does."""

    def __init__(self) -> None:
        self.made: list[EchoApp] = []

    def make(self, app: Nexus) -> EchoApp:
        echo = EchoApp(app)
        self.made.append(echo)
        return echo

    @hookimpl(optionalhook=True)
    def nexus_api_mounts(self, app: Nexus) -> list[HttpMountSpec]:
        return [HttpMountSpec(name="echo", path="/echo", factory=self.make)]


def _app(*plugins: object) -> Nexus:
    app = Nexus(
        "mounts",
        storage="memory://",
        autoload=False,
        plugins=["nexus_plugin_api.plugin", *plugins],
        config={"channels": {"api": {"port": 0}}},
        env={},
    )
    register(app)
    return app


async def test_a_mount_is_served_and_its_lifespan_entered() -> None:
    plugin = MountPlugin()
    app = _app(plugin)
    async with serving(app) as url, httpx.AsyncClient(base_url=url) as http:
        (echo,) = plugin.made
        assert echo.host is app
        assert echo.events == ["enter"]
        at_root = (await http.post("/echo?x=1")).json()
        assert at_root == {
            "path": "/",
            "root_path": "/echo",
            "method": "POST",
            "query": "x=1",
            "lifespan": ["enter"],
        }
        below = (await http.get("/echo/a/b")).json()
        assert (below["path"], below["root_path"]) == ("/a/b", "/echo")
        slash = (await http.get("/echo/a/")).json()
        assert slash["path"] == "/a/"
        # The API's own routes are untouched.
        assert (await http.get("/workflows/greet")).status_code == 200
    assert echo.events == ["enter", "exit"]


async def test_plugins_lists_the_mounting_plugin() -> None:
    app = _app(MountPlugin())
    async with serving(app) as url, httpx.AsyncClient(base_url=url) as http:
        plugins = (await http.get("/plugins")).json()["items"]
    hooks = {p["name"]: p["hooks"] for p in plugins}
    mounting = [name for name, names in hooks.items() if "nexus_api_mounts" in names]
    assert len(mounting) == 1


class Clash:
    def __init__(self, path: str) -> None:
        self.path = path

    @hookimpl(optionalhook=True)
    def nexus_api_mounts(self) -> list[HttpMountSpec]:  # pluggy: fewer args are fine
        return [HttpMountSpec(name="clash", path=self.path, factory=EchoApp)]


class OtherClash(Clash):
    pass


def test_conflicting_mounts_name_the_plugins() -> None:
    with pytest.raises(PluginConflictError, match="by both .*OtherClash.* and .*Clash"):
        collect_mounts(_app(Clash("/x"), OtherClash("/x/")))
    with pytest.raises(ValueError, match="API's own routes"):
        collect_mounts(_app(Clash("/workflows")))
    with pytest.raises(ValueError, match="API's own routes"):
        collect_mounts(_app(Clash("/")))


def test_a_hook_returning_something_else_is_an_error() -> None:
    class Wrong:
        @hookimpl(optionalhook=True)
        def nexus_api_mounts(self) -> list[Any]:
            return [{"path": "/x"}]

    with pytest.raises(PluginFailed, match="must return HttpMountSpec"):
        collect_mounts(_app(Wrong()))


def test_no_mounts_without_implementations() -> None:
    assert collect_mounts(_app()) == []
