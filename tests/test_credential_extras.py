"""Credentials.extras: the request headers a provider may read, filled by the API and MCP channels.

The rule (``nexus_core.security.header_extras``) is checked with hypothesis;
then a provider that reads its own ``X-Shared-Secret`` header authenticates
over REST and over MCP (streamable HTTP at the gateway's ``/mcp``), both real
servers on an ephemeral port reached by real clients.
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st

from nexus_core import Nexus
from nexus_core.plugin import (
    AuthenticationError,
    AuthProviderSpec,
    Credentials,
    Principal,
    hookimpl,
)
from nexus_core.security import header_extras
from nexus_core.security.principal import EXCLUDED_HEADERS, MAX_EXTRA_LENGTH, MAX_EXTRAS

SECRET = "s3cret-for-robots"

_names = st.one_of(
    st.sampled_from(sorted(EXCLUDED_HEADERS)),
    st.sampled_from(["X-Shared-Secret", "X-Tenant", "Accept", "User-Agent", "Host"]),
    st.from_regex(r"[A-Za-z][A-Za-z0-9-]{0,20}", fullmatch=True),
)
_values = st.one_of(st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=40))
_headers = st.lists(
    st.tuples(_names, st.one_of(_values, st.just("x" * (MAX_EXTRA_LENGTH + 1)))), max_size=60
)


@given(_headers, st.booleans())
def test_header_extras_rule(headers: list[tuple[str, str]], as_bytes: bool) -> None:
    sent: list[tuple[Any, Any]] = (
        [(n.encode("latin-1"), v.encode("latin-1")) for n, v in headers] if as_bytes else headers
    )
    extras = header_extras(sent)
    assert len(extras) <= MAX_EXTRAS
    hop = {
        token.strip().lower()
        for name, value in headers
        if name.lower() == "connection"
        for token in value.split(",")
    }
    for name, value in extras.items():
        assert name == name.lower()
        assert name not in EXCLUDED_HEADERS and name not in hop
        assert len(value) <= MAX_EXTRA_LENGTH
        # the value is every value sent under that name, in order
        assert value == ", ".join(v for n, v in headers if n.lower() == name)


def test_header_extras_examples() -> None:
    extras = header_extras(
        [
            (b"Authorization", b"Bearer t"),
            (b"X-API-Key", b"k"),
            (b"Cookie", b"a=b"),
            (b"Connection", b"keep-alive, X-Drop-Me"),
            (b"X-Drop-Me", b"gone"),
            (b"X-Shared-Secret", b"one"),
            (b"x-shared-secret", b"two"),
            (b"X-Forwarded-For", b"10.0.0.1"),
        ]
    )
    assert extras == {"x-shared-secret": "one, two"}
    many = header_extras((f"x-h{i}", "v") for i in range(MAX_EXTRAS + 5))
    assert list(many) == [f"x-h{i}" for i in range(MAX_EXTRAS)]


# -- over the real channels ---------------------------------------------------------------


class SharedSecretProvider:
    """Authenticates whoever sends the shared secret in ``X-Shared-Secret``."""

    name = "shared_secret"

    def __init__(self, app: Nexus, config: Any = None) -> None:
        self.app = app

    async def authenticate(self, credentials: Credentials, channel: str) -> Principal | None:
        sent = credentials.extras.get("x-shared-secret")
        if sent is None:
            return None
        if sent != SECRET:
            raise AuthenticationError("wrong shared secret")
        return Principal(id="robot", roles=("robot",), provider=self.name)


class SharedSecretPlugin:
    @hookimpl
    def nexus_auth_providers(self) -> list[AuthProviderSpec]:
        return [AuthProviderSpec(name="shared_secret", factory=SharedSecretProvider)]


def _app() -> Nexus:
    for name in ("nexus_plugin_api", "nexus_plugin_mcp", "mcp"):
        pytest.importorskip(name, reason=f"needs {name} (the API and MCP channels)")
    app = Nexus(
        "extras",
        storage="memory://",
        autoload=False,
        env={},
        plugins=["nexus_plugin_api.plugin", "nexus_plugin_mcp.plugin", SharedSecretPlugin()],
        config={
            "channels": {"api": {"port": 0, "host": "127.0.0.1"}},
            "services": {
                "security": {
                    "auth_enabled": True,
                    "providers": ["shared_secret"],
                    "roles": {"robot": ["workflow:*:execute"]},
                }
            },
        },
    )

    @app.workflow
    def greet(name: str) -> str:
        """Greet someone."""
        return f"Hello, {name}."

    return app


@pytest.mark.anyio
async def test_provider_reads_a_custom_header_over_rest_and_mcp_http() -> None:
    app = _app()
    import httpx2
    from mcp import Client
    from mcp.client.streamable_http import streamable_http_client

    async with app.running(channels=["api"]):
        channel = app.channels["api"]
        url = channel.url
        try:
            async with httpx.AsyncClient(base_url=url, timeout=30) as http:
                ok = await http.post(
                    "/workflows/greet/runs",
                    json={"name": "Ada"},
                    headers={"X-Shared-Secret": SECRET},
                )
                assert ok.status_code == 200, ok.text
                assert ok.json()["output"] == "Hello, Ada."
                wrong = await http.post(
                    "/workflows/greet/runs",
                    json={"name": "Ada"},
                    headers={"X-Shared-Secret": "guess"},
                )
                assert wrong.status_code == 401, wrong.text
                assert "wrong shared secret" in wrong.text
                none = await http.post("/workflows/greet/runs", json={"name": "Ada"})
                assert none.status_code == 401, none.text

            headers = {"X-Shared-Secret": SECRET}
            async with (
                httpx2.AsyncClient(headers=headers, timeout=30) as mcp_http,
                Client(streamable_http_client(f"{url}/mcp", http_client=mcp_http)) as client,
            ):
                tools = await client.list_tools()
                assert [tool.name for tool in tools.tools] == ["greet"]
                result = await client.call_tool("greet", {"name": "Bo"})
                assert not result.is_error, result
                assert "Hello, Bo." in str(result.content)

            async with httpx2.AsyncClient(timeout=30) as bare:
                refused = await bare.post(
                    f"{url}/mcp",
                    headers={"X-Shared-Secret": "guess", "Accept": "application/json"},
                    json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"},
                )
                assert refused.status_code == 401, refused.text
        finally:
            channel.stop()
            await channel.wait_stopped()
