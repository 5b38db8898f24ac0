"""What one HTTP application shares between its handlers: the host, settings, open streams."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

import anyio
import anyio.abc

if TYPE_CHECKING:
    from nexus_core import Nexus, Workflow
    from nexus_core.events import Event, Subscription
    from nexus_core.security import Principal

    from ._http import RequestInfo
    from .config import ApiConfig

__all__ = ["ApiState", "StreamWatch"]


class ApiState:
    """Per-application state: the host, the settings and the long-lived connections.

    At shutdown :meth:`close_streams` ends every SSE stream and WebSocket, so
    the server's graceful drain waits only for requests that will finish.

    The methods here call the host's own checks directly: the API
    authenticates, filters and scopes nothing by itself.
    """

    def __init__(self, app: Nexus, config: ApiConfig) -> None:
        self.app = app
        self.config = config
        self.closing = False
        self.subscriptions: set[Subscription] = set()
        self.sockets: set[anyio.CancelScope] = set()
        #: The application's background tasks (set while it runs): stream watchers.
        self.tasks: anyio.abc.TaskGroup | None = None
        #: ``/openapi.json`` encoded, per set of workflows a caller may run.
        self.openapi_cache: dict[tuple[Any, ...], bytes] = {}

    async def authenticate(self, info: RequestInfo, *, audit: bool = True) -> Principal:
        """The caller's principal (a failure is audited on routes other than runs)."""
        return await self.app.security.authenticate(info.credentials(), "api", audit=audit)

    async def visible_workflows(self, who: Principal) -> list[Workflow]:
        """The workflows ``who`` may run on this channel (the host decides)."""
        return list(await self.app.visible_workflows(who, channel="api"))

    def subscribe(
        self,
        patterns: Iterable[str],
        who: Principal,
        *,
        last_event_id: str | None = None,
        keep: Callable[[Event], bool] | None = None,
    ) -> Subscription:
        """Subscribe to the events ``who`` may see (its tenant's), further filtered by ``keep``.

        Raises ``PermissionDenied`` when ``who`` may not read events.
        """
        return self.app.subscribe(patterns, principal=who, last_event_id=last_event_id, filter=keep)

    async def until_invalid(self, info: RequestInfo, who: Principal) -> str:
        """Return once the credentials of a stream no longer authenticate as ``who``; the reason."""
        return await self.app.security.until_invalid(info.credentials(), "api", who)

    def watch(self, info: RequestInfo, who: Principal, sub: Subscription) -> StreamWatch:
        """Start watching a stream's credentials; when they end, ``sub`` is closed.

        The returned :class:`StreamWatch` holds the reason once they have
        ended; :meth:`StreamWatch.stop` ends the watch with the stream.
        """
        watch = StreamWatch()
        tasks = self.tasks
        if tasks is None:  # not served (no lifespan): refuse the stream, never leave it unwatched
            raise RuntimeError("the API application is not running (its lifespan did not start)")

        async def run() -> None:
            with watch.scope:
                watch.reason = await self.until_invalid(info, who)
                await sub.aclose()

        tasks.start_soon(run)
        return watch

    async def close_streams(self) -> None:
        """Stop taking new streams; end the open SSE streams and WebSockets."""
        self.closing = True
        for sub in list(self.subscriptions):
            await sub.aclose()
        self.subscriptions.clear()
        for scope in list(self.sockets):
            scope.cancel()


class StreamWatch:
    """A stream's credential watch: ``reason`` is set once they no longer authenticate."""

    __slots__ = ("reason", "scope")

    def __init__(self) -> None:
        self.reason: str | None = None
        self.scope = anyio.CancelScope()

    def stop(self) -> None:
        """End the watch (the stream ended first)."""
        self.scope.cancel()
