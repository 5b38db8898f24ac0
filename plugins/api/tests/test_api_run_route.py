"""``POST /workflows/{name}/runs`` answered before Litestar routes it, and by Litestar: alike.

Without CORS the application answers the run route itself, before routing
(the hot path); with CORS, Litestar routes it to the same function. Every
request here goes to both, and the answers must match in status, headers
and body (run ids and times aside).
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from api_apps import build
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nexus_plugin_api.asgi import create_app
from nexus_plugin_api.config import ApiConfig

pytestmark = pytest.mark.anyio

_VARYING = {"run_id", "started_at", "finished_at", "duration_ms", "location", "x-nexus-session"}
_VARYING |= {"content-length", "session_id"}  # content-length: checked against the body


@contextlib.asynccontextmanager
async def two_clients(**api: Any) -> AsyncIterator[tuple[httpx.AsyncClient, httpx.AsyncClient]]:
    """Clients of one host: the hot path's application, and one with CORS (Litestar routes)."""
    app = build()
    async with app.running(channels=[]):
        fast = create_app(app, ApiConfig(**api))
        routed = create_app(app, ApiConfig(cors_origins=["https://example.org"], **api))
        assert fast.answer_run is not None and routed.answer_run is None  # type: ignore[attr-defined]
        async with (
            httpx.AsyncClient(transport=httpx.ASGITransport(app=fast), base_url="http://t") as a,
            httpx.AsyncClient(transport=httpx.ASGITransport(app=routed), base_url="http://t") as b,
        ):
            yield a, b


def _stable(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: "*" if k in _VARYING else _stable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_stable(v) for v in value]
    return value


def _answer(response: httpx.Response) -> tuple[int, dict[str, str], Any]:
    if response.status_code != 204:
        assert int(response.headers["content-length"]) == len(response.content)
    headers = {
        k: "*" if k in _VARYING else re.sub(r"=[^;]+;", "=<id>;", v) if k == "set-cookie" else v
        for k, v in response.headers.items()
        if k not in ("vary", "date")  # CORS adds Vary: Origin
    }
    body = response.json() if response.content else None
    return response.status_code, headers, _stable(body)


async def _both(
    clients: tuple[httpx.AsyncClient, httpx.AsyncClient], method: str, url: str, **kw: Any
) -> tuple[int, dict[str, str], Any]:
    fast = await clients[0].request(method, url, **kw)
    routed = await clients[1].request(method, url, **kw)
    assert _answer(fast) == _answer(routed)
    return _answer(fast)


@pytest.mark.parametrize(
    ("method", "url", "kwargs", "status"),
    [
        ("POST", "/workflows/add/runs", {"json": {"a": 2, "b": 3}}, 200),
        ("POST", "/workflows/add/runs", {"json": {"a": "two"}}, 422),
        ("POST", "/workflows/add/runs", {"content": b'{"a": 1'}, 400),
        ("POST", "/workflows/add/runs", {"content": b""}, 422),
        ("POST", "/workflows/nowhere/runs", {"json": {}}, 404),
        ("POST", "/workflows/boom/runs", {"json": {}}, 200),
        ("POST", "/workflows/add/runs", {"json": {"a": 1}, "headers": {"Host": "a b"}}, 400),
        (
            "POST",
            "/workflows/add/runs",
            {"json": {"a": 1}, "headers": {"Prefer": "respond-async"}},
            202,
        ),
        (
            "POST",
            "/workflows/count/runs",
            {"json": {}, "headers": {"X-Nexus-Session": "nope"}},
            404,
        ),
        ("POST", "/workflows/add/runs/", {"json": {"a": 1}}, 200),
        ("GET", "/workflows/add/runs", {}, 405),
        ("POST", "/workflows/add/runs", {"content": b"x" * 5000}, 413),
    ],
)
async def test_the_hot_path_answers_as_litestar_does(
    method: str, url: str, kwargs: dict[str, Any], status: int
) -> None:
    async with two_clients(max_body_bytes=1024) as clients:
        answered, _, body = await _both(clients, method, url, **kwargs)
        assert answered == status, body


async def test_the_hot_path_keeps_the_session_cookie_rules() -> None:
    async with two_clients() as clients:
        for client in clients:
            made = await client.post("/sessions")
            client.cookies.clear()  # each request below says which cookie it sends
            cookie = {"Cookie": f"nexus_session={made.headers['x-nexus-session']}"}
            first = await client.post("/workflows/count/runs", json={"by": 2}, headers=cookie)
            assert first.json()["output"] == 2
            assert "set-cookie" not in first.headers  # the cookie already names it
            gone = {"Cookie": "nexus_session=gone"}
            stale = await client.post("/workflows/count/runs", json={}, headers=gone)
            assert stale.json()["output"] == 1  # a stale cookie: run in a new session
            assert stale.headers["set-cookie"].startswith(
                f"nexus_session={stale.json()['session_id']};"
            )
            plain = await client.post("/workflows/add/runs", json={"a": 1}, headers=gone)
            assert plain.json()["output"] == 1  # none needed: the stale cookie is cleared
            assert "Max-Age=0" in plain.headers["set-cookie"]
        gone = {"Cookie": "nexus_session=gone"}
        await _both(clients, "POST", "/workflows/count/runs", json={}, headers=gone)
        await _both(clients, "POST", "/workflows/add/runs", json={"a": 1}, headers=gone)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    name=st.sampled_from(["add", "greet", "order", "nowhere", "a%2Fb", "..", "add runs"]),
    body=st.one_of(
        st.binary(max_size=64),
        st.dictionaries(
            st.sampled_from(["a", "b", "name", "items", "x"]), st.integers() | st.text(max_size=8)
        ).map(lambda d: __import__("json").dumps(d).encode()),
    ),
)
async def test_any_body_to_any_workflow_is_answered_alike(name: str, body: bytes) -> None:
    async with two_clients() as clients:
        status, headers, answer = await _both(
            clients, "POST", f"/workflows/{name}/runs", content=body
        )
        assert status < 500, answer
        assert headers["content-type"] in ("application/json", "application/problem+json")
