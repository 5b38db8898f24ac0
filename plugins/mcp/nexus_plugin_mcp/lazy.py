"""The ``/mcp`` mounts, built on their first request so ``nexus serve`` starts fast.

The ``mcp`` package takes about half a second to import: more than the rest
of ``nexus serve`` together. The API server mounts these stand-ins instead
(:func:`make_lazy_asgi`, :func:`make_lazy_metadata_asgi`); the first request
to either imports :mod:`nexus_plugin_mcp.http` in a worker thread (the event
loop keeps answering other requests meanwhile), builds the real app, enters
its ``lifespan()`` inside the stand-in's own, and hands the request on. Every
later request goes straight through. Requests that arrive while it is being
built wait for it; a build that fails is answered ``503`` and tried again on
the next request.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from typing import TYPE_CHECKING, Any

import anyio
import anyio.abc
import anyio.to_thread

if TYPE_CHECKING:
    from nexus_core import Nexus

__all__ = ["LazyASGI", "make_lazy_asgi", "make_lazy_metadata_asgi"]

Scope = dict[str, Any]
Receive = Callable[[], Any]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]

_log = logging.getLogger("nexus.mcp")


def make_lazy_asgi(app: Nexus) -> LazyASGI:
    """The ``/mcp`` endpoint (:func:`nexus_plugin_mcp.http.make_asgi`), built on first use."""
    return LazyASGI(app, "nexus_plugin_mcp.http:make_asgi")


def make_lazy_metadata_asgi(app: Nexus) -> LazyASGI:
    """The OAuth metadata (:func:`nexus_plugin_mcp.http.make_metadata_asgi`), on first use."""
    return LazyASGI(app, "nexus_plugin_mcp.http:make_metadata_asgi")


class LazyASGI:
    """An ASGI app standing in for the one ``factory`` (``"module:attr"``) makes of ``app``.

    Enter :meth:`lifespan` (the API server does) before serving: the real
    app's own ``lifespan()``, if it has one, runs inside it once the real app
    is built. Outside it, requests are handed to the real app as they come.
    """

    def __init__(self, app: Nexus, factory: str) -> None:
        self.app = app
        self.factory = factory
        #: The real app, once a request has built it.
        self.target: Callable[[Scope, Receive, Send], Awaitable[None]] | None = None
        self._lock = anyio.Lock()
        self._tasks: anyio.abc.TaskGroup | None = None

    @contextlib.asynccontextmanager
    async def lifespan(self) -> AsyncIterator[None]:
        """While the block runs, the real app's lifespan (once built) runs too."""
        async with anyio.create_task_group() as tasks:
            self._tasks = tasks
            try:
                yield
            finally:
                self._tasks = None
                self.target = None  # its lifespan ends here; a later one builds afresh
                tasks.cancel_scope.cancel()

    async def _build(self) -> Callable[[Scope, Receive, Send], Awaitable[None]]:
        async with self._lock:
            if self.target is not None:
                return self.target
            module_name, _, attr = self.factory.partition(":")
            module = await anyio.to_thread.run_sync(importlib.import_module, module_name)
            target: Callable[[Scope, Receive, Send], Awaitable[None]] = getattr(module, attr)(
                self.app
            )
            enter: Callable[[], Any] | None = getattr(target, "lifespan", None)
            if callable(enter):
                if self._tasks is None:
                    return target  # no lifespan yet: it answers as it does before one
                await self._tasks.start(_hold, enter)
            self.target = target
            return target

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Hand the request to the real app, building it first if this is the first one."""
        target = self.target
        if target is None:
            try:
                target = await self._build()
            except Exception as exc:
                _log.error("could not start %s: %s: %s", self.factory, type(exc).__name__, exc)
                if scope["type"] == "http":
                    await _unavailable(send, f"{type(exc).__name__}: {exc}")
                return
        await target(scope, receive, send)


async def _hold(
    enter: Callable[[], contextlib.AbstractAsyncContextManager[Any]],
    *,
    task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Run ``enter()`` until cancelled, telling the starter once it is entered."""
    async with enter():
        task_status.started()
        await anyio.sleep_forever()


async def _unavailable(send: Send, reason: str) -> None:
    body = json.dumps({"error": "the MCP endpoint could not start", "reason": reason}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 503,
            "headers": [(b"content-type", b"application/json")],
        }
    )
    await send({"type": "http.response.body", "body": body})
