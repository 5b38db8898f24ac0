"""nexus-plugin-mcp: every workflow of a Nexus host as an MCP tool.

Installed, it adds the ``mcp`` channel: streamable HTTP at ``/mcp`` on the API
server (both the 2025-11-25 protocol and the stateless 2026-07-28 one), stdio
through ``nexus mcp APP`` or ``python -m nexus_plugin_mcp APP``, runs as
``nexus://runs/<id>`` resources with subscriptions, prompt templates
(``@app.prompt``) and the ``MCPToolNode`` node type.

Names are imported lazily so ``import nexus_plugin_mcp`` (and the host's
plugin discovery) stays cheap; the ``mcp`` package loads on first use.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from .config import MCPConfig
    from .http import MCPHttpApp, make_asgi, serve_http
    from .nodes import MCPToolNode
    from .prompts import Prompt, PromptMessage, prompts_of
    from .server import NexusMCP
    from .stdio import serve_stdio

__all__ = [
    "MCPConfig",
    "MCPHttpApp",
    "MCPToolNode",
    "NexusMCP",
    "Prompt",
    "PromptMessage",
    "__version__",
    "make_asgi",
    "prompts_of",
    "serve_http",
    "serve_stdio",
]

_LAZY = {
    "MCPConfig": ".config",
    "MCPHttpApp": ".http",
    "make_asgi": ".http",
    "serve_http": ".http",
    "MCPToolNode": ".nodes",
    "Prompt": ".prompts",
    "PromptMessage": ".prompts",
    "prompts_of": ".prompts",
    "NexusMCP": ".server",
    "serve_stdio": ".stdio",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value
