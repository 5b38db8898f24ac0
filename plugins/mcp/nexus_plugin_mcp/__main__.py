"""``python -m nexus_plugin_mcp APP [--http] [--host H] [--port P] [--log-format F]``.

The same as ``nexus mcp``.
"""

from __future__ import annotations

import argparse
import sys

from .cli import mcp_command

__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    """Parse the command line and serve; returns the exit code."""
    parser = argparse.ArgumentParser(
        prog="python -m nexus_plugin_mcp",
        description="Serve a Nexus application's workflows as MCP tools (stdio by default).",
    )
    parser.add_argument("app", nargs="?", help="app.py or module:attr (default: NEXUS_APP)")
    parser.add_argument("--http", action="store_true", help="serve streamable HTTP, not stdio")
    parser.add_argument("--host", help="interface to bind with --http (default 127.0.0.1)")
    parser.add_argument("--port", type=int, help="port with --http (0: any free port)")
    parser.add_argument(
        "--log-format", choices=["text", "json"], help="log lines on stderr (default text)"
    )
    args = parser.parse_args(argv)
    return mcp_command(
        args.app, http=args.http, host=args.host, port=args.port, log_format=args.log_format
    )


if __name__ == "__main__":
    sys.exit(main())
