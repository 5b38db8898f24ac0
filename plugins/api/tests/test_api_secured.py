"""With authentication on: streams end with their credentials, nothing is exposed by accident."""

from __future__ import annotations

import hashlib
import json
import logging
from typing import Any

import anyio
import httpx
import pytest
from api_apps import build
from api_support import serving
from httpx_sse import aconnect_sse
from nexus_core import Nexus
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

pytestmark = pytest.mark.anyio

OPS, USER, PLAIN = "nxk_ops-key", "nxk_user-key", "nxk_plain-key"
METRICS_TOKEN = "m" * 32


def _key(principal: str, key: str, *roles: str) -> dict[str, Any]:
    return {
        "principal": principal,
        "sha256": hashlib.sha256(key.encode()).hexdigest(),
        "roles": list(roles),
    }


def secured(recheck: float = 0.2, **api: Any) -> Nexus:
    """The test app, authentication on: an operator, a user who may run ``greet`` only."""
    security = {
        "auth_enabled": True,
        "providers": ["api_key"],
        "recheck_interval": recheck,
        "roles": {
            "operator": ["admin", "metrics:read"],
            "user": ["workflow:greet:execute", "workflow:slow:execute", "events:read"],
            "plain": ["workflow:add:execute"],
        },
        "api_key": {
            "keys": [_key("ops", OPS, "operator"), _key("plain", PLAIN, "plain")],
        },
    }
    return build(services={"security": security}, api=api)


def _ws(url: str) -> str:
    return "ws" + url.removeprefix("http") + "/ws"


async def _user_key(app: Nexus) -> tuple[str, str]:
    key, record = await app.security.issue_api_key("user", roles=["user"])
    return key, record.id


async def test_a_revoked_key_closes_its_websocket_and_sse_streams_with_the_reason() -> None:
    app = secured(recheck=0.2)
    async with serving(app) as url, httpx.AsyncClient(base_url=url, timeout=10) as http:
        key, key_id = await _user_key(app)
        headers = {"X-API-Key": key}
        async with (
            connect(_ws(url), additional_headers=headers) as ws,
            aconnect_sse(http, "GET", "/events", headers=headers) as events,
            aconnect_sse(http, "GET", "/runs/none/events", headers=headers) as missing,
        ):
            assert missing.response.status_code == 404
            await ws.send(json.dumps({"type": "run", "workflow": "greet", "inputs": {"name": "a"}}))
            assert json.loads(await ws.recv())["run"]["output"] == "Hello, a."
            stream = events.aiter_sse()
            with anyio.fail_after(10):
                assert (await stream.__anext__()).retry == 3000
            assert await app.security.revoke(key_id)
            with anyio.fail_after(5):  # recheck_interval is 0.2 s
                last = [e async for e in stream if e.event == "error"]
                error = json.loads(await ws.recv())
                with pytest.raises(ConnectionClosed):
                    await ws.recv()
            assert len(last) == 1
            problem = last[0].json()
            assert problem["status"] == 401 and "revoked" in problem["detail"]
            assert error["type"] == "error" and error["error"]["status"] == 401
            assert ws.close_code == 1008
            assert ws.close_reason and "revoked" in ws.close_reason
        # And the key opens nothing any more.
        with pytest.raises(InvalidStatus) as refused:
            async with connect(_ws(url), additional_headers=headers):
                pass
        assert refused.value.response.status_code == 401
        assert (await http.get("/health/ready")).status_code == 200


async def test_a_run_stream_ends_with_its_credentials() -> None:
    app = secured(recheck=0.2)
    async with serving(app) as url, httpx.AsyncClient(base_url=url, timeout=10) as http:
        key, key_id = await _user_key(app)
        headers = {"X-API-Key": key, "Prefer": "respond-async"}
        started = await http.post("/workflows/slow/runs", json={"seconds": 30}, headers=headers)
        assert started.status_code == 202
        run = started.json()["run_id"]
        async with aconnect_sse(http, "GET", f"/runs/{run}/events", headers=headers) as source:
            stream = source.aiter_sse()
            with anyio.fail_after(10):
                assert (await stream.__anext__()).retry == 3000
            await app.security.revoke(key_id)
            with anyio.fail_after(5):
                rest = [e async for e in stream]
        assert rest[-1].event == "error" and "revoked" in rest[-1].json()["detail"]
        await app.cancel(run)


async def test_a_websocket_runs_nothing_once_its_key_is_revoked() -> None:
    # Every message goes through invoke with the connection's credentials, so a
    # revoked key is refused at once, before the periodic re-check closes it.
    app = secured(recheck=60)
    async with serving(app) as url:
        key, key_id = await _user_key(app)
        async with connect(_ws(url), additional_headers={"X-API-Key": key}) as ws:
            run = {"type": "run", "id": "r1", "workflow": "greet", "inputs": {"name": "a"}}
            await ws.send(json.dumps(run))
            assert json.loads(await ws.recv())["run"]["status"] == "completed"
            await app.security.revoke(key_id)
            await ws.send(json.dumps({**run, "id": "r2"}))
            with anyio.fail_after(5):
                answer = json.loads(await ws.recv())
            assert answer["type"] == "error" and answer["id"] == "r2"
            assert answer["error"]["status"] == 401


async def test_openapi_and_docs_show_a_caller_only_what_it_may_run() -> None:
    app = secured()
    async with serving(app) as url, httpx.AsyncClient(base_url=url, timeout=10) as http:
        for path in ("/openapi.json", "/docs", "/plugins"):
            anonymous = await http.get(path)
            assert anonymous.status_code == 401, path
            assert anonymous.json()["code"] == "unauthenticated"
        plain = await http.get("/openapi.json", headers={"X-API-Key": PLAIN})
        runs = [p for p in plain.json()["paths"] if p.startswith("/workflows/") and "{" not in p]
        assert runs == ["/workflows/add/runs"]
        assert "Order" not in json.dumps(plain.json()["components"])  # no other schema leaks
        ops = await http.get("/openapi.json", headers={"X-API-Key": OPS})
        assert len([p for p in ops.json()["paths"] if p.startswith("/workflows/")]) > 3
        assert (await http.get("/docs", headers={"X-API-Key": PLAIN})).status_code == 200
        assert (await http.get("/plugins", headers={"X-API-Key": PLAIN})).status_code == 200


async def test_metrics_need_a_permission_or_the_metrics_token() -> None:
    app = secured()
    async with serving(app) as url, httpx.AsyncClient(base_url=url, timeout=10) as http:
        assert (await http.get("/metrics")).status_code == 401
        assert (await http.get("/metrics", headers={"X-API-Key": PLAIN})).status_code == 403
        assert (await http.get("/metrics", headers={"X-API-Key": OPS})).status_code == 200
    app = secured(metrics_token=METRICS_TOKEN)
    async with serving(app) as url, httpx.AsyncClient(base_url=url, timeout=10) as http:
        assert (await http.get("/metrics", headers={"X-API-Key": OPS})).status_code == 401
        wrong = await http.get("/metrics", headers={"Authorization": "Bearer " + "x" * 32})
        assert wrong.status_code == 401 and "metrics token" in wrong.json()["detail"]
        right = await http.get("/metrics", headers={"Authorization": f"Bearer {METRICS_TOKEN}"})
        assert right.status_code == 200 and "nexus_" in right.text


async def test_the_host_header_is_never_reflected_in_a_challenge() -> None:
    app = secured(public_url="https://api.example.com")
    async with serving(app) as url, httpx.AsyncClient(base_url=url, timeout=10) as http:
        evil = {"Host": "evil.example"}
        for path in ("/workflows", "/openapi.json", "/metrics"):
            answer = await http.get(path, headers=evil)
            assert answer.status_code == 401
            assert "evil" not in answer.headers.get("www-authenticate", "")
            assert "evil" not in answer.text
        document = await http.get("/openapi.json", headers={**evil, "X-API-Key": PLAIN})
        assert document.json()["servers"] == [{"url": "https://api.example.com"}]
        assert "evil" not in document.text


@pytest.mark.parametrize(("host", "warned"), [("0.0.0.0", True), ("127.0.0.1", False)])
async def test_development_mode_on_a_network_address_warns(
    host: str, warned: bool, caplog: pytest.LogCaptureFixture
) -> None:
    app = build(api={"host": host})
    with caplog.at_level(logging.WARNING, logger="nexus.api"):
        async with serving(app):
            pass
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    said = any("anyone on the network can run every workflow" in w for w in warnings)
    assert said is warned
