"""REST against a real server: workflows, runs, sessions, idempotency, auth forwarding."""

from __future__ import annotations

import logging
from typing import Any

import anyio
import httpx
import msgspec
import pytest
from api_apps import build
from api_support import serving
from nexus_core import Nexus
from nexus_core.errors import AuthenticationError, PermissionDenied, RateLimited, ValidationError
from nexus_core.security import Credentials, Principal

pytestmark = pytest.mark.anyio


async def test_list_workflows_carries_the_core_schemas(
    server: tuple[Nexus, str], client: httpx.AsyncClient
) -> None:
    app, _ = server
    response = await client.get("/workflows")
    assert response.status_code == 200
    items = {w["name"]: w for w in response.json()["items"]}
    assert set(items) == set(app.workflows)
    greet = items["greet"]
    assert greet["input_schema"] == app.workflows["greet"].input_schema
    assert greet["output_schema"] == {"type": "string"}
    assert greet["read_only"] is True and greet["idempotent"] is True
    assert greet["runs_url"] == "/workflows/greet/runs"
    # Nested types stay resolvable inside each self-contained schema.
    assert "$defs" in items["order"]["input_schema"]


async def test_get_workflow_and_unknown_one(client: httpx.AsyncClient) -> None:
    response = await client.get("/workflows/greet")
    assert response.status_code == 200
    assert response.json()["description"] == "Greet someone by name."
    missing = await client.get("/workflows/gret")
    assert missing.status_code == 404
    assert missing.headers["content-type"] == "application/problem+json"
    body = missing.json()
    assert body["code"] == "workflow_not_found"
    assert body["suggestion"] == "greet"


async def test_run_waits_and_returns_the_result(client: httpx.AsyncClient) -> None:
    response = await client.post("/workflows/greet/runs", json={"name": "Ada", "excited": True})
    assert response.status_code == 200
    run = response.json()
    assert run["status"] == "completed"
    assert run["output"] == "Hello, Ada!"
    assert run["nodes"]["greet"]["status"] == "completed"
    assert response.headers["location"] == f"/runs/{run['run_id']}"
    again = await client.get(response.headers["location"])
    assert again.status_code == 200
    assert again.json()["output"] == "Hello, Ada!"
    assert again.json()["run_id"] == run["run_id"]


@pytest.mark.parametrize(
    ("workflow", "inputs"),
    [
        ("greet", {"name": "Grace"}),
        ("greet", {"name": "Ünïcødé ✓", "excited": True}),
        ("add", {"a": 2, "b": 40}),
        ("add", {"a": -7}),
        (
            "order",
            {
                "items": [{"sku": "a", "qty": 2}, {"sku": "b", "qty": 5}],
                "ship_to": {"street": "1 Main St", "zip": "12345"},
            },
        ),
    ],
)
async def test_parity_with_invoke(
    server: tuple[Nexus, str], client: httpx.AsyncClient, workflow: str, inputs: dict[str, Any]
) -> None:
    app, _ = server
    direct = await app.invoke(workflow, inputs, channel="python")
    response = await client.post(f"/workflows/{workflow}/runs", json=inputs)
    assert response.status_code == 200
    over_rest = response.json()
    assert over_rest["status"] == direct.status == "completed"
    assert over_rest["output"] == msgspec.to_builtins(direct.output)


async def test_parity_of_errors_with_invoke(
    server: tuple[Nexus, str], client: httpx.AsyncClient
) -> None:
    app, _ = server
    inputs = {"items": [{"sku": "a", "qty": 1}, {"sku": "b", "qty": "x"}], "ship_to": {}}
    with pytest.raises(ValidationError) as caught:
        await app.invoke("order", inputs)
    response = await client.post("/workflows/order/runs", json=inputs)
    assert response.status_code == 422
    problem = response.json()
    detail = caught.value.detail()
    assert problem["code"] == detail.code
    assert problem["errors"] == msgspec.to_builtins(detail.errors)


async def test_respond_async_answers_202_with_location(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/workflows/slow/runs", json={"seconds": 0.3}, headers={"Prefer": "respond-async"}
    )
    assert response.status_code == 202
    assert response.headers["preference-applied"] == "respond-async"
    run = response.json()
    assert run["status"] in ("pending", "running")
    location = response.headers["location"]
    assert location == f"/runs/{run['run_id']}"
    with anyio.fail_after(10):
        while True:
            polled = (await client.get(location)).json()
            if polled["status"] == "completed":
                break
            await anyio.sleep(0.05)
    assert polled["output"] == "done"


async def test_a_failed_run_is_a_200_with_status_failed(client: httpx.AsyncClient) -> None:
    response = await client.post("/workflows/boom/runs", json={"message": "kaput"})
    assert response.status_code == 200
    run = response.json()
    assert run["status"] == "failed"
    assert run["error"]["type"] == "RuntimeError"
    assert "kaput" in run["error"]["message"]


async def test_run_result_streams_the_output(client: httpx.AsyncClient) -> None:
    response = await client.post("/workflows/greet/runs", json={"name": "Ünï"})
    run_id = response.json()["run_id"]
    result = await client.get(f"/runs/{run_id}/result")
    assert result.status_code == 200
    assert result.headers["content-type"].startswith("application/json")
    assert result.json() == "Hello, Ünï."
    assert (await client.get("/runs/nope/result")).status_code == 404
    failed = await client.post("/workflows/boom/runs", json={"message": "kaput"})
    gone = await client.get(f"/runs/{failed.json()['run_id']}/result")
    assert gone.status_code == 404
    assert "it is failed" in gone.json()["detail"]


async def test_idempotency_key(client: httpx.AsyncClient) -> None:
    headers = {"Idempotency-Key": "order-1"}
    first = await client.post("/workflows/add/runs", json={"a": 1, "b": 2}, headers=headers)
    second = await client.post("/workflows/add/runs", json={"a": 1, "b": 2}, headers=headers)
    assert first.status_code == second.status_code == 200
    assert first.json()["run_id"] == second.json()["run_id"]
    assert second.json()["output"] == 3
    conflict = await client.post("/workflows/add/runs", json={"a": 5}, headers=headers)
    assert conflict.status_code == 409
    assert conflict.json()["code"] == "idempotency_conflict"


async def test_list_runs_filters_and_pages(client: httpx.AsyncClient) -> None:
    for n in range(5):
        await client.post("/workflows/add/runs", json={"a": n})
    await client.post("/workflows/boom/runs", json={})
    page = (await client.get("/runs", params={"workflow": "add", "limit": 2})).json()
    assert [r["workflow"] for r in page["items"]] == ["add", "add"]
    assert page["next"] == page["items"][-1]["run_id"]
    seen = [r["run_id"] for r in page["items"]]
    while page["next"]:
        page = (
            await client.get(
                "/runs", params={"workflow": "add", "limit": 2, "before": page["next"]}
            )
        ).json()
        seen += [r["run_id"] for r in page["items"]]
    assert len(seen) == len(set(seen)) == 5
    failed = (await client.get("/runs", params={"status": "failed"})).json()["items"]
    assert [r["workflow"] for r in failed] == ["boom"]
    bad = await client.get("/runs", params={"limit": 0})
    assert bad.status_code == 422
    assert bad.json()["errors"][0]["path"] == "limit"
    bad = await client.get("/runs", params={"status": "sleeping"})
    assert bad.status_code == 422
    assert bad.json()["errors"][0]["path"] == "status"


async def test_cancel_a_run(client: httpx.AsyncClient) -> None:
    started = await client.post(
        "/workflows/slow/runs", json={"seconds": 30}, headers={"Prefer": "respond-async"}
    )
    run_id = started.json()["run_id"]
    cancelled = await client.delete(f"/runs/{run_id}")
    assert cancelled.status_code == 200
    assert cancelled.json()["status"] == "cancelled"
    again = await client.delete(f"/runs/{run_id}")  # already ended: same answer
    assert again.status_code == 200
    assert again.json()["status"] == "cancelled"
    missing = await client.delete("/runs/no-such-run")
    assert missing.status_code == 404
    assert missing.json()["code"] == "run_not_found"


async def test_sessions_by_header_and_by_cookie(client: httpx.AsyncClient) -> None:
    created = await client.post("/sessions")
    assert created.status_code == 201
    body = created.json()
    token = body["session_id"]
    assert created.headers["x-nexus-session"] == token
    assert created.headers["location"] == f"/sessions/{token}"
    assert client.cookies.get("nexus_session") == token
    # The cookie alone carries the session...
    first = await client.post("/workflows/count/runs", json={"by": 2})
    assert first.json()["output"] == 2
    assert first.json()["session_id"] == token
    # ...and so does the header, from a client without cookies.
    async with httpx.AsyncClient(base_url=str(client.base_url)) as other:
        second = await other.post(
            "/workflows/count/runs", json={"by": 3}, headers={"X-Nexus-Session": token}
        )
        assert second.json()["output"] == 5
        assert second.headers["x-nexus-session"] == token
        session = (await other.get(f"/sessions/{token}")).json()
    assert session["state"] == {"n": 5}
    assert session["channels"] == ["api"]
    missing = await client.get("/sessions/nope")
    assert missing.status_code == 404
    assert missing.json()["code"] == "session_not_found"


async def test_a_workflow_that_needs_a_session_gets_a_new_one(client: httpx.AsyncClient) -> None:
    response = await client.post("/workflows/count/runs", json={})
    token = response.json()["session_id"]
    assert token and response.headers["x-nexus-session"] == token
    assert client.cookies.get("nexus_session") == token


async def test_a_stale_cookie_is_dropped_but_a_stale_header_is_an_error(
    client: httpx.AsyncClient,
) -> None:
    client.cookies.set("nexus_session", "expired-token")
    response = await client.post("/workflows/greet/runs", json={"name": "Ada"})
    assert response.status_code == 200
    assert "nexus_session=;" in response.headers["set-cookie"]
    client.cookies.clear()
    response = await client.post(
        "/workflows/greet/runs", json={"name": "Ada"}, headers={"X-Nexus-Session": "expired"}
    )
    assert response.status_code == 404
    assert response.json()["code"] == "session_not_found"


class _Security:
    """Stands in for the security layer: key 'good' is alice; 'ro' may not execute."""

    def __init__(self, real: Any) -> None:
        self.real = real
        self.seen: list[Credentials | None] = []

    async def authenticate(
        self, credentials: Credentials | None, channel: str, *, audit: bool = False
    ) -> Principal:
        self.seen.append(credentials)
        key = credentials.api_key or credentials.bearer if credentials else None
        if key in ("good", "ro", "slow"):
            return Principal(id=key, tenant="acme")
        raise AuthenticationError("an API key is required")

    async def authorize(self, principal: Principal, action: str, **context: Any) -> None:
        if principal.id == "ro":
            raise PermissionDenied(f"{principal.id} may not {action}")

    async def rate_limit(self, principal: Principal, *args: Any) -> None:
        if principal.id == "slow":
            raise RateLimited("too many requests", retry_after=2.5)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)


async def test_credentials_reach_the_security_layer_and_errors_map_to_http() -> None:
    app = build()
    security = _Security(app.security)
    app.security = security  # type: ignore[assignment]
    async with serving(app) as url, httpx.AsyncClient(base_url=url) as http:
        denied = await http.post("/workflows/greet/runs", json={"name": "x"})
        assert denied.status_code == 401
        assert denied.headers["www-authenticate"].startswith("Bearer")
        assert denied.json()["code"] == "unauthenticated"
        assert (await http.get("/runs")).status_code == 401
        ok = await http.post(
            "/workflows/greet/runs", json={"name": "x"}, headers={"X-API-Key": "good"}
        )
        assert ok.status_code == 200
        bearer = await http.get("/runs", headers={"Authorization": "Bearer good"})
        assert bearer.status_code == 200
        assert [r["run_id"] for r in bearer.json()["items"]] == [ok.json()["run_id"]]
        forbidden = await http.post(
            "/workflows/greet/runs", json={"name": "x"}, headers={"X-API-Key": "ro"}
        )
        assert forbidden.status_code == 403
        assert forbidden.json()["code"] == "forbidden"
        limited = await http.post(
            "/workflows/greet/runs", json={"name": "x"}, headers={"X-API-Key": "slow"}
        )
        assert limited.status_code == 429
        assert limited.headers["retry-after"] == "3"
        assert limited.json()["retry_after"] == 2.5
        # Probes stay open.
        assert (await http.get("/health/live")).status_code == 200
    keys = {(c.api_key, c.bearer) for c in security.seen if c is not None}
    assert ("good", None) in keys and (None, "good") in keys
    assert all(c.client == "127.0.0.1" for c in security.seen if c is not None)


async def test_the_old_http_rate_limit_is_ignored_with_a_warning_and_the_host_limits(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # The API has no rate limiter of its own: nexus.channels.api.rate_limit still
    # loads (old configurations) but says what replaced it; the host's per-client
    # limit applies to the API like to every channel.
    limits = {"per_client": {"requests": 2, "per": 60}}
    app = build(api={"rate_limit": 1}, services={"security": {"rate_limits": limits}})
    with caplog.at_level(logging.WARNING, logger="nexus.api"):
        async with serving(app) as url, httpx.AsyncClient(base_url=url) as http:
            listed = [(await http.get("/workflows")).status_code for _ in range(3)]
            assert listed == [200, 200, 200]  # no HTTP-layer limit any more
            codes = [
                (await http.post("/workflows/greet/runs", json={"name": "x"})).status_code
                for _ in range(3)
            ]
            assert codes == [200, 200, 429]
            limited = await http.post("/workflows/greet/runs", json={"name": "x"})
            assert int(limited.headers["retry-after"]) >= 1
            assert limited.json()["code"] == "rate_limited"
            assert (await http.get("/health/live")).status_code == 200
    warned = [r.getMessage() for r in caplog.records if "rate_limit" in r.getMessage()]
    assert warned and "nexus.services.security.rate_limits" in warned[0]
