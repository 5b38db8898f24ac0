"""``nexus serve``: the command the CLI plugin registers lazily from ``nexus_cli_commands``.

Import-light: Litestar and uvicorn are imported only when the command runs.
"""

from __future__ import annotations

import sys
from typing import Literal

__all__ = ["serve_command"]

_DEFAULT_HOST = "127.0.0.1"
_DEFAULT_PORT = 8000


def serve_command(
    app: str | None = None,
    /,
    *,
    host: str = _DEFAULT_HOST,
    port: int = _DEFAULT_PORT,
    workers: int = 1,
    reload: bool = False,
    log_format: Literal["text", "json"] | None = None,
) -> int:
    """Serve APP over HTTP (REST, WebSocket, SSE, OpenAPI at /docs) and every other channel.

    Starts every enabled channel of the installed plugins (MCP on its own port
    when configured, third-party channels), lists them, and stops them all on
    Ctrl-C or SIGTERM.

    Parameters
    ----------
    app
        The application: a file (app.py) or module:attr; default NEXUS_APP or
        app in nexus.toml.
    host
        The address to listen on (nexus.channels.api.host when left at the default).
    port
        The port to listen on; 0 picks a free one (nexus.channels.api.port when
        left at the default).
    workers
        Worker processes, each running the host (nexus.channels.api.workers when 1).
    reload
        Restart when a file under the working directory changes (development only).
    log_format
        Every log line, Nexus's and uvicorn's: text, or json (one object a line).

    """
    from nexus_core.errors import NexusError

    from .serving import serve

    bad = _out_of_range(port=port, workers=workers)
    if bad is not None:
        print(f"error: {bad}\nhint: nexus serve --help", file=sys.stderr)
        return 2
    try:
        code = serve(
            app,
            # Flags left at their defaults defer to the config file and NEXUS_* variables.
            host=None if host == _DEFAULT_HOST else host,
            port=None if port == _DEFAULT_PORT else port,
            workers=None if workers == 1 else workers,
            reload=reload,
            log_format=log_format,
        )
    except NexusError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    _leave_node_threads(code)
    return code


def _leave_node_threads(code: int, grace: float = 1.0) -> None:
    """Exit at once if sync node threads still run once serving stopped.

    The host stopped waiting for them (their runs are checkpointed and resume
    at the next start) and told them to stop; Python would otherwise wait for
    each to return before the process exits.
    """
    import os
    import threading
    import time

    deadline = time.monotonic() + grace
    me = threading.current_thread()
    for thread in threading.enumerate():
        if thread is not me and not thread.daemon:
            thread.join(max(0.0, deadline - time.monotonic()))
    if any(t is not me and not t.daemon and t.is_alive() for t in threading.enumerate()):
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


#: The number options of ``nexus serve``: (lowest, highest or None).
_RANGES: dict[str, tuple[int, int | None]] = {"port": (0, 65535), "workers": (1, None)}


def _out_of_range(**values: int) -> str | None:
    """The first option outside its range, as ``--port must be between 0 and 65535, got 99999``."""
    for name, value in values.items():
        low, high = _RANGES[name]
        if value < low or (high is not None and value > high):
            bounds = f"between {low} and {high}" if high is not None else f"at least {low}"
            return f"--{name} must be {bounds}, got {value}"
    return None
