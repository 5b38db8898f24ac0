"""MCP sessions over HTTP belong to their principal and live only as long as its credentials.

The core's own security layer with API keys: a 2025-11-25 session opened by
one principal is refused to every other (404, as an unknown session, and
audited); a session whose key is revoked is told why and closed, and its id
then answers 404 with that reason; a 2026-07-28 listen stream ends with the
reason. The ``WWW-Authenticate`` challenge and the protected resource metadata
name the configured URL, or the server's own address, never the ``Host``
header a client sent.
"""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import anyio
import httpx
import httpx2
import mcp_types as types
import msgspec
import pytest
from _mcp_support import http_connection, running_http
from mcp import ClientSession
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError
from nexus_core import Nexus
from nexus_core.config import RateLimitRule

pytestmark = pytest.mark.anyio

ALICE, BOB = "nxk_alice", "nxk_bob"
ACCEPT = {"Accept": "application/json, text/event-stream"}
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
INITIALIZED = {"jsonrpc": "2.0", "method": "notifications/initialized"}
#: What the core's API key provider says of a revoked key.
REVOKED = "this API key has been revoked"
LIST_TOOLS = {"jsonrpc": "2.0", "id": 2, "method": "tools/list", "params": {}}


def _key(principal: str, key: str) -> dict[str, Any]:
    return {
        "principal": principal,
        "sha256": hashlib.sha256(key.encode()).hexdigest(),
        "tenant": "acme",
        "roles": ["user"],
    }


def secured_app() -> Nexus:
    """API keys for alice and bob (one tenant, same role); a fast credential re-check."""
    app = Nexus(
        "sessions",
        storage="memory://",
        autoload=False,
        env={},
        config={
            "services": {
                "security": {
                    "auth_enabled": True,
                    "providers": ["api_key"],
                    "recheck_interval": 0.2,
                    "roles": {"user": ["workflow:*:execute", "runs:read", "events:read"]},
                    "api_key": {"keys": [_key("alice", ALICE), _key("bob", BOB)]},
                }
            }
        },
    )

    @app.workflow
    def greet(name: str) -> str:
        """Greet someone."""
        return f"Hello, {name}."

    @app.workflow
    async def sleepy(seconds: float) -> float:
        """Sleep, then say how long."""
        await anyio.sleep(seconds)
        return seconds

    return app


async def _open_session(http: httpx.AsyncClient, url: str, key: str) -> str:
    """Initialize a 2025-11-25 session with raw requests as ``key``; its id."""
    opened = await http.post(url, json=INIT, headers={**ACCEPT, "X-API-Key": key})
    assert opened.status_code == 200, opened.text
    session = opened.headers["mcp-session-id"]
    headers = {**ACCEPT, "X-API-Key": key, "Mcp-Session-Id": session}
    done = await http.post(url, json=INITIALIZED, headers=headers)
    assert done.status_code == 202, done.text
    return session


@asynccontextmanager
async def legacy_client(
    url: str, token: str, on_log: Callable[[Any], Awaitable[None]]
) -> AsyncIterator[tuple[ClientSession, list[str]]]:
    """The ``mcp`` client on 2025-11-25 with a bearer token; the session ids it was given."""
    sessions: list[str] = []

    async def remember(response: httpx2.Response) -> None:
        found = response.headers.get("mcp-session-id")
        if found and found not in sessions:
            sessions.append(found)

    headers = {"Authorization": f"Bearer {token}"}
    timeout = httpx2.Timeout(30.0, read=60.0)
    async with (
        httpx2.AsyncClient(
            headers=headers, timeout=timeout, event_hooks={"response": [remember]}
        ) as http,
        streamable_http_client(url, http_client=http) as (read, write),
        ClientSession(read, write, logging_callback=on_log) as session,
    ):
        await session.initialize()
        yield session, sessions


def _as(key: str, session: str) -> dict[str, str]:
    return {**ACCEPT, "X-API-Key": key, "Mcp-Session-Id": session}


async def test_a_session_belongs_to_the_principal_that_opened_it() -> None:
    app = secured_app()
    async with running_http(app) as url, httpx.AsyncClient(timeout=30) as http:
        session = await _open_session(http, url, ALICE)

        # Bob, authenticated, with Alice's session id: refused as an unknown session on
        # every method (no requests, no stream of her notifications, no closing it).
        for method in ("POST", "GET", "DELETE"):
            body = LIST_TOOLS if method == "POST" else None
            refused = await http.request(method, url, json=body, headers=_as(BOB, session))
            assert refused.status_code == 404, (method, refused.text)
            message = refused.json()["error"]["message"]
            assert message.startswith("Session not found"), message
            assert "alice" not in message

        # Alice's session is untouched by all that.
        mine = await http.post(url, json=LIST_TOOLS, headers=_as(ALICE, session))
        assert mine.status_code == 200, mine.text
        assert '"greet"' in mine.text

        records = await app.security.query_audit(principal="bob")
        assert [r.action for r in records].count("mcp.session") == 3
        assert all(r.outcome == "not_found" for r in records if r.action == "mcp.session")


async def test_a_session_is_closed_with_the_reason_when_its_key_is_revoked() -> None:
    app = secured_app()
    notices: list[str] = []

    async def on_log(params: types.LoggingMessageNotificationParams) -> None:
        notices.append(str(params.data))

    async with running_http(app) as url:
        key, record = await app.security.issue_api_key("eve", roles=["user"], tenant="acme")
        spare, _ = await app.security.issue_api_key("eve", roles=["user"], tenant="acme")
        with pytest.raises(BaseException):  # noqa: B017,PT011,PT012 - the client's, in groups
            async with legacy_client(url, key, on_log) as (conn, sessions):
                (session,) = sessions
                ok = await conn.call_tool("greet", {"name": "Eve"})
                assert ok.structured_content == {"result": "Hello, Eve."}
                assert await app.security.revoke(record.id)
                with anyio.fail_after(10):
                    while not notices:  # noqa: ASYNC110 - filled by the client's callback
                        await anyio.sleep(0.02)
                await conn.call_tool("greet", {"name": "again"})  # the session is gone
        assert notices == [f"the MCP session was closed: {REVOKED}"]

        async with httpx.AsyncClient(timeout=30) as http:
            # The revoked key itself is refused outright ...
            revoked = await http.post(url, json=LIST_TOOLS, headers=_as(key, session))
            assert revoked.status_code == 401
            # ... and Eve's other key learns why the session is gone.
            gone = await http.post(url, json=LIST_TOOLS, headers=_as(spare, session))
            assert gone.status_code == 404
            message = gone.json()["error"]["message"]
            assert f"the MCP session was closed: {REVOKED}" in message
            # Anyone else gets the answer for an unknown session.
            other = await http.post(url, json=LIST_TOOLS, headers=_as(BOB, session))
            assert other.status_code == 404
            assert "revoked" not in other.json()["error"]["message"]


def _errors(exc: BaseException | None) -> list[BaseException]:
    """``exc``, the exceptions in its groups, and their causes."""
    if exc is None:
        return []
    found = [exc, *_errors(exc.__cause__)]
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            found += _errors(inner)
    return found


async def test_a_listen_stream_ends_with_the_reason_when_its_key_is_revoked() -> None:
    app = secured_app()
    async with running_http(app) as url:
        key, record = await app.security.issue_api_key("eve", roles=["user"], tenant="acme")
        # The client reports the stream's end as lost, caused by the server's error.
        with pytest.raises(BaseException) as caught:  # noqa: PT011, PT012
            async with (
                http_connection(url, "modern", token=key) as conn,
                conn.listen(tools_list_changed=True) as subscription,
            ):
                assert await app.security.revoke(record.id)
                with anyio.fail_after(10):
                    async for _event in subscription:
                        pass
        reasons = [str(e) for e in _errors(caught.value) if isinstance(e, MCPError)]
        assert f"the subscription ended: {REVOKED}" in reasons, caught.value


async def test_resource_metadata_never_comes_from_the_host_header() -> None:
    app = secured_app()
    evil = {**ACCEPT, "Host": "evil.example"}
    async with running_http(app) as url, httpx.AsyncClient(timeout=30) as http:
        base = url.removesuffix("/mcp")
        missing = await http.post(url, json=INIT, headers=evil)
        assert missing.status_code == 401
        challenge = missing.headers["www-authenticate"]
        assert "evil.example" not in challenge
        assert f'resource_metadata="{base}/.well-known/oauth-protected-resource/mcp"' in challenge
        metadata = await http.get(base + "/.well-known/oauth-protected-resource/mcp", headers=evil)
        assert metadata.json()["resource"] == url

    configured = "https://mcp.example.com/mcp"
    async with (
        running_http(secured_app(), resource_url=configured) as url,
        httpx.AsyncClient(timeout=30) as http,
    ):
        missing = await http.post(url, json=INIT, headers=evil)
        challenge = missing.headers["www-authenticate"]
        expected = "https://mcp.example.com/.well-known/oauth-protected-resource/mcp"
        assert f'resource_metadata="{expected}"' in challenge
        base = url.removesuffix("/mcp")
        metadata = await http.get(base + "/.well-known/oauth-protected-resource", headers=evil)
        assert metadata.json()["resource"] == configured


def _limited_per_client(app: Nexus, trusted: list[str]) -> None:
    """Two calls per client address, and ``trusted`` proxies whose X-Forwarded-For counts."""
    security = app.config.nexus.services.security
    app.config.nexus.services.security = msgspec.structs.replace(
        security,
        trusted_proxies=trusted,
        rate_limits=msgspec.convert(
            {"per_client": {"requests": 2, "per": 3600}}, type(security.rate_limits)
        ),
    )


@pytest.mark.parametrize("trusted", [True, False], ids=["trusted-proxy", "untrusted-peer"])
async def test_the_rate_limit_is_per_client_as_the_core_resolves_it(trusted: bool) -> None:
    # The endpoint hands the core the peer and X-Forwarded-For: behind a trusted proxy each
    # client has its own bucket; from any other peer the header is ignored, so it cannot
    # be used to get a fresh bucket per request (nor does the server believe it on its own).
    app = secured_app()
    _limited_per_client(app, ["127.0.0.1"] if trusted else [])
    call = {
        "jsonrpc": "2.0",
        "id": 3,
        "method": "tools/call",
        "params": {"name": "greet", "arguments": {"name": "Ada"}},
    }

    async def greet(http: httpx.AsyncClient, url: str, client: str) -> str:
        headers = {**ACCEPT, "X-API-Key": ALICE, "X-Forwarded-For": client}
        answer = await http.post(url, json=call, headers=headers)
        assert answer.status_code == 200, answer.text
        result = answer.json()["result"]
        if not result["isError"]:
            return "ok"
        assert result["content"][0]["text"].startswith("rate limited"), result
        return "limited"

    async with (
        running_http(app, stateless=True, json_response=True) as url,
        httpx.AsyncClient(timeout=30) as http,
    ):
        first = [await greet(http, url, "203.0.113.7") for _ in range(3)]
        assert first == ["ok", "ok", "limited"]
        second = [await greet(http, url, "198.51.100.9") for _ in range(2)]
        assert second == (["ok", "ok"] if trusted else ["limited", "limited"])


def _per_address(app: Nexus, **rules: dict[str, float]) -> None:
    security = app.config.nexus.services.security
    limits = msgspec.structs.replace(
        security.rate_limits,
        **{name: msgspec.convert(rule, RateLimitRule) for name, rule in rules.items()},
    )
    app.config.nexus.services.security = msgspec.structs.replace(security, rate_limits=limits)


async def test_opening_sessions_and_failing_to_authenticate_are_limited_per_client() -> None:
    # Each session holds a task and a re-check of its credentials: a client opens only so
    # many (the core's session_creation bucket); a client that keeps failing to authenticate
    # is refused for a while, right key or not. Both are a 429 with Retry-After, never a 500.
    app = secured_app()
    _per_address(
        app,
        session_creation={"requests": 2, "per": 3600, "burst": 2},
        failed_authentications={"requests": 2, "per": 3600, "burst": 2},
    )
    async with running_http(app) as url, httpx.AsyncClient(timeout=30) as http:
        opened = [
            await http.post(url, json=INIT, headers={**ACCEPT, "X-API-Key": ALICE})
            for _ in range(3)
        ]
        assert [a.status_code for a in opened] == [200, 200, 429], [a.text for a in opened]
        assert int(opened[2].headers["retry-after"]) >= 1
        assert "too many" in opened[2].json()["message"]
        # Requests in an open session are not session openings.
        session = opened[0].headers["mcp-session-id"]
        listed = await http.post(url, json=LIST_TOOLS, headers=_as(ALICE, session))
        assert listed.status_code == 200, listed.text

        wrong = [
            await http.post(url, json=LIST_TOOLS, headers=_as("nxk_wrong", session))
            for _ in range(3)
        ]
        assert [a.status_code for a in wrong] == [401, 401, 429], [a.text for a in wrong]
        locked = await http.post(url, json=LIST_TOOLS, headers=_as(ALICE, session))
        assert locked.status_code == 429, locked.text
        assert int(locked.headers["retry-after"]) >= 1


async def test_a_session_lives_as_long_as_the_newest_credential_of_its_principal() -> None:
    # A client that changes its credential (a refreshed token, a rotated key) keeps its
    # session; from then on the session is re-checked against the new one.
    app = secured_app()
    async with running_http(app) as url, httpx.AsyncClient(timeout=30) as http:
        old, _ = await app.security.issue_api_key("eve", roles=["user"], tenant="acme")
        new, record = await app.security.issue_api_key("eve", roles=["user"], tenant="acme")
        session = await _open_session(http, url, old)
        moved = await http.post(url, json=LIST_TOOLS, headers=_as(new, session))
        assert moved.status_code == 200, moved.text
        assert await app.security.revoke(record.id)
        # (A request with the old key now would move the session back to it: wait for the
        # core's record of the connection it closed instead.)
        with anyio.fail_after(10):
            while not any(  # noqa: ASYNC110 - polling the audit log, no event to wait on
                (r.reason or "").startswith("connection closed")
                for r in await app.security.query_audit(principal="eve")
            ):
                await anyio.sleep(0.05)
        answer = await http.post(url, json=LIST_TOOLS, headers=_as(old, session))
        assert answer.status_code == 404, answer.text
        assert f"the MCP session was closed: {REVOKED}" in answer.json()["error"]["message"]
