"""Connections and shared checks for the MCP tests (stdio and HTTP, both protocol eras)."""

from __future__ import annotations

import functools
import json
import sys
import warnings
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import httpx2
import mcp_types as types
import pytest
from mcp import Client, ClientSession, StdioServerParameters, stdio_client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPDeprecationWarning, MCPError
from nexus_core import Nexus
from nexus_core.loader import load_app

from nexus_plugin_mcp.config import MCPConfig
from nexus_plugin_mcp.http import serve_http
from nexus_plugin_mcp.server import BLOB_REF_SCHEMA

MODES = ["legacy", "modern"]
VERSIONS = {"legacy": "2025-11-25", "modern": "2026-07-28"}
Handler = Callable[[Any], Any]


def server_params(app_path: Path, **env: str) -> StdioServerParameters:
    """``python -m nexus_plugin_mcp APP`` with in-memory storage and no user login."""
    return StdioServerParameters(
        command=sys.executable,
        args=["-m", "nexus_plugin_mcp", str(app_path)],
        env={
            "NEXUS_STORAGE": "memory://",
            "NEXUS_CONFIG_HOME": str(app_path.parent / "user-config"),
            **env,
        },
        cwd=str(app_path.parent),
    )


@asynccontextmanager
async def stdio_connection(
    app_path: Path, mode: str, *, message_handler: Handler | None = None, **env: str
) -> AsyncIterator[Any]:
    """A ``ClientSession`` (legacy: 2025-11-25) or an ``mcp.Client`` in auto mode (2026-07-28)."""
    params = server_params(app_path, **env)
    if mode == "legacy":
        async with (
            stdio_client(params) as (read, write),
            ClientSession(read, write, message_handler=message_handler) as session,
        ):
            init = await session.initialize()
            assert init.protocol_version == VERSIONS[mode]
            yield session
    else:
        async with Client(params, message_handler=message_handler) as client:
            assert client.protocol_version == VERSIONS[mode]
            yield client


@asynccontextmanager
async def http_connection(
    url: str,
    mode: str,
    *,
    token: str | None = None,
    message_handler: Handler | None = None,
) -> AsyncIterator[Any]:
    """The same two clients over streamable HTTP."""
    headers = {"Authorization": f"Bearer {token}"} if token else None
    timeout = httpx2.Timeout(30.0, read=60.0)
    async with httpx2.AsyncClient(headers=headers, timeout=timeout) as http:
        transport = streamable_http_client(url, http_client=http)
        if mode == "legacy":
            async with (
                transport as (read, write),
                ClientSession(read, write, message_handler=message_handler) as session,
            ):
                init = await session.initialize()
                assert init.protocol_version == VERSIONS[mode]
                yield session
        else:
            async with Client(transport, message_handler=message_handler) as client:
                assert client.protocol_version == VERSIONS[mode]
                yield client


def load_example(path: Path) -> Nexus:
    return load_app(str(path))


@asynccontextmanager
async def running_http(app: Nexus, **config: Any) -> AsyncIterator[str]:
    """Run the host and a standalone HTTP endpoint on a free port; yield its URL."""
    settings = MCPConfig(**config)
    async with app, anyio.create_task_group() as tg:
        url = await tg.start(
            functools.partial(serve_http, app, host="127.0.0.1", port=0, config=settings)
        )
        try:
            yield url
        finally:
            tg.cancel_scope.cancel()


def wrapped(schema: dict[str, Any]) -> dict[str, Any]:
    return {"type": "object", "properties": {"result": schema}, "required": ["result"]}


# -- checks shared by every transport and mode -----------------------------------------


async def check_tools(conn: Any, app: Nexus) -> None:
    tools = {tool.name: tool for tool in (await conn.list_tools()).tools}
    assert set(tools) == set(app.workflows)
    for name, workflow in app.workflows.items():
        assert tools[name].input_schema == workflow.input_schema, name
    # The host stores large outputs by reference: each schema also allows a reference.
    add = tools["add"].output_schema
    assert add["anyOf"] == [app.workflows["add"].output_schema, BLOB_REF_SCHEMA]
    greet_result = tools["greet"].output_schema["properties"]["result"]
    assert greet_result == {"anyOf": [app.workflows["greet"].output_schema, BLOB_REF_SCHEMA]}
    greet = tools["greet"]
    assert greet.title == "Greeter"
    assert greet.description == "Greet someone by name."
    assert greet.annotations is not None
    assert greet.annotations.read_only_hint is True
    assert greet.annotations.idempotent_hint is True
    assert greet.annotations.destructive_hint is False
    explode = tools["explode"].annotations
    assert explode is not None and explode.destructive_hint is True

    ok = await conn.call_tool("greet", {"name": "Ada", "excited": True})
    assert ok.is_error is False
    assert ok.structured_content == {"result": "Hello, Ada!"}
    assert json.loads(ok.content[0].text) == ok.structured_content
    assert ok.meta and ok.meta["nexus/runId"]

    total = await conn.call_tool("add", {"numbers": [1, 2, 3]})
    assert total.structured_content == {"total": 6, "count": 3}

    bad = await conn.call_tool("greet", {"name": 3})
    assert bad.is_error is True
    assert "name" in bad.content[0].text and "str" in bad.content[0].text
    assert bad.meta["nexus/error"]["errors"][0]["path"] == "name"

    missing = await conn.call_tool("greet", {"excited": True})
    assert missing.is_error is True
    assert "name" in missing.content[0].text and "missing" in missing.content[0].text

    failed = await conn.call_tool("explode", {"reason": "on purpose"})
    assert failed.is_error is True
    text = failed.content[0].text
    assert "node 'explode'" in text and "ValueError: boom: on purpose" in text
    assert failed.meta["nexus/error"]["node"] == "explode"

    with pytest.raises(MCPError, match="Unknown tool"):
        await conn.call_tool("gret", {"name": "Ada"})


async def check_progress(conn: Any) -> None:
    seen: list[tuple[float, float | None, str | None]] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        seen.append((progress, total, message))

    result = await conn.call_tool("pipeline", {"value": 3}, progress_callback=on_progress)
    assert result.structured_content == {"result": 14}
    assert [p for p, _, _ in seen] == [0, 1, 2, 3]
    assert {t for _, t, _ in seen} == {3}
    messages = [m or "" for _, _, m in seen]
    assert messages[0].startswith("run ")
    assert ["first" in messages[1], "second" in messages[2], "third" in messages[3]] == [True] * 3


async def start_and_get_run_id(
    conn: Any, tg: anyio.abc.TaskGroup, name: str, arguments: dict[str, Any]
) -> str:
    """Start a call in ``tg``; return its run id (from the first progress message)."""
    found: list[str] = []
    started = anyio.Event()

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        if not found and message and message.startswith("run "):
            found.append(message.split()[1])
            started.set()

    async def call() -> None:
        await conn.call_tool(name, arguments, progress_callback=on_progress)

    tg.start_soon(call)
    with anyio.fail_after(15):
        await started.wait()
    return found[0]


async def read_json(conn: Any, uri: str) -> Any:
    result = await conn.read_resource(uri)
    return json.loads(result.contents[0].text)


async def check_cancel(conn: Any) -> None:
    async with anyio.create_task_group() as tg:
        run_id = await start_and_get_run_id(conn, tg, "sleepy", {"seconds": 60})
        tg.cancel_scope.cancel()
    with anyio.fail_after(15):
        while (run := await read_json(conn, f"nexus://runs/{run_id}"))["status"] != "cancelled":
            assert run["status"] in ("pending", "running"), run
            await anyio.sleep(0.05)


async def check_resources(conn: Any, app: Nexus) -> None:
    listed = {r.uri: r for r in (await conn.list_resources()).resources}
    assert set(listed) == {f"nexus://workflows/{name}" for name in app.workflows}
    assert listed["nexus://workflows/greet"].mime_type == "application/json"
    templates = {t.uri_template for t in (await conn.list_resource_templates()).resource_templates}
    assert "nexus://runs/{run_id}" in templates

    definition = await read_json(conn, "nexus://workflows/pipeline")
    assert definition["input_schema"] == app.workflows["pipeline"].input_schema
    assert [n["id"] for n in definition["nodes"]] == ["first", "second", "third"]

    result = await conn.call_tool("greet", {"name": "Grace"})
    run = await read_json(conn, f"nexus://runs/{result.meta['nexus/runId']}")
    assert run["status"] == "completed"
    assert run["output"] == "Hello, Grace."
    assert run["nodes"]["greet"]["status"] == "completed"

    with pytest.raises(MCPError, match="Resource not found"):
        await conn.read_resource("nexus://runs/no-such-run")
    with pytest.raises(MCPError, match="Resource not found"):
        await conn.read_resource("nexus://elsewhere/x")


async def check_prompts(conn: Any) -> None:
    prompts = {p.name: p for p in (await conn.list_prompts()).prompts}
    review = prompts["review"]
    assert review.title == "Code review"
    assert review.description == "Ask for a careful code review."
    assert [(a.name, a.required) for a in review.arguments or ()] == [
        ("code", True),
        ("language", False),
        ("lines", False),
    ]
    rendered = await conn.get_prompt("review", {"code": "x = 1", "lines": "3"})
    assert [m.role for m in rendered.messages] == ["user", "assistant"]
    assert rendered.messages[0].content.text == "Review this python code in at most 3 lines:\nx = 1"
    with pytest.raises(MCPError, match="lines"):
        await conn.get_prompt("review", {"code": "x", "lines": "many"})
    with pytest.raises(MCPError, match="code"):
        await conn.get_prompt("review", {})
    with pytest.raises(MCPError, match="Unknown prompt"):
        await conn.get_prompt("nope", {})


async def check_subscription_legacy(conn: Any, updates: list[str]) -> None:
    """``resources/subscribe``, then ``notifications/resources/updated`` when the run ends."""
    async with anyio.create_task_group() as tg:
        run_id = await start_and_get_run_id(conn, tg, "sleepy", {"seconds": 0.5})
        uri = f"nexus://runs/{run_id}"
        with warnings.catch_warnings():  # deprecated as of 2026-07-28, current in 2025-11-25
            warnings.simplefilter("ignore", MCPDeprecationWarning)
            await conn.subscribe_resource(uri)
        with anyio.fail_after(15):
            while uri not in updates:  # noqa: ASYNC110 - filled by the client's message handler
                await anyio.sleep(0.02)
    assert (await read_json(conn, uri))["status"] == "completed"


async def check_subscription_modern(conn: Client) -> None:
    """``subscriptions/listen`` with the run's URI: an update arrives when the run ends."""
    async with anyio.create_task_group() as tg:
        run_id = await start_and_get_run_id(conn, tg, "sleepy", {"seconds": 0.5})
        uri = f"nexus://runs/{run_id}"
        async with conn.listen(resource_subscriptions=[uri]) as subscription:
            with anyio.fail_after(15):
                async for event in subscription:
                    if getattr(event, "uri", None) == uri:
                        break
    assert (await read_json(conn, uri))["status"] == "completed"


def collect_updates(updates: list[str]) -> Handler:
    async def handler(message: Any) -> None:
        if isinstance(message, types.ResourceUpdatedNotification):
            updates.append(message.params.uri)

    return handler
