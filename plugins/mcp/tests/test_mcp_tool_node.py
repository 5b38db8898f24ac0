"""``MCPToolNode``: a workflow step that calls a tool of an external MCP server."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from _mcp_support import load_example, running_http
from nexus_core import Nexus, WorkflowBuilder
from nexus_core.errors import WorkflowDefinitionError

pytestmark = pytest.mark.anyio


def _stdio_server(app_path: Path) -> dict[str, object]:
    return {
        "command": [sys.executable, "-m", "nexus_plugin_mcp", str(app_path)],
        "env": {"NEXUS_STORAGE": "memory://"},
    }


def _caller(server: dict[str, object], tool: str, **static: object) -> Nexus:
    host = Nexus("caller", storage="memory://")
    wb = WorkflowBuilder("remote", description="Call a tool elsewhere, then shout.")
    wb.add_node("MCPToolNode", "call", {**server, "tool": tool, **static})
    wb.add_node("PythonCodeNode", "shout", {"function": lambda result: result["result"].upper()})
    wb.add_connection("call", "result", "shout", "result")
    wb.add_workflow_inputs("call", {"name": "name"})
    wb.set_output("shout", "result")
    host.register(wb)
    return host


async def test_calls_a_tool_of_a_stdio_server_inside_a_workflow(example_app: Path) -> None:
    host = _caller(_stdio_server(example_app), "greet", excited=True)
    async with host:
        result = await host.invoke("remote", {"name": "Ada"})
    assert result.status == "completed", result.error
    assert result.output == "HELLO, ADA!"
    assert result.nodes["call"].output["content"][0]["type"] == "text"


async def test_calls_a_tool_over_streamable_http(example_app: Path) -> None:
    remote = load_example(example_app)
    async with running_http(remote) as url:
        host = _caller({"url": url, "mode": "legacy"}, "greet")
        async with host:
            result = await host.invoke("remote", {"name": "Grace"})
    assert result.status == "completed", result.error
    assert result.output == "HELLO, GRACE."


async def test_a_tool_error_fails_the_node_with_the_tools_message(example_app: Path) -> None:
    host = Nexus("caller", storage="memory://")
    wb = WorkflowBuilder("remote_explode")
    wb.add_node("MCPToolNode", "call", {**_stdio_server(example_app), "tool": "explode"})
    wb.add_workflow_inputs("call", {"reason": "reason"})
    wb.set_output("call", "result")
    host.register(wb)
    async with host:
        result = await host.invoke("remote_explode", {"reason": "remote"})
    assert result.status == "failed"
    assert result.error is not None and result.error.node == "call"
    assert result.error.type == "MCPToolError"
    assert "ValueError: boom: remote" in result.error.message


def test_config_errors_name_the_node() -> None:
    host = Nexus("caller", storage="memory://")
    wb = WorkflowBuilder("broken")
    wb.add_node("MCPToolNode", "call", {"tool": "greet"})
    with pytest.raises(WorkflowDefinitionError, match="node 'call'.*exactly one of 'url'"):
        host.register(wb)
    wb = WorkflowBuilder("broken")
    wb.add_node("MCPToolNode", "call", {"tool": "greet", "url": "ftp://x"})
    with pytest.raises(WorkflowDefinitionError, match="node 'call'.*http"):
        host.register(wb)
