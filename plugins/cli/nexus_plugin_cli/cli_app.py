"""The cyclopts app: built-in commands and the commands of other plugins, all lazy."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any

from cyclopts import App, Parameter

from . import __version__
from .context import Globals, settings

__all__ = ["BUILTIN_COMMANDS", "build_app"]

_P = "nexus_plugin_cli.commands."

#: ``(name, "module:attr", one-line help)`` of every built-in command.
BUILTIN_COMMANDS: tuple[tuple[str, str, str], ...] = (
    (
        "run",
        _P + "run:run_command",
        "Run a workflow; its inputs are options (run WORKFLOW --help).",
    ),
    ("workflows", _P + "workflows:app", "List the workflows, or show one with its schemas."),
    ("runs", _P + "runs:app", "List runs; show, cancel or resume one."),
    ("events", _P + "events:events_command", "Follow the event stream (--type run.*, --since ID)."),
    ("batch", _P + "batch:batch_command", "Run a JSON Lines file of invocations, N at a time."),
    ("shell", _P + "shell:shell_command", "An interactive shell with completion and history."),
    ("session", _P + "session:app", "Start a session, choose the current one, or show it."),
    (
        "worker",
        _P + "worker:worker_command",
        "Execute the runs gateways queue for workers: worker APP [--concurrency N].",
    ),
    ("plugins", _P + "plugins:plugins_command", "List the plugins, their versions and hooks."),
    ("config", _P + "config:app", "Show the configuration with its sources, or check it."),
    ("plugin", _P + "plugin:app", "Start a new plugin: plugin new NAME --kind KIND."),
    ("login", _P + "auth:login_command", "Keep a token for a gateway (or app) for later commands."),
    ("logout", _P + "auth:logout_command", "Forget the token of a gateway (or app)."),
)

#: Commands other plugins provide; a stand-in says how to install them when absent.
_STAND_INS: tuple[tuple[str, str, str], ...] = (
    (
        "serve",
        _P + "missing:serve_missing",
        "Serve the application over HTTP (needs the API plugin, nexus-plugin-api).",
    ),
    (
        "mcp",
        _P + "missing:mcp_missing",
        "Serve the workflows to AI agents over MCP (needs the MCP plugin, nexus-plugin-mcp).",
    ),
)

_HELP = """Run, inspect and serve Nexus workflows, in process or on a gateway.

In process: --app APP.py (or module:attr, NEXUS_APP, or app in nexus.toml).
On a gateway: --url http://host:port (or NEXUS_URL).
"""


def build_app(warn: Callable[[str], Any] | None = None) -> App:
    """The cyclopts app with every command registered lazily (returns the meta app)."""
    app = App(
        name="nexus",
        help=_HELP,
        version=__version__,
        help_format="plaintext",
        result_action="return_value",
        print_error=False,
        exit_on_error=False,
    )
    for name, factory, text in BUILTIN_COMMANDS:
        kwargs: dict[str, Any] = {"help_flags": ()} if name == "run" else {}
        app.command(factory, name=name, help=text, **kwargs)
    from .discovery import plugin_commands

    taken = {name for name, _, _ in BUILTIN_COMMANDS}
    commands, warnings = plugin_commands(reserved=taken)
    for message in warnings:
        if warn is not None:
            warn(message)
    provided = set()
    for command in commands:
        help_text = command.description or f"(from {command.plugin})"
        app.command(command.factory, name=command.name, help=help_text)
        provided.add(command.name)
    for name, factory, text in _STAND_INS:
        if name not in provided:
            app.command(factory, name=name, help=text)

    @app.meta.default
    def launcher(
        *tokens: Annotated[str, Parameter(show=False, allow_leading_hyphen=True)],
        g: Globals | None = None,
    ) -> Any:
        settings(g)
        return app(tokens)

    return app.meta
