"""Errors: RFC 9457 problem+json with field paths; bad input never a 500, never a dead server."""

from __future__ import annotations

import anyio
import httpx
import pytest
from api_apps import build
from api_support import serving
from nexus_core import Nexus
from nexus_core.errors import FieldError, InputLimitExceeded, ServiceUnavailable

from nexus_plugin_api.asgi import create_app
from nexus_plugin_api.config import ApiConfig

pytestmark = pytest.mark.anyio

PROBLEM = "application/problem+json"


def _problem(response: httpx.Response, status: int, code: str) -> dict[str, object]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == PROBLEM
    body = response.json()
    assert body["status"] == status
    assert body["code"] == code
    assert body["type"] == f"urn:nexus:error:{code}"
    assert body["title"] and body["detail"]
    return body  # type: ignore[no-any-return]


async def test_validation_error_names_nested_field_paths(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/workflows/order/runs",
        json={
            "items": [{"sku": "a", "qty": 1}, {"sku": "b", "qty": "many"}],
            "ship_to": {"street": "x", "zip": "1"},
        },
    )
    body = _problem(response, 422, "validation_error")
    assert body["errors"] == [{"path": "items[1].qty", "reason": "expected 'int', got 'str'"}]
    assert body["instance"] == "/workflows/order/runs"


@pytest.mark.parametrize(
    ("payload", "path"),
    [
        ({}, "name"),
        ({"name": "x", "shout": True}, "shout"),
        ({"name": 3}, "name"),
        ([1, 2], ""),
        ("just a string", ""),
    ],
)
async def test_field_paths(client: httpx.AsyncClient, payload: object, path: str) -> None:
    response = await client.post("/workflows/greet/runs", json=payload)
    body = _problem(response, 422, "validation_error")
    assert [e["path"] for e in body["errors"]] == [path]  # type: ignore[union-attr]


async def test_bad_json_names_the_body(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/workflows/greet/runs",
        content=b'{"name": "Ada"',
        headers={"content-type": "application/json"},
    )
    body = _problem(response, 400, "invalid_json")
    assert body["errors"][0]["path"] == "body"  # type: ignore[index]
    assert body["errors"][0]["reason"].startswith("invalid JSON")  # type: ignore[index]


async def test_empty_body_is_empty_inputs(client: httpx.AsyncClient) -> None:
    ok = await client.post("/workflows/slow/runs", content=b"", params={}, json=None)
    assert ok.status_code == 200
    missing = await client.post("/workflows/greet/runs", content=b"")
    _problem(missing, 422, "validation_error")


async def test_unknown_workflow_suggests(client: httpx.AsyncClient) -> None:
    response = await client.post("/workflows/greeet/runs", json={"name": "x"})
    body = _problem(response, 404, "workflow_not_found")
    assert body["suggestion"] == "greet"


async def test_unknown_route_and_method(client: httpx.AsyncClient) -> None:
    _problem(await client.get("/nowhere"), 404, "not_found")
    response = await client.put("/workflows")
    _problem(response, 405, "method_not_allowed")
    assert "GET" in response.headers["allow"]
    _problem(await client.get("/workflows/greet/runs"), 405, "method_not_allowed")


async def test_body_over_the_limit_is_413() -> None:
    app = build(api={"max_body_bytes": 1024})
    async with serving(app) as url, httpx.AsyncClient(base_url=url) as http:
        big = {"name": "x" * 5000}
        response = await http.post("/workflows/greet/runs", json=big)
        body = _problem(response, 413, "payload_too_large")
        assert body["errors"][0]["path"] == "body"  # type: ignore[index]

        async def chunks():  # no Content-Length: counted while reading
            for _ in range(10):
                yield b" " * 512

        streamed = await http.post("/workflows/greet/runs", content=chunks())
        _problem(streamed, 413, "payload_too_large")
        fine = await http.post("/workflows/greet/runs", json={"name": "x"})
        assert fine.status_code == 200


async def test_body_over_the_limit_is_413_under_another_asgi_server() -> None:
    """The application keeps the limit itself where our protocol does not count the bytes."""
    app = build(api={"max_body_bytes": 1024})
    async with app.running(channels=[]):
        server = create_app(app, ApiConfig(max_body_bytes=1024))
        transport = httpx.ASGITransport(app=server)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
            declared = await http.post("/workflows/add/runs", json={"a": 1, "pad": "x" * 5000})
            assert _problem(declared, 413, "payload_too_large")["errors"] == [
                {"path": "body", "reason": "the request body is over the size limit"}
            ]

            async def chunks():  # no Content-Length: counted while reading
                for _ in range(10):
                    yield b" " * 512

            streamed = await http.post("/workflows/add/runs", content=chunks())
            _problem(streamed, 413, "payload_too_large")
            fine = await http.post("/workflows/add/runs", content=b'{"a": 2, "b": 3}')
            assert fine.status_code == 200, fine.text
            assert fine.json()["output"] == 5
            assert fine.headers["location"] == f"/runs/{fine.json()['run_id']}"
            assert int(fine.headers["content-length"]) == len(fine.content)


async def test_input_limit_from_the_security_layer() -> None:
    app = build()
    real = app.security.check_input_limits

    def exceeded(limit: str, path: str, reason: str) -> InputLimitExceeded:
        error = InputLimitExceeded([FieldError(path=path, reason=reason)])
        error.limit = limit  # type: ignore[attr-defined] - as the security layer tags it
        return error

    def check(inputs: object) -> None:
        if isinstance(inputs, dict) and len(str(inputs)) > 200:
            raise exceeded("max_payload_bytes", "", "payload is over max_payload_bytes (200)")
        if isinstance(inputs, dict) and "deep" in inputs:
            raise exceeded("max_depth", "deep", "nested deeper than max_depth (3)")
        real(inputs)

    app.security.check_input_limits = check  # type: ignore[method-assign]
    async with serving(app) as url, httpx.AsyncClient(base_url=url) as http:
        big = await http.post("/workflows/greet/runs", json={"name": "y" * 300})
        _problem(big, 413, "input_limit")
        deep = await http.post("/workflows/greet/runs", json={"name": "y", "deep": [[[[1]]]]})
        _problem(deep, 422, "input_limit")


async def test_garbage_never_kills_the_server(
    server: tuple[Nexus, str], client: httpx.AsyncClient
) -> None:
    bodies = [b"\x00\xff\xfe", b"[" * 10_000, b'{"name": "\\ud800"}', b"nul\x00l", b"1e999999"]
    for body in bodies:
        response = await client.post("/workflows/greet/runs", content=body)
        assert 400 <= response.status_code < 500, (body, response.text)
        assert response.headers["content-type"] == PROBLEM
    weird = await client.get("/runs/%00%ff")
    assert weird.status_code == 404
    headers = {"Authorization": "Basic abc", "Prefer": "x" * 1000, "Idempotency-Key": "k"}
    answered = await client.post("/workflows/greet/runs", json={"name": "x"}, headers=headers)
    assert answered.status_code == 200
    unknown_key = await client.post(
        "/workflows/greet/runs", json={"name": "x"}, headers={"X-API-Key": "x y"}
    )
    assert unknown_key.status_code == 401  # presented credentials are checked even with auth off
    boom = await client.post("/workflows/boom/runs", json={})
    assert boom.status_code == 200 and boom.json()["status"] == "failed"
    assert (await client.get("/health/ready")).status_code == 200


async def test_a_handler_bug_is_a_500_problem_without_internals(
    server: tuple[Nexus, str], client: httpx.AsyncClient
) -> None:
    app, _ = server

    async def broken(*args: object, **kwargs: object) -> None:
        raise KeyError("secret internal detail")

    app.list_runs = broken  # type: ignore[method-assign]
    response = await client.get("/runs")
    body = _problem(response, 500, "internal_error")
    assert "secret" not in response.text
    assert body["detail"] == "internal server error"
    with anyio.fail_after(5):
        assert (await client.get("/health/live")).status_code == 200


async def test_a_service_that_is_down_is_a_503_problem_naming_it(
    server: tuple[Nexus, str], client: httpx.AsyncClient
) -> None:
    app, _ = server

    async def down(*args: object, **kwargs: object) -> None:
        raise ServiceUnavailable("Redis at redis://cache:6379/0 is unreachable")

    app.list_runs = down  # type: ignore[method-assign]
    response = await client.get("/runs")
    body = _problem(response, 503, "unavailable")
    assert body["detail"] == "Redis at redis://cache:6379/0 is unreachable"
    assert (await client.get("/health/live")).status_code == 200
