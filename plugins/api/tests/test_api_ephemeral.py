"""An ephemeral workflow (``durable=False``) over REST and SSE, on a real server."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import httpx
import pytest
from api_support import serving
from httpx_sse import aconnect_sse
from nexus_core import Nexus

pytestmark = pytest.mark.anyio


@pytest.fixture
async def client(tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    app = Nexus(
        "ephemeral",
        storage=f"sqlite:///{tmp_path / 'n.db'}",
        autoload=False,
        plugins=["nexus_plugin_api.plugin"],
        config={"channels": {"api": {"host": "127.0.0.1", "port": 0}}},
        env={},
    )

    @app.workflow(durable=False)
    async def shout(text: str) -> str:
        """Upper-case the text."""
        return text.upper()

    @app.workflow
    async def keep(text: str) -> str:
        """The same, recorded."""
        return text.upper()

    async with serving(app) as url, httpx.AsyncClient(base_url=url, timeout=10) as http:
        yield http


async def test_rest_answers_and_keeps_no_run(client: httpx.AsyncClient) -> None:
    response = await client.post("/workflows/shout/runs", json={"text": "hi"})
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["status"], body["output"]) == ("completed", "HI")
    missing = await client.get(f"/runs/{body['run_id']}")
    assert missing.status_code == 404
    assert missing.json()["code"] == "run_not_found"


async def test_an_idempotency_key_is_a_422_naming_it(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/workflows/shout/runs", json={"text": "hi"}, headers={"Idempotency-Key": "k"}
    )
    assert response.status_code == 422
    assert [e["path"] for e in response.json()["errors"]] == ["idempotency_key"]


async def test_sse_delivers_its_events_live_without_an_id(client: httpx.AsyncClient) -> None:
    async with aconnect_sse(client, "GET", "/events", params={"types": "run.*"}) as source:
        stream = source.aiter_sse()
        with anyio.fail_after(10):
            assert (await stream.__anext__()).retry == 3000
            kept = (await client.post("/workflows/keep/runs", json={"text": "a"})).json()
            live = (await client.post("/workflows/shout/runs", json={"text": "b"})).json()
            got = []
            async for sse in stream:
                got.append(sse)
                if len(got) == 4:
                    break
    by_run = [(json.loads(s.data)["run_id"], s.event) for s in got]
    assert by_run == [
        (kept["run_id"], "run.started"),
        (kept["run_id"], "run.completed"),
        (live["run_id"], "run.started"),
        (live["run_id"], "run.completed"),
    ]
    # The ephemeral events carry no id line: the stream's last id stays the last
    # logged event's, so a reconnect resumes after it and never replays them.
    logged_id = got[1].id
    assert logged_id.isdigit()
    assert [s.id for s in got[2:]] == [logged_id, logged_id]
    assert json.loads(got[3].data)["data"]["output"] == "B"
    headers = {"Last-Event-ID": got[0].id}
    async with aconnect_sse(
        client, "GET", "/events", params={"types": "run.*"}, headers=headers
    ) as source:
        stream = source.aiter_sse()
        with anyio.fail_after(10):
            assert (await stream.__anext__()).retry == 3000
            replayed = await stream.__anext__()
    assert (replayed.event, replayed.id) == ("run.completed", logged_id)
