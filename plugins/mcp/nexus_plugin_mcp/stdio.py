"""stdio, the transport desktop agents launch: ``nexus mcp APP`` or ``python -m nexus_plugin_mcp``.

The token comes from the environment (``NEXUS_TOKEN``) and is checked by the
host's auth providers on every request, as an HTTP bearer token would be.
"""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING

from mcp.server.stdio import stdio_server
from nexus_core.errors import AuthenticationError
from nexus_core.security import Credentials

from .config import MCPConfig
from .server import NexusMCP

if TYPE_CHECKING:
    from nexus_core import Nexus

__all__ = ["TOKEN_ENV", "serve_stdio"]

log = logging.getLogger("nexus.mcp")

#: The environment variable holding the bearer token on stdio.
TOKEN_ENV = "NEXUS_TOKEN"


async def serve_stdio(
    app: Nexus, *, config: MCPConfig | None = None, token: str | None = None
) -> None:
    """Serve ``app`` over this process's stdin/stdout until the client closes them.

    The host must be running (``async with app:``). ``token`` defaults to
    ``$NEXUS_TOKEN``. A token the providers reject is reported on stderr at
    start-up; every request then fails with that reason, so the agent shows it.
    """
    token = token if token is not None else os.environ.get(TOKEN_ENV) or None
    credentials = Credentials(bearer=token, client="stdio")
    try:
        await app.security.authenticate(credentials, "mcp")
    except AuthenticationError as exc:
        log.warning("MCP over stdio: %s (set %s to a valid token)", exc.message, TOKEN_ENV)
    mcp = NexusMCP(app, config, credentials=credentials)
    async with stdio_server() as (read_stream, write_stream):
        await mcp.server.run(read_stream, write_stream, mcp.server.create_initialization_options())
