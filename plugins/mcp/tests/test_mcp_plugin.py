"""Registration, the cross-plugin contracts, the channel, the CLI entry points, schemas, prompts."""

from __future__ import annotations

import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any

import anyio
import httpx
import msgspec
import pytest
from _mcp_support import (
    MODES,
    http_connection,
    load_example,
    running_http,
    start_and_get_run_id,
)
from mcp import Client
from mcp.shared.exceptions import MCPDeprecationWarning
from nexus_core import CommandSpec, HttpMountSpec, Nexus
from nexus_core.errors import WorkflowDefinitionError
from nexus_core.specs import import_string

from nexus_plugin_mcp import plugin
from nexus_plugin_mcp.cli import mcp_command
from nexus_plugin_mcp.config import MCPConfig
from nexus_plugin_mcp.http import MCPHttpApp, make_asgi, metadata_url
from nexus_plugin_mcp.lazy import LazyASGI, make_lazy_asgi
from nexus_plugin_mcp.prompts import Prompt, prompts_of
from nexus_plugin_mcp.server import output_schema, tool_definition

ACCEPT = {"Accept": "application/json, text/event-stream"}
INIT = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {
        "protocolVersion": "2025-11-25",
        "capabilities": {},
        "clientInfo": {"name": "raw", "version": "0"},
    },
}


def test_installed_plugin_registers_channel_node_type_and_config_section() -> None:
    app = Nexus("t", config={"channels": {"mcp": {"stateless": True}}})
    names = {info.name for info in app.plugins}
    assert "nexus-plugin-mcp" in names
    assert not [e for e in app.plugin_errors if e.name == "nexus-plugin-mcp"]
    assert app.host.channels()["mcp"].plugin == "nexus-plugin-mcp"
    assert "MCPToolNode" in app.node_types()
    section = app.config.section("channels.mcp")
    assert isinstance(section, MCPConfig) and section.stateless is True


def test_loads_without_the_api_and_cli_plugins() -> None:
    # Their hooks are optional: no "unknown hook" error when neither is installed.
    app = Nexus("t", plugins=["nexus_plugin_mcp.plugin"], autoload=False)
    assert "nexus_plugin_mcp.plugin" in {info.name for info in app.plugins}
    assert app.plugin_errors == []


def test_cross_plugin_specs() -> None:
    mounts = plugin.nexus_api_mounts(Nexus("t"))
    assert all(isinstance(m, HttpMountSpec) for m in mounts)
    assert (mounts[0].name, mounts[0].path) == ("mcp", "/mcp")
    assert import_string(mounts[0].factory) is make_lazy_asgi
    assert mounts[1].path == "/.well-known/oauth-protected-resource/mcp"
    [command] = plugin.nexus_cli_commands()
    assert isinstance(command, CommandSpec) and command.name == "mcp"
    assert import_string(command.factory) is mcp_command


def test_importing_the_plugin_does_not_import_mcp() -> None:
    code = (
        "import sys, nexus_plugin_mcp, nexus_plugin_mcp.plugin; "
        "sys.exit('mcp imported' if 'mcp' in sys.modules or 'uvicorn' in sys.modules else 0)"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


class Item(msgspec.Struct):
    sku: str


def test_output_schema_is_an_object_and_keeps_defs() -> None:
    app = Nexus("t")

    @app.workflow
    def items() -> list[Item]:
        return []

    @app.workflow
    def one() -> Item:
        return Item(sku="x")

    schema, wrapped = output_schema(app.workflows["items"])
    assert wrapped is True
    assert schema["type"] == "object" and schema["required"] == ["result"]
    assert schema["properties"]["result"]["items"] == {"$ref": "#/$defs/Item"}
    assert "Item" in schema["$defs"]
    assert output_schema(app.workflows["one"]) == (app.workflows["one"].output_schema, False)
    tool = tool_definition(app.workflows["one"])
    assert tool["inputSchema"] == app.workflows["one"].input_schema
    assert "description" not in tool  # no docstring, no description


def test_metadata_url_follows_rfc_9728() -> None:
    assert metadata_url("https://h:8/mcp") == "https://h:8/.well-known/oauth-protected-resource/mcp"
    assert metadata_url("https://h") == "https://h/.well-known/oauth-protected-resource"


def test_prompt_registry_rules() -> None:
    app = Nexus("t")

    @app.prompt
    def hello(name: str) -> str:
        """Say hello."""
        return f"Hello {name}"

    with pytest.raises(WorkflowDefinitionError, match="already exists"):
        app.prompt(name="hello")(lambda name: name)
    with pytest.raises(WorkflowDefinitionError, match="must start with a letter"):
        Prompt(lambda: "x", name="no spaces")
    item = prompts_of(app)["hello"]
    assert item.description == "Say hello."
    assert [(a.name, a.required) for a in item.arguments] == [("name", True)]
    assert prompts_of(Nexus("other")) == {}

    async def render() -> None:
        [message] = await item.render({"name": "Ada"})
        assert (message.role, message.content) == ("user", "Hello Ada")

    anyio.run(render)


@pytest.mark.anyio
async def test_make_asgi_is_a_mountable_app_with_a_lifespan(example_app: Path) -> None:
    app = load_example(example_app)
    asgi = make_asgi(app)
    assert isinstance(asgi, MCPHttpApp)
    async with app:
        transport = httpx.ASGITransport(app=asgi)
        async with httpx.AsyncClient(transport=transport, base_url="http://api") as http:
            early = await http.post("/mcp", json=INIT, headers=ACCEPT)
            assert early.status_code == 503  # lifespan not entered yet
            async with asgi.lifespan():
                response = await http.post("/mcp", json=INIT, headers=ACCEPT)
                assert response.status_code == 200
                assert response.headers["mcp-session-id"]
                assert '"protocolVersion":"2025-11-25"' in response.text


@pytest.mark.anyio
async def test_the_mounted_endpoint_is_built_on_its_first_request(example_app: Path) -> None:
    """The API mounts a stand-in; its first request builds the real endpoint and its lifespan."""
    app = load_example(example_app)
    asgi = make_lazy_asgi(app)
    assert isinstance(asgi, LazyASGI) and asgi.target is None
    async with app:
        transport = httpx.ASGITransport(app=asgi)
        async with httpx.AsyncClient(transport=transport, base_url="http://api") as http:
            early = await http.post("/mcp", json=INIT, headers=ACCEPT)
            assert early.status_code == 503  # as the real one: lifespan not entered yet
            assert asgi.target is None  # built for that request only
            async with asgi.lifespan():
                assert asgi.target is None  # nothing built until a request comes
                first, second = [
                    await http.post("/mcp", json=INIT, headers=ACCEPT) for _ in range(2)
                ]
                assert isinstance(asgi.target, MCPHttpApp)
                for response in (first, second):
                    assert response.status_code == 200
                    assert '"protocolVersion":"2025-11-25"' in response.text
            assert asgi.target is None  # the lifespan ended with the stand-in's


@pytest.mark.anyio
async def test_a_stand_in_that_cannot_build_answers_503_and_tries_again(
    example_app: Path,
) -> None:
    app = load_example(example_app)
    asgi = LazyASGI(app, "nexus_plugin_mcp.no_such_module:make_asgi")
    transport = httpx.ASGITransport(app=asgi)
    client = httpx.AsyncClient(transport=transport, base_url="http://api")
    async with app, asgi.lifespan(), client as http:
        for _ in range(2):
            response = await http.post("/mcp", json=INIT, headers=ACCEPT)
            assert response.status_code == 503
            assert "No module named 'nexus_plugin_mcp.no_such_module'" in response.text
        asgi.factory = "nexus_plugin_mcp.http:make_asgi"
        response = await http.post("/mcp", json=INIT, headers=ACCEPT)
        assert response.status_code == 200


_UNTIL_READY = """
import sys, anyio, contextlib, httpx
from nexus_core.loader import load_app
from nexus_plugin_api.asgi import collect_mounts

INIT = %r
ACCEPT = {"Accept": "application/json, text/event-stream"}

async def main():
    app = load_app(sys.argv[1])
    async with app, contextlib.AsyncExitStack() as stack:
        mounts = {m.path: m.app for m in collect_mounts(app)}
        for mounted in mounts.values():
            await stack.enter_async_context(mounted.lifespan())
        print("ready, mcp imported:", "mcp" in sys.modules)
        transport = httpx.ASGITransport(app=mounts["/mcp"])
        async with httpx.AsyncClient(transport=transport, base_url="http://api") as http:
            response = await http.post("/mcp", json=INIT, headers=ACCEPT)
        print("first request:", response.status_code, "mcp imported:", "mcp" in sys.modules)

anyio.run(main)
"""


@pytest.mark.slow
def test_serving_imports_mcp_only_on_the_first_mcp_request(example_app: Path) -> None:
    """The API server's mounts are ready without the ``mcp`` package (half a second saved)."""
    done = subprocess.run(
        [sys.executable, "-c", _UNTIL_READY % (INIT,), str(example_app)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        "ready, mcp imported: False",
        "first request: 200 mcp imported: True",
    ]


async def _until_notifications_arrive(conn: Any, updated: list[str]) -> None:
    """Follow cancelled runs until a ``resources/updated`` reaches ``updated``."""
    with anyio.fail_after(30):
        while True:
            async with anyio.create_task_group() as tg:
                run_id = await start_and_get_run_id(conn, tg, "sleepy", {"seconds": 60})
                uri = f"nexus://runs/{run_id}"
                with warnings.catch_warnings():  # deprecated in 2026-07-28, current in 2025-11-25
                    warnings.simplefilter("ignore", MCPDeprecationWarning)
                    await conn.subscribe_resource(uri)
                tg.cancel_scope.cancel()  # run.cancelled: an update after the subscription
            with anyio.move_on_after(1):  # then try again: this one may have been dropped
                while not updated:  # noqa: ASYNC110 - filled by the message handler
                    await anyio.sleep(0.02)
            if updated:  # any update came on the GET stream: it is open
                return


@pytest.mark.anyio
@pytest.mark.parametrize("mode", MODES)
async def test_registering_a_workflow_while_serving_changes_the_tool_list(
    example_app: Path, mode: str
) -> None:
    app = load_example(example_app)
    changed = anyio.Event()
    updated: list[str] = []

    async def on_message(message: object) -> None:
        if type(message).__name__ == "ToolListChangedNotification":
            changed.set()
        elif type(message).__name__ == "ResourceUpdatedNotification":
            updated.append(str(message.params.uri))  # type: ignore[attr-defined]

    async with (
        running_http(app) as url,
        http_connection(url, mode, message_handler=on_message) as conn,
    ):
        assert "late" not in {t.name for t in (await conn.list_tools()).tools}

        def late() -> str:
            """Registered after start."""
            return "late"

        if mode == "legacy":
            # Notifications travel on the client's GET stream, opened after initialize.
            # Until an update of a subscribed run arrives there, that stream may be missing.
            await _until_notifications_arrive(conn, updated)
            app.workflow(late)
            with anyio.fail_after(10):
                await changed.wait()
        else:
            assert isinstance(conn, Client)
            async with conn.listen(tools_list_changed=True) as subscription:
                app.workflow(late)
                with anyio.fail_after(10):
                    async for _event in subscription:
                        break
        assert "late" in {t.name for t in (await conn.list_tools()).tools}


@pytest.mark.anyio
async def test_channel_serves_standalone_http_on_its_port(
    example_app: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NEXUS_CHANNELS__MCP__PORT", "0")
    app = load_example(example_app)
    async with app.running(channels=["mcp"]):
        channel = app.channels["mcp"]
        assert await channel.ready()
        async with http_connection(channel.url, "modern") as conn:
            result = await conn.call_tool("greet", {"name": "Ada"})
            assert result.structured_content == {"result": "Hello, Ada."}


@pytest.mark.anyio
async def test_channel_without_a_port_is_the_mounted_endpoint(example_app: Path) -> None:
    app = load_example(example_app)
    async with app.running(channels=["mcp"]):
        assert app.channels["mcp"].url is None
        assert await app.channels["mcp"].ready()


def test_mcp_command_reports_a_missing_app(capsys: pytest.CaptureFixture[str]) -> None:
    assert mcp_command("no/such/app.py") == 2
    assert "no such file" in capsys.readouterr().err


@pytest.mark.anyio
async def test_python_m_serves_streamable_http(example_app: Path) -> None:
    command = [sys.executable, "-m", "nexus_plugin_mcp", str(example_app), "--http", "--port", "0"]
    async with await anyio.open_process(command, env=None) as process:
        try:
            assert process.stderr is not None
            line = b""
            with anyio.fail_after(30):
                while b"MCP endpoint:" not in line:
                    line += await process.stderr.receive()
            url = line.decode().split("MCP endpoint:")[1].split()[0]
            async with Client(url) as client:
                assert client.protocol_version == "2026-07-28"
                result = await client.call_tool("add", {"numbers": [2, 3]})
                assert result.structured_content == {"total": 5, "count": 2}
        finally:
            process.terminate()
            with anyio.fail_after(15):
                await process.wait()
