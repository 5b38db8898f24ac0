"""The contract suites run on real plugins: the tests' third-party TCP channel."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

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
