"""The ``mcp`` package's own clients against the streamable HTTP endpoint (in-process server)."""

from __future__ import annotations

from pathlib import Path

import httpx
import httpx2
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
    http_connection,
    load_example,
    running_http,
)
from mcp.shared.exceptions import MCPError
from mcp_example_app import TokenSecurity

pytestmark = pytest.mark.anyio

INIT = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {
        "protocolVersion": "2025-11-25",
        "capabilities": {},
        "clientInfo": {"name": "raw", "version": "0"},
    },
}
ACCEPT = {"Accept": "application/json, text/event-stream"}


def _leaves(exc: BaseException) -> list[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for inner in exc.exceptions for leaf in _leaves(inner)]
    return [exc]


@pytest.mark.parametrize("mode", MODES)
async def test_tools_progress_and_cancellation(example_app: Path, mode: str) -> None:
    app = load_example(example_app)
    async with running_http(app) as url, http_connection(url, mode) as conn:
        await check_tools(conn, app)
        await check_progress(conn)
        await check_cancel(conn)


@pytest.mark.parametrize("mode", MODES)
async def test_resources_subscriptions_and_prompts(example_app: Path, mode: str) -> None:
    app = load_example(example_app)
    updates: list[str] = []
    async with (
        running_http(app) as url,
        http_connection(url, mode, message_handler=collect_updates(updates)) as conn,
    ):
        await check_resources(conn, app)
        await check_prompts(conn)
        if mode == "legacy":
            await check_subscription_legacy(conn, updates)
        else:
            await check_subscription_modern(conn)


@pytest.mark.parametrize("mode", MODES)
async def test_stateless_replicas_serve_one_client(example_app: Path, mode: str) -> None:
    # Two hosts with stateless endpoints: a client can move between them freely.
    first, second = load_example(example_app), load_example(example_app)
    async with (
        running_http(first, stateless=True) as url_a,
        running_http(second, stateless=True) as url_b,
    ):
        for url in (url_a, url_b):
            async with http_connection(url, mode) as conn:
                result = await conn.call_tool("greet", {"name": "Ada"})
                assert result.structured_content == {"result": "Hello, Ada."}
        async with httpx.AsyncClient() as http:
            response = await http.post(url_a, json=INIT, headers=ACCEPT)
            assert response.status_code == 200
            assert "mcp-session-id" not in response.headers


async def test_missing_or_bad_token_is_401_with_resource_metadata(
    example_app: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NEXUS_TEST_TOKEN", "s3cret")
    app = load_example(example_app)
    app.security = TokenSecurity(app)
    async with running_http(app, scopes=["workflows"]) as url, httpx.AsyncClient() as http:
        base = url.removesuffix("/mcp")
        missing = await http.post(url, json=INIT, headers=ACCEPT)
        assert missing.status_code == 401
        challenge = missing.headers["www-authenticate"]
        assert challenge.startswith("Bearer ")
        assert f'resource_metadata="{base}/.well-known/oauth-protected-resource/mcp"' in challenge
        assert "error=" not in challenge  # RFC 6750: no error code without a token
        assert 'scope="workflows"' in challenge

        bad = await http.post(url, json=INIT, headers={**ACCEPT, "Authorization": "Bearer nope"})
        assert bad.status_code == 401
        assert 'error="invalid_token"' in bad.headers["www-authenticate"]
        assert bad.json()["message"] == "invalid token"

        for path in (
            "/.well-known/oauth-protected-resource/mcp",
            "/.well-known/oauth-protected-resource",
        ):
            metadata = await http.get(base + path)
            assert metadata.status_code == 200
            assert metadata.json()["resource"] == url
            assert metadata.json()["scopes_supported"] == ["workflows"]

        good = await http.post(url, json=INIT, headers={**ACCEPT, "Authorization": "Bearer s3cret"})
        assert good.status_code == 200


@pytest.mark.parametrize("mode", MODES)
async def test_tool_list_is_filtered_by_permission(
    example_app: Path, monkeypatch: pytest.MonkeyPatch, mode: str
) -> None:
    monkeypatch.setenv("NEXUS_TEST_TOKEN", "s3cret")
    app = load_example(example_app)
    app.security = TokenSecurity(app)
    async with running_http(app) as url:
        # The clients surface the 401 as an error of their own (wrapped in task groups).
        with pytest.raises(BaseException) as caught:  # noqa: PT011
            async with http_connection(url, mode, token="wrong") as conn:
                await conn.list_tools()
        assert any(
            isinstance(leaf, MCPError | httpx2.HTTPStatusError) for leaf in _leaves(caught.value)
        ), caught.value

        async with http_connection(url, mode, token="s3cret") as conn:
            names = {tool.name for tool in (await conn.list_tools()).tools}
            assert "explode" not in names and "greet" in names
            denied = await conn.call_tool("explode", {"reason": "x"})
            assert denied.is_error and "only admins may explode" in denied.content[0].text
        async with http_connection(url, mode, token="s3cret-admin") as conn:
            names = {tool.name for tool in (await conn.list_tools()).tools}
            assert "explode" in names


@pytest.mark.parametrize("mode", MODES)
async def test_idempotency_key_in_meta_returns_the_same_run(example_app: Path, mode: str) -> None:
    app = load_example(example_app)
    async with running_http(app) as url, http_connection(url, mode) as conn:
        meta = {"nexus/idempotencyKey": f"key-{mode}"}
        first = await conn.call_tool("add", {"numbers": [1, 2]}, meta=meta)
        again = await conn.call_tool("add", {"numbers": [1, 2]}, meta=meta)
        assert first.meta["nexus/runId"] == again.meta["nexus/runId"]
        assert again.structured_content == {"total": 3, "count": 2}
        other = await conn.call_tool("add", {"numbers": [5]}, meta=meta)
        assert other.is_error and "idempotency" in other.content[0].text.lower()
