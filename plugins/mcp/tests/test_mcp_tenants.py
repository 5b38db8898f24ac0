"""Tenant isolation on MCP: the core's own security layer, two tenants, one HTTP endpoint.

Another tenant's run is not readable as a resource, cannot be subscribed to,
and its updates never reach a client, in both protocol eras.
"""

from __future__ import annotations

import hashlib
import warnings
from typing import Any

import anyio
import pytest
from _mcp_support import (
    MODES,
    collect_updates,
    http_connection,
    read_json,
    running_http,
    start_and_get_run_id,
)
from mcp.shared.exceptions import MCPDeprecationWarning, MCPError
from nexus_core import Nexus
from nexus_core.security import Credentials

from nexus_plugin_mcp.server import FORBIDDEN, NexusMCP

pytestmark = pytest.mark.anyio

ALICE, BOB, CAROL = "nxk_alice", "nxk_bob", "nxk_carol"


def _key(principal: str, key: str, tenant: str, *roles: str) -> dict[str, Any]:
    return {
        "principal": principal,
        "sha256": hashlib.sha256(key.encode()).hexdigest(),
        "tenant": tenant,
        "roles": list(roles),
    }


def tenants_app() -> Nexus:
    """Alice (tenant acme) and Bob (tenant globex) may run and watch; Carol may only run."""
    app = Nexus(
        "tenants",
        storage="memory://",
        autoload=False,
        env={},
        config={
            "services": {
                "security": {
                    "auth_enabled": True,
                    "providers": ["api_key"],
                    "roles": {
                        "user": ["workflow:*:execute", "runs:read", "events:read"],
                        "runner": ["workflow:*:execute"],
                    },
                    "api_key": {
                        "keys": [
                            _key("alice", ALICE, "acme", "user"),
                            _key("bob", BOB, "globex", "user"),
                            _key("carol", CAROL, "acme", "runner"),
                        ]
                    },
                }
            }
        },
    )

    @app.workflow
    async def sleepy(seconds: float) -> float:
        """Sleep, then say how long."""
        await anyio.sleep(seconds)
        return seconds

    @app.workflow
    def greet(name: str) -> str:
        """Greet someone."""
        return f"Hello, {name}."

    return app


async def _subscribe(conn: Any, uri: str) -> None:
    with warnings.catch_warnings():  # deprecated as of 2026-07-28, current in 2025-11-25
        warnings.simplefilter("ignore", MCPDeprecationWarning)
        await conn.subscribe_resource(uri)


async def _follow(conn: Any, mode: str, uri: str) -> None:
    if mode == "legacy":
        await _subscribe(conn, uri)
    else:
        async with conn.listen(resource_subscriptions=[uri]):
            pass


async def _marker_update(conn: Any, mode: str, updates: list[str]) -> str:
    """Start a run, follow it, cancel it: return its URI once its update is in ``updates``.

    The update comes from an event published now, after the caller's earlier
    events, on the same subscription (legacy) or a new listen stream.
    """
    call = anyio.CancelScope()
    found: list[str] = []
    started = anyio.Event()

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        if not found and message and message.startswith("run "):
            found.append(f"nexus://runs/{message.split()[1]}")
            started.set()

    async def run() -> None:
        with call:
            await conn.call_tool("sleepy", {"seconds": 60}, progress_callback=on_progress)

    async with anyio.create_task_group() as tg:
        tg.start_soon(run)
        with anyio.fail_after(15):
            await started.wait()
        (uri,) = found
        if mode == "legacy":
            await _subscribe(conn, uri)
            call.cancel()  # run.cancelled: an update after the subscription
        else:
            async with conn.listen(resource_subscriptions=[uri]) as stream:
                call.cancel()
                with anyio.fail_after(15):
                    async for event in stream:
                        seen = getattr(event, "uri", None)
                        if seen is not None:
                            updates.append(seen)
                        if seen == uri:
                            break
    with anyio.fail_after(15):
        while uri not in updates:  # noqa: ASYNC110 - the legacy handler appends it
            await anyio.sleep(0.02)
    return uri


@pytest.mark.parametrize("mode", MODES)
async def test_another_tenants_runs_are_invisible(mode: str) -> None:
    app = tenants_app()
    alice_updates: list[str] = []
    bob_updates: list[str] = []
    async with (
        running_http(app) as url,
        http_connection(
            url, mode, token=ALICE, message_handler=collect_updates(alice_updates)
        ) as alice,
        http_connection(url, mode, token=BOB, message_handler=collect_updates(bob_updates)) as bob,
    ):
        done = await alice.call_tool("greet", {"name": "Alice"})
        theirs = f"nexus://runs/{done.meta['nexus/runId']}"
        assert (await read_json(alice, theirs))["output"] == "Hello, Alice."
        with pytest.raises(MCPError, match="Resource not found"):
            await bob.read_resource(theirs)

        async with anyio.create_task_group() as tg:
            # Both run at once; each follows its own run, and Bob tries Alice's too.
            alice_run = await start_and_get_run_id(alice, tg, "sleepy", {"seconds": 0.6})
            bob_run = await start_and_get_run_id(bob, tg, "sleepy", {"seconds": 0.3})
            alice_uri, bob_uri = f"nexus://runs/{alice_run}", f"nexus://runs/{bob_run}"
            with pytest.raises(MCPError, match="Resource not found"):
                await _follow(bob, mode, alice_uri)
            if mode == "legacy":
                await _subscribe(bob, bob_uri)
                await _subscribe(alice, alice_uri)
                with anyio.fail_after(15):
                    while alice_uri not in alice_updates or bob_uri not in bob_updates:  # noqa: ASYNC110
                        await anyio.sleep(0.02)
            else:
                async with (
                    bob.listen(resource_subscriptions=[bob_uri]) as bob_stream,
                    alice.listen(resource_subscriptions=[alice_uri]) as alice_stream,
                ):
                    for stream, uri, seen in (
                        (bob_stream, bob_uri, bob_updates),
                        (alice_stream, alice_uri, alice_updates),
                    ):
                        with anyio.fail_after(15):
                            async for event in stream:
                                found = getattr(event, "uri", None)
                                if found is not None:
                                    seen.append(found)
                                if found == uri:
                                    break
        # Both runs are over. A barrier instead of a wait: a marker update for Bob,
        # published after everything of Alice's run, so it comes after any leak of it.
        before = len(bob_updates)
        marker = await _marker_update(bob, mode, bob_updates)
        assert bob_updates[before] == marker, bob_updates  # the next thing Bob receives
        assert set(bob_updates) == {bob_uri, marker}
        assert set(alice_updates) == {alice_uri}
        assert (await read_json(bob, bob_uri))["status"] == "completed"
        with pytest.raises(MCPError, match="Resource not found"):
            await bob.read_resource(alice_uri)


@pytest.mark.parametrize("mode", MODES)
async def test_subscribing_needs_events_read(mode: str) -> None:
    app = tenants_app()
    async with running_http(app) as url, http_connection(url, mode, token=CAROL) as carol:
        done = await carol.call_tool("greet", {"name": "Carol"})
        uri = f"nexus://runs/{done.meta['nexus/runId']}"
        assert (await read_json(carol, uri))["status"] == "completed"  # her own run
        with pytest.raises(MCPError, match="events:read") as caught:
            await _follow(carol, mode, uri)
        assert caught.value.code == FORBIDDEN


async def test_run_events_are_subscribed_on_the_clients_behalf() -> None:
    """Even a URI of another tenant's run in a client's set never lets its events through."""
    app = tenants_app()
    async with app:
        mcp = NexusMCP(app)
        alice = await app.security.authenticate(Credentials(bearer=ALICE), "mcp")
        bob = await app.security.authenticate(Credentials(bearer=BOB), "mcp")
        uris: set[str] = set()
        async with mcp._run_events(alice, uris) as for_alice, mcp._run_events(bob, uris) as for_bob:
            started = await app.invoke(
                "sleepy",
                {"seconds": 0.1},
                credentials=Credentials(bearer=ALICE),
                channel="mcp",
                wait=False,
            )
            uris.add(f"nexus://runs/{started.run_id}")  # before the run starts: nothing missed
            kinds = []
            with anyio.fail_after(10):
                async for event in for_alice:
                    kinds.append(event.type)
                    if event.type == "run.completed":
                        break
            assert kinds[0] == "run.started"
            with anyio.move_on_after(0.3):
                async for event in for_bob:
                    pytest.fail(f"bob heard of alice's run: {event.type}")


@pytest.mark.parametrize("mode", MODES)
async def test_closing_a_client_ends_its_host_subscriptions(mode: str) -> None:
    app = tenants_app()
    async with running_http(app) as url:
        bus = app._services().events  # the in-process bus counts its subscribers
        baseline = bus.subscriber_count
        async with http_connection(url, mode, token=ALICE) as alice:
            done = await alice.call_tool("greet", {"name": "Alice"})
            uri = f"nexus://runs/{done.meta['nexus/runId']}"
            if mode == "legacy":
                await _subscribe(alice, uri)
                assert bus.subscriber_count == baseline + 1
            else:
                async with alice.listen(resource_subscriptions=[uri]):
                    assert bus.subscriber_count == baseline + 1
        with anyio.fail_after(10):
            while bus.subscriber_count != baseline:  # noqa: ASYNC110
                await anyio.sleep(0.02)
