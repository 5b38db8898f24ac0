"""``channels.mcp.service_discovery`` and ``capability_caching`` against a real external server.

The external server is a small Nexus app served over stdio by
``python -m nexus_plugin_mcp`` in its own process; the host under test
discovers it at start, uses its tools as node types, and follows its
``tools/list_changed`` notifications.
"""

from __future__ import annotations

import logging
import sys
import textwrap
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio
import pytest
from nexus_core import Nexus
from nexus_core.config import ConfigError
from nexus_core.errors import PluginFailed

from nexus_plugin_mcp.discovery import directory_of

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(120)]

EXTERNAL = textwrap.dedent(
    '''
    from nexus_core import Nexus

    app = Nexus("external")


    @app.workflow
    def add(a: int, b: int) -> int:
        """Add two numbers."""
        return a + b


    @app.workflow
    async def grow() -> str:
        """Register a new workflow, so the tool list changes."""

        @app.workflow
        def triple(x: int) -> int:
            """Three times x."""
            return 3 * x

        return "grown"
    '''
)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def external(tmp_path: Path) -> dict[str, Any]:
    path = tmp_path / "external.py"
    path.write_text(EXTERNAL, encoding="utf-8")
    return {
        "name": "ext",
        "command": [sys.executable, "-m", "nexus_plugin_mcp", str(path)],
        "env": {"NEXUS_STORAGE": "memory://", "NEXUS_CONFIG_HOME": str(tmp_path / "uc")},
    }


def host(servers: list[dict[str, Any]], **mcp: Any) -> Nexus:
    config = {"storage": "memory://", "channels": {"mcp": {"service_discovery": servers, **mcp}}}
    return Nexus(config=config, env={})


async def until(condition: Callable[[], Awaitable[bool] | bool]) -> None:
    """Wait for ``condition``, polling; fail after 30 s."""
    with anyio.fail_after(30):
        while True:
            value = condition()
            if not isinstance(value, bool):
                value = await value
            if value:
                return
            await anyio.sleep(0.02)


@pytest.mark.parametrize("mode", ["legacy", "auto"])
async def test_discovered_tools_are_node_types_and_follow_list_changed(
    external: dict[str, Any], mode: str
) -> None:
    app = host([{**external, "mode": mode}], capability_cache_ttl=3600)
    assert "ext.add" not in app.node_types()  # discovered at start, not before
    async with app:
        assert {"ext.add", "ext.grow"} <= set(app.node_types())
        assert app.node_types()["ext.add"].description == "Add two numbers."
        wb = app.builder("sum")
        wb.add_node("ext.add", "s", {})
        wb.add_workflow_inputs("s", {"a": "a", "b": "b"})
        wb.add_workflow_outputs("s", {"total": "result"})
        app.register(wb)
        result = await app.invoke("sum", {"a": 2, "b": 3})
        assert result.status == "completed", result.error
        assert result.output == {"total": {"result": 5}}

        directory = directory_of(app)
        assert directory is not None
        server = directory.servers["ext"]
        listed = server.refreshes
        await directory.tools("ext")
        await directory.tools("ext")
        assert server.refreshes == listed  # cached: no listing within the TTL

        await directory.call("ext", "grow", {})
        # The server says its tool list changed: refreshed at once, the TTL is an hour.
        await until(lambda: "ext.triple" in app.node_types())
        assert server.refreshes > listed
        wb = app.builder("thrice")
        wb.add_node("ext.triple", "t", {})
        wb.add_workflow_inputs("t", {"x": "x"})
        app.register(wb)
        assert (await app.invoke("thrice", {"x": 4})).output == {"result": 12}


async def test_the_cache_expires_after_its_ttl(external: dict[str, Any]) -> None:
    app = host([external], capability_cache_ttl=0.3)
    async with app:
        directory = directory_of(app)
        assert directory is not None
        server = directory.servers["ext"]
        listed = server.refreshes
        await until(lambda: server.refreshes >= listed + 2)  # refreshed in the background


async def test_without_caching_every_call_lists_the_tools_first(external: dict[str, Any]) -> None:
    app = host([external], capability_caching=False)
    async with app:
        directory = directory_of(app)
        assert directory is not None
        server = directory.servers["ext"]
        before = server.refreshes
        for _ in range(3):
            await directory.call("ext", "add", {"a": 1, "b": 1})
        assert server.refreshes == before + 3


async def test_a_tool_error_fails_the_node_naming_the_tool(external: dict[str, Any]) -> None:
    app = host([external])
    async with app:
        wb = app.builder("bad")
        wb.add_node("ext.add", "s", {})
        wb.add_workflow_inputs("s", {"a": "a"})
        app.register(wb)
        result = await app.invoke("bad", {"a": 1})
        assert result.status == "failed"
        assert result.error is not None
        assert "tool 'add' of MCP server 'ext' failed" in result.error.message


async def test_an_unreachable_server_is_logged_and_the_host_starts(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    missing = {"name": "gone", "command": [str(tmp_path / "no-such-server")], "timeout": 10}
    with caplog.at_level(logging.WARNING, logger="nexus.mcp.discovery"):
        async with host([missing]) as app:
            assert not any(name.startswith("gone.") for name in app.node_types())
    assert any("MCP server 'gone'" in record.message for record in caplog.records)


async def test_a_required_server_that_cannot_be_reached_stops_the_start(tmp_path: Path) -> None:
    missing = {"name": "gone", "command": [str(tmp_path / "nope")], "required": True}
    with pytest.raises(PluginFailed, match="MCP server 'gone'"):
        async with host([missing]):
            pass


@pytest.mark.parametrize(
    ("server", "message"),
    [
        ({"name": "x"}, "set exactly one of 'command' and 'url'"),
        ({"name": "x", "url": "ftp://h"}, r"expected an http\(s\) URL"),
        ({"name": "x y", "url": "http://h"}, "use letters, digits"),
    ],
)
def test_bad_servers_are_refused_naming_the_key(server: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message) as caught:
        host([server])
    assert caught.value.key == "nexus.channels.mcp.service_discovery[0]"


def test_a_name_used_twice_is_refused() -> None:
    twice = [{"name": "a", "url": "http://h"}, {"name": "a", "url": "http://i"}]
    with pytest.raises(ConfigError, match="'a' is used twice"):
        host(twice)
