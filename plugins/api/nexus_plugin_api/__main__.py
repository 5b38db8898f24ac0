"""``python -m nexus_plugin_api APP``: ``nexus serve`` without the CLI plugin.

Options: ``--host H``, ``--port P``, ``--workers N``, ``--reload``, ``--log-format text|json``.
"""

from __future__ import annotations

import argparse
import sys

from .cli import serve_command


def main(argv: list[str] | None = None) -> int:
    """Parse the arguments and serve."""
    parser = argparse.ArgumentParser(
        prog="python -m nexus_plugin_api",
        description="Serve a Nexus application over HTTP (REST, WebSocket, SSE, OpenAPI).",
    )
    parser.add_argument("app", nargs="?", help="app.py or module:attr (default: NEXUS_APP)")
    parser.add_argument("--host", default="127.0.0.1", help="address (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8000, help="port (default 8000; 0: any)")
    parser.add_argument("--workers", type=int, default=1, help="worker processes (default 1)")
    parser.add_argument("--reload", action="store_true", help="restart on file changes")
    parser.add_argument(
        "--log-format", choices=["text", "json"], default=None, help="log lines (default text)"
    )
    args = parser.parse_args(argv)
    return serve_command(
        args.app,
        host=args.host,
        port=args.port,
        workers=args.workers,
        reload=args.reload,
        log_format=args.log_format,
    )


if __name__ == "__main__":
    sys.exit(main())
