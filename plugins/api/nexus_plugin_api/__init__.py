"""nexus-plugin-api: the HTTP channel of Nexus (REST, WebSocket, SSE, OpenAPI) on Litestar.

Installed, it adds the ``api`` channel to every Nexus host. Serve an application
with ``nexus serve app.py`` (with nexus-plugin-cli) or
``python -m nexus_plugin_api app.py``, or from Python::

    from nexus_plugin_api import serve
    serve(app, port=8000, workers=2)

Importing this package is cheap: Litestar and uvicorn load only when a server
is built (the names below are imported on first use).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from ._deferred import defer

if TYPE_CHECKING:
    from .asgi import create_app
    from .channel import ApiChannel
    from .config import ApiConfig
    from .serving import serve

__all__ = ["ApiChannel", "ApiConfig", "__version__", "create_app", "serve"]

__version__ = "0.1.0"

# Before anything imports Litestar, which imports PyYAML for one rare route.
defer("yaml")

_LAZY = {
    "ApiChannel": ".channel",
    "ApiConfig": ".config",
    "create_app": ".asgi",
    "serve": ".serving",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(module, __name__), name)
