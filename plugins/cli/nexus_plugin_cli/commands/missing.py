"""Stand-ins for commands other plugins provide, saying how to install them."""

from __future__ import annotations

from typing import Annotated

from cyclopts import Parameter

from ..errors import USAGE

__all__ = ["mcp_missing", "serve_missing"]


def _missing(command: str, distribution: str, what: str) -> int:
    import sys

    from nexus_core.plugin import install_command

    # From a checkout: pip install -e plugins/NAME; from an index: pip install NAME.
    sys.stderr.write(
        f"error: `nexus {command}` needs the {what} plugin, which is not installed "
        "(or is disabled by NEXUS_PLUGINS / NEXUS_DISABLE_PLUGINS)\n"
        f"hint: {install_command(distribution)}\n"
    )
    return USAGE


def serve_missing(
    *args: Annotated[str, Parameter(allow_leading_hyphen=True, show=False)],
) -> int:
    """Serve the application over HTTP (needs the API plugin, nexus-plugin-api)."""
    return _missing("serve", "nexus-plugin-api", "API (HTTP)")


def mcp_missing(
    *args: Annotated[str, Parameter(allow_leading_hyphen=True, show=False)],
) -> int:
    """Serve the workflows as MCP tools (needs the MCP plugin, nexus-plugin-mcp)."""
    return _missing("mcp", "nexus-plugin-mcp", "MCP")
