"""``nexus mcp APP``: serve an application's workflows to MCP clients.

The CLI plugin registers :func:`mcp_command` lazily (``nexus_cli_commands``),
so ``nexus --help`` does not import the ``mcp`` package.
"""

from __future__ import annotations

import sys
from typing import Literal

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
    log_format: Literal["text", "json"] | None = None,
) -> int:
    """Serve APP's workflows as MCP tools: over stdio (for desktop agents), or HTTP with --http.

    APP is a file (app.py) or module:attr; without it NEXUS_APP or nexus.toml
    names it. On stdio the bearer token is read from NEXUS_TOKEN, else from
    the local `nexus login`. With --http
    the streamable HTTP endpoint listens on HOST:PORT/mcp (defaults from
    [nexus.channels.mcp], else 127.0.0.1:8000).

    Parameters
    ----------
    app
        The application: a file (app.py) or module:attr; default NEXUS_APP or app in nexus.toml.
    http
        Serve streamable HTTP on HOST:PORT/mcp instead of stdio.
    host
        The address for --http (default nexus.channels.mcp.host, else 127.0.0.1).
    port
        The port for --http, 0 for any free one (default nexus.channels.mcp.port, else 8000).
    log_format
        Log lines on stderr (warnings, errors, failed runs): text, or json (one object a line).

    """
    from nexus_core.plugin import configure_logging, load_app

    if port is not None and not 0 <= port <= 65535:
        print(
            f"error: --port must be between 0 and 65535, got {port}\nhint: nexus mcp --help",
            file=sys.stderr,
        )
        return 2

    # stdout may be the MCP protocol: logs go to stderr, always.
    configure_logging("WARNING", log_format or "text", force=log_format is not None)
    try:
        nexus = load_app(app)
    except NexusError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 2
    try:
        anyio.run(_serve, nexus, http, host, port, log_format == "json")
    except KeyboardInterrupt:
        return 130
    except NexusError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 1
    return 0


def _announce(url: str, as_json: bool) -> None:
    """Say where the endpoint listens, on stderr: a plain line, or a JSON log line."""
    text = f"MCP endpoint: {url}"
    if as_json:
        import logging

        from nexus_core.plugin import JsonFormatter

        record = logging.LogRecord("nexus.mcp", logging.INFO, __file__, 0, text, None, None)
        text = JsonFormatter().format(record)
    print(text, file=sys.stderr, flush=True)


async def _serve(
    nexus: object, http: bool, host: str | None, port: int | None, as_json: bool = False
) -> None:
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
                announce=lambda url: _announce(url, as_json),
            )
        else:
            from .stdio import serve_stdio

            await serve_stdio(nexus)
