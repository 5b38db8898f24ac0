"""The channel contract: what the host expects of what ``nexus_channels`` factories make."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import msgspec

if TYPE_CHECKING:
    from anyio.abc import TaskStatus

    from .events import Event

__all__ = ["Channel", "ChannelCapabilities"]


class ChannelCapabilities(msgspec.Struct, frozen=True, kw_only=True):
    """What a channel can do, for ``/plugins``, health and docs."""

    invoke: bool = True
    stream_events: bool = False
    sessions: bool = True
    interactive: bool = False


@runtime_checkable
class Channel(Protocol):
    """A way in to the host (HTTP, CLI, MCP, voice...).

    The host calls :meth:`run` inside its task group at start-up; ``run`` calls
    ``task_status.started()`` once it accepts requests and then runs until
    cancelled. Every request goes through ``app.invoke`` so the channel never
    re-implements security, validation or execution.
    """

    name: str
    capabilities: ChannelCapabilities

    async def run(self, *, task_status: TaskStatus[None]) -> None:
        """Serve until cancelled; call ``task_status.started()`` when ready."""
        ...

    async def ready(self) -> bool:
        """Whether the channel can take requests now (readiness probe)."""
        ...

    async def emit_event(self, event: Event) -> None:
        """Deliver an event to this channel's subscribers (may do nothing)."""
        ...


def describe(channel: Any) -> dict[str, Any]:
    """A JSON-ready description of a running channel."""
    caps = getattr(channel, "capabilities", ChannelCapabilities())
    return {"name": getattr(channel, "name", type(channel).__name__), **msgspec.to_builtins(caps)}
