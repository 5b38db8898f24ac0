"""One event stream: a run started over MCP, seen node by node on SSE, WebSocket and the CLI.

The shop's ``order`` workflow (ten nodes, a fan-out, an HTTP step, a switch that
skips one branch) is started by an MCP client on the gateway's ``/mcp``. While
it runs, five subscribers of the same gateway follow it: an SSE stream and a
WebSocket subscription that stay connected, an SSE stream and a WebSocket that
drop in the middle of the run (while the HTTP step waits on a slow catalog) and
reconnect from the last event they saw, and ``nexus --url URL events``. Each
must receive every event of the run exactly once, in the same order. Then the
same is checked for a run started by MCP over stdio, a process of its own:
``nexus --app APP events`` reads it from the event log both processes share.
"""

from __future__ import annotations

import json
import subprocess
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from .cross_support import EXAMPLES, require_plugins

require_plugins()

import anyio  # noqa: E402
import anyio.to_thread  # noqa: E402
import httpx  # noqa: E402

from .cross_support import (  # noqa: E402
    Gateway,
    gateway,
    mcp_http,
    mcp_stdio,
    nexus,
    nexus_command,
    receive,
)

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(180)]

SHOP = EXAMPLES / "shop.py"
TYPES = ["run.*", "node.*"]
TERMINAL = {"run.completed", "run.failed", "run.cancelled"}
#: How long the catalog takes to answer: the window in which subscribers drop and return.
CATALOG_DELAY = 1.5
ORDER = {
    "items": [{"sku": "PAN-010", "quantity": 2}, {"sku": "MUG-001"}, {"sku": "PAN-010"}],
    "country": "NL",
}


@pytest.fixture(scope="module")
def catalog() -> Iterator[str]:
    """The shop's demo catalog, answering after ``CATALOG_DELAY`` seconds."""
    import importlib.util
    import sys
    from http.server import ThreadingHTTPServer
    from threading import Thread

    spec = importlib.util.spec_from_file_location("shop_for_events", SHOP)
    assert spec is not None and spec.loader is not None
    shop = importlib.util.module_from_spec(spec)
    sys.modules["shop_for_events"] = shop
    spec.loader.exec_module(shop)

    class Slow(shop.CatalogHandler):  # type: ignore[name-defined,misc]
        def do_GET(self) -> None:
            time.sleep(CATALOG_DELAY)
            super().do_GET()

    server = ThreadingHTTPServer(("127.0.0.1", 0), Slow)
    server.daemon_threads = True
    Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_port}/prices"
    finally:
        server.shutdown()


@pytest.fixture(scope="module")
def served(workdir: Path, env: dict[str, str]) -> Iterator[Gateway]:
    with gateway(SHOP, workdir, env) as running:
        yield running


# -- subscribers -----------------------------------------------------------------------------


def view(event: dict[str, Any]) -> tuple[str, str, str | None, str | None]:
    """What is compared between subscribers: id, type, run and node."""
    return (event["id"], event["type"], event.get("run_id"), (event.get("data") or {}).get("node"))


async def sse(
    http: httpx.AsyncClient, last_event_id: str | None = None, types: str = ",".join(TYPES)
) -> AsyncIterator[dict[str, Any]]:
    """``GET /events`` as parsed events; the first item is ``None``, once subscribed."""
    headers = {"Accept": "text/event-stream"}
    if last_event_id:
        headers["Last-Event-ID"] = last_event_id
    async with http.stream("GET", "/events", params={"types": types}, headers=headers) as stream:
        assert stream.status_code == 200, await stream.aread()
        fields: dict[str, str] = {}
        data: list[str] = []
        async for line in stream.aiter_lines():
            if line:
                name, _, value = line.partition(":")
                if name == "data":
                    data.append(value.removeprefix(" "))
                elif name in ("id", "event", "retry"):
                    fields[name] = value.removeprefix(" ")
                continue
            if fields.get("retry"):
                yield None  # type: ignore[misc]  # the "subscribed" marker
            elif data:
                event = json.loads("\n".join(data))
                assert event["id"] == fields.get("id") and event["type"] == fields.get("event")
                yield event
            fields, data = {}, []


async def ws_subscribe(url: str, last_event_id: str | None = None) -> Any:
    """A WebSocket subscribed to run and node events (from ``last_event_id`` on)."""
    from websockets.asyncio.client import connect

    socket = await connect(url.replace("http://", "ws://") + "/ws")
    request: dict[str, Any] = {"type": "subscribe", "id": "s", "types": TYPES}
    if last_event_id:
        request["last_event_id"] = last_event_id
    await socket.send(json.dumps(request))
    answer = await receive(socket)
    assert answer == {"type": "result", "id": "s", "subscription": "s"}, answer
    return socket


async def ws_events(socket: Any) -> AsyncIterator[dict[str, Any]]:
    while True:
        message = await receive(socket)
        assert message["type"] == "event", message
        yield message["event"]


class Collected:
    """One subscriber's events, and whether it dropped and came back."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []
        self.reconnected_after: str | None = None

    def add(self, event: dict[str, Any]) -> bool:
        """Keep ``event``; True once the run ended."""
        self.events.append(event)
        return event["type"] in TERMINAL


def dropping_point(event: dict[str, Any]) -> bool:
    """Drop while the HTTP step waits on the slow catalog."""
    return event["type"] == "node.started" and event["data"].get("node") == "prices"


def follow_cli(process: subprocess.Popen[str], run_id: str) -> list[dict[str, Any]]:
    """Read ``nexus -o json events`` lines until the run ends, then stop the command."""
    events: list[dict[str, Any]] = []
    assert process.stdout is not None and process.stderr is not None
    watchdog = threading.Timer(90, process.terminate)  # the run's end never came: stop reading
    watchdog.start()
    try:
        for line in process.stdout:
            event = json.loads(line)
            events.append(event)
            if event["run_id"] == run_id and event["type"] in TERMINAL:
                break
    finally:
        watchdog.cancel()
        process.terminate()
        _, errors = process.communicate(timeout=30)
    assert "Traceback" not in errors, errors
    return events


# -- the test ----------------------------------------------------------------------------------


async def test_a_run_over_mcp_reaches_every_subscriber_once_and_in_order(
    served: Gateway, catalog: str, workdir: Path, env: dict[str, str]
) -> None:
    url = served.url
    steady_sse, steady_ws, dropping_sse, dropping_ws = (Collected() for _ in range(4))
    ready = {name: anyio.Event() for name in ("steady_sse", "dropping_sse")}

    async def follow_steady_sse(http: httpx.AsyncClient) -> None:
        stream = sse(http)
        async for event in stream:
            if event is None:
                ready["steady_sse"].set()
            elif steady_sse.add(event):
                break
        await stream.aclose()

    async def follow_dropping_sse(http: httpx.AsyncClient) -> None:
        stream = sse(http)
        async for event in stream:
            if event is None:
                ready["dropping_sse"].set()
                continue
            dropping_sse.add(event)
            if dropping_point(event):
                break
        await stream.aclose()  # the connection is gone: the run goes on without us
        await missed_one(dropping_sse)
        last = dropping_sse.events[-1]["id"]
        dropping_sse.reconnected_after = last
        stream = sse(http, last_event_id=last)
        async for event in stream:
            if event is not None and dropping_sse.add(event):
                break
        await stream.aclose()

    async def missed_one(dropped: Collected) -> None:
        """Return once the run went on without ``dropped``: an event it did not see."""
        last = dropped.events[-1]["id"]
        with anyio.fail_after(30):
            while True:
                ids = [event["id"] for event in steady_sse.events]
                if last in ids and ids.index(last) < len(ids) - 1:
                    return
                await anyio.sleep(0.02)

    async def follow_steady_ws(socket: Any) -> None:
        async for event in ws_events(socket):
            if steady_ws.add(event):
                break
        await socket.close()

    async def follow_dropping_ws(socket: Any) -> None:
        async for event in ws_events(socket):
            dropping_ws.add(event)
            if dropping_point(event):
                break
        await socket.close()
        await missed_one(dropping_ws)
        last = dropping_ws.events[-1]["id"]
        dropping_ws.reconnected_after = last
        again = await ws_subscribe(url, last)
        async for event in ws_events(again):
            if dropping_ws.add(event):
                break
        await again.close()

    timeout = httpx.Timeout(30.0, read=60.0)
    async with (
        httpx.AsyncClient(base_url=url, timeout=timeout) as http,
        anyio.create_task_group() as tg,
    ):
        tg.cancel_scope.deadline = anyio.current_time() + 120
        tg.start_soon(follow_steady_sse, http)
        tg.start_soon(follow_dropping_sse, http)
        tg.start_soon(follow_steady_ws, await ws_subscribe(url))
        tg.start_soon(follow_dropping_ws, await ws_subscribe(url))
        with anyio.fail_after(30):
            for event in ready.values():
                await event.wait()

        # A cursor for `nexus events --since`: the id of an event from before the run.
        async with http.stream(
            "GET", "/events", params={"types": "session.*"}, headers={"Accept": "text/event-stream"}
        ) as before:
            lines = before.aiter_lines()
            assert await anext(lines) == "retry: 3000"
            await http.post("/sessions")
            cursor = ""
            while not cursor:
                cursor = (await anext(lines)).partition("id: ")[2]
        command = [
            *nexus_command(),
            "--url",
            url,
            "-o",
            "json",
            "events",
            "--since",
            cursor,
            "--type",
            TYPES[0],
            "--type",
            TYPES[1],
        ]
        cli = await anyio.to_thread.run_sync(
            lambda: subprocess.Popen(
                command,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                cwd=workdir,
                env=env,
            )
        )

        async with mcp_http(url + "/mcp") as mcp:
            with anyio.fail_after(60):
                result = await mcp.call_tool("order", {**ORDER, "catalog_url": catalog})
        assert not result.is_error, result
        run_id = result.meta["nexus/runId"]
        assert result.structured_content["free_shipping"] is True

        from_cli = await anyio.to_thread.run_sync(follow_cli, cli, run_id)

    # The reference: what the steady SSE subscriber saw of the run.
    seen = [view(event) for event in steady_sse.events]
    assert {run for _, _, run, _ in seen} == {run_id}
    assert len({event_id for event_id, *_ in seen}) == len(seen)  # every event once
    kinds = [kind for _, kind, _, _ in seen]
    assert kinds[0] == "run.started" and kinds[-1] == "run.completed"
    assert all(event["channel"] == "mcp" for event in steady_sse.events)
    nodes = ["cart", "prices", "ship", "price", "total", "route", "free", "paid", "join", "receipt"]
    finished = {node: kind for _, kind, _, node in seen if kind.startswith("node.") and node}
    assert set(finished) == set(nodes)  # node by node, every node of the workflow
    started = [node for _, kind, _, node in seen if kind == "node.started"]
    assert sorted(started) == sorted(n for n in nodes if n != "paid")  # the switch skipped it
    skipped = [e for e in steady_sse.events if e["data"].get("node") == "paid"]
    assert [(e["type"], e["data"]["status"]) for e in skipped] == [("node.finished", "skipped")]

    subscribers = {
        "websocket": steady_ws.events,
        "SSE that reconnected with Last-Event-ID": dropping_sse.events,
        "WebSocket that resubscribed with last_event_id": dropping_ws.events,
        "nexus --url events --since": [e for e in from_cli if e["run_id"] == run_id],
    }
    for name, events in subscribers.items():
        assert [view(event) for event in events] == seen, name
    # The drops happened while the run was going on, not after it.
    for dropped in (dropping_sse, dropping_ws):
        assert dropped.reconnected_after is not None
        index = [event_id for event_id, *_ in seen].index(dropped.reconnected_after)
        assert index < len(seen) - 3


async def test_a_run_in_another_process_is_in_the_shared_event_log(
    catalog: str, workdir: Path, env: dict[str, str]
) -> None:
    # MCP over stdio runs the workflow in its own process; `nexus --app events` (which
    # reads the event log on the shared storage) sees it node by node all the same.
    async with mcp_stdio(SHOP, workdir, env) as stdio:
        result = await stdio.call_tool("order", {**ORDER, "catalog_url": catalog})
    assert not result.is_error, result
    run_id = result.meta["nexus/runId"]
    arguments = ["--app", str(SHOP), "-o", "json", "events", "--since", "0", "--idle", "2"]
    arguments += ["--type", TYPES[0], "--type", TYPES[1]]
    done = await anyio.to_thread.run_sync(lambda: nexus(*arguments, env=env, cwd=workdir))
    assert done.code == 0, str(done)
    events = [e for e in done.records() if e["run_id"] == run_id]
    kinds = [e["type"] for e in events]
    assert kinds[0] == "run.started" and kinds[-1] == "run.completed", kinds
    assert len([k for k in kinds if k == "node.finished"]) == 10
    assert len({e["id"] for e in events}) == len(events)
    assert {e["channel"] for e in events} == {"mcp"}


async def test_the_event_stream_of_a_run_started_a_moment_ago_is_complete(
    served: Gateway,
) -> None:
    # GET /runs/{id}/events "streams one run from its start and ends with it". Opened
    # just after an asynchronous start, as `nexus --url URL run` does, it races the run.
    expected = ["run.started", "node.started", "node.finished", "run.completed"]
    async with httpx.AsyncClient(base_url=served.url, timeout=30) as http:
        for _ in range(300):
            started = await http.post(
                "/workflows/search/runs",
                json={"query": "pen"},
                headers={"Prefer": "respond-async"},
            )
            run_id = started.json()["run_id"]
            async with http.stream("GET", f"/runs/{run_id}/events") as stream:
                kinds = [
                    line.removeprefix("event: ")
                    async for line in stream.aiter_lines()
                    if line.startswith("event: ")
                ]
            assert kinds == expected, f"run {run_id}: {kinds}"
