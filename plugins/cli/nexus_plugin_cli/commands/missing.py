"""Stand-ins for commands other plugins provide, saying how to install them."""

from __future__ import annotations

from typing import Annotated

from cyclopts import Parameter

from ..errors import USAGE

__all__ = ["mcp_missing", "serve_missing"]


def _missing(command: str, distribution: str, what: str) -> int:
    import sys

    sys.stderr.write(
        f"error: `nexus {command}` needs the {what} plugin, which is not installed "
        "(or is disabled by NEXUS_PLUGINS / NEXUS_DISABLE_PLUGINS)\n"
        f"hint: pip install {distribution}\n"
    )
    return USAGE


def serve_missing(
    *args: Annotated[str, Parameter(allow_leading_hyphen=True, show=False)],
) -> int:
    """Serve the application over HTTP (needs: pip install nexus-plugin-api)."""
    return _missing("serve", "nexus-plugin-api", "API (HTTP)")


def mcp_missing(
    *args: Annotated[str, Parameter(allow_leading_hyphen=True, show=False)],
) -> int:
    """Serve the workflows as MCP tools (needs: pip install nexus-plugin-mcp)."""
    return _missing("mcp", "nexus-plugin-mcp", "MCP")
