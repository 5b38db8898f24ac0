"""The ``mcp`` channel the host starts with ``nexus serve`` / ``app.running(channels=["mcp"])``."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import anyio
import anyio.abc
from nexus_core.plugin import ChannelCapabilities

from .config import MCPConfig

if TYPE_CHECKING:
    from nexus_core import Nexus

__all__ = ["MCPChannel"]


class MCPChannel:
    """Serves streamable HTTP on ``channels.mcp.port`` when one is configured.

    Without a port the channel serves nothing of its own: the endpoint lives
    at ``/mcp`` on the API server (mounted through ``nexus_api_mounts``), and
    stdio is ``nexus mcp APP``, one process per agent. ``url`` is the
    standalone endpoint once started.
    """

    name = "mcp"
    capabilities = ChannelCapabilities(invoke=True, stream_events=True, sessions=True)

    def __init__(self, app: Nexus, config: MCPConfig | None = None) -> None:
        self.app = app
        self.config = config if isinstance(config, MCPConfig) else MCPConfig()
        self.url: str | None = None

    async def run(self, *, task_status: anyio.abc.TaskStatus[None]) -> None:
        """Serve until cancelled; ``task_status.started()`` once accepting requests."""
        if self.config.port is None:
            task_status.started()
            await anyio.sleep_forever()
        async with anyio.create_task_group() as tg:
            self.url = await tg.start(_serve, self.app, self.config)
            task_status.started()

    async def ready(self) -> bool:
        """Ready once started (the mounted endpoint's readiness is the API server's)."""
        return self.config.port is None or self.url is not None


async def _serve(app: Nexus, config: MCPConfig, *, task_status: anyio.abc.TaskStatus[Any]) -> None:
    from .http import serve_http

    # The host (nexus serve, app.serve) handles signals for every channel.
    await serve_http(app, config=config, capture_signals=False, task_status=task_status)
