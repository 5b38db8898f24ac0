"""``nexus mcp APP``: serve an application's workflows to MCP clients.

The CLI plugin registers :func:`mcp_command` lazily (``nexus_cli_commands``),
so ``nexus --help`` does not import the ``mcp`` package.
"""

from __future__ import annotations

import logging
import sys

import anyio
from nexus_core.errors import NexusError

__all__ = ["mcp_command"]


def mcp_command(
    app: str | None = None,
    /,
    *,
    http: bool = False,
    host: str | None = None,
    port: int | None = None,
) -> int:
    """Serve APP's workflows as MCP tools: over stdio (for desktop agents), or HTTP with --http.

    APP is a file (app.py) or module:attr; without it NEXUS_APP or nexus.toml
    names it. On stdio the bearer token is read from NEXUS_TOKEN, else from
    the local `nexus login`. With --http
    the streamable HTTP endpoint listens on HOST:PORT/mcp (defaults from
    [nexus.channels.mcp], else 127.0.0.1:8000).
    """
    from nexus_core.loader import load_app

    if not logging.getLogger().handlers:
        logging.basicConfig(stream=sys.stderr, level=logging.WARNING)
    try:
        nexus = load_app(app)
    except NexusError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 2
    try:
        anyio.run(_serve, nexus, http, host, port)
    except KeyboardInterrupt:
        return 130
    except NexusError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 1
    return 0


async def _serve(nexus: object, http: bool, host: str | None, port: int | None) -> None:
    from nexus_core import Nexus

    assert isinstance(nexus, Nexus)
    async with nexus:
        if http:
            from .config import mcp_config
            from .http import serve_http

            config = mcp_config(nexus)
            await serve_http(
                nexus,
                host=host or config.host,
                port=port if port is not None else (config.port or 8000),
                config=config,
                announce=lambda url: print(f"MCP endpoint: {url}", file=sys.stderr, flush=True),
            )
        else:
            from .stdio import serve_stdio

            await serve_stdio(nexus)
