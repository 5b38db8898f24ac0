"""``MCPToolNode``: call a tool on an external MCP server as one workflow step.

::

    wb.add_node("MCPToolNode", "weather", {
        "command": ["uvx", "mcp-server-weather"],   # or "url": "https://host/mcp"
        "tool": "forecast",
        "city": "Paris",                            # a fixed argument
    })
    wb.add_connection("pick", "result", "weather", "days")   # a connected argument

Every input of the node is an argument of the tool (inputs are untyped: the
tool's own input schema is checked by the server). The outputs are ``result``
(the tool's structured content, else its text parsed as JSON when it is JSON,
else the text), ``content`` (the raw content blocks) and ``is_error``. A tool
error fails the node with the tool's message unless ``raise_on_error`` is
off. Each run opens its own connection (a stdio server is started per run).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Annotated, Any, Literal

import anyio
import msgspec
from nexus_core.errors import WorkflowDefinitionError
from nexus_core.plugin import Node

__all__ = ["MCPToolConfig", "MCPToolError", "MCPToolNode", "MCPToolOutputs"]


class MCPToolConfig(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Config of :class:`MCPToolNode`: the server (one of ``url``, ``command``) and the tool.

    ``command`` is the stdio server's argv; ``env`` adds to its environment
    (``PATH``, ``HOME``... are passed on) and ``cwd`` is its working directory.
    ``headers`` are sent with every HTTP request; ``token_env`` names an
    environment variable whose value is sent as ``Authorization: Bearer``.
    ``timeout`` bounds the whole call (connect, handshake, tool), in seconds.
    ``mode`` is the ``mcp`` client's negotiation: ``"auto"`` (2026-07-28 when
    the server speaks it) or ``"legacy"`` (the 2025-11-25 handshake).
    """

    tool: str
    url: str | None = None
    command: list[str] | None = None
    env: dict[str, str] = {}
    cwd: str | None = None
    headers: dict[str, str] = {}
    token_env: str | None = None
    timeout: Annotated[float, msgspec.Meta(gt=0)] = 60.0
    mode: Literal["auto", "legacy"] = "auto"
    raise_on_error: bool = True


class MCPToolOutputs(msgspec.Struct, kw_only=True):
    """Outputs of :class:`MCPToolNode`."""

    result: Any
    content: list[dict[str, Any]]
    is_error: bool = False


class MCPToolError(RuntimeError):
    """The tool answered with ``isError``; the message is the tool's text."""


class _ConfigProblem(ValueError):
    def __init__(self, key: str, reason: str) -> None:
        super().__init__(reason)
        self.key = key


class MCPToolNode(Node):
    """Call one tool of an MCP server (stdio command or streamable HTTP URL)."""

    type_name = "MCPToolNode"
    Config = MCPToolConfig
    Inputs = None  # every input is a tool argument
    Outputs = MCPToolOutputs

    def __init__(self, config: Any = None) -> None:
        super().__init__(config)
        cfg: MCPToolConfig = self.config
        if (cfg.url is None) == (cfg.command is None):
            raise _ConfigProblem("url", "set exactly one of 'url' (HTTP) and 'command' (stdio)")
        if cfg.command is not None and not cfg.command:
            raise _ConfigProblem("command", "the command is empty")
        if cfg.url is not None and not cfg.url.startswith(("http://", "https://")):
            raise _ConfigProblem("url", f"expected an http(s) URL, got {cfg.url!r}")
        self.server_label = cfg.url or " ".join(cfg.command or ())

    @classmethod
    def from_parameters(
        cls, node_id: str, parameters: Mapping[str, Any]
    ) -> tuple[Node, dict[str, Any]]:
        """As :meth:`Node.from_parameters`, naming the node in config errors."""
        try:
            return super().from_parameters(node_id, parameters)
        except _ConfigProblem as exc:
            raise WorkflowDefinitionError(
                f"node {node_id!r} (MCPToolNode): config {exc.key!r}: {exc}",
                node=node_id,
                field=exc.key,
            ) from None

    async def run(self, inputs: dict[str, Any]) -> MCPToolOutputs:
        """Connect, call the tool with ``inputs`` as its arguments, return its result."""
        from mcp import Client, StdioServerParameters

        cfg: MCPToolConfig = self.config
        with anyio.fail_after(cfg.timeout):
            if cfg.command is not None:
                params = StdioServerParameters(
                    command=cfg.command[0], args=cfg.command[1:], env=cfg.env or None, cwd=cfg.cwd
                )
                async with Client(params, mode=cfg.mode) as client:
                    result = await client.call_tool(cfg.tool, dict(inputs))
            else:
                import httpx2
                from mcp.client.streamable_http import streamable_http_client

                assert cfg.url is not None
                headers = dict(cfg.headers)
                if cfg.token_env:
                    token = os.environ.get(cfg.token_env)
                    if not token:
                        raise MCPToolError(f"environment variable {cfg.token_env} is not set")
                    headers["Authorization"] = f"Bearer {token}"
                timeout = httpx2.Timeout(30.0, read=cfg.timeout)
                async with httpx2.AsyncClient(headers=headers, timeout=timeout) as http:
                    transport = streamable_http_client(cfg.url, http_client=http)
                    async with Client(transport, mode=cfg.mode) as client:
                        result = await client.call_tool(cfg.tool, dict(inputs))
        content = [block.model_dump(by_alias=True, mode="json") for block in result.content]
        texts = [block.get("text", "") for block in content if block.get("type") == "text"]
        if result.is_error and cfg.raise_on_error:
            message = "\n".join(texts) or "no message"
            raise MCPToolError(f"tool {cfg.tool!r} on {self.server_label} failed: {message}")
        value = result.structured_content
        if value is None:
            value = _parse("\n".join(texts)) if texts else None
        return MCPToolOutputs(result=value, content=content, is_error=bool(result.is_error))


def _parse(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text
