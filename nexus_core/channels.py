"""The channel contract: what the host expects of what ``nexus_channels`` factories make."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import msgspec

if TYPE_CHECKING:
    from anyio.abc import TaskStatus

__all__ = ["Channel", "ChannelCapabilities"]


class ChannelCapabilities(msgspec.Struct, frozen=True, kw_only=True):
    """What a channel can do, for ``/plugins``, health and docs."""

    invoke: bool = True
    stream_events: bool = False
    sessions: bool = True
    interactive: bool = False


@runtime_checkable
class Channel(Protocol):
    """A way in to the host (HTTP, CLI, MCP, voice, a TCP line protocol...).

    A ``nexus_channels`` factory is called as ``factory(app, config)``:
    ``app`` is the :class:`~nexus_core.Nexus` host, ``config`` the validated
    Struct of the channel's section ``[nexus.channels.NAME]`` (registered
    with ``nexus_config_sections``), or ``None`` when no plugin registered one.

    The host calls :meth:`run` inside its task group when it starts (``nexus
    serve``, ``app.serve()``, ``app.running(channels=[...])``); ``run`` calls
    ``task_status.started()`` once it accepts requests and then serves until
    cancelled. Cancellation is how every channel is stopped; a channel that
    can stop gracefully may also have:

    ``stop(*, force: bool = False)``
        stop accepting, finish what is in flight (``force``: at once);
    ``wait_stopped()``
        an async method returning once :meth:`run` has finished after ``stop``;
        ``nexus serve`` awaits it before cancelling, and when it returns on its
        own the whole server stops;
    ``url``
        where it listens, shown in the list of started channels.

    Every request goes through ``app.invoke`` (with the caller's
    :class:`~nexus_core.security.Credentials` and ``channel=self.name``), so
    the channel never re-implements security, validation or execution. A
    channel that delivers events to its clients subscribes to them itself:
    ``app.subscribe(patterns, principal=...)`` gives the events the principal
    may read, as they happen, whichever channel caused them.

    .. versionchanged:: 0.1
       ``emit_event`` is no longer part of the contract: the host never
       called it. Channels subscribe with ``app.subscribe`` instead.
    """

    name: str
    capabilities: ChannelCapabilities

    async def run(self, *, task_status: TaskStatus[None]) -> None:
        """Serve until cancelled; call ``task_status.started()`` when ready."""
        ...

    async def ready(self) -> bool:
        """Whether the channel can take requests now (readiness probe)."""
        ...


def describe(channel: Any) -> dict[str, Any]:
    """A JSON-ready description of a running channel."""
    caps = getattr(channel, "capabilities", ChannelCapabilities())
    return {"name": getattr(channel, "name", type(channel).__name__), **msgspec.to_builtins(caps)}
