"""The official MCP Inspector CLI (pinned) lists and calls a tool over stdio and HTTP."""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any

import anyio
import pytest
from _mcp_support import load_example, running_http

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

INSPECTOR = "@modelcontextprotocol/inspector@2.12.0"


def _npx() -> str:
    npx = shutil.which("npx")
    if npx is None:
        if os.environ.get("NEXUS_REQUIRE_SERVICES") == "1":
            pytest.fail("npx (Node.js) is required for the MCP Inspector test")
        pytest.skip("npx (Node.js) is not installed: the MCP Inspector CLI cannot run")
    return npx


async def _inspect(target: list[str], *args: str) -> Any:
    command = [_npx(), "-y", INSPECTOR, "--cli", *target, *args]
    with anyio.fail_after(180):
        done = await anyio.run_process(command, check=False)
    out = done.stdout.decode()
    assert done.returncode == 0, f"{command}\nstdout: {out}\nstderr: {done.stderr.decode()}"
    return json.loads(out)


def _check(listed: Any, called: Any) -> None:
    tools = {tool["name"]: tool for tool in listed["tools"]}
    assert tools["greet"]["inputSchema"]["required"] == ["name"]
    assert tools["greet"]["annotations"]["readOnlyHint"] is True
    assert called["isError"] is False
    assert called["structuredContent"] == {"result": "Hello, Ada."}


async def test_inspector_over_stdio(example_app: Path) -> None:
    target = [
        sys.executable,
        "-m",
        "nexus_plugin_mcp",
        str(example_app),
        "-e",
        "NEXUS_STORAGE=memory://",
    ]
    listed = await _inspect(target, "--method", "tools/list")
    called = await _inspect(
        target, "--method", "tools/call", "--tool-name", "greet", "--tool-arg", "name=Ada"
    )
    _check(listed, called)


async def test_inspector_over_http(example_app: Path) -> None:
    _npx()
    async with running_http(load_example(example_app)) as url:
        target = [url, "--transport", "http"]
        listed = await _inspect(target, "--method", "tools/list")
        called = await _inspect(
            target, "--method", "tools/call", "--tool-name", "greet", "--tool-arg", "name=Ada"
        )
    _check(listed, called)
