"""The hook implementations the host loads through the ``nexus.plugins`` entry point.

The CLI plugin adds one hook of its own, ``nexus_cli_commands``, through which
other plugins contribute ``nexus`` commands (``serve`` from the API plugin,
``mcp`` from the MCP plugin). Import-light: nothing here imports cyclopts.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from nexus_core import ConfigSectionSpec, hookimpl

from . import hookspecs

if TYPE_CHECKING:
    import pluggy

__all__ = ["nexus_add_hookspecs", "nexus_config_sections"]


@hookimpl
def nexus_add_hookspecs(pluginmanager: pluggy.PluginManager) -> None:
    """Add ``nexus_cli_commands``, through which other plugins contribute ``nexus`` commands."""
    pluginmanager.add_hookspecs(hookspecs)


@hookimpl
def nexus_config_sections() -> list[ConfigSectionSpec]:
    """``nexus.channels.cli``: the shell's ``idle_timeout`` and ``history_size``."""
    return [
        ConfigSectionSpec(
            name="channels.cli",
            factory="nexus_plugin_cli.config:CliConfig",
            description="The nexus command: the shell's idle timeout and history size.",
        )
    ]
