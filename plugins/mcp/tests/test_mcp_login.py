"""stdio takes its token from the CLI login when NEXUS_TOKEN is not set (``nexus login``).

Whatever the token's source, the core checks it on every request, and what the
server pushes by itself stops once it is revoked.

The ``nexus`` console script (the CLI plugin) logs in locally, the MCP server
over stdio finds the token through ``nexus_core.userconfig`` without importing
the CLI plugin, and ``nexus logout`` takes it away again.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any

import anyio
import mcp_types as types
import pytest
from _mcp_support import MODES, stdio_connection
from mcp.shared.exceptions import MCPDeprecationWarning, MCPError
from nexus_core import Nexus

from nexus_plugin_mcp.server import UNAUTHENTICATED

pytestmark = pytest.mark.anyio

SECURE = """
[nexus.services.security]
auth_enabled = true
providers = ["cli_token"]
default_roles = ["user"]
roles = { user = ["workflow:*:execute", "runs:read", "events:read"] }
"""


def _nexus() -> list[str]:
    script = Path(sys.executable).parent / "nexus"
    if script.exists():
        return [str(script)]
    found = shutil.which("nexus")
    return [found] if found else [sys.executable, "-m", "nexus_plugin_cli"]


@pytest.mark.parametrize("mode", MODES)
async def test_stdio_uses_the_cli_login(example_app: Path, mode: str) -> None:
    if importlib.util.find_spec("nexus_plugin_cli") is None:
        pytest.skip("`nexus login` comes from the CLI plugin (nexus-plugin-cli), not installed")
    home = example_app.parent
    (home / "nexus.toml").write_text(SECURE, encoding="utf-8")
    shared = {
        "NEXUS_STORAGE": f"sqlite:///{home / 'nexus.db'}",  # the token's record outlives login
        "NEXUS_CONFIG_HOME": str(home / "user-config"),
    }
    env = {k: v for k, v in os.environ.items() if not k.startswith(("NEXUS_", "XDG_"))}
    env.update(shared, NEXUS_APP=str(example_app))

    def nexus(*args: str) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            [*_nexus(), *args], capture_output=True, text=True, cwd=home, env=env, timeout=60
        )
        assert done.returncode == 0, done.stderr
        return done

    async with stdio_connection(example_app, mode, **shared) as conn:  # not logged in
        with pytest.raises(MCPError, match="authentication failed") as caught:
            await conn.list_tools()
        assert caught.value.code == UNAUTHENTICATED
        assert "nexus login" in str(caught.value)

    assert "authenticated as ada" in nexus("login", "--principal", "ada").stderr
    assert (home / "user-config" / "tokens" / "local").is_file()
    async with stdio_connection(example_app, mode, **shared) as conn:
        names = {tool.name for tool in (await conn.list_tools()).tools}
        assert {"greet", "sleepy"} <= names
        ok = await conn.call_tool("greet", {"name": "Ada"})
        assert ok.structured_content == {"result": "Hello, Ada."}

    nexus("logout")
    async with stdio_connection(example_app, mode, **shared) as conn:
        with pytest.raises(MCPError, match="authentication failed") as caught:
            await conn.call_tool("greet", {"name": "Ada"})
        assert caught.value.code == UNAUTHENTICATED

    # NEXUS_TOKEN, when set, is used instead of the login (and is not second-guessed).
    nexus("login", "--principal", "ada")
    async with stdio_connection(example_app, mode, **shared, NEXUS_TOKEN="nxc_wrong") as conn:
        with pytest.raises(MCPError, match="authentication failed"):
            await conn.list_tools()


def _login_then_another_app(example_app: Path, tmp_path: Path) -> tuple[Path, str]:
    """``nexus login`` for the example app; another app (its own database); the config home."""
    home = example_app.parent
    (home / "nexus.toml").write_text(SECURE, encoding="utf-8")
    config_home = str(home / "user-config")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("NEXUS_", "XDG_"))}
    env.update(
        NEXUS_APP=str(example_app),
        NEXUS_STORAGE=f"sqlite:///{home / 'nexus.db'}",
        NEXUS_CONFIG_HOME=config_home,
    )
    done = subprocess.run(
        [*_nexus(), "login", "--principal", "ada"],
        capture_output=True,
        text=True,
        cwd=home,
        env=env,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    other = tmp_path / "other"
    other.mkdir()
    elsewhere = other / "mcp_app.py"
    elsewhere.write_bytes(example_app.read_bytes())
    return elsewhere, config_home


async def test_a_login_token_another_application_refuses_is_not_dropped(
    example_app: Path, tmp_path: Path
) -> None:
    # One local login serves every application; one that does not know the token (here:
    # another database, authentication off) refuses it on every request, with what to do,
    # instead of serving the agent as the anonymous caller.
    if importlib.util.find_spec("nexus_plugin_cli") is None:
        pytest.skip("`nexus login` comes from the CLI plugin (nexus-plugin-cli), not installed")
    elsewhere, config_home = _login_then_another_app(example_app, tmp_path)
    async with stdio_connection(elsewhere, "modern", NEXUS_CONFIG_HOME=config_home) as conn:
        with pytest.raises(MCPError, match="authentication failed") as caught:
            await conn.call_tool("greet", {"name": "Ada"})
        assert caught.value.code == UNAUTHENTICATED
        assert "nexus login" in str(caught.value) and "nexus logout" in str(caught.value)


KEYS = """
[nexus.services.security]
auth_enabled = true
providers = ["api_key"]
recheck_interval = 0.2
default_roles = ["user"]
roles = { user = ["workflow:*:execute", "runs:read", "events:read"] }
"""


async def test_stdio_resource_subscriptions_end_when_the_key_is_revoked(example_app: Path) -> None:
    # Requests on stdio are authenticated one by one; what the server pushes on its own
    # (resource updates) stops once the key is revoked, and the client is told why.
    home = example_app.parent
    await anyio.Path(home / "nexus.toml").write_text(KEYS, encoding="utf-8")
    storage = f"sqlite:///{home / 'nexus.db'}"
    control = Nexus(
        "control",
        storage=storage,
        autoload=False,
        env={},
        config={"services": {"security": {"providers": ["api_key"]}}},
    )
    notices: list[str] = []

    async def on_message(message: Any) -> None:
        if isinstance(message, types.LoggingMessageNotification):
            notices.append(str(message.params.data))

    async with control:
        key, record = await control.security.issue_api_key("eve", roles=["user"])
        async with stdio_connection(
            example_app,
            "legacy",
            message_handler=on_message,
            NEXUS_STORAGE=storage,
            NEXUS_TOKEN=key,
        ) as conn:
            ok = await conn.call_tool("greet", {"name": "Eve"})
            uri = f"nexus://runs/{ok.meta['nexus/runId']}"
            with warnings.catch_warnings():  # deprecated as of 2026-07-28, current in 2025-11-25
                warnings.simplefilter("ignore", MCPDeprecationWarning)
                await conn.subscribe_resource(uri)
                assert await control.security.revoke(record.id)
                with anyio.fail_after(15):
                    while not notices:  # noqa: ASYNC110 - filled by the client's handler
                        await anyio.sleep(0.05)
                assert notices == ["resource subscriptions ended: this API key has been revoked"]
                with pytest.raises(MCPError, match="authentication failed: .*revoked"):
                    await conn.subscribe_resource(uri)
