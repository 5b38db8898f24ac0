"""What one HTTP application shares between its handlers: the host, settings, open streams."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

import anyio

if TYPE_CHECKING:
    from nexus_core import Nexus, Workflow
    from nexus_core.events import Event, Subscription
    from nexus_core.security import Principal

    from ._http import RequestInfo
    from .config import ApiConfig

__all__ = ["ApiState"]


def _accepts(function: Any, name: str) -> bool:
    try:
        return name in inspect.signature(function).parameters
    except (TypeError, ValueError):
        return False


class ApiState:
    """Per-application state: the host, the settings and the long-lived connections.

    At shutdown :meth:`close_streams` ends every SSE stream and WebSocket, so
    the server's graceful drain waits only for requests that will finish.

    The methods here are the API's only calls into the security layer besides
    ``invoke``; they use its newer keywords (``audit=``, ``principal=``) when the
    installed core has them.
    """

    def __init__(self, app: Nexus, config: ApiConfig) -> None:
        self.app = app
        self.config = config
        self.closing = False
        self.subscriptions: set[Subscription] = set()
        self.sockets: set[anyio.CancelScope] = set()
        self.openapi_cache: tuple[Any, bytes] | None = None
        self._audit_auth = _accepts(app.security.authenticate, "audit")
        self._scoped_subscribe = _accepts(app.subscribe, "principal")

    async def authenticate(self, info: RequestInfo, *, audit: bool = True) -> Principal:
        """The caller's principal (a failure is audited on routes other than runs)."""
        credentials = info.credentials()
        if self._audit_auth:
            return await self.app.security.authenticate(credentials, "api", audit=audit)
        return await self.app.security.authenticate(credentials, "api")

    async def visible_workflows(self, who: Principal) -> list[Workflow]:
        """The workflows ``who`` may run (all of them on a core without that filter)."""
        narrow = getattr(self.app, "visible_workflows", None)
        if narrow is not None:
            return list(await narrow(who, channel="api"))
        return list(self.app.workflows.values())

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
        if self._scoped_subscribe:
            return self.app.subscribe(
                patterns, principal=who, last_event_id=last_event_id, filter=keep
            )
        tenant = who.tenant

        def visible(event: Event) -> bool:
            return (event.tenant is None or event.tenant == tenant) and (
                keep is None or keep(event)
            )

        return self.app.subscribe(patterns, last_event_id=last_event_id, filter=visible)

    async def close_streams(self) -> None:
        """Stop taking new streams; end the open SSE streams and WebSockets."""
        self.closing = True
        for sub in list(self.subscriptions):
            await sub.aclose()
        self.subscriptions.clear()
        for scope in list(self.sockets):
            scope.cancel()
