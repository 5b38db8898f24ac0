"""Server-Sent Events (with Last-Event-ID resume) and the WebSocket protocol, over real sockets."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import anyio
import httpx
import pytest
from api_apps import build
from api_support import serving
from httpx_sse import ServerSentEvent, aconnect_sse
from nexus_core import Nexus
from nexus_core.errors import AuthenticationError
from nexus_core.security import Credentials, Principal
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import InvalidStatus

pytestmark = pytest.mark.anyio


async def _events(source: Any) -> AsyncIterator[ServerSentEvent]:
    """The events of an SSE stream, once its first (``retry``) frame says it is subscribed."""
    stream = source.aiter_sse()
    with anyio.fail_after(10):
        first = await stream.__anext__()
    assert first.retry == 3000
    return stream  # type: ignore[no-any-return]


async def _take(events: AsyncIterator[ServerSentEvent], n: int) -> list[ServerSentEvent]:
    got = []
    with anyio.fail_after(10):
        async for event in events:
            got.append(event)
            if len(got) == n:
                break
    return got


async def test_sse_filters_by_type(client: httpx.AsyncClient) -> None:
    async with aconnect_sse(client, "GET", "/events", params={"types": "run.*"}) as source:
        assert source.response.headers["content-type"].startswith("text/event-stream")
        events = await _events(source)
        run = (await client.post("/workflows/greet/runs", json={"name": "Ada"})).json()
        got = await _take(events, 2)
    kinds = [e.event for e in got]
    assert kinds == ["run.started", "run.completed"]
    for sse in got:
        data = json.loads(sse.data)
        assert data["id"] == sse.id
        assert data["type"] == sse.event
        assert data["run_id"] == run["run_id"]
    assert json.loads(got[-1].data)["data"]["output"] == "Hello, Ada."


async def test_sse_reconnect_with_last_event_id_misses_nothing(client: httpx.AsyncClient) -> None:
    async def post(name: str) -> str:
        response = await client.post("/workflows/greet/runs", json={"name": name})
        return str(response.json()["run_id"])

    types = {"types": "run.started,run.completed"}
    async with aconnect_sse(client, "GET", "/events", params=types) as source:
        events = await _events(source)
        runs = [await post("a"), await post("b")]
        before = await _take(events, 4)
    assert [json.loads(e.data)["run_id"] for e in before] == [r for r in runs for _ in (0, 1)]
    last_id = before[-1].id

    missed = [await post(name) for name in ("c", "d", "e")]  # while disconnected

    async with aconnect_sse(
        client, "GET", "/events", params=types, headers={"Last-Event-ID": last_id}
    ) as source:
        events = await _events(source)
        replayed = await _take(events, 6)
        live_run = await post("f")
        live = await _take(events, 2)
    assert [(json.loads(e.data)["run_id"], e.event) for e in replayed] == [
        (run, kind) for run in missed for kind in ("run.started", "run.completed")
    ]
    ids = [e.id for e in replayed + live]
    assert len(ids) == len(set(ids)) and last_id not in ids
    assert [json.loads(e.data)["run_id"] for e in live] == [live_run, live_run]


async def test_run_events_replay_a_finished_run_and_end(client: httpx.AsyncClient) -> None:
    run = (await client.post("/workflows/add/runs", json={"a": 1, "b": 2})).json()
    async with aconnect_sse(client, "GET", f"/runs/{run['run_id']}/events") as source:
        got = [e async for e in await _events(source)]  # ends by itself with the run
    kinds = [e.event for e in got]
    assert kinds[0] == "run.started" and kinds[-1] == "run.completed"
    assert "node.finished" in kinds
    assert {json.loads(e.data)["run_id"] for e in got} == {run["run_id"]}
    missing = await client.get("/runs/nope/events")
    assert missing.status_code == 404


async def test_run_events_follow_a_live_run(client: httpx.AsyncClient) -> None:
    started = await client.post(
        "/workflows/slow/runs", json={"seconds": 0.5}, headers={"Prefer": "respond-async"}
    )
    run_id = started.json()["run_id"]
    with anyio.fail_after(10):
        async with aconnect_sse(client, "GET", f"/runs/{run_id}/events") as source:
            got = [e async for e in await _events(source)]
    kinds = [e.event for e in got]
    assert kinds.count("run.started") == 1
    assert kinds[-1] == "run.completed"
    assert len({e.id for e in got}) == len(got)


async def test_sse_keepalive_comments() -> None:
    app = build(api={"sse_keepalive": 0.1})
    seen = b""
    async with (
        serving(app) as url,
        httpx.AsyncClient(base_url=url) as http,
        http.stream("GET", "/events") as response,
    ):
        with anyio.fail_after(5):
            async for chunk in response.aiter_bytes():
                seen += chunk
                if seen.count(b": keepalive") >= 2:
                    break
    assert seen.startswith(b"retry: 3000\n\n")


def _ws_url(url: str) -> str:
    return url.replace("http://", "ws://") + "/ws"


async def _recv(ws: ClientConnection) -> dict[str, Any]:
    with anyio.fail_after(10):
        return json.loads(await ws.recv())  # type: ignore[no-any-return]


async def _status(url: str, run_id: str, wanted: str) -> bool:
    """Wait (up to 10 s) until ``GET /runs/{run_id}`` reports ``wanted``."""
    async with httpx.AsyncClient(base_url=url) as http:
        with anyio.fail_after(10):
            while (await http.get(f"/runs/{run_id}")).json()["status"] != wanted:  # noqa: ASYNC110
                await anyio.sleep(0.02)
    return True


async def test_ws_run_subscribe_unsubscribe_cancel(server: tuple[Nexus, str]) -> None:
    _, url = server
    async with connect(_ws_url(url)) as ws:
        await ws.send(
            json.dumps({"type": "run", "id": "r1", "workflow": "greet", "inputs": {"name": "Ada"}})
        )
        result = await _recv(ws)
        assert result["type"] == "result" and result["id"] == "r1"
        assert result["run"]["output"] == "Hello, Ada."

        await ws.send(json.dumps({"type": "subscribe", "id": "s1", "types": ["run.*"]}))
        assert await _recv(ws) == {"type": "result", "id": "s1", "subscription": "s1"}
        await ws.send(
            json.dumps({"type": "run", "id": "r2", "workflow": "add", "inputs": {"a": 5}})
        )
        messages = [await _recv(ws) for _ in range(3)]
        events = [m for m in messages if m["type"] == "event"]
        assert [m["event"]["type"] for m in events] == ["run.started", "run.completed"]
        assert all(m["subscription"] == "s1" for m in events)
        (result,) = [m for m in messages if m["type"] == "result"]
        assert result["run"]["output"] == 5

        await ws.send(json.dumps({"type": "unsubscribe", "id": "u1", "subscription": "s1"}))
        assert (await _recv(ws))["type"] == "result"

        await ws.send(
            json.dumps(
                {
                    "type": "run",
                    "id": "r3",
                    "workflow": "slow",
                    "inputs": {"seconds": 30},
                    "wait": False,
                }
            )
        )
        pending = await _recv(ws)
        run_id = pending["run"]["run_id"]
        assert pending["run"]["status"] in ("pending", "running")
        assert await _status(url, run_id, "running")  # cancelled mid-run, not before it began
        await ws.send(json.dumps({"type": "cancel", "id": "c1", "run_id": run_id}))
        cancelled = await _recv(ws)
        assert cancelled["id"] == "c1" and cancelled["cancelled"] is True


async def test_ws_runs_concurrently(server: tuple[Nexus, str]) -> None:
    _, url = server
    async with connect(_ws_url(url)) as ws:
        slow = {"type": "run", "id": "slow", "workflow": "slow", "inputs": {"seconds": 1}}
        fast = {"type": "run", "id": "fast", "workflow": "add", "inputs": {"a": 1}}
        await ws.send(json.dumps(slow))
        await ws.send(json.dumps(fast))
        first, second = await _recv(ws), await _recv(ws)
    assert [first["id"], second["id"]] == ["fast", "slow"]


async def test_ws_errors_are_problems_and_keep_the_connection(server: tuple[Nexus, str]) -> None:
    _, url = server
    async with connect(_ws_url(url)) as ws:
        for garbage in ("not json", "[" * 100_000):
            await ws.send(garbage)
            error = await _recv(ws)
            assert error["type"] == "error" and error["error"]["code"] == "invalid_json"
        await ws.send(json.dumps({"type": "dance", "id": "d"}))
        error = await _recv(ws)
        assert error["id"] == "d" and error["error"]["status"] == 422
        await ws.send(
            json.dumps(
                {"type": "run", "id": "v", "workflow": "order", "inputs": {"items": [{"sku": 1}]}}
            )
        )
        error = await _recv(ws)
        assert error["id"] == "v"
        assert error["error"]["errors"][0]["path"].startswith("items[0]")
        await ws.send(json.dumps({"type": "run", "id": "w", "workflow": "gret", "inputs": {}}))
        error = await _recv(ws)
        assert error["error"]["suggestion"] == "greet"
        await ws.send(json.dumps({"type": "unsubscribe", "subscription": "nope"}))
        assert (await _recv(ws))["type"] == "error"
        await ws.send(
            json.dumps({"type": "run", "id": "ok", "workflow": "add", "inputs": {"a": 2}})
        )
        assert (await _recv(ws))["run"]["output"] == 2


async def test_ws_origin_allow_list() -> None:
    app = build(api={"ws_origins": ["https://app.example"]})
    async with serving(app) as url:
        async with connect(_ws_url(url), origin="https://app.example") as ws:  # type: ignore[arg-type]
            await ws.send(json.dumps({"type": "run", "workflow": "add", "inputs": {"a": 1}}))
            assert (await _recv(ws))["run"]["output"] == 1
        with pytest.raises(InvalidStatus) as refused:
            async with connect(_ws_url(url), origin="https://evil.example"):  # type: ignore[arg-type]
                pass
        assert refused.value.response.status_code == 403
        host = url.removeprefix("http://")
        async with connect(_ws_url(url), origin=f"http://{host}"):  # type: ignore[arg-type]
            pass  # the server's own origin


async def test_ws_authenticates_at_connect() -> None:
    app = build()

    async def authenticate(credentials: Credentials | None, channel: str, **_: object) -> Principal:
        if credentials is None or "letmein" not in (credentials.bearer, credentials.api_key):
            raise AuthenticationError("a token is required")
        return Principal(id="alice")

    app.security.authenticate = authenticate  # type: ignore[method-assign]
    async with serving(app) as url:
        with pytest.raises(InvalidStatus) as refused:
            async with connect(_ws_url(url)):
                pass
        assert refused.value.response.status_code == 401
        headers = {"Authorization": "Bearer letmein"}
        async with connect(_ws_url(url), additional_headers=headers) as ws:
            await ws.send(json.dumps({"type": "run", "workflow": "add", "inputs": {"a": 3}}))
            assert (await _recv(ws))["run"]["output"] == 3
        async with connect(_ws_url(url) + "?access_token=letmein") as ws:
            await ws.send(json.dumps({"type": "run", "workflow": "add", "inputs": {"a": 4}}))
            assert (await _recv(ws))["run"]["output"] == 4


async def test_shutdown_closes_streams_and_sockets() -> None:
    app = build()
    async with app.running(channels=["api"]):
        channel = app.channels["api"]
        url = channel.url
        async with httpx.AsyncClient(base_url=url) as http, connect(_ws_url(url)) as ws:
            async with aconnect_sse(http, "GET", "/events") as source:
                events = await _events(source)
                channel.stop()
                with anyio.fail_after(10):
                    rest = [e async for e in events]  # the stream ends
                    await channel.wait_stopped()
                assert rest == []
            with anyio.fail_after(5):
                with pytest.raises(Exception):  # noqa: B017, PT011 - closed by the server
                    await ws.recv()
            assert ws.close_code in (1001, 1012)  # going away, or uvicorn's service restart


async def test_a_client_leaving_mid_run_loses_nothing(
    server: tuple[Nexus, str], client: httpx.AsyncClient
) -> None:
    _, url = server
    async with connect(_ws_url(url)) as ws:
        await ws.send(json.dumps({"type": "subscribe", "id": "s", "types": ["run.started"]}))
        assert await _recv(ws) == {"type": "result", "id": "s", "subscription": "s"}
        run = {"type": "run", "id": "r", "workflow": "slow", "inputs": {"seconds": 1}}
        await ws.send(json.dumps(run))
        started = await _recv(ws)  # the client leaves once the run is under way
        assert started["type"] == "event" and started["event"]["type"] == "run.started", started
        run_id = started["event"]["run_id"]
    with anyio.fail_after(10):
        while True:
            status = (await client.get(f"/runs/{run_id}")).json()["status"]
            if status == "completed":
                break
            assert status == "running", status
            await anyio.sleep(0.05)
    assert (await client.get("/health/ready")).status_code == 200
