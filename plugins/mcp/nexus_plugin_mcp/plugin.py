"""Registers the MCP channel with the host (entry point ``nexus-plugin-mcp``).

Everything here is a spec naming a ``"module:attr"`` factory; nothing heavy
(the ``mcp`` package, uvicorn) is imported until a factory is used. The
``nexus_api_mounts`` and ``nexus_cli_commands`` hooks belong to the API and CLI
plugins; they are optional, so this plugin loads without them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from nexus_core import (
    ChannelSpec,
    CommandSpec,
    ConfigSectionSpec,
    HttpMountSpec,
    NodeTypeSpec,
    hookimpl,
)

if TYPE_CHECKING:
    from nexus_core import Nexus

__all__ = [
    "nexus_api_mounts",
    "nexus_channels",
    "nexus_cli_commands",
    "nexus_config_sections",
    "nexus_node_types",
    "nexus_shutdown",
    "nexus_startup",
]


@hookimpl
def nexus_channels() -> list[ChannelSpec]:
    """The ``mcp`` channel: standalone streamable HTTP when ``channels.mcp.port`` is set."""
    return [
        ChannelSpec(
            name="mcp",
            factory="nexus_plugin_mcp.channel:MCPChannel",
            description="Workflows as MCP tools (streamable HTTP; stdio via 'nexus mcp').",
        )
    ]


@hookimpl
def nexus_config_sections() -> list[ConfigSectionSpec]:
    """``[nexus.channels.mcp]``."""
    return [
        ConfigSectionSpec(
            name="channels.mcp",
            factory="nexus_plugin_mcp.config:MCPConfig",
            description="MCP channel: standalone port, stateless HTTP, OAuth resource metadata.",
        )
    ]


@hookimpl
def nexus_node_types() -> list[NodeTypeSpec]:
    """``MCPToolNode``: call a tool of an external MCP server as a workflow step."""
    return [
        NodeTypeSpec(
            name="MCPToolNode",
            factory="nexus_plugin_mcp.nodes:MCPToolNode",
            description="Call a tool on an MCP server (stdio command or HTTP URL).",
        )
    ]


@hookimpl(optionalhook=True)
def nexus_api_mounts(app: Nexus) -> list[HttpMountSpec]:
    """Mount the streamable HTTP endpoint at ``/mcp`` and its OAuth metadata on the API server.

    Both are built on their first request (:mod:`nexus_plugin_mcp.lazy`), so
    the ``mcp`` package is not imported while the server starts.
    """
    return [
        HttpMountSpec(name="mcp", path="/mcp", factory="nexus_plugin_mcp.lazy:make_lazy_asgi"),
        HttpMountSpec(
            name="mcp-oauth-protected-resource",
            path="/.well-known/oauth-protected-resource/mcp",
            factory="nexus_plugin_mcp.lazy:make_lazy_metadata_asgi",
        ),
    ]


@hookimpl(optionalhook=True)
def nexus_cli_commands() -> list[CommandSpec]:
    """``nexus mcp APP``."""
    return [
        CommandSpec(
            name="mcp",
            factory="nexus_plugin_mcp.cli:mcp_command",
            description="Serve the app's workflows as MCP tools over stdio (or HTTP with --http).",
        )
    ]


@hookimpl
async def nexus_startup(app: Nexus) -> None:
    """Connect to the servers of ``channels.mcp.service_discovery``: their tools as node types."""
    from .discovery import discover

    await discover(app)


@hookimpl
def nexus_shutdown(app: Nexus) -> None:
    """Forget the host's discovered servers (their connections end with the host)."""
    from .discovery import forget

    forget(app)
