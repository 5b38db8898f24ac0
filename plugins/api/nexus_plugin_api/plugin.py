"""The hook implementations the host loads through the ``nexus.plugins`` entry point.

Import-light on purpose: nothing here imports Litestar or uvicorn; the host
imports ``nexus_plugin_api.channel`` only when the ``api`` channel starts.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from nexus_core import ChannelSpec, CommandSpec, ConfigSectionSpec, hookimpl

from . import hookspecs

if TYPE_CHECKING:
    import pluggy

__all__ = [
    "nexus_add_hookspecs",
    "nexus_channels",
    "nexus_cli_commands",
    "nexus_config_sections",
]


@hookimpl
def nexus_add_hookspecs(pluginmanager: pluggy.PluginManager) -> None:
    """Add ``nexus_api_mounts``, through which other plugins mount HTTP endpoints."""
    pluginmanager.add_hookspecs(hookspecs)


@hookimpl
def nexus_channels() -> list[ChannelSpec]:
    """The ``api`` channel: REST, WebSocket, SSE, OpenAPI, health and metrics."""
    return [
        ChannelSpec(
            name="api",
            factory="nexus_plugin_api.channel:ApiChannel",
            description="HTTP: REST, WebSocket, Server-Sent Events, OpenAPI, health, metrics.",
        )
    ]


@hookimpl
def nexus_config_sections() -> list[ConfigSectionSpec]:
    """``nexus.channels.api``: host, port, CORS, limits (see :class:`~.config.ApiConfig`)."""
    return [
        ConfigSectionSpec(
            name="channels.api",
            factory="nexus_plugin_api.config:ApiConfig",
            description="The HTTP channel.",
        )
    ]


@hookimpl(optionalhook=True)
def nexus_cli_commands() -> list[CommandSpec]:
    """``nexus serve``: run the HTTP server (a hook of the CLI plugin, when installed)."""
    return [
        CommandSpec(
            name="serve",
            factory="nexus_plugin_api.cli:serve_command",
            description="Serve the application: HTTP (REST, WebSocket, SSE) and every channel.",
        )
    ]
