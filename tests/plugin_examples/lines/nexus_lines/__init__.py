"""A TCP line-protocol channel: one request per line, one JSON answer per line.

A request is ``WORKFLOW {"input": ...}``; the answer is ``{"status": ...,
"output": ...}`` or ``{"error": {"code": ..., "message": ...}}``. The tests'
third-party channel: installed with pip, found through its entry point.
"""

from __future__ import annotations

import json
from typing import Any

import anyio
import msgspec
from anyio.abc import SocketAttribute, SocketStream, TaskStatus
from anyio.streams.buffered import BufferedByteReceiveStream

from nexus_core.plugin import (
    ChannelCapabilities,
    ChannelSpec,
    ConfigSectionSpec,
    ConfigStruct,
    Credentials,
    Nexus,
    NexusError,
    hookimpl,
)

__all__ = ["LinesChannel", "LinesConfig", "ask"]


class LinesConfig(ConfigStruct, kw_only=True):
    """``[nexus.channels.lines]``: where to listen; ``enabled = false`` switches it off."""

    host: str = "127.0.0.1"
    port: int = 7070
    enabled: bool = True


class LinesChannel:
    """Serves the line protocol on ``host:port`` until cancelled."""

    name = "lines"
    capabilities = ChannelCapabilities(invoke=True, sessions=False)

    def __init__(self, app: Nexus, config: LinesConfig | None) -> None:
        self.app = app
        self.config = config or LinesConfig()
        self.url: str | None = None

    async def run(self, *, task_status: TaskStatus[None]) -> None:
        """Listen, say we are started, serve every connection."""
        listener = await anyio.create_tcp_listener(
            local_host=self.config.host, local_port=self.config.port
        )
        self.url = f"tcp://{self.config.host}:{listener.extra(SocketAttribute.local_port)}"
        async with listener:
            task_status.started()
            await listener.serve(self.handle)

    async def ready(self) -> bool:
        """Ready once listening."""
        return self.url is not None

    async def handle(self, stream: SocketStream) -> None:
        """Answer each line of one connection."""
        client = stream.extra(SocketAttribute.remote_address)[0]
        async with stream:
            lines = BufferedByteReceiveStream(stream)
            while True:
                try:
                    line = await lines.receive_until(b"\n", 65536)
                except (anyio.EndOfStream, anyio.IncompleteRead, anyio.DelimiterNotFound):
                    return
                answer = await self.answer(line.decode(errors="replace"), str(client))
                await stream.send(json.dumps(answer).encode() + b"\n")

    async def answer(self, line: str, client: str) -> dict[str, Any]:
        """Run one request through the host's one request path."""
        workflow, _, body = line.partition(" ")
        try:
            result = await self.app.invoke(
                workflow,
                json.loads(body or "{}"),
                credentials=Credentials(client=client),
                channel=self.name,
            )
        except json.JSONDecodeError as exc:
            return {"error": {"code": "invalid_json", "message": str(exc)}}
        except NexusError as exc:
            return {"error": msgspec.to_builtins(exc.detail())}
        return {"status": result.status, "output": result.output}


async def ask(url: str, workflow: str, inputs: dict[str, Any]) -> dict[str, Any]:
    """A client: send one request to the channel at ``url``; its answer."""
    host, _, port = url.removeprefix("tcp://").rpartition(":")
    async with await anyio.connect_tcp(host, int(port)) as stream:
        await stream.send(f"{workflow} {json.dumps(inputs)}\n".encode())
        line = await BufferedByteReceiveStream(stream).receive_until(b"\n", 1 << 20)
    answer: dict[str, Any] = json.loads(line)
    return answer


@hookimpl
def nexus_channels() -> list[ChannelSpec]:
    """The ``lines`` channel."""
    return [ChannelSpec(name="lines", factory="nexus_lines:LinesChannel")]


@hookimpl
def nexus_config_sections() -> list[ConfigSectionSpec]:
    """``[nexus.channels.lines]``."""
    return [ConfigSectionSpec(name="channels.lines", factory="nexus_lines:LinesConfig")]
