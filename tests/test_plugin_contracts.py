"""The contract suites run on real plugins: the tests' third-party TCP channel."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

from nexus_core.testing.channel import ChannelContract

sys.path.insert(0, str(Path(__file__).parent / "plugin_examples" / "lines"))
from nexus_lines import ask


class TestLinesChannel(ChannelContract):
    """The line-protocol channel meets the channel contract."""

    channel_name = "lines"

    def plugins(self) -> list[object | str]:
        return ["nexus_lines"]

    def config(self) -> dict[str, Any]:
        return {"channels": {"lines": {"port": 0}}}

    async def call(self, channel: Any, workflow: str, inputs: dict[str, Any]) -> Any:
        answer = await ask(channel.url, workflow, inputs)
        assert "error" not in answer, answer
        return answer["output"]


class TestApiChannel(ChannelContract):
    """The HTTP API channel meets the same contract (graceful stop included)."""

    channel_name = "api"

    def plugins(self) -> list[object | str]:
        pytest.importorskip("nexus_plugin_api", reason="the api channel is nexus-plugin-api's")
        return ["nexus_plugin_api.plugin"]

    def config(self) -> dict[str, Any]:
        return {"channels": {"api": {"port": 0}}}

    async def call(self, channel: Any, workflow: str, inputs: dict[str, Any]) -> Any:
        import httpx

        async with httpx.AsyncClient(base_url=channel.url) as http:
            answer = await http.post(f"/workflows/{workflow}/runs", json=inputs)
        assert answer.status_code == 200, answer.text
        return answer.json()["output"]


class TestMcpChannel(ChannelContract):
    """The MCP channel on its own port meets the contract."""

    channel_name = "mcp"

    def plugins(self) -> list[object | str]:
        pytest.importorskip("nexus_plugin_mcp", reason="the mcp channel is nexus-plugin-mcp's")
        return ["nexus_plugin_mcp.plugin"]

    def config(self) -> dict[str, Any]:
        return {"channels": {"mcp": {"port": 0}}}
