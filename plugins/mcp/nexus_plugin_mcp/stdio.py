"""stdio, the transport desktop agents launch: ``nexus mcp APP`` or ``python -m nexus_plugin_mcp``.

The token comes from the environment (``NEXUS_TOKEN``) or, when that is not
set, from the CLI login (``nexus login`` in local mode, read through the
core's :func:`nexus_core.userconfig.read_token`), and is checked by the host's
auth providers on every request, as an HTTP bearer token would be.
"""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING

from mcp.server.stdio import stdio_server
from nexus_core.errors import AuthenticationError
from nexus_core.plugin import read_token
from nexus_core.security import Credentials

from .config import MCPConfig
from .server import NexusMCP

if TYPE_CHECKING:
    from nexus_core import Nexus

__all__ = ["TOKEN_ENV", "serve_stdio", "stdio_token"]

log = logging.getLogger("nexus.mcp")

#: The environment variable holding the bearer token on stdio.
TOKEN_ENV = "NEXUS_TOKEN"


def stdio_token() -> tuple[str | None, str]:
    """The bearer token for stdio and where it came from: ``$NEXUS_TOKEN``, else the CLI login."""
    token = os.environ.get(TOKEN_ENV) or None
    if token is not None:
        return token, TOKEN_ENV
    return read_token(), "nexus login"


async def serve_stdio(
    app: Nexus, *, config: MCPConfig | None = None, token: str | None = None
) -> None:
    """Serve ``app`` over this process's stdin/stdout until the client closes them.

    The host must be running (``async with app:``). ``token`` defaults to
    ``$NEXUS_TOKEN``, else to the token ``nexus login`` saved for local mode.
    The token is handed to the core with every request, which authenticates
    it each time. One the core refuses is reported on stderr at start-up and
    every request then fails with that reason, so the agent shows it: a
    rejected login token is never dropped for the anonymous caller.
    """
    source = "the caller"
    if token is None:
        token, source = stdio_token()
    credentials = Credentials(bearer=token, client="stdio")
    try:
        await app.security.authenticate(credentials, "mcp")
    except AuthenticationError as exc:
        if token is None:
            log.warning(
                "MCP over stdio: %s (set %s to a valid token, or log in with: nexus login)",
                exc.message,
                TOKEN_ENV,
            )
        elif source == "nexus login":
            log.warning(
                "MCP over stdio: the token saved by `nexus login` is not accepted by this "
                "application (%s); every request will fail: log in again with: nexus login "
                "(or forget the token with: nexus logout, or set %s)",
                exc.message,
                TOKEN_ENV,
            )
        else:
            log.warning(
                "MCP over stdio: %s (the token from %s; set %s to a valid token)",
                exc.message,
                source,
                TOKEN_ENV,
            )
    mcp = NexusMCP(app, config, credentials=credentials)
    async with stdio_server() as (read_stream, write_stream):
        await mcp.server.run(read_stream, write_stream, mcp.server.create_initialization_options())
