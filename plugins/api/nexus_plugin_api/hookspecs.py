"""The hooks this plugin adds to the host, so other plugins extend the HTTP server.

Added through ``nexus_add_hookspecs`` when this plugin is registered. A plugin
implements them with ``@hookimpl(optionalhook=True)``, so it still loads when
the API plugin is not installed.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from nexus_core import hookspec

if TYPE_CHECKING:
    from nexus_core import HttpMountSpec, Nexus

__all__ = ["nexus_api_mounts"]


@hookspec
def nexus_api_mounts(app: Nexus) -> list[HttpMountSpec]:
    """Return ASGI applications to mount on the API server, each under its own path.

    Called once each time the API channel builds its HTTP application (at
    start-up of every server process). ``app`` is the host. Each
    :class:`~nexus_core.specs.HttpMountSpec` names a ``path`` (``"/mcp"``) and
    a ``factory``: ``factory(app)`` returns an ASGI callable. If that object
    has a ``lifespan()`` method returning an async context manager, the server
    enters it at start-up (before accepting requests) and exits it at shutdown.

    The mounted application receives every request whose path is ``path`` or
    below it, with ``scope["root_path"]`` extended by ``path`` and
    ``scope["path"]`` the remainder (``"/"`` for ``path`` itself), as a
    Starlette ``Mount`` would give it. It does its own authentication.

    Two mounts on the same path, or a mount on one of the API's own routes,
    are an error naming the plugins.

    .. versionadded:: 0.1
    """
