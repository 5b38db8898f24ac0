"""The ``mcp`` package's own clients against ``python -m nexus_plugin_mcp APP`` over stdio."""

from __future__ import annotations

from pathlib import Path

import pytest
from _mcp_support import (
    MODES,
    check_cancel,
    check_progress,
    check_prompts,
    check_resources,
    check_subscription_legacy,
    check_subscription_modern,
    check_tools,
    collect_updates,
    load_example,
    stdio_connection,
)
from mcp.shared.exceptions import MCPError

pytestmark = pytest.mark.anyio


@pytest.mark.parametrize("mode", MODES)
async def test_tools_schemas_results_and_errors(example_app: Path, mode: str) -> None:
    async with stdio_connection(example_app, mode) as conn:
        await check_tools(conn, load_example(example_app))


@pytest.mark.parametrize("mode", MODES)
async def test_progress_and_cancellation(example_app: Path, mode: str) -> None:
    async with stdio_connection(example_app, mode) as conn:
        await check_progress(conn)
        await check_cancel(conn)


@pytest.mark.parametrize("mode", MODES)
async def test_resources_subscriptions_and_prompts(example_app: Path, mode: str) -> None:
    updates: list[str] = []
    async with stdio_connection(
        example_app, mode, message_handler=collect_updates(updates)
    ) as conn:
        await check_resources(conn, load_example(example_app))
        await check_prompts(conn)
        if mode == "legacy":
            await check_subscription_legacy(conn, updates)
        else:
            await check_subscription_modern(conn)


@pytest.mark.parametrize("mode", MODES)
async def test_token_from_the_environment(example_app: Path, mode: str) -> None:
    async with stdio_connection(
        example_app, mode, NEXUS_TEST_TOKEN="s3cret", NEXUS_TOKEN="wrong"
    ) as conn:
        with pytest.raises(MCPError, match="authentication failed: invalid token") as caught:
            await conn.list_tools()
        assert caught.value.code == -32010
        with pytest.raises(MCPError, match="NEXUS_TOKEN"):
            await conn.call_tool("greet", {"name": "Ada"})

    async with stdio_connection(
        example_app, mode, NEXUS_TEST_TOKEN="s3cret", NEXUS_TOKEN="s3cret"
    ) as conn:
        names = {tool.name for tool in (await conn.list_tools()).tools}
        assert "explode" not in names and "greet" in names  # filtered by permission
        denied = await conn.call_tool("explode", {"reason": "x"})
        assert denied.is_error and "only admins may explode" in denied.content[0].text
        ok = await conn.call_tool("greet", {"name": "Ada"})
        assert ok.structured_content == {"result": "Hello, Ada."}
