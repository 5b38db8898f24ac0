"""``DelayNode``: wait, then pass the data through."""

from __future__ import annotations

from typing import Annotated, Any

import anyio
import msgspec

from nexus_core.workflows.node import Node

__all__ = ["DelayConfig", "DelayInputs", "DelayNode", "DelayOutputs"]


class DelayConfig(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Config of :class:`DelayNode`: how long to wait, in seconds (>= 0)."""

    seconds: Annotated[float, msgspec.Meta(ge=0)]


class DelayInputs(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Inputs of :class:`DelayNode`: the value to pass on (None when not connected)."""

    data: Any = None


class DelayOutputs(msgspec.Struct, kw_only=True):
    """Outputs of :class:`DelayNode`: the input, unchanged."""

    data: Any


class DelayNode(Node):
    """Sleep ``seconds`` on the event loop (cancellable), then output ``data`` unchanged."""

    Config = DelayConfig
    Inputs = DelayInputs
    Outputs = DelayOutputs

    async def run(self, inputs: DelayInputs) -> DelayOutputs:
        """Wait, then pass ``data`` through."""
        await anyio.sleep(self.config.seconds)
        return DelayOutputs(data=inputs.data)
