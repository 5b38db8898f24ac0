"""The hook implementations the host loads through the ``nexus.plugins`` entry point.

The CLI plugin adds one hook of its own, ``nexus_cli_commands``, through which
other plugins contribute ``nexus`` commands (``serve`` from the API plugin,
``mcp`` from the MCP plugin). Import-light: nothing here imports cyclopts.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from nexus_core import hookimpl

from . import hookspecs

if TYPE_CHECKING:
    import pluggy

__all__ = ["nexus_add_hookspecs"]


@hookimpl
def nexus_add_hookspecs(pluginmanager: pluggy.PluginManager) -> None:
    """Add ``nexus_cli_commands``, through which other plugins contribute ``nexus`` commands."""
    pluginmanager.add_hookspecs(hookspecs)
