"""Service discovery: external MCP servers named in config, their tools as node types.

``[[nexus.channels.mcp.service_discovery]]`` lists servers (a stdio
``command`` or an HTTP ``url``). When the host starts, the MCP plugin's
``nexus_startup`` opens one connection per server in the host's task group,
lists its tools and adds a node type ``"<server>.<tool>"`` per tool
(:meth:`Nexus.add_node_type <nexus_core.Nexus.add_node_type>`)::

    async with app:                      # discovery ran during start-up
        wb = app.builder("forecast")
        wb.add_node("weather.forecast", "f", {})
        wb.add_workflow_inputs("f", {"city": "city"})
        app.register(wb)

A node of such a type passes its inputs as the tool's arguments over the
server's open connection; its outputs are those of
:class:`~nexus_plugin_mcp.nodes.MCPToolNode` (``result``, ``content``,
``is_error``).

Capability caching (``capability_caching``, on by default): a server's tool
list is kept ``capability_cache_ttl`` seconds, refetched when older, and at
once when the server sends ``notifications/tools/list_changed`` (or, on a
2026-07-28 connection, a ``tools_list_changed`` event of
``subscriptions/listen``); new tools become node types then. With caching
off, the list is fetched again before every tool call. A connection that
drops is reopened in the background (backing off up to a minute); calls in
the meantime fail with a message naming the server.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
from collections.abc import AsyncIterator, Mapping
from typing import TYPE_CHECKING, Annotated, Any

import anyio
import anyio.abc
import msgspec
from nexus_core.plugin import Node, NodeTypeSpec

from .config import DiscoveredServer, MCPConfig
from .nodes import MCPToolError, MCPToolOutputs, _parse

if TYPE_CHECKING:
    from nexus_core import Nexus

__all__ = ["DiscoveredToolConfig", "ServiceDirectory", "ToolInfo", "directory_of", "discover"]

_log = logging.getLogger("nexus.mcp.discovery")
_DIRECTORIES: dict[int, ServiceDirectory] = {}


class ToolInfo(msgspec.Struct, kw_only=True, frozen=True):
    """One tool of a discovered server, as listed."""

    name: str
    description: str = ""
    input_schema: dict[str, Any] = {}


class DiscoveredToolConfig(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Config of a discovered tool's node: ``raise_on_error`` as :class:`MCPToolNode`'s."""

    raise_on_error: bool = True
    timeout: Annotated[float, msgspec.Meta(gt=0)] | None = None


class _Server:
    """The live state of one discovered server."""

    def __init__(self, config: DiscoveredServer) -> None:
        self.config = config
        self.client: Any = None
        self.tools: dict[str, ToolInfo] = {}
        self.fetched_at: float | None = None
        self.changed = anyio.Event()
        self.refreshes = 0


class ServiceDirectory:
    """The servers of ``service_discovery`` for one host: connections, tool lists, node types."""

    def __init__(self, app: Nexus, config: MCPConfig) -> None:
        self.app = app
        self.caching = config.capability_caching
        self.ttl = config.capability_cache_ttl
        self.servers = {server.name: _Server(server) for server in config.service_discovery}

    # -- running -------------------------------------------------------------------

    async def run(self, *, task_status: anyio.abc.TaskStatus[ServiceDirectory]) -> None:
        """Connect to every server (a required one must answer), then keep them connected."""
        failures: list[str] = []
        async with anyio.create_task_group() as tg:
            for server in self.servers.values():
                await tg.start(self._keep_connected, server, failures)
            if failures:
                tg.cancel_scope.cancel()
            else:
                task_status.started(self)
        if failures:
            raise RuntimeError(f"service discovery: {failures[0]}")

    async def _keep_connected(
        self, server: _Server, failures: list[str], *, task_status: anyio.abc.TaskStatus[None]
    ) -> None:
        delay = 1.0
        started = False
        while True:
            try:
                async with self._connect(server):
                    if not started:
                        started = True
                        task_status.started()
                    delay = 1.0
                    await self._watch(server)
            except Exception as exc:
                server.client = None
                message = (
                    f"MCP server {server.config.name!r} ({server.config.label}): "
                    f"{type(exc).__name__}: {exc}"
                )
                if not started:
                    started = True
                    task_status.started()
                    if server.config.required:
                        failures.append(message)
                        return
                _log.warning("%s; retrying in %g s", message, delay)
            await anyio.sleep(delay)
            delay = min(60.0, delay * 2)

    @contextlib.asynccontextmanager
    async def _connect(self, server: _Server) -> AsyncIterator[None]:
        from mcp import Client, StdioServerParameters

        cfg = server.config

        async def on_message(message: Any) -> None:
            import mcp_types

            if isinstance(message, mcp_types.ToolListChangedNotification):
                server.changed.set()

        # One scope around the connection's whole life: its deadline bounds the
        # connecting and the first listing, then is lifted (a fail_after around
        # the entering alone would close before the client's own task group).
        with anyio.CancelScope(deadline=anyio.current_time() + cfg.timeout) as scope:
            async with contextlib.AsyncExitStack() as stack:
                if cfg.command is not None:
                    target: Any = StdioServerParameters(
                        command=cfg.command[0],
                        args=cfg.command[1:],
                        env=cfg.env or None,
                        cwd=cfg.cwd,
                    )
                else:
                    target = await stack.enter_async_context(_http_transport(cfg))
                client = await stack.enter_async_context(
                    Client(target, mode=cfg.mode, message_handler=on_message)
                )
                server.client = client
                await self.refresh(server)
                scope.deadline = math.inf
                _log.info("MCP server %r: %d tool(s) as node types", cfg.name, len(server.tools))
                try:
                    yield
                finally:
                    server.client = None
        if scope.cancelled_caught:
            raise TimeoutError(f"no answer within {cfg.timeout:g} s")

    async def _watch(self, server: _Server) -> None:
        """Refresh on ``list_changed`` (and when the cache expires); return if the link drops."""
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._listen, server)
            while True:
                with anyio.move_on_after(self.ttl if self.caching else None):
                    await server.changed.wait()
                server.changed = anyio.Event()
                await self.refresh(server)

    async def _listen(self, server: _Server) -> None:
        """On a 2026-07-28 connection, ``subscriptions/listen`` for ``tools_list_changed``."""
        from mcp.client.subscriptions import ListenNotSupportedError

        try:
            async with server.client.listen(tools_list_changed=True) as subscription:
                async for _event in subscription:
                    server.changed.set()
        except ListenNotSupportedError:
            return  # 2025-11-25: notifications/tools/list_changed reach on_message

    # -- tool lists ---------------------------------------------------------------

    async def refresh(self, server: _Server) -> dict[str, ToolInfo]:
        """List the server's tools now; add a node type for each new one."""
        client = server.client
        if client is None:
            raise MCPToolError(
                f"MCP server {server.config.name!r} ({server.config.label}) is not connected"
            )
        found: dict[str, ToolInfo] = {}
        cursor: str | None = None
        while True:
            page = await client.list_tools(cursor=cursor, cache_mode="bypass")
            for tool in page.tools:
                found[tool.name] = ToolInfo(
                    name=tool.name,
                    description=tool.description or "",
                    input_schema=dict(tool.input_schema or {}),
                )
            cursor = page.next_cursor
            if not cursor:
                break
        server.tools = found
        server.fetched_at = anyio.current_time()
        server.refreshes += 1
        for tool in found.values():
            self._add_node_type(server.config.name, tool)
        return found

    async def tools(self, name: str) -> dict[str, ToolInfo]:
        """Server ``name``'s tools: cached while fresh (``capability_caching``), else listed."""
        server = self._server(name)
        fresh = (
            self.caching
            and server.fetched_at is not None
            and anyio.current_time() - server.fetched_at < self.ttl
        )
        if fresh:
            return server.tools
        return await self.refresh(server)

    async def call(
        self,
        name: str,
        tool: str,
        arguments: Mapping[str, Any],
        *,
        timeout: float | None = None,  # noqa: ASYNC109 - the call's own bound, per node config
    ) -> Any:
        """Call ``tool`` of server ``name`` over its open connection; the ``CallToolResult``."""
        server = self._server(name)
        known = await self.tools(name)
        if tool not in known:
            raise MCPToolError(
                f"MCP server {name!r} ({server.config.label}) no longer offers tool {tool!r}"
            )
        with anyio.fail_after(timeout or server.config.timeout):
            return await server.client.call_tool(tool, dict(arguments))

    def _server(self, name: str) -> _Server:
        try:
            return self.servers[name]
        except KeyError:
            raise MCPToolError(f"no MCP server {name!r} in service_discovery") from None

    def _add_node_type(self, server: str, tool: ToolInfo) -> None:
        type_name = f"{server}.{tool.name}"
        description = tool.description or f"Tool {tool.name!r} of MCP server {server!r}"
        node = type(
            f"Discovered_{server}_{tool.name}",
            (DiscoveredToolNode,),
            {
                "type_name": type_name,
                "description": description,
                "server": server,
                "tool": tool.name,
                "directory": self,
            },
        )
        spec = NodeTypeSpec(name=type_name, factory=node, description=description, plugin="mcp")
        self.app.add_node_type(spec, replace=True)


@contextlib.asynccontextmanager
async def _http_transport(cfg: DiscoveredServer) -> AsyncIterator[Any]:
    import httpx2
    from mcp.client.streamable_http import streamable_http_client

    assert cfg.url is not None
    headers = dict(cfg.headers)
    if cfg.token_env:
        token = os.environ.get(cfg.token_env)
        if not token:
            raise MCPToolError(f"environment variable {cfg.token_env} is not set")
        headers["Authorization"] = f"Bearer {token}"
    async with httpx2.AsyncClient(headers=headers, timeout=httpx2.Timeout(30.0, read=None)) as http:
        yield streamable_http_client(cfg.url, http_client=http)


class DiscoveredToolNode(Node):
    """A tool of a discovered MCP server (one subclass per tool, made at discovery)."""

    type_name = "DiscoveredMCPTool"
    Config = DiscoveredToolConfig
    Inputs = None  # every input is a tool argument; the server checks its schema
    Outputs = MCPToolOutputs
    server: str = ""
    tool: str = ""
    directory: ServiceDirectory | None = None

    async def run(self, inputs: dict[str, Any]) -> MCPToolOutputs:
        """Call the tool with ``inputs`` as its arguments."""
        cfg: DiscoveredToolConfig = self.config
        assert self.directory is not None
        result = await self.directory.call(self.server, self.tool, inputs, timeout=cfg.timeout)
        content = [block.model_dump(by_alias=True, mode="json") for block in result.content]
        texts = [block.get("text", "") for block in content if block.get("type") == "text"]
        if result.is_error and cfg.raise_on_error:
            message = "\n".join(texts) or "no message"
            raise MCPToolError(
                f"tool {self.tool!r} of MCP server {self.server!r} failed: {message}"
            )
        value = result.structured_content
        if value is None:
            value = _parse("\n".join(texts)) if texts else None
        return MCPToolOutputs(result=value, content=content, is_error=bool(result.is_error))


async def discover(app: Nexus) -> ServiceDirectory | None:
    """Start service discovery for ``app`` (its ``nexus_startup``); ``None`` when none is set."""
    from .config import mcp_config

    config = mcp_config(app)
    if not config.service_discovery:
        return None
    directory = ServiceDirectory(app, config)
    started: ServiceDirectory = await app.start_task(directory.run)
    _DIRECTORIES[id(app)] = started
    return started


def forget(app: Nexus) -> None:
    """Drop ``app``'s directory (its ``nexus_shutdown``; the host cancels the connections)."""
    _DIRECTORIES.pop(id(app), None)


def directory_of(app: Nexus) -> ServiceDirectory | None:
    """The running directory of ``app``, if service discovery is on."""
    return _DIRECTORIES.get(id(app))
